"""A geometry correction ``T(x) = (I - U U^T) diag(scale) (x - mu)`` and a residual
space's rows under it, scored exactly against all V rows (:class:`CorrectedRows`).

The identities, and how corrections are fitted, are in :mod:`tokentrail.engine.geometry`
(which re-exports both names).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokentrail.engine.metrics import similarity_from_dots
from tokentrail.engine.spaces import PositionStats, VocabSpace
from tokentrail.spec.errors import InputError


@dataclass(frozen=True)
class Correction:
    """``T(x) = (I - U U^T) diag(scale) (x - mu)``; float64 tensors on the vectors' device.

    name: the option string (``"rogue:2"``); removed: the dimensions zeroed (rogue);
    source: where mu/scale/U came from (``"text"``, ``"given"`` or ``"corpus"``)."""

    name: str
    mu: Tensor  # (d,)
    scale: Tensor  # (d,)
    U: Tensor | None  # (d, D), orthonormal columns
    removed: tuple[int, ...] = ()
    source: str = "text"

    def apply(self, x: Tensor) -> Tensor:
        """(..., d) -> (..., d) float64: ``T(x)``."""
        z = (x.to(self.mu.device).double() - self.mu) * self.scale
        return z if self.U is None else z - (z @ self.U) @ self.U.T

    def transpose(self, z: Tensor) -> Tensor:
        """(..., d) -> (..., d): ``A^T z``."""
        if self.U is not None:
            z = z - (z @ self.U) @ self.U.T
        return z * self.scale

    def matrix(self) -> Tensor:
        """A as a (d, d) float64 matrix (for checks)."""
        eye = torch.eye(self.mu.shape[0], dtype=torch.float64, device=self.mu.device)
        p = eye if self.U is None else eye - self.U @ self.U.T
        return p * self.scale[None, :]


class CorrectedRows:
    """Every row of a residual space under a correction ``T``, at the positions of ``stats``.

    Holds the squared norms ``|T(R(v, p))|^2`` (P or 1, V) in float64 and scores queries
    against all V rows exactly (see :mod:`tokentrail.engine.geometry`'s docstring for the
    identities)."""

    def __init__(self, space: VocabSpace, corr: Correction, stats: PositionStats, chunk: int = 8192):
        if space.M is not None:
            raise InputError(
                "geometry corrections apply to residual sites (encodings/embeddings spaces), not head spaces"
            )
        self.space, self.corr, self.stats = space, corr, stats
        dev = space.x.device
        gamma = space.gamma.double().to(dev)
        c = space.c[0].double()
        self.w = corr.scale.to(dev) * gamma  # (d,)
        self.e = corr.scale.to(dev) * (c - corr.mu.to(dev))  # (d,)
        self.c_minus_mu = c - corr.mu.to(dev)
        U = None if corr.U is None else corr.U.to(dev)
        y = None if stats.y is None else stats.y.double()  # (P, d)
        sigma = None if stats.sigma is None else (stats.sigma[:1] if y is None else stats.sigma).double()  # (P or 1, V)
        V = space.vocab_size
        e_sq = self.e.pow(2).sum()
        Ue = None if U is None else self.e @ U  # (D,)
        yw = None if y is None else y * self.w  # (P, d)
        rows = 1 if y is None else y.shape[0]
        sq = torch.empty(rows, V, dtype=torch.float64, device=dev)
        # float64 throughout: the expanded square cancels large terms (a z-scored dimension
        # with a tiny std and a large offset; a top principal direction carrying most of |e|),
        # and float32 passes here moved MiniLM ranks by thousands. One GEMV for |w x|^2, one
        # GEMM for x . [w e, w U], per chunk of rows.
        w2 = self.w.pow(2)
        cols = torch.cat([(self.w * self.e)[:, None]] + ([] if U is None else [self.w[:, None] * U]), 1)  # (d, 1 + D)
        ww = None if yw is None else yw * self.w  # (P, d): w^2 y, for x . (w^2 y)
        for lo in range(0, V, chunk):
            hi = min(V, lo + chunk)
            xc = space.x[lo:hi].double()  # (Vc, d)
            s1 = ((xc * xc) @ w2)[None]  # (1, Vc)  |w x|^2
            xe = xc @ cols  # (Vc, 1 + D)
            s2 = xe[:, 0][None]  # (1, Vc)   (w x) . e
            px = None if U is None else xe[:, 1:][None]  # (1, Vc, D)
            if yw is not None:
                s1 = s1 + 2 * (ww @ xc.T) + yw.pow(2).sum(1)[:, None]  # (P, Vc)
                s2 = s2 + (yw @ self.e)[:, None]
                if px is not None:
                    px = px + (yw @ U)[:, None, :]  # (P, Vc, D)
            s = None if sigma is None else sigma[:, lo:hi]
            if s is None:
                blk = s1 + 2 * s2 + e_sq
            else:
                blk = s1 / s.pow(2) + 2 * s2 / s + e_sq
            if px is not None:
                proj = (px if s is None else px / s[..., None]) + Ue
                blk = blk - proj.pow(2).sum(-1)
            sq[:, lo:hi] = blk.clamp_min(0)
        self.sq_norm = sq  # (P or 1, V)
        self._sigma = sigma

    def similarities(self, r: Tensor, pidx: Tensor, kind: str) -> Tensor:
        """Queries r (Q, d) at positions ``pidx`` (Q,) into ``stats.positions`` -> (Q, V) float64
        similarities of ``T(r)`` with every ``T(R(v, p))``."""
        space, stats = self.space, self.stats
        t = self.corr.apply(r).to(space.x.device)  # (Q, d)
        u = self.corr.transpose(t)  # (Q, d) A^T T(r)
        ug = u * space.gamma.double()
        dots = (ug.float() @ space.x.T).double()  # (Q, V): the one matrix product
        if stats.y is not None:
            dots += (ug * stats.y.double()[pidx]).sum(-1, keepdim=True)
        if self._sigma is not None:
            dots /= self._sigma[pidx if stats.y is not None else torch.zeros_like(pidx)]
        dots += (u @ self.c_minus_mu)[:, None]
        row_sq = self.sq_norm[pidx if stats.y is not None else torch.zeros_like(pidx)]
        return similarity_from_dots(dots, t.pow(2).sum(-1), row_sq, kind)
