"""What every encoder-decoder family shares: two stacks, cross-attention, the decoder input.

An encoder-decoder checkpoint is traced as two stacks, each an :class:`Adapter` in the
canonical layout, so capture, spaces, analysis and verification work on each unchanged:

* :class:`EncoderStack` is the model's primary adapter (``LoadedModel.adapter``): the
  registry maps ``bart``/``marian``/``t5`` to it. It runs the encoder alone.
* :class:`DecoderStack` (``encoder_stack.decoder_stack()``) is the decoder, causal, with
  the cross-attention facts on top: each layer's cross-attention query/key/value maps
  (keys and values read the encoder output, not the decoder's residual), its output
  projection, and the modules that read ``cross_resid``. Its forward pass needs the
  source, so a run binds it (:meth:`DecoderStack.bind`) and the bound copy runs the whole
  model (encoder + decoder) on (source, decoder input).

The decoder's input is the user's target (:meth:`EncoderStack.decoder_input`: the
model's own teacher-forcing input, ``decoder_start`` then the target's tokens) or the
model's own greedy output (:meth:`EncoderStack.greedy`: argmax at every step, at most
``max_new`` tokens, no beam search, no length penalties).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import Adapter, HeadProjection, Norm
from tokentrail.spec.errors import InputError, ModelError


@dataclass(frozen=True)
class CrossPoints:
    """Modules of one decoder layer the capture reads for cross-attention."""

    out_proj: nn.Module  # input: concat of per-head cross z; output: the cross-attention output (before the residual)
    receiver: nn.Module  # the module whose input is receiver_norm(cross_resid)
    receiver_norm: Norm | None  # post-LN: LN_cross; pre-norm: None (the receiver is the FFN's own norm)


class _Stack(Adapter):
    """What both stacks share: positions 0..n-1 counted by the stack itself, eager attention."""

    # each stack numbers positions 0..n-1 itself, whatever the padding: right padding only
    padding_sides = ("right",)

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n = input_ids.shape[-1]
        return torch.arange(n, dtype=torch.long, device=input_ids.device).expand_as(input_ids).contiguous()

    def _check_eager(self) -> None:
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl != "eager":
            raise ModelError(
                f"{self.family}: tokentrail needs eager attention (got {impl!r}) to read attention probabilities"
            )

    def _check_positions(self, input_ids: Tensor, position_ids: Tensor) -> None:
        if not torch.equal(position_ids, self.position_ids(input_ids)):
            raise InputError(
                f"the {self.family} {self.stack} numbers its positions itself (0..n-1); other position ids cannot be passed"
            )


class EncoderStack(_Stack):
    """The encoder of an encoder-decoder: the model's primary adapter."""

    is_seq2seq = True
    stack = "encoder"
    # the decoder's LM head; loaded with the model whatever the checkpoint holds (both
    # stacks need the full model), so a missing untied head is refused as missing tensors
    head_key_prefixes: tuple[str, ...] = ("lm_head.",)
    head_tied_to_embedding = True

    def encoder_module(self) -> nn.Module:
        return self.model.get_encoder()

    @abstractmethod
    def make_decoder(self) -> DecoderStack:
        """The decoder stack's adapter for the same model."""

    def decoder_stack(self) -> DecoderStack:
        """The decoder stack (one per model, kept)."""
        dec = self.__dict__.get("_decoder")
        if dec is None:
            dec = self._decoder = self.make_decoder()
        return dec

    def lens_unavailable_reason(self) -> str:
        return f"the {self.family} encoder's output feeds the decoder's cross-attention, not a vocabulary head: the logit lens reads the decoder"

    # ---- the decoder's input -----------------------------------------------------------
    @property
    def decoder_start_id(self) -> int:
        start = getattr(self.config, "decoder_start_token_id", None)
        if start is None:
            raise ModelError(
                f"this {self.family} config names no decoder_start_token_id: give the decoder input with --target"
            )
        return int(start)

    @property
    def eos_id(self) -> int | None:
        eos = getattr(self.config, "eos_token_id", None)
        return None if eos is None else int(eos if not isinstance(eos, (list, tuple)) else eos[0])

    def decoder_input(self, target_ids: Tensor) -> Tensor:
        """The model's teacher-forcing input for a tokenized target (labels) ``(n,)``:
        ``decoder_start`` followed by the target, its closing end-of-sequence token left out
        (what the decoder reads while it predicts that token)."""
        ids = target_ids.long().reshape(-1)
        if ids.numel() and self.eos_id is not None and int(ids[-1]) == self.eos_id:
            ids = ids[:-1]
        start = torch.tensor([self.decoder_start_id], dtype=torch.long, device=ids.device)
        return torch.cat([start, ids])

    @torch.no_grad()
    def greedy(self, source_ids: Tensor, max_new: int) -> Tensor:
        """The model's own greedy output for ``source_ids`` (m,): ``decoder_start`` and then
        the argmax token at each step until end-of-sequence or ``max_new`` new tokens.
        Returns the decoder input (n,) that produced it: every token but a final eos."""
        dec = self.decoder_stack()
        if getattr(self.model, "lm_head", None) is None:
            raise ModelError(
                f"this {self.family} checkpoint has no LM head to generate with: give the decoder input with --target"
            )
        src = source_ids.long().reshape(1, -1).to(self.device)
        ids = torch.tensor([[self.decoder_start_id]], dtype=torch.long, device=src.device)
        with torch.no_grad():
            encoder_out = self.model.get_encoder()(input_ids=src, attention_mask=torch.ones_like(src)).last_hidden_state
            for _ in range(max_new):
                out = self.model(
                    encoder_outputs=(encoder_out,),
                    attention_mask=torch.ones_like(src),
                    decoder_input_ids=ids,
                    use_cache=False,
                )
                nxt = int(out.logits[0, -1].argmax())
                if nxt == self.eos_id or (dec.max_tokens is not None and ids.shape[1] >= dec.max_tokens):
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]], dtype=torch.long, device=src.device)], dim=1)
        return ids[0]


class DecoderStack(_Stack):
    """The decoder of an encoder-decoder, causal, with cross-attention. Bind a source
    (:meth:`bind`) before running it."""

    is_decoder = True
    is_seq2seq = True
    stack = "decoder"
    _source: Tensor | None = None
    last_output = None  # the bound copy's last full forward pass (cross-attention, encoder output)

    def decoder_module(self) -> nn.Module:
        return self.model.get_decoder()

    def bind(self, source_ids: Tensor) -> DecoderStack:
        """A copy of this adapter whose forward pass reads ``source_ids`` (m,) through the encoder."""
        bound = copy.copy(self)
        bound._source = source_ids.long().reshape(-1)
        bound.last_output = None
        return bound

    @property
    def source(self) -> Tensor:
        if self._source is None:
            raise RuntimeError("the decoder stack runs on a source: bind one first (decoder.bind(source_ids))")
        return self._source

    def resolve_causal(self, causal: bool | None) -> bool:
        if causal is False:
            raise InputError(f"the {self.family} decoder is trained causal: its mask cannot be turned off here")
        return True

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = True,
        hidden_states: bool = True,
    ):
        self._check_positions(input_ids, position_ids)
        self._check_eager()
        b = input_ids.shape[0]
        src = self.source.to(input_ids.device)[None].expand(b, -1)
        out = self.model(
            input_ids=src,
            attention_mask=torch.ones_like(src),
            decoder_input_ids=input_ids,
            decoder_attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )
        self.last_output = out
        return SimpleNamespace(hidden_states=out.decoder_hidden_states, attentions=out.decoder_attentions)

    def model_logits(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """(n,) decoder ids -> (n, V) the model's own logits, for the bound source."""
        src = self.source.to(input_ids.device)[None]
        out = self.model(
            input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=input_ids[None], use_cache=False
        )
        return out.logits[0]

    def lens_unavailable_reason(self) -> str:
        return f"this {self.family} checkpoint was loaded without its LM head (load it with AutoModelForSeq2SeqLM)"

    # ---- cross-attention ---------------------------------------------------------------
    @abstractmethod
    def cross_projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        """Cross-attention's q map (reads :meth:`cross_query_norm` of ``attn_resid_ln``) or
        k/v map (reads the encoder output), canonical layout."""

    @abstractmethod
    def cross_output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """(W_O: (H, d_head, d), b_O or None) of the cross-attention."""

    @abstractmethod
    def cross_points(self, layer: int) -> CrossPoints:
        """Modules the capture and the checks read for cross-attention."""

    @abstractmethod
    def cross_query_norm(self, layer: int) -> Norm | None:
        """The norm between ``attn_resid_ln`` and the cross-attention's query map (pre-norm models)."""

    def cross_scale(self) -> float:
        """What cross-attention scores are multiplied by before the softmax."""
        return self.d_head**-0.5

    def final_norm(self) -> nn.Module | None:
        """The norm after the last layer, if the stack has one."""
        return None
