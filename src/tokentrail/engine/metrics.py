"""Pure metric functions: tensors in, tensors out. No I/O, no model, no device moves.

Conventions (SPEC "Metrics"): similarities are cosine, or ``-||a - b||`` for
euclidean; ``rank`` is 0-based and counts rows *strictly* more similar than the token's
own row, so ties favour the token; ``top-k`` orders by similarity, ties by lower id.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the per-cell metric registry (numpy only, so that figures and selectors read it without torch)
from tokentrail.engine.cells import (  # noqa: F401 - one import for the maths and the registry
    CELL_METRICS,
    CellMetric,
    Cells,
    MetricNames,
    adjusted_metric,
    cell_metric,
    derive_metrics,
    metric_label,
)


def similarity_from_dots(dots: Tensor, query_sq: Tensor, row_sq: Tensor, kind: str) -> Tensor:
    """Turn dot products into similarities.

    dots: (..., V) ``a . b``; query_sq: (...,) ``|a|^2``; row_sq: broadcastable to
    (..., V) ``|b|^2``. Cosine of a zero vector is 0.
    """
    if kind == "cosine":
        denom = (query_sq[..., None] * row_sq).sqrt()
        return torch.where(denom > 0, dots / denom.clamp_min(1e-30), torch.zeros_like(dots))
    if kind == "euclidean":
        return -(query_sq[..., None] - 2 * dots + row_sq).clamp_min(0).sqrt()
    raise ValueError(f"unknown similarity {kind!r}")


def similarity(a: Tensor, b: Tensor, kind: str = "cosine") -> Tensor:
    """Pairwise similarity of (m, d) and (n, d) -> (m, n); the definition the fast path must match."""
    a, b = a.double(), b.double()
    if kind == "cosine":
        an, bn = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
        return (a @ b.T) / (an * bn.T).clamp_min(1e-300)
    if kind == "euclidean":
        return -torch.cdist(a, b)
    raise ValueError(f"unknown similarity {kind!r}")


def rank_in_vocab(sims: Tensor, own: Tensor) -> Tensor:
    """How many vocabulary rows beat the token's own row.

    sims: (Q, V); own: (Q,) own ids. Returns (Q,) int64: 0 means the own token is the
    nearest. Rows with exactly the own similarity do not count (ties favour the token).
    One pass over V, no sort.
    """
    own_sim = sims.gather(1, own[:, None].long())
    return (sims > own_sim).sum(dim=1)


def top_k(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k most similar ids per row, most similar first, equal similarities by lower id.

    sims: (Q, V). Returns (ids (Q, k) int64, sims (Q, k)).
    """
    k = min(k, sims.shape[1])
    vals, ids = torch.topk(sims, k, dim=1, sorted=True)
    # topk's order among equal values is unspecified: make it deterministic and exact.
    kth = vals[:, -1:]
    n_tied_all = (sims == kth).sum(1)
    n_tied_kept = (vals == kth).sum(1)
    need_fix = (n_tied_all != n_tied_kept) | _has_misordered_ties(vals, ids)
    for q in need_fix.nonzero().flatten().tolist():
        row = sims[q]
        cand = (row >= kth[q]).nonzero().flatten()  # ascending ids
        order = torch.sort(-row[cand], stable=True).indices[:k]
        ids[q] = cand[order]
        vals[q] = row[ids[q]]
    return ids, vals


def _has_misordered_ties(vals: Tensor, ids: Tensor) -> Tensor:
    if vals.shape[1] < 2:
        return torch.zeros(vals.shape[0], dtype=torch.bool, device=vals.device)
    tie = vals[:, 1:] == vals[:, :-1]
    return (tie & (ids[:, 1:] < ids[:, :-1])).any(1)


def overlap(a: Tensor, b: Tensor, chunk: int = 1 << 22) -> Tensor:
    """|a ∩ b| for id sets given as rows: (..., k) and (..., k) -> (...,) int64.

    Counts the members of each row of ``a`` found in the same row of ``b``: ``b`` sorted,
    then a binary search per member, about ``chunk`` ids at a time, so memory is
    O(k) per cell (never a (k, k) comparison).
    """
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    a = a.expand(*shape, a.shape[-1]).reshape(-1, a.shape[-1])
    b = b.expand(*shape, b.shape[-1]).reshape(-1, b.shape[-1])
    out = torch.zeros(a.shape[0], dtype=torch.int64, device=a.device)
    if a.shape[1] == 0 or b.shape[1] == 0:
        return out.view(shape)
    step = max(1, chunk // max(a.shape[1], b.shape[1]))
    for lo in range(0, a.shape[0], step):
        hi = min(lo + step, a.shape[0])
        sb = b[lo:hi].sort(-1).values
        at = torch.searchsorted(sb, a[lo:hi].contiguous()).clamp_max_(sb.shape[1] - 1)
        out[lo:hi] = (sb.gather(1, at) == a[lo:hi]).sum(-1)
    return out.view(shape)


PAIR_BLOCK = 1 << 20
""":func:`anisotropy` makes its pair similarities this many (float64) at a time: rows of
the ``(n, n)`` matrix in blocks, so its memory stays 8 MiB whatever ``n``."""


def anisotropy(vectors: Tensor, kind: str = "cosine") -> Tensor:
    """Mean similarity between vectors of distinct positions.

    vectors: (..., n, d) -> (...,). With fewer than two positions there is no pair: NaN.
    Computed in float64, a block of rows of the ``(n, n)`` similarities at a time
    (:data:`PAIR_BLOCK`), each block's self pairs left out.
    """
    n = vectors.shape[-2]
    if n < 2:
        return torch.full(vectors.shape[:-2], float("nan"), device=vectors.device)
    if kind not in ("cosine", "euclidean"):
        raise ValueError(f"unknown similarity {kind!r}")
    flat = vectors.reshape(-1, n, vectors.shape[-1])
    out = torch.zeros(flat.shape[0], dtype=torch.float64, device=vectors.device)
    step = max(1, PAIR_BLOCK // n)
    for i, m in enumerate(flat):  # one slice at a time, its pairs a block of rows at a time
        v = m.double()
        if kind == "cosine":
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        for lo in range(0, n, step):
            rows = v[lo : lo + step]
            s = rows @ v.T if kind == "cosine" else -torch.cdist(rows, v)
            s.diagonal(lo).zero_()  # the self pairs (row j is position lo + j)
            out[i] += s.sum()
    return (out / (n * (n - 1))).float().view(vectors.shape[:-2])
