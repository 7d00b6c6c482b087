"""The tensor kernels behind :class:`tokentrail.engine.spaces.VocabSpace`: its factorised
form, and the matrix products and per-position scalings of its dot products and cosines.

Pure functions of tensors (no space object), in the notation of
:mod:`tokentrail.engine.spaces`: ``M`` (G, k, d), ``c`` (G, k), ``P = x M^T`` (G, V, k).
"""

from __future__ import annotations

import torch
from torch import Tensor


def factorise(
    x: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    proj_weight: Tensor | None,
    proj_bias: Tensor | None,
    table: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor | None]:
    """``(gamma, M, c, P)`` of a space over the (V, d) table ``x`` behind a norm with
    ``gamma``/``beta`` (None without one) and a head map ``proj_weight`` (G, k, d) /
    ``proj_bias`` (G, k) (None for a residual space).

    A residual space has ``M = diag(gamma)`` (kept as ``gamma``, ``M`` None), ``c = beta``
    (1, d) and ``P = x * gamma`` (1, V, d); a head space ``M = W diag(gamma)`` (G, k, d),
    ``c = W beta + b`` (G, k) and ``P = x M^T`` (G, V, k), or None with ``table`` False.
    """
    if proj_weight is None:
        # residual space: M = diag(gamma), c = beta, one group
        g = gamma if gamma is not None else torch.ones(x.shape[1], device=x.device)
        c = (beta if beta is not None else torch.zeros(x.shape[1], device=x.device))[None]  # (1, d)
        return g, None, c, (x * g)[None]  # P: (1, V, d)
    w = proj_weight.float()  # (G, k, d)
    M = (w * gamma if gamma is not None else w).contiguous()
    c = torch.zeros(w.shape[:2], device=w.device) if proj_bias is None else proj_bias.float().clone()
    if beta is not None:
        c = c + torch.einsum("gkd,d->gk", w, beta)  # (G, k)
    if not table:
        return None, M, c, None
    G, k, d = M.shape
    P = (x @ M.reshape(G * k, d).T).view(-1, G, k).transpose(0, 1).contiguous()  # (G, V, k)
    return None, M, c, P


def norm_scales(x: Tensor, x_sq: Tensor, y: Tensor, eps: float) -> Tensor:
    """``sigma_v(p) = sqrt(|x_v + y_p|^2 / d + eps)`` for the (V, d) table ``x`` (``x_sq``
    its (V,) squared norms) at the (P, d) offsets ``y``: (P, V), one (P x d) @ (d x V) product."""
    xy = y @ x.T  # (P, V)
    return xy.mul_(2).add_(x_sq[None]).add_(y.pow(2).sum(-1, keepdim=True)).div_(x.shape[1]).add_(eps).sqrt_()


def finish_sq(t: Tensor, c_term: Tensor, sigma: Tensor | None, c_sq: Tensor) -> Tensor:
    """(G, P, V) |P_v + M y_p|^2 and (P_v + M y_p) . c -> squared row norms, in place
    (``sigma`` (P or 1, V) or None without a norm; ``c_sq`` (G,) ``|c|^2``)."""
    if sigma is None:
        t.add_(c_term, alpha=2)
    else:
        inv = sigma.reciprocal()[None]  # (1, P or 1, V)
        t.mul_(inv.square()).addcmul_(c_term, inv, value=2)
    return t.add_(c_sq[:, None, None]).clamp_min_(0)


def in_blocks(groups: Tensor, G: int) -> bool:
    """Whether the C columns of ``groups`` (C,) come in blocks of ``C / G`` per group, in
    order (identity, or grouped-query attention's ``h // rep``)."""
    C = groups.shape[0]
    rep = C // G
    return G * rep == C and torch.equal(groups, torch.arange(C, device=groups.device) // rep)


def head_products(r: Tensor, P: Tensor, groups: Tensor, buf: Tensor | None, group_major: bool) -> tuple[Tensor, bool]:
    """``P_v . r`` for (Q, C, k) queries against a head space's (G, V, k) table: (Q, C, V),
    or with ``group_major`` possibly (G, Q, C / G, V) (no copy); the flag says which.

    ``buf``: a flat buffer to write the product into. V * d_head work per query and head
    instead of V * d."""
    Q, C, k = r.shape
    G, V = P.shape[:2]
    if in_blocks(groups, G):
        # columns come in blocks of `rep` per group: one batched matmul over the groups
        rep = C // G
        rg = r.view(Q, G, rep, k).permute(1, 0, 2, 3).reshape(G, Q * rep, k)
        out = torch.bmm(rg, P.transpose(1, 2), out=None if buf is None else buf.view(G, Q * rep, V))  # (G, Q * rep, V)
        if group_major:
            return out, True
        return out.view(G, Q, rep, -1).permute(1, 0, 2, 3).reshape(Q, C, -1), False
    out = torch.empty(Q, C, V, device=r.device) if buf is None else buf.view(Q, C, V)
    for c in range(C):
        out[:, c, :] = r[:, c, :].contiguous() @ P[int(groups[c])].T
    return out, False


def position_runs(pidx: Tensor, one_position: bool) -> list[tuple[int, int, int]]:
    """``(lo, hi, p)`` for each run of equal entries of ``pidx`` (all of it at 0 when rows do
    not move with position)."""
    if one_position:
        return [(0, pidx.shape[0], 0)]
    vals, counts = torch.unique_consecutive(pidx, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(e - n, e, p) for e, n, p in zip(ends, counts.tolist(), vals.tolist())]


def scale_rows(
    W: Tensor,
    a: Tensor,
    b: Tensor | None,
    t1: Tensor | None,
    t2: Tensor | None,
    pidx: Tensor,
    groups: Tensor,
    blocked: bool,
) -> None:
    """Turn the (G, Q, rep, V) products ``W`` into cosines, in place, one pass per run of
    positions: ``(W + t1) * a[p] + t2 * b[p]`` (:meth:`~tokentrail.engine.spaces.VocabSpace.cosine_scales`'
    factors ``a``/``b`` (P or 1, G, V); ``t1``/``t2`` (Q, C) the position and bias terms).
    ``blocked``: the columns come in blocks per group (else one column per group of ``W``)."""
    G, Q, rep, _ = W.shape

    def per_group(t: Tensor) -> Tensor:  # (Q, C) -> (G, Q, rep, 1)
        return t.view(Q, G, rep).transpose(0, 1)[..., None]

    for lo, hi, p in position_runs(pidx, a.shape[0] == 1):
        blk = W[:, lo:hi]
        if t1 is not None:
            blk += per_group(t1)[:, lo:hi]
        scale = a[p] if blocked else a[p][groups]  # (G, V)
        blk.mul_(scale[:, None, None])
        if b is not None:
            blk.addcmul_(per_group(t2)[:, lo:hi], (b[p] if blocked else b[p][groups])[:, None, None])
