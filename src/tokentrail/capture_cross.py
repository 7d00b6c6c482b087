"""One encoder-decoder forward pass -> both stacks' sites, cross-attention included.

A start on issue 12's encoder-decoder part (BART-style post-LN models): the encoder stack
is captured by :func:`tokentrail.capture.capture` through
:class:`~tokentrail.adapters.bart.BartEncoderAdapter`; this module runs the whole model
once on (source ids, decoder ids) and reads, per decoder layer, what the framework does
not expose: the per-head vectors entering the self- and cross-attention output
projections, those projections' outputs, the cross-attention block's normed output (the
FFN's input) and the layer outputs. Sites follow
:class:`~tokentrail.adapters.bart.BartDecoderAdapter`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .adapters.bart import BartDecoderAdapter
from .capture import recorded
from .errors import ModelError


@dataclass(frozen=True)
class CrossActivations:
    """An encoder-decoder pass on one source (m tokens) and one decoder input (n tokens)."""

    input_ids: Tensor  # (m,) source
    decoder_ids: Tensor  # (n,)
    encoder_out: Tensor  # (m, d): the encoder's last hidden state, what cross-attention's k/v read
    embedded: Tensor  # (n, d): the decoder's hidden state 0
    attn: Tensor  # (L, n, d): self-attention output
    z: Tensor  # (L, n, H, dh): self-attention per-head vectors
    attn_resid_ln: Tensor  # (L, n, d): LN_self(h_l + attn_l), cross-attention's query input
    cross_attn: Tensor  # (L, n, d): cross-attention output
    cross_z: Tensor  # (L, n, H, dh): cross-attention per-head vectors (SPEC ``cross_heads``)
    cross_resid_ln: Tensor  # (L, n, d): LN_cross(cross_resid), the FFN's input
    layer_out: Tensor  # (L, n, d)
    attentions: Tensor  # (L, H, n, n) causal self-attention probabilities
    cross_attentions: Tensor  # (L, H, n, m)
    hidden_states: tuple[Tensor, ...]  # the decoder's own hidden_states, for checks

    @property
    def layer_in(self) -> Tensor:
        return torch.cat([self.embedded[None], self.layer_out[:-1]], dim=0)

    @property
    def attn_resid(self) -> Tensor:
        """(L, n, d): h_l + attn_l."""
        return self.layer_in + self.attn

    @property
    def cross_resid(self) -> Tensor:
        """(L, n, d): SPEC ``cross_resid``, the residual after cross-attention, before its norm."""
        return self.attn_resid_ln + self.cross_attn


def _hooks(adapter: BartDecoderAdapter):
    """Each layer's points, for the batch of one (its row 0)."""
    points = []
    for lay in adapter.layers:
        points += [
            (lay.self_attn.out_proj, "z", True),
            (lay.self_attn.out_proj, "attn", False),
            (lay.self_attn_layer_norm, "self_ln", False),
            (lay.encoder_attn.out_proj, "cz", True),
            (lay.encoder_attn.out_proj, "cattn", False),
            (lay.fc1, "ffn_in", True),
            (lay, "out", False),
        ]
    return recorded(points, select=lambda t: t[0])


@torch.no_grad()
def capture_cross(adapter: BartDecoderAdapter, input_ids: Tensor, decoder_ids: Tensor) -> CrossActivations:
    """Run the encoder-decoder once on ``input_ids`` (m,) and ``decoder_ids`` (n,)."""
    impl = getattr(adapter.config, "_attn_implementation", "eager")
    if impl != "eager":
        raise ModelError(f"bart: tokentrail needs eager attention (got {impl!r}) to read attention probabilities")
    src, tgt = input_ids.long()[None], decoder_ids.long()[None]
    seq2seq = getattr(adapter.model, "model", adapter.model)  # BartForConditionalGeneration.model is the BartModel
    with _hooks(adapter) as s:
        out = seq2seq(
            input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=tgt,
            use_cache=False, output_hidden_states=True, output_attentions=True,
        )
    L, n, H, dh = adapter.n_layers, tgt.shape[1], adapter.n_heads, adapter.d_head
    return CrossActivations(
        input_ids=src[0],
        decoder_ids=tgt[0],
        encoder_out=out.encoder_last_hidden_state[0].float(),
        embedded=out.decoder_hidden_states[0][0].float(),
        attn=torch.stack(s["attn"]),
        z=torch.stack(s["z"]).view(L, n, H, dh),
        attn_resid_ln=torch.stack(s["self_ln"]),
        cross_attn=torch.stack(s["cattn"]),
        cross_z=torch.stack(s["cz"]).view(L, n, H, dh),
        cross_resid_ln=torch.stack(s["ffn_in"]),
        layer_out=torch.stack(s["out"]),
        attentions=torch.stack([a[0].float() for a in out.decoder_attentions]),
        cross_attentions=torch.stack([a[0].float() for a in out.cross_attentions]),
        hidden_states=tuple(h[0].float() for h in out.decoder_hidden_states),
    )
