"""T5: pre-RMSNorm encoder-decoders with a relative position bias and no biases (issue 12).

Layout (transformers 5, ``T5ForConditionalGeneration``): ``shared`` embedding (no scale,
no position table: ``Emb(v, p) = W_E[v]``); each stack (``encoder`` / ``decoder``, a
``T5Stack``) has ``block[l].layer``:

* ``[0]`` ``T5LayerSelfAttention``: ``h + o(Attn(layer_norm(h)))``; ``q``/``k``/``v``/``o``
  are bias-free ``nn.Linear`` maps of inner size ``H * d_kv`` (``d_kv`` need not be
  ``d / H``). Scores are ``q . k`` *unscaled* plus the relative position bias, which
  ``block[0]``'s attention computes from its ``relative_attention_bias`` table (bucketed
  relative positions: both ways in the encoder, backwards only in the decoder) and every
  layer shares;
* decoder only, ``[1]`` ``T5LayerCrossAttention``: ``a + o(Attn(q from layer_norm(a),
  k/v from the encoder output))`` (no position bias, unscaled) -> ``cross_resid``;
* last, ``T5LayerFF``: ``c + DenseReluDense(layer_norm(c))``.

Norms are ``T5LayerNorm``: RMSNorm with weight, no bias, no mean subtraction. Each stack
ends in ``final_layer_norm`` (the framework's last hidden state is after it). The output
head: ``lm_head(final_layer_norm(h) * d**-0.5)`` when the embeddings are tied
(``config.scale_decoder_outputs``), ``lm_head(final_layer_norm(h))`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.seq2seq import CrossPoints, DecoderStack, EncoderStack


def _rms(ln: nn.Module) -> Norm:
    return Norm("rmsnorm", ln.weight.detach().float(), None, ln.variance_epsilon)


class _T5Stack:
    """What both T5 stacks share."""

    config: Any  # from the Adapter this is mixed into
    stack_module: nn.Module  # a T5Stack

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_heads(self) -> int:
        return self.config.num_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def d_head(self) -> int:
        return self.config.d_kv

    @property
    def vocab_size(self) -> int:
        return self.stack_module.embed_tokens.weight.shape[0]

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stack_module.block

    def embedding_table(self) -> Tensor:
        return self.stack_module.embed_tokens.weight.detach()

    def position_offset(self, position_ids: Tensor) -> None:
        return None  # positions enter only through the relative bias on the scores

    def embedding_norm(self) -> None:
        return None

    def attn_input_norm(self, layer: int) -> Norm:
        return _rms(self.blocks[layer].layer[0].layer_norm)

    def _attn(self, layer: int) -> nn.Module:
        return self.blocks[layer].layer[0].SelfAttention

    def _split(self, linear: nn.Linear) -> HeadProjection:
        # bias-free nn.Linear (H*d_kv, d) = W @ x, rows grouped head by head
        return HeadProjection(linear.weight.detach().float().view(self.n_heads, self.d_head, self.d_model), None)

    def _out(self, linear: nn.Linear) -> tuple[Tensor, None]:
        return linear.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model), None

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self._attn(layer)
        return self._split({"q": att.q, "k": att.k, "v": att.v}[which])

    def output_projection(self, layer: int) -> tuple[Tensor, None]:
        return self._out(self._attn(layer).o)

    def attention_scale(self, layer: int) -> float:
        return 1.0  # T5 folds the scale into its initialisation

    def attention_bias(self, layer: int, n: int) -> Tensor:
        """(H, n, n): the relative position bias block 0 computes and every layer adds."""
        att = self._attn(0)
        with torch.no_grad():
            return att.compute_bias(n, n, device=att.relative_attention_bias.weight.device)[0].float()

    def final_norm(self) -> nn.Module:
        return self.stack_module.final_layer_norm

    def _stack_hooks(self, layer: int, ffn_norm: nn.Module) -> HookPoints:
        blk = self.blocks[layer]
        return HookPoints(
            layer=blk,
            attn_out_proj=self._attn(layer).o,
            ffn_input=None,
            mlp_out=blk.layer[-1].DenseReluDense,
            ffn_norm=ffn_norm,
        )


class T5EncoderAdapter(_T5Stack, EncoderStack):
    family = "t5"
    norm_placement = "pre"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.stack_module = self.encoder_module()

    @property
    def n_layers(self) -> int:
        return self.config.num_layers

    def hook_points(self, layer: int) -> HookPoints:
        # pre-norm: attn_resid_ln == attn_resid, which the FFN's own norm reads
        return self._stack_hooks(layer, self.blocks[layer].layer[-1].layer_norm)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        self._check_positions(input_ids, position_ids)
        self._check_eager()
        return self.stack_module(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    def make_decoder(self) -> T5DecoderAdapter:
        return T5DecoderAdapter(self.model)


class T5DecoderAdapter(_T5Stack, DecoderStack):
    family = "t5"
    norm_placement = "pre"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.stack_module = self.decoder_module()

    @property
    def n_layers(self) -> int:
        return self.config.num_decoder_layers

    def hook_points(self, layer: int) -> HookPoints:
        # attn_resid (== attn_resid_ln, pre-norm) is what cross-attention's norm reads
        return self._stack_hooks(layer, self.blocks[layer].layer[1].layer_norm)

    # ---- cross-attention ---------------------------------------------------------------
    def _cross(self, layer: int) -> nn.Module:
        return self.blocks[layer].layer[1].EncDecAttention

    def cross_projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self._cross(layer)
        return self._split({"q": att.q, "k": att.k, "v": att.v}[which])

    def cross_output_projection(self, layer: int) -> tuple[Tensor, None]:
        return self._out(self._cross(layer).o)

    def cross_points(self, layer: int) -> CrossPoints:
        blk = self.blocks[layer]
        # pre-norm: the FFN's own norm reads cross_resid as it is
        return CrossPoints(out_proj=self._cross(layer).o, receiver=blk.layer[-1].layer_norm, receiver_norm=None)

    def cross_query_norm(self, layer: int) -> Norm:
        return _rms(self.blocks[layer].layer[1].layer_norm)

    def cross_scale(self) -> float:
        return 1.0

    # ---- the output head -----------------------------------------------------------------
    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        head = getattr(self.model, "lm_head", None)
        if head is None:
            return None
        norm = self.final_norm()
        scale = (
            self.d_model**-0.5
            if getattr(self.config, "scale_decoder_outputs", self.config.tie_word_embeddings)
            else 1.0
        )

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) -> (n, V): final norm, T5's rescaling of tied embeddings, LM head
            return head(norm(h.to(head.weight.dtype)) * scale).float()

        return apply
