"""Scoring blocks: the shared machinery of the residual and head views.

A window of a space's per-position row norms (:class:`PositionWindow`), the chunks a
query set is cut into so that one block of similarities fits the budget (:func:`chunks`),
one block of queries scored exactly against every row (:func:`score_queries`), and a set
of residual queries scored chunk by chunk (:func:`score_residual`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

from tokentrail.engine.budget import STATS_BYTES  # the window of row norms (its size is the memory bound's)
from tokentrail.engine.metrics import similarity_from_dots
from tokentrail.engine.scoring import score_block
from tokentrail.engine.spaces import VocabSpace

MIN_WINDOW = 16
"""The fewest positions a window holds (when the text has more). A matrix product of very
few rows can take another kernel and round differently (1-7 rows did, on MKL); windows of
8 rows and more gave the norms of all positions at once bit for bit on MiniLM, but a tiny
BERT (d = 32) showed last-bit differences in a few similarities (docs/benchmarks.md,
"Memory: working set bounded"): equal up to fp32 rounding, not guaranteed bit for bit."""


class PositionWindow:
    """Position statistics of ``space`` for the sorted ``positions`` (P,), a window at a time.

    ``at(pidx)`` gives statistics covering the positions ``pidx`` (indices into ``positions``)
    and the indices into them; callers ask in increasing order of position (scoring sorts
    queries by it), so each window is made about once. Rows that never move have one set of
    norms for every position: all of them at once, as before."""

    def __init__(self, space: VocabSpace, positions: Tensor):
        self.space, self.positions = space, positions
        self.lo = self.hi = 0
        self.stats = None
        if not space.moves:
            self.stats, self.lo, self.hi = space.position_stats(positions), 0, len(positions)
        groups = space.groups
        per_position = space.vocab_size * 4 * (1 + 3 * groups)  # sigma, squared norms, two cosine factors
        self.width = max(MIN_WINDOW, STATS_BYTES // per_position)

    def at(self, pidx: Tensor) -> tuple:
        lo, hi = int(pidx.min()), int(pidx.max()) + 1
        if not (self.lo <= lo and hi <= self.hi):
            P = len(self.positions)
            stop = min(P, max(hi, lo + self.width))
            start = max(0, min(lo, stop - self.width))
            self.stats = None  # the old window goes before the new one is made
            self.stats, self.lo, self.hi = self.space.position_stats(self.positions[start:stop]), start, stop
        return self.stats, pidx - self.lo


def chunks(total: int, per_item_bytes: int, budget: int) -> Iterable[slice]:
    step = max(1, budget // max(per_item_bytes, 1))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def score_queries(
    space: VocabSpace,
    r: Tensor,
    stats,
    pidx: Tensor,
    groups: Tensor | None,
    own: Tensor,
    sim: str,
    K: int,
    out: Tensor | None = None,
    ready: bool = False,
):
    """Queries r (Q, C, k) against every row -> own similarity, rank, top-K ids and sims, each (Q * C, ...).

    One matrix product into a (Q * C, V) block, then the fused exact scoring
    (:func:`tokentrail.engine.scoring.score_block`) while the block is hot. own: (Q * C,) ids;
    out: an optional flat buffer for the block (cosine); ``ready``: it already holds the
    product (:func:`_stacked_products`).
    """
    Q, C, _ = r.shape
    if sim == "cosine":
        block, index = space.cosine_rows(r, stats, pidx, groups, out=out, ready=ready)
    else:
        g = torch.arange(C, device=r.device) if groups is None else groups
        block = similarity_from_dots(
            space.dots(r, stats, pidx, g).reshape(Q * C, -1),
            r.float().pow(2).sum(-1).reshape(-1),
            stats.sq_norm[pidx][:, g].reshape(Q * C, -1),
            sim,
        )
        index = torch.arange(Q * C, device=r.device)
    res = score_block(block, own[index], K)
    if torch.equal(index, torch.arange(Q * C, device=index.device)):
        return res
    out = tuple(torch.empty_like(t) for t in res)
    for o, t in zip(out, res):
        o[index] = t
    return out


def score_residual(
    space: VocabSpace,
    window: PositionWindow,
    vecs: Tensor,
    pidx: Tensor,
    own: Tensor,
    similarities,
    K: int,
    budget: int,
    ws: Tensor,
) -> dict:
    """(m, d) residual queries -> per similarity [own similarity, rank, top-K ids, top-K sims], chunk by chunk.

    window: the space's statistics for the sorted positions ``pidx`` indexes (shared by
    the batches of sites of one text: a short text's window is made once)."""
    m, V, dev = vecs.shape[0], space.vocab_size, vecs.device
    out = {
        sim: [
            torch.empty(m, device=dev),
            torch.empty(m, dtype=torch.long, device=dev),
            torch.empty(m, K, dtype=torch.long, device=dev),
            torch.empty(m, K, device=dev),
        ]
        for sim in similarities
    }
    order = torch.argsort(pidx, stable=True)  # queries at one position together: one scaling pass per position
    for c in chunks(m, V * 4, budget):
        oc = order[c]
        stats, local = window.at(pidx[oc])
        for sim in similarities:
            for buf, val in zip(
                out[sim], score_queries(space, vecs[oc][:, None, :], stats, local, None, own[oc], sim, K, ws)
            ):
                buf[oc] = val
        del stats  # the window alone holds it: a new window is made after the old one is let go
    return out


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
