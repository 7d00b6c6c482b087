"""The residual views of one space: every residual site, layer and token of one text
scored against the space's rows (own similarity, rank, top-k, overlap with the layer
before, anisotropy), a few sites at a time or under a geometry correction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from tokentrail.analysis.blocks import PositionWindow, score_residual, to_numpy
from tokentrail.analysis.corrections import corrected_scores, corrected_site, correction_for
from tokentrail.engine.budget import BLOCK_BYTES  # the scoring block (its size is the memory bound's)
from tokentrail.engine.capture import Activations
from tokentrail.engine.metrics import Cells, anisotropy, derive_metrics, overlap
from tokentrail.engine.spaces import VocabSpace
from tokentrail.results.trail import View


def residual_views(
    adapter,
    space: VocabSpace,
    acts: Activations,
    sites,
    similarities,
    k,
    overlap_k,
    chunk_bytes,
    take,
    correct: str | None = None,
    correct_from: str | None = None,
    text_statistics: bool = True,
):
    """The residual views of ``sites`` in ``space``, per similarity then site: every layer
    and token scored (:func:`_site_batches`, or :func:`_corrected_groups` under a geometry
    correction), each layer's overlap taken with the layer before (layer 0: with the
    original encodings)."""
    n, L, V = acts.input_ids.shape[0], adapter.n_layers, space.vocab_size
    K = min(max(k, overlap_k), V)
    uniq, inv = torch.unique(acts.position_ids, return_inverse=True)
    # queries: the original encodings (for overlap at layer 0), then every site and layer
    if correct is None:
        groups = _site_batches(space, acts, sites, similarities, K, chunk_bytes, take, uniq, inv, L)
        corrections = None
    else:
        groups, corrections = _corrected_groups(
            space, acts, sites, similarities, K, chunk_bytes, correct, correct_from, uniq, inv, L
        )
    groups = iter(groups)
    origin = next(groups)
    views = {}
    for i, (site, res) in enumerate(zip(sites, groups)):
        for sim in similarities:
            own_s, rank, ids, vals = res[sim]
            origin_ids, origin_vals = origin[sim][2], origin[sim][3]
            s_ids = ids.view(L, n, K)
            prev = torch.cat([origin_ids[None], s_ids[:-1]])
            ov = overlap(s_ids[..., :overlap_k], prev[..., :overlap_k])
            aniso = (
                anisotropy(
                    acts.site(site)
                    if corrections is None
                    else corrected_site(acts.site(site), corrections[1 + i * L : 1 + (i + 1) * L]),
                    sim,
                )
                if text_statistics
                else torch.zeros(L, dtype=torch.float64)
            )
            views[(sim, site)] = residual_view(
                site,
                space.name,
                sim,
                own_s.view(L, n),
                rank.view(L, n),
                s_ids[..., :k],
                vals.view(L, n, K)[..., :k],
                ov,
                aniso,
                origin_ids[:, :k],
                origin_vals[:, :k],
                min(overlap_k, K),
            )
            del own_s, rank, ids, vals, s_ids, prev, ov
        del res  # the site's top-K lists: let go before the next site is scored
    return [views[(sim, site)] for sim in similarities for site in sites]


def _site_batches(space: VocabSpace, acts: Activations, sites, similarities, K, chunk_bytes, take, uniq, inv, L):
    """The original encodings, then each site's L x n vectors, scored a few sites at a time:
    as many as fit in one block (so short texts keep whole blocks), or one site, so memory
    holds one site's queries and top-K lists whatever the number of sites. Yields each
    group's {similarity: [own similarity, rank, top-K ids, top-K sims]}, lazily."""
    n, V = acts.input_ids.shape[0], space.vocab_size
    budget = min(chunk_bytes, BLOCK_BYTES)
    rows = max(1, budget // (V * 4))
    ws = take(min(len(sites) * L * n + n, rows) * V)  # one block, reused by every chunk
    window = PositionWindow(space, uniq)  # and one window of row norms, for every batch
    batches: list[list[str | None]] = [[None]]  # None: the original encodings
    for site in sites:
        if sum(n if s is None else L * n for s in batches[-1]) + L * n > rows:
            batches.append([])
        batches[-1].append(site)

    def each():  # lazily: a batch of sites is scored when their views are made
        for batch in batches:
            parts = [acts.embedded[None] if s is None else acts.site(s) for s in batch]
            sizes = [part.shape[0] * n for part in parts]
            # one site: its own (L, n, d) tensor, not a copy of it
            vecs = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(-1, acts.embedded.shape[1])
            del parts  # a site made on reading (resid_pre) is let go once scored
            m = vecs.shape[0] // n
            res = score_residual(
                space, window, vecs, inv.repeat(m), acts.input_ids.repeat(m), similarities, K, budget, ws
            )
            del vecs
            start = 0
            for size in sizes:
                sl = slice(start, start + size)
                start = sl.stop
                yield {sim: [t[sl] for t in res[sim]] for sim in similarities}
            del res  # this batch's top-K lists, before the next batch makes its own

    return each()


def _corrected_groups(
    space: VocabSpace, acts: Activations, sites, similarities, K, chunk_bytes, correct, correct_from, uniq, inv, L
):
    """:func:`_site_batches` under a geometry correction: every group scored at once
    (:func:`~tokentrail.analysis.corrections.corrected_scores`); returns the groups' scores
    and the corrections (for the anisotropy of what was compared)."""
    n = acts.input_ids.shape[0]
    stats = space.position_stats(uniq)
    vecs = torch.cat([acts.embedded[None]] + [acts.site(s) for s in sites]).reshape(-1, acts.embedded.shape[1])
    Q, dev = vecs.shape[0], vecs.device
    out = {
        sim: [
            torch.empty(Q, device=dev),
            torch.empty(Q, dtype=torch.long, device=dev),
            torch.empty(Q, K, dtype=torch.long, device=dev),
            torch.empty(Q, K, device=dev),
        ]
        for sim in similarities
    }
    corrections = corrected_scores(
        space,
        stats,
        vecs,
        inv.repeat(len(sites) * L + 1),
        acts.input_ids.repeat(len(sites) * L + 1),
        n,
        correct,
        similarities,
        K,
        out,
        chunk_bytes,
        correction_for(correct, correct_from, sites, L),
    )
    cut = [slice(0, n)] + [slice(n + i * L * n, n + (i + 1) * L * n) for i in range(len(sites))]
    return ({sim: [t[sl] for t in out[sim]] for sim in similarities} for sl in cut), corrections


def residual_view(
    site, space, sim, own_s, rank, top_ids, top_sims, ov, aniso, origin_ids, origin_sims, overlap_k
) -> View:
    """One residual View from its (L, n[, k]) tensors (own similarity, rank, top-k, overlap),
    its (L,) anisotropy and the (n, k) top-k of the original encodings."""
    cells = Cells(
        own_sim=to_numpy(own_s),
        rank=to_numpy(rank),
        overlap=to_numpy(ov).astype(np.float64),
        anisotropy=to_numpy(aniso),
        overlap_k=overlap_k,
        top_sim=to_numpy(top_sims[..., 0]),
    )
    return View(
        site=site,
        space=space,
        similarity=sim,
        metrics=derive_metrics(cells),
        top_ids=to_numpy(top_ids.contiguous()),  # contiguous: a view keeps only its k columns alive
        top_sims=to_numpy(top_sims.contiguous()),
        overlap_k=overlap_k,
        anisotropy=cells.anisotropy,
        origin_top_ids=to_numpy(origin_ids.contiguous()),
        origin_top_sims=to_numpy(origin_sims.contiguous()),
    )


def copied_view(view: View, space: str) -> View:
    """``view`` under another space's name, with arrays of its own."""
    own = lambda a: None if a is None else a.copy()  # noqa: E731
    return replace(
        view,
        space=space,
        metrics={name: a.copy() for name, a in view.metrics.items()},
        top_ids=own(view.top_ids),
        top_sims=own(view.top_sims),
        anisotropy=own(view.anisotropy),
        origin_top_ids=own(view.origin_top_ids),
        origin_top_sims=own(view.origin_top_sims),
    )
