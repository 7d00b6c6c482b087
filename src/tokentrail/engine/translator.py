"""Translators fitted exactly from a corpus (issue 26): per site and layer, the affine map
``t_hat = h W + b`` that best reconstructs a target vector ``t`` from a site vector ``h``
by ridge least squares, solved once from float64 running sums.

The sufficient statistics of one (site, layer) are the count ``n`` and the float64 sums
``Σh`` (d,), ``Σt`` (d,), ``Σ h hᵀ`` (d, d), ``Σ h tᵀ`` (d, d) and ``Σ t∘t`` (d,): sums, so
merging two sets of them (two batches, a resumed run, two Ray workers) is adding them.
The fit is centred (a bias, not a penalised one):

    C_hh = Σ h hᵀ / n - m_h m_hᵀ        C_ht = Σ h tᵀ / n - m_h m_tᵀ
    W = (C_hh + λ s I)⁻¹ C_ht           (Cholesky)        b = m_t - m_h W

with ``s = tr(C_hh) / d``, the mean variance per dimension, so the ridge ``λ`` is relative
(scale-free: the same λ means the same shrinkage at a layer of norm 1 and of norm 1000).
The squared error of any (W, b) on a set of tokens follows from the same sums
(:func:`squared_error`), so a held-out split picks λ without a second pass.

Two targets (``kind``): ``identity`` (the token's own original encoding, the reference row
``self_sim`` compares with: is the token still linearly recoverable?) and ``prediction``
(the last layer's residual before the final norm, Din et al. 2023: read through the
model's own final norm and head it is a lens fitted without SGD).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tokentrail.spec.errors import InputError

KINDS = ("identity", "prediction")
Key = tuple[str, int]  # (site, layer)
SUM_NAMES = ("sh", "st", "shh", "sht", "stt")


@dataclass
class Sums:
    """The float64 sufficient statistics of one (site, layer): see the module docstring."""

    n: int
    sh: np.ndarray  # (d,)
    st: np.ndarray  # (d,)
    shh: np.ndarray  # (d, d)
    sht: np.ndarray  # (d, d)
    stt: np.ndarray  # (d,)

    @classmethod
    def zeros(cls, d: int) -> Sums:
        z = lambda *s: np.zeros(s, dtype=np.float64)  # noqa: E731
        return cls(0, z(d), z(d), z(d, d), z(d, d), z(d))

    @classmethod
    def of(cls, h: Tensor, t: Tensor) -> Sums:
        """The sums of ``n`` pairs: ``h`` and ``t`` (n, d), taken in float64."""
        h64, t64 = h.detach().double().cpu(), t.detach().double().cpu()
        return cls(
            int(h64.shape[0]),
            h64.sum(0).numpy(),
            t64.sum(0).numpy(),
            (h64.T @ h64).numpy(),
            (h64.T @ t64).numpy(),
            t64.pow(2).sum(0).numpy(),
        )

    def add(self, other: Sums) -> None:
        """``self += other`` (in place; the same float64 additions in any engine)."""
        self.n += other.n
        for name in SUM_NAMES:
            getattr(self, name).__iadd__(getattr(other, name))

    def copy(self) -> Sums:
        return Sums(self.n, *(getattr(self, name).copy() for name in SUM_NAMES))


@dataclass
class FitSums:
    """The sums of every (site, layer) of a fit, for its training tokens and (when a held-out
    split picks λ) its held-out tokens."""

    train: dict[Key, Sums] = field(default_factory=dict)
    held: dict[Key, Sums] = field(default_factory=dict)

    def add(self, other: FitSums) -> None:
        for mine, theirs in ((self.train, other.train), (self.held, other.held)):
            for key, s in theirs.items():
                if key in mine:
                    mine[key].add(s)
                else:
                    mine[key] = s.copy()

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat named arrays (for a safetensors checkpoint); :meth:`from_arrays` reads them back."""
        out: dict[str, np.ndarray] = {}
        for part, sums in (("train", self.train), ("held", self.held)):
            for (site, layer), s in sums.items():
                prefix = f"{part}/{site}/{layer}/"
                out[prefix + "n"] = np.array([s.n], dtype=np.int64)
                for name in SUM_NAMES:
                    out[prefix + name] = np.ascontiguousarray(getattr(s, name))
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> FitSums:
        fs = cls()
        parts: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}
        for name, array in arrays.items():
            part, site, layer, what = name.split("/")
            parts.setdefault((part, site, int(layer)), {})[what] = array
        for (part, site, at), got in sorted(parts.items()):
            s = Sums(int(got["n"][0]), *(np.array(got[n], dtype=np.float64) for n in SUM_NAMES))
            (fs.train if part == "train" else fs.held)[(site, at)] = s
        return fs


@dataclass(frozen=True)
class Fitted:
    """One (site, layer) solved: ``t_hat = h W + b`` (float64) and how it was chosen."""

    W: np.ndarray  # (d, d)
    b: np.ndarray  # (d,)
    ridge: float
    n: int
    held_error: dict[float, float] | None = None  # λ -> held-out mean squared error per token


def centred(s: Sums) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(m_h, m_t, C_hh, C_ht)`` of one set of sums."""
    if s.n < 2:
        raise InputError(f"a fit needs at least 2 tokens per layer, got {s.n}")
    mh, mt = s.sh / s.n, s.st / s.n
    chh = s.shh / s.n - np.outer(mh, mh)
    cht = s.sht / s.n - np.outer(mh, mt)
    return mh, mt, (chh + chh.T) / 2, cht


def solve(s: Sums, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of the centred ridge fit (module docstring), by Cholesky in float64."""
    if ridge < 0:
        raise InputError(f"the ridge must be at least 0, got {ridge}")
    mh, mt, chh, cht = centred(s)
    d = chh.shape[0]
    scale = float(np.trace(chh)) / d
    a = torch.from_numpy(chh + ridge * scale * np.eye(d))
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise InputError(
            f"the covariance is singular at ridge {ridge} ({s.n} tokens, {d} dimensions): give a larger --ridge"
        )
    W = np.ascontiguousarray(torch.cholesky_solve(torch.from_numpy(cht), chol).numpy())
    return W, mt - mh @ W


def squared_error(s: Sums, W: np.ndarray, b: np.ndarray) -> float:
    """``Σ |t - (h W + b)|²`` over the tokens of ``s``, from its sums alone (exact algebra:
    ``Σ|t|² - 2 tr(Wᵀ Σ h tᵀ) - 2 b·Σt + tr(Wᵀ Σ h hᵀ W) + 2 b·(Σh W) + n |b|²``)."""
    return float(
        s.stt.sum() - 2 * np.sum(W * s.sht) - 2 * b @ s.st + np.sum(W * (s.shh @ W)) + 2 * b @ (s.sh @ W) + s.n * b @ b
    )


def fit_all(fs: FitSums, ridges: Sequence[float]) -> dict[Key, Fitted]:
    """Solve every (site, layer). One ridge: fitted on every token. Several: each is fitted
    on the training tokens and scored on the held-out ones; the best (lowest held-out
    error, the smaller λ on a tie) is then fitted on every token."""
    if not ridges:
        raise InputError("give at least one ridge value")
    out: dict[Key, Fitted] = {}
    for key in sorted(fs.train):
        total = fs.train[key].copy()
        errors = None
        if len(ridges) > 1:
            held = fs.held.get(key)
            if held is None or held.n == 0:
                raise InputError("choosing the ridge needs held-out tokens: give --holdout above 0 with more texts")
            errors = {}
            for lam in ridges:
                W, b = solve(fs.train[key], lam)
                errors[float(lam)] = squared_error(held, W, b) / held.n
            total.add(held)
        best = float(min(ridges, key=lambda lam: (errors[float(lam)], lam))) if errors else float(ridges[0])
        W, b = solve(total, best)
        out[key] = Fitted(W, b, best, total.n, errors)
    return out


@dataclass(frozen=True)
class Translator:
    """A fitted translator: per (site, layer) a map ``h -> h W + b`` into the target space.

    ``meta`` is what its JSON file records (model, revision, kind, sites, layers, corpus,
    ridge and counts per layer)."""

    kind: str
    maps: Mapping[Key, tuple[Tensor, Tensor]]  # (W (d, d), b (d,)) float64
    meta: Mapping

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(site for site, _ in sorted(self.maps)))

    def layers(self, site: str) -> tuple[int, ...]:
        return tuple(sorted(layer for s, layer in self.maps if s == site))

    def apply(self, site: str, vecs: Tensor, layers: Iterable[int] | None = None) -> Tensor:
        """(L, n, d) site vectors -> (L', n, d) translated (float64 maths, the input's dtype),
        for ``layers`` (default: every fitted layer of ``site``)."""
        todo = self.layers(site) if layers is None else tuple(layers)
        out = []
        for layer in todo:
            W, b = self.maps[(site, layer)]
            h = vecs[layer].double()
            out.append((h @ W.to(h.device) + b.to(h.device)).to(vecs.dtype))
        return torch.stack(out)


def translator_from(fitted: Mapping[Key, Fitted], kind: str, meta: Mapping) -> Translator:
    if kind not in KINDS:
        raise InputError(f"unknown translator kind {kind!r}: choose from {', '.join(KINDS)}")
    maps = {key: (torch.from_numpy(f.W), torch.from_numpy(f.b)) for key, f in fitted.items()}
    return Translator(kind, maps, dict(meta))
