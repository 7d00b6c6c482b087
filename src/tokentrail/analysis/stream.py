"""A long text's views scored a layer at a time inside its forward pass
(:func:`stream_views`), so that one layer's activations are held at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.blocks import PositionWindow, score_residual
from tokentrail.analysis.checks import unstreamable
from tokentrail.analysis.heads import HeadScorer
from tokentrail.analysis.lens import logit_lens
from tokentrail.analysis.residual import copied_view, residual_view
from tokentrail.analysis.views import Progress
from tokentrail.engine.budget import BLOCK_BYTES  # the scoring block (its size is the memory bound's)
from tokentrail.engine.capture import Activations, Passed, stream
from tokentrail.engine.metrics import anisotropy, overlap
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import VocabSpace
from tokentrail.results.trail import LensResult, View
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import CROSS_SITES, HEAD_SITE, TraceOptions


def stream_views(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Tensor,
    options: TraceOptions,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> tuple[list[View], LensResult | None, Passed]:
    """:func:`compute_views` and (with ``options.lens``) the logit lens of one text, scored a
    layer at a time inside its forward pass (:func:`tokentrail.engine.capture.stream`), so that one
    layer's activations are held at a time instead of every layer's. The same views, in the
    same order; a one-stack model, without a geometry correction (:func:`streams`). Returns
    them, the lens and what the pass keeps for the Trail."""
    why = unstreamable(adapter, options)
    if why is not None:
        raise InputError(why)
    say = progress or (lambda f, m: None)
    input_ids = input_ids.to(adapter.device).long()
    L = adapter.n_layers
    sims, k, ok = options.similarities, options.k, options.overlap_k
    todo = [(site, sp) for site, sp in options.pairs() if site not in CROSS_SITES]
    residual = [(site, sp) for site, sp in todo if site != HEAD_SITE]
    lenses: list[LensResult] = []
    positions = adapter.position_ids(input_ids[None], torch.ones_like(input_ids)[None])[
        0
    ]  # the pass's own (capture.stream)
    with spaces.scratch() as take:
        scorers: list[tuple[VocabSpace, list[str], _ResidualStream | None]] = []
        for sp in dict.fromkeys(sp for _, sp in residual):
            space = spaces.get(sp)
            site_names = [site for site, s in residual if s == sp]
            # a space with the same rows as one scored (see _views) takes its views
            twins = [r for s, _, r in scorers if r is not None and s.same_rows(space)]
            left = [site for site in site_names if not any(site in r.sites for r in twins)]
            scorers.append(
                (
                    space,
                    site_names,
                    _ResidualStream(adapter, space, left, sims, k, ok, chunk_bytes, take, input_ids, positions)
                    if left
                    else None,
                )
            )
        heads = {
            sp: HeadScorer(adapter, spaces, sp, sims, k, ok, chunk_bytes, take, input_ids, positions)
            for site, sp in todo
            if site == HEAD_SITE
        }

        def on_layer(acts: Activations) -> None:
            layer = acts.first_layer
            say(layer / L, f"layer {layer + 1} of {L}")
            for _, _, scorer in scorers:
                if scorer is not None:
                    scorer.layer(acts, layer)
            for head_scorer in heads.values():
                head_scorer.layer(acts, layer, stack=False)  # stacking layers needs every layer's activations
            if options.lens:
                lenses.append(logit_lens(adapter, acts, k=k, site=options.lens_site, beside_scratch=True))

        passed = stream(adapter, input_ids, on_layer, causal=options.causal)
    views: list[View] = []
    made: list[tuple[VocabSpace, dict]] = []  # each space and its views by (site, similarity)
    for space, site_names, scorer in scorers:
        mine = {(v.site, v.similarity): v for v in scorer.views()} if scorer is not None else {}
        twin = {key: v for s, vs in made if s.same_rows(space) for key, v in vs.items()}
        views += [
            mine.get((site, sim)) or copied_view(twin[(site, sim)], space.name) for sim in sims for site in site_names
        ]
        made.append((space, {**twin, **mine}))
    for head_scorer in heads.values():
        views += head_scorer.views()
    return views, (_joined_lens(lenses) if lenses else None), passed


def _joined_lens(parts: Sequence[LensResult]) -> LensResult:
    """Layer-by-layer lens results as one (their (1, n, ...) arrays stacked)."""
    layered = ("top_ids", "top_probs", "own_rank", "own_prob", "next_rank", "next_prob", "entropy")
    stacked: dict[str, Any] = {
        f: np.concatenate([getattr(p, f) for p in parts]) for f in layered if getattr(parts[0], f) is not None
    }
    return replace(parts[0], **stacked)


class _ResidualStream:
    """The residual views of one space, scored during a streamed pass (:func:`stream_views`).

    Each layer's sites (and, at layer 0, the original encodings) are kept until they fill
    one scoring block (a copy of a few layers' vectors, at most a block's bytes: the matrix
    products keep the captured path's sizes), then scored; each layer's overlap is taken
    with the previous layer's top-K lists, kept meanwhile."""

    def __init__(
        self,
        adapter,
        space: VocabSpace,
        sites,
        similarities,
        k,
        overlap_k,
        chunk_bytes,
        take,
        input_ids: Tensor,
        positions: Tensor,
    ):
        n, L, V, dev = input_ids.shape[0], adapter.n_layers, space.vocab_size, input_ids.device
        self.space, self.sites, self.similarities, self.k, self.overlap_k = (
            space,
            list(sites),
            similarities,
            k,
            overlap_k,
        )
        self.input_ids, self.K, self.n_layers = input_ids, min(max(k, overlap_k), V), L
        self.uniq, self.inv = torch.unique(positions, return_inverse=True)
        self.budget = min(chunk_bytes, BLOCK_BYTES)
        self.ws = take(min(len(self.sites) * L * n + n, max(1, self.budget // (V * 4))) * V)
        # queries kept before scoring: a block's, and no more than a block's bytes with their
        # copy, their similarities and their top-K lists (a vocabulary smaller than d)
        self.rows = max(1, self.budget // (4 * (V + 2 * space.d) + 12 * self.K * len(similarities)))
        self.window = PositionWindow(space, self.uniq)
        kk = min(k, self.K)
        self.out = {
            (site, sim): dict(
                own=torch.empty(L, n, device=dev),
                rank=torch.empty(L, n, dtype=torch.long, device=dev),
                ids=torch.empty(L, n, kk, dtype=torch.long, device=dev),
                vals=torch.empty(L, n, kk, device=dev),
                ov=torch.empty(L, n, dtype=torch.long, device=dev),
                aniso=torch.empty(L, device=dev),
            )
            for site in self.sites
            for sim in similarities
        }
        self.origin: dict[str, tuple[Tensor, Tensor]] = {}
        self.prev: dict[tuple[str, str], Tensor] = {}  # the previous layer's top overlap_k ids
        self.pending: list[tuple[int, Tensor]] = []  # (layer, its queries) not scored yet

    def layer(self, acts: Activations, layer: int) -> None:
        d = acts.embedded.shape[1]
        vectors = {s: acts.site(s) for s in self.sites}  # (1, n, d) each; some are made on reading
        parts = ([acts.embedded[None]] if layer == 0 else []) + list(vectors.values())
        self.pending.append(
            (layer, torch.cat(parts).reshape(-1, d))
        )  # a copy: the layer's activations go after this call
        for site, v in vectors.items():
            for sim in self.similarities:
                self.out[(site, sim)]["aniso"][layer] = anisotropy(v, sim)[0]
        if sum(len(v) for _, v in self.pending) >= self.rows or layer == self.n_layers - 1:
            self._score_pending()

    def _score_pending(self) -> None:
        n, kk = self.input_ids.shape[0], min(self.k, self.K)
        vecs = torch.cat([v for _, v in self.pending]) if len(self.pending) > 1 else self.pending[0][1]
        m = vecs.shape[0] // n
        res = score_residual(
            self.space,
            self.window,
            vecs,
            self.inv.repeat(m),
            self.input_ids.repeat(m),
            self.similarities,
            self.K,
            self.budget,
            self.ws,
        )
        at = 0
        for layer, _ in self.pending:
            if layer == 0:
                for sim in self.similarities:
                    ids, vals = res[sim][2][:n], res[sim][3][:n]
                    self.origin[sim] = (ids[:, :kk].clone(), vals[:, :kk].clone())
                    for site in self.sites:
                        self.prev[(site, sim)] = ids[:, : self.overlap_k].clone()
                at = n
            for site in self.sites:
                sl = slice(at, at + n)
                at += n
                for sim in self.similarities:
                    own_s, rank, ids, vals = (t[sl] for t in res[sim])
                    o = self.out[(site, sim)]
                    o["own"][layer], o["rank"][layer], o["ids"][layer], o["vals"][layer] = (
                        own_s,
                        rank,
                        ids[:, :kk],
                        vals[:, :kk],
                    )
                    top = ids[:, : self.overlap_k]
                    o["ov"][layer] = overlap(top, self.prev[(site, sim)])
                    self.prev[(site, sim)] = top.clone()
        self.pending = []

    def views(self) -> list[View]:
        overlap_k = min(self.overlap_k, self.K)
        return [
            residual_view(
                site,
                self.space.name,
                sim,
                o["own"],
                o["rank"],
                o["ids"],
                o["vals"],
                o["ov"],
                o["aniso"],
                *self.origin[sim],
                overlap_k,
            )
            for (site, sim), o in self.out.items()
        ]
