"""Exact scoring of a block of similarities: own similarity, rank and top-k in few passes.

The analysis computes, per chunk of queries, one ``(queries x V)`` block of similarities
(one matrix product plus in-place scaling, see :meth:`VocabSpace.cosine_block`) and hands
it here while it is still in cache. This module imports only torch.

Definitions are those of :mod:`tokentrail.engine.metrics` (SPEC "Metrics"): ``rank`` counts rows
strictly more similar than the token's own row (ties favour the token); ``top-k`` orders
by similarity, ties by lower id. Passes over the block:

1. the ``k + 1`` largest values (:func:`top_values`, ``torch.topk`` over a few
   candidate columns per row): a tie can straddle the top-k boundary only if the
   k-th and (k+1)-th values are equal, so only those rows (rare) are re-read in full;
2. the rank: when the own similarity is above the last of those k + 1 values, every row
   more similar is among them and the rank is counted there; when some row's is not, the
   block is counted in full, in place (``block > own`` written as 1.0/0.0, then summed),
   which is several times faster than a boolean temporary (or than gathering the rows
   that need it). The block may be consumed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def score_block(block: Tensor, own: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Q, V) similarities -> own similarity (Q,), rank (Q,) int64, top-k ids (Q, k) int64 and sims (Q, k).

    ``block`` may be overwritten (rows whose rank needs the full count hold the rank
    indicator afterwards). ``own``: (Q,) ids.
    """
    Q, V = block.shape
    k = min(k, V)
    own_s = block.gather(1, own[:, None].long())  # (Q, 1)
    vals, ids = top_values(block, min(k + 1, V))
    # the rank from the list when the own similarity beats its last value: every row more
    # similar than the own one is then in it; if any row of the block needs more, all are
    # counted in full
    rank = (vals > own_s).sum(1)
    full = (
        (own_s[:, 0] <= vals[:, -1]).nonzero().flatten() if vals.shape[1] < V else own_s.new_empty(0, dtype=torch.long)
    )
    ids, vals = _exact_order(block, vals, ids, k)
    if len(full):
        # in place over the whole block: cheaper than gathering the rows that need it
        rank = block.gt_(own_s).sum(1).long()  # exact: counts < 2**24
    return own_s[:, 0], rank, ids, vals


SLICES = 8
""":func:`top_values` cuts each row into this many contiguous slices of ``V // SLICES`` columns."""


def top_values(block: Tensor, k: int, sorted: bool = True) -> tuple[Tensor, Tensor]:
    """``torch.topk(block, k, dim=1)``'s values (the same; in order unless ``sorted`` is
    False) and ids, in about 0.55x its time on 650 rows of 30,522 values (docs/benchmarks.md).

    Column ``j`` of a row belongs to group ``j mod n`` (``n = V // SLICES``: group ``j``
    holds column ``j`` of each slice; the last ``V mod SLICES`` columns are always
    candidates). The k groups with the largest maxima
    hold k values at least the k-th largest maximum, and every value of another group is
    at most that: so the k largest values of the row are among those groups' columns,
    and ``topk`` runs over ``k * SLICES`` candidates instead of V. The maxima are taken
    over contiguous slices (one vectorised pass), and their k largest are found the same
    way (the maxima are rows of ``n`` values), until rows are short. Which of several
    *equal* values is returned may differ from ``torch.topk`` (neither orders ties);
    :func:`_exact_order` settles ties by lower id either way.
    """
    Q, V = block.shape
    n = V // SLICES
    if n < 4 * k:
        return torch.topk(block, k, dim=1, sorted=sorted)
    main = n * SLICES
    peaks = block[:, :main].view(Q, SLICES, n).amax(1)  # (Q, n): max of columns j, j + n, ...
    groups = top_values(peaks, k, sorted=False)[1]  # (Q, k)
    cols = (groups[:, :, None] + torch.arange(0, main, n, device=block.device)).view(Q, -1)
    if main < V:
        cols = torch.cat([cols, torch.arange(main, V, device=block.device).expand(Q, -1)], 1)
    vals, j = torch.topk(block.gather(1, cols), k, dim=1, sorted=sorted)
    return vals, cols.gather(1, j)


def _exact_order(block: Tensor, vals: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k with ties by lower id, from topk's k (+1) values; rows are re-read only at a boundary tie."""
    boundary = (
        vals[:, k - 1] == vals[:, k]
        if vals.shape[1] > k
        else torch.zeros(len(vals), dtype=torch.bool, device=vals.device)
    )
    vals, ids = vals[:, :k].contiguous(), ids[:, :k].contiguous()
    inner = (
        (vals[:, 1:] == vals[:, :-1]).any(1) if k > 1 else torch.zeros(len(vals), dtype=torch.bool, device=vals.device)
    )
    rows = (inner & ~boundary).nonzero().flatten()
    if len(rows):  # every tied value is in the list: order it by id, then stably by value
        by_id, o = ids[rows].sort(dim=1)
        v = vals[rows].gather(1, o)
        o = torch.sort(-v, dim=1, stable=True).indices
        ids[rows], vals[rows] = by_id.gather(1, o), v.gather(1, o)
    for q in boundary.nonzero().flatten().tolist():  # the tie may go on past the list: re-read the row
        row = block[q]
        cand = (row >= vals[q, -1]).nonzero().flatten()  # ascending ids
        ids[q] = cand[torch.sort(-row[cand], stable=True).indices[:k]]
        vals[q] = row[ids[q]]
    return ids, vals


def inverse_norms(sq: Tensor) -> Tensor:
    """1/|v| from |v|^2, and 0 where the norm is 0 (cosine with a zero vector is 0)."""
    inv = sq.rsqrt()
    return inv.masked_fill_(sq <= 0, 0.0)
