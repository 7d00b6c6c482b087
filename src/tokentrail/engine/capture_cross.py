"""The decoder stack of an encoder-decoder: one pass -> its sites, cross-attention included.

:func:`capture_cross` binds the source to the decoder stack's adapter and runs
:func:`tokentrail.engine.capture.capture` on it (the whole model runs once on (source, decoder
input), so every self-attention site of the decoder comes out exactly as for any other
stack), while scoped hooks (:func:`tokentrail.engine.capture.recorded`) read what the framework
does not expose of cross-attention: the per-head vectors entering its output projection
(SPEC ``cross_heads``), that projection's output, and what the module after it receives
(for checks). The framework's own outputs give the cross-attention probabilities and the
encoder output that cross-attention's keys and values read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tokentrail.adapters import DecoderStack
from tokentrail.engine.capture import Activations, capture, recorded
from tokentrail.spec.options import CROSS_SITE


@dataclass(frozen=True)
class DecoderActivations(Activations):
    """The decoder stack's :class:`Activations` (n decoder tokens) plus cross-attention
    over the m source tokens."""

    encoder_out: Tensor | None = None  # (m, d): the encoder's output, what cross-attention's k/v read
    cross_z: Tensor | None = None  # (L, n, H, d_head): per-head cross-attention vectors (SPEC ``cross_heads``)
    cross_attn: Tensor | None = None  # (L, n, d): the cross-attention output, before the residual add
    cross_attentions: Tensor | None = None  # (L, H, n, m): cross-attention probabilities
    cross_received: Tensor | None = None  # (L, n, d): what the module after cross-attention read (checks)

    @property
    def cross_resid(self) -> Tensor:
        """(L, n, d): SPEC ``cross_resid``, the residual after cross-attention, before any norm.

        Cross-attention adds to the residual it reads: ``attn_resid_ln`` (post-LN, the normed
        self-attention residual; pre-norm models: ``attn_resid_ln == attn_resid``)."""
        return self.attn_resid_ln + self.cross_attn

    def site(self, name: str) -> Tensor:
        if name == CROSS_SITE:
            return self.cross_resid
        return super().site(name)


@torch.no_grad()
def capture_cross(decoder: DecoderStack, source_ids: Tensor, decoder_ids: Tensor) -> DecoderActivations:
    """Run the encoder-decoder once on ``source_ids`` (m,) and ``decoder_ids`` (n,) and
    collect every decoder site, cross-attention included."""
    bound = decoder.bind(source_ids.to(decoder.device))
    points = []
    for layer in range(decoder.n_layers):
        cp = decoder.cross_points(layer)
        points += [(cp.out_proj, "cz", True), (cp.out_proj, "cattn", False), (cp.receiver, "recv", True)]
    with recorded(points, select=lambda t: t[0]) as s:
        acts = capture(bound, decoder_ids.to(decoder.device))
    out = bound.last_output
    L, n, H, dh = decoder.n_layers, decoder_ids.shape[0], decoder.n_heads, decoder.d_head
    return DecoderActivations(
        **{f.name: getattr(acts, f.name) for f in fields(Activations)},
        encoder_out=out.encoder_last_hidden_state[0].float(),
        cross_z=torch.stack(s["cz"]).view(L, n, H, dh),
        cross_attn=torch.stack(s["cattn"]),
        cross_attentions=torch.stack([a[0].float() for a in out.cross_attentions]),
        cross_received=torch.stack(s["recv"]),
    )


def cross_vectors(decoder: DecoderStack, acts: DecoderActivations, kind: str, layer: int) -> tuple[Tensor, Tensor]:
    """A cross-attention head's vectors and its source space at ``layer``.

    value: (cross ``z`` (n, H, dh), the source tokens' values ``W_V e_s + b_V`` (m, H, dh));
    key: (the decoder tokens' cross queries (n, H, dh), the source tokens' keys (m, H, dh)).
    ``e_s`` is the encoder output: a cross-attention head's "vocabulary" is this input's
    source tokens."""
    if kind == "value":
        return acts.cross_z[layer], decoder.cross_projection(layer, "v")(acts.encoder_out)
    if kind == "key":
        norm = decoder.cross_query_norm(layer)
        x = acts.attn_resid_ln[layer]
        q = decoder.cross_projection(layer, "q")(x if norm is None else norm(x))
        return q, decoder.cross_projection(layer, "k")(acts.encoder_out)
    raise ValueError(kind)
