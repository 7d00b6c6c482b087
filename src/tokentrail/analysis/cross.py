"""The ``cross_heads`` site of an encoder-decoder's decoder stack: each cross-attention
head's vector against the source tokens of this input."""

from __future__ import annotations

import torch

from tokentrail.analysis.blocks import to_numpy
from tokentrail.engine.capture_cross import cross_vectors
from tokentrail.engine.metrics import similarity_from_dots
from tokentrail.results.trail import CrossView
from tokentrail.spec.options import CROSS_HEAD_SITE, TraceOptions


def cross_views(decoder, acts, options: TraceOptions) -> list[CrossView]:
    """The ``cross_heads`` site of a decoder stack: each head's vector against the source
    tokens of this input in its space (``value``: cross ``z`` vs the source values;
    ``key``: the cross query vs the source keys), for every similarity asked for.

    Per (layer, head, decoder token) the source tokens in order of similarity (ties: the
    lower index first); a source token's place in that order is its rank."""
    out = []
    for site, kind in options.pairs():
        if site != CROSS_HEAD_SITE:
            continue
        for sim in options.similarities:
            orders, sims = [], []
            for layer in range(decoder.n_layers):
                vec, rows = cross_vectors(decoder, acts, kind, layer)  # (n, H, dh), (m, H, dh)
                q, r = vec.transpose(0, 1), rows.transpose(0, 1)  # (H, n, dh), (H, m, dh)
                s = similarity_from_dots(
                    torch.einsum("hnk,hmk->hnm", q, r), q.pow(2).sum(-1), r.pow(2).sum(-1)[:, None, :], sim
                )
                vals, order = torch.sort(s, dim=-1, descending=True, stable=True)
                orders.append(order)
                sims.append(vals)
            out.append(
                CrossView(
                    site=CROSS_HEAD_SITE,
                    space=kind,
                    similarity=sim,
                    source_order=to_numpy(torch.stack(orders)),
                    source_sims=to_numpy(torch.stack(sims)),
                )
            )
    return out
