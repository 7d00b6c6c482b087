"""Several texts' views at once: their tokens scored side by side, and each text's
statistics (anisotropy and what derives from it) taken per text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.blocks import to_numpy
from tokentrail.analysis.views import Progress, compute_views
from tokentrail.engine.capture import Activations, head_vectors
from tokentrail.engine.metrics import Cells, anisotropy, derive_metrics
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.results.trail import View
from tokentrail.spec.options import HEAD_SITE, TraceOptions


def compute_views_batch(
    adapter: Adapter,
    spaces: SpaceCache,
    acts: Sequence[Activations],
    options: TraceOptions,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> list[list[View]]:
    """:func:`compute_views` for several texts at once: per text, the views it gets alone.

    The vocabulary work is shared: the texts' tokens are scored side by side in one
    chunked loop (one set of per-position statistics per space for every position any
    text uses); what is a statistic of one text (anisotropy, and the metrics derived from
    it) is then taken per text. A geometry correction is fitted to each text's own
    vectors (or comes from a corpus study), so with one the texts are scored one by one."""
    if options.correct is not None:
        return [compute_views(adapter, spaces, a, options, progress, chunk_bytes) for a in acts]
    views = compute_views(adapter, spaces, _joined(acts), options, progress, chunk_bytes, text_statistics=False)
    out, start = [], 0
    for a in acts:
        n = a.input_ids.shape[0]
        out.append([_text_view(adapter, v, a, slice(start, start + n)) for v in views])
        start += n
    return out


def _joined(acts: Sequence[Activations]) -> Activations:
    """The texts' tokens side by side as one Activations, for per-token work only (the
    scoring loops): attention between different texts does not exist, so ``attentions``
    is empty, and per-text statistics are taken per text (:func:`_text_view`)."""
    if len(acts) == 1:
        return acts[0]
    first = acts[0]

    def cat(name: str, dim: int) -> Tensor:
        return torch.cat([getattr(a, name) for a in acts], dim)

    return Activations(
        input_ids=cat("input_ids", 0),
        position_ids=cat("position_ids", 0),
        embedded=cat("embedded", 0),
        layer_out=cat("layer_out", 1),
        attn=cat("attn", 1),
        z=cat("z", 1),
        attn_resid_ln=cat("attn_resid_ln", 1),
        mlp_out=cat("mlp_out", 1),
        attentions=first.attentions.new_empty((*first.attentions.shape[:2], 0, 0)),
        hidden_states=tuple(torch.cat(hs) for hs in zip(*(a.hidden_states for a in acts))),
        causal=first.causal,
    )


def _text_view(adapter: Adapter, view: View, acts: Activations, tokens: slice) -> View:
    """One text's part of a view computed over joined texts; its anisotropy from its own vectors."""
    cut = (slice(None), slice(None), tokens) if view.per_head else (slice(None), tokens)

    def part(a: np.ndarray, where) -> np.ndarray:
        return a[where].copy()  # a copy: a text's Trail must not keep the batch's arrays alive

    if view.site == HEAD_SITE:
        per_layer = [
            head_vectors(adapter, acts, view.space, layer).transpose(0, 1) for layer in range(adapter.n_layers)
        ]
        aniso = to_numpy(torch.stack([anisotropy(z, view.similarity) for z in per_layer]))
    else:
        aniso = to_numpy(anisotropy(acts.site(view.site), view.similarity))
    cells = Cells(
        own_sim=part(view.self_sim, cut),
        rank=part(view.rank, cut),
        overlap=part(view.overlap, cut),
        anisotropy=aniso,
        overlap_k=view.overlap_k,
        top_sim=part(view.top_sims[..., 0], cut),
    )
    return replace(
        view,
        metrics=derive_metrics(cells),
        top_ids=part(view.top_ids, cut),
        top_sims=part(view.top_sims, cut),
        anisotropy=aniso,
        origin_top_ids=None if view.origin_top_ids is None else part(view.origin_top_ids, tokens),
        origin_top_sims=None if view.origin_top_sims is None else part(view.origin_top_sims, tokens),
    )
