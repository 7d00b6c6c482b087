"""Geometry of the residual stream: what dominates cosine, and exact corrections for it.

Diagnostics (Timkey & van Schijndel 2021). For vectors ``h_1 .. h_n`` with unit versions
``u_a = h_a / |h_a|``, the mean cosine over ordered pairs of distinct vectors splits over
dimensions exactly::

    E[cos] = sum_i C_i,   C_i = mean_{a != b} u_a[i] u_b[i]
           = ((sum_a u_a[i])^2 - sum_a u_a[i]^2) / (n (n - 1))

``C_i`` is dimension ``i``'s term of the expected cosine and ``C_i / sum_j C_j`` its
share; a "rogue" dimension carries a large share. ``sum_i C_i`` is the text's anisotropy
baseline (:func:`tokentrail.engine.metrics.anisotropy`, Ethayarajh 2019). With a ``groups``
label per vector (one per text of a corpus) only pairs from *different* texts count: the
corpus baseline, over all such pairs (no sampling)::

    C_i = ((sum_a u_a[i])^2 - sum_g (sum_{a in g} u_a[i])^2) / (n^2 - sum_g n_g^2)

Corrections (SPEC "Corrections (geometry)"): ``T(x) = A (x - mu)`` with
``A = (I - U U^T) diag(a)``:

* ``center``: ``mu`` the mean, ``a = 1``, no ``U``;
* ``zscore``: ``mu`` the mean, ``a = 1 / sigma`` (population std; a constant dimension
  gets ``a = 0``);
* ``rogue:D``: ``mu = 0``, ``a`` zero on the D dimensions with the largest share of the
  expected cosine, one elsewhere (removal only, as in Timkey & van Schijndel's ablation);
* ``abtt:D``: ``mu`` the mean, ``a = 1``, ``U`` the top-D principal directions of the
  centred vectors (all-but-the-top, Mu & Viswanath 2018).

``T`` is applied to the query *and* to every reference row. The rows of a residual space
are ``R(v, p) = gamma * (x_v + y_p) / s_v(p) + c`` (:mod:`tokentrail.engine.spaces`), so with
``w = a * gamma`` and ``e = a * (c - mu)``::

    diag(a) (R - mu) = w * (x_v + y_p) / s_v(p) + e                      (same factorised form)
    T(r) . T(R)      = u . (R - mu),  u = A^T T(r) = a * ((I - U U^T) T(r))
                     = ((u * gamma) . x_v + (u * gamma) . y_p) / s_v(p) + u . (c - mu)
    |T(R)|^2         = |w (x+y)|^2 / s^2 + 2 (w e).(x+y) / s + |e|^2 - |U^T(w (x+y)/s + e)|^2

The dot products are the base space's one ``(queries x V x d)`` matrix product; the norms
are, per position, one ``V x d`` pass (and a ``V x d`` by ``d x positions`` product when rows
move with position) plus ``V x D`` for ``U``. So corrected rank and top-k are exact against
all V rows and cost about one extra matrix product per (site, layer). Norms and the final
similarities are formed in float64: ``R - mu`` is dominated by ``mu`` at deep layers, and
the norms subtract large terms. :class:`Correction` and :class:`CorrectedRows` live in
:mod:`tokentrail.engine.correction` (re-exported here); this module fits corrections.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokentrail.engine.correction import CorrectedRows, Correction
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import RESIDUAL_SITES, parse_correction

__all__ = [
    "Correction",
    "CorrectedRows",
    "Geometry",
    "cosine_terms",
    "cosine_shares",
    "diagnose",
    "diagnose_run",
    "LayerStats",
    "fit_corpus_correction",
    "fit_correction",
    "rogue_layers",
    "suggested_correction",
]


@dataclass(frozen=True)
class LayerStats:
    """One site and layer of a corpus: ``count`` tokens, their mean and population std
    (d,) float64, and the corpus sample's vectors (m, d) float64 with each one's text id."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    sample: np.ndarray
    texts: np.ndarray


ROGUE_SHARE = 0.5  # one dimension above this share of the expected cosine "dominates" (issue 9)


# ---- diagnostics --------------------------------------------------------------------------
def cosine_terms(vectors: Tensor | np.ndarray, groups: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """(n, d) -> (d,) float64: each dimension's term ``C_i`` of the mean pairwise cosine.

    Without ``groups``: all ordered pairs of distinct vectors (the text's baseline). With
    ``groups`` (n,): only pairs whose labels differ (a corpus baseline across texts).
    The terms sum to the mean cosine over those pairs; NaN when there is no pair.
    """
    v = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors).double()
    if v.ndim != 2:
        raise InputError(f"cosine terms need an (n, d) array of vectors, got shape {tuple(v.shape)}")
    n, d = v.shape
    u = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    total = u.sum(0).pow(2)  # (d,)
    if groups is None:
        same, pairs = u.pow(2).sum(0), n * (n - 1)
    else:
        g = torch.as_tensor(np.array(groups)).long()
        if g.shape != (n,):
            raise InputError(f"groups must give one label per vector ({n}), got shape {tuple(g.shape)}")
        _, g = torch.unique(g, return_inverse=True)
        sums = torch.zeros(int(g.max()) + 1 if n else 0, d, dtype=torch.float64).index_add_(0, g, u.cpu())
        counts = torch.bincount(g).double()
        same, pairs = sums.pow(2).sum(0).to(u.device), n * n - float(counts.pow(2).sum())
    if pairs <= 0:
        return np.full(d, np.nan)
    return ((total - same) / pairs).cpu().numpy()


def cosine_shares(vectors, groups=None) -> np.ndarray:
    """(n, d) -> (d,): each dimension's share of the expected cosine, ``C_i / sum_j C_j``.

    Shares sum to 1; a dimension may have a negative share (it pulls pairs apart). When
    the expected cosine is 0 the shares are undefined (NaN)."""
    c = cosine_terms(vectors, groups)
    total = c.sum()
    return np.full_like(c, np.nan) if not np.isfinite(total) or total == 0 else c / total


@dataclass(frozen=True)
class Geometry:
    """Per layer of one site: what dominates the cosine, the norms and the anisotropy baseline.

    terms: (L, d) each dimension's term of the expected cosine; shares: (L, d) its share;
    top_dims / top_shares: (L, top) the dimensions with the largest shares, largest first;
    anisotropy: (L,) the expected cosine (the sum of the terms); mean_norm: (L,) mean
    ``|h|`` over the text's tokens; norms: (L, n). ``baseline`` says where the pairs came
    from: ``"text"`` (distinct tokens of the text) or ``"corpus"`` (tokens of different
    texts)."""

    site: str
    terms: np.ndarray
    shares: np.ndarray
    top_dims: np.ndarray
    top_shares: np.ndarray
    anisotropy: np.ndarray
    mean_norm: np.ndarray
    norms: np.ndarray
    baseline: str = "text"

    @property
    def n_layers(self) -> int:
        return self.terms.shape[0]

    def rogue(self, threshold: float = ROGUE_SHARE) -> list[tuple[int, int, float]]:
        """(layer, dimension, share) wherever one dimension carries more than ``threshold``."""
        return [
            (layer, int(self.top_dims[layer, 0]), float(self.top_shares[layer, 0]))
            for layer in range(self.n_layers)
            if self.top_shares[layer, 0] > threshold
        ]

    def to_frame(self):
        """One row per (layer, rank among the top dimensions)."""
        import pandas as pd

        rows = [
            dict(
                site=self.site,
                layer=layer,
                place=j,
                dim=int(self.top_dims[layer, j]),
                share=float(self.top_shares[layer, j]),
                anisotropy=float(self.anisotropy[layer]),
                mean_norm=float(self.mean_norm[layer]),
                baseline=self.baseline,
            )
            for layer in range(self.n_layers)
            for j in range(self.top_dims.shape[1])
        ]
        return pd.DataFrame(rows)


def diagnose(vectors, site: str = "?", top: int = 3, groups=None) -> Geometry:
    """Diagnostics of (L, n, d) vectors (one site, every layer). ``groups`` (n,): corpus mode."""
    v = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors).double().cpu()
    if v.ndim != 3:
        raise InputError(f"diagnose needs (layers, tokens, d) vectors, got shape {tuple(v.shape)}")
    terms = np.stack([cosine_terms(layer, groups) for layer in v])  # (L, d)
    total = terms.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total != 0, terms / total, np.nan)
    top = min(top, v.shape[2])
    order = np.argsort(-np.nan_to_num(shares, nan=-np.inf), axis=1, kind="stable")[:, :top]
    norms = v.norm(dim=-1).numpy()
    return Geometry(
        site=site,
        terms=terms,
        shares=shares,
        top_dims=order,
        top_shares=np.take_along_axis(shares, order, 1),
        anisotropy=terms.sum(1),
        mean_norm=norms.mean(1),
        norms=norms,
        baseline="text" if groups is None else "corpus",
    )


def diagnose_run(run: Any, site: str = "attn_resid", top: int = 3) -> Geometry:
    """:func:`diagnose` of one site of a Run's captured activations."""
    if site not in RESIDUAL_SITES:
        raise InputError(f"geometry diagnostics read a residual site ({', '.join(RESIDUAL_SITES)}), not {site!r}")
    return diagnose(run.acts.site(site), site=site, top=top)


def suggested_correction(geometry: Geometry, threshold: float = ROGUE_SHARE) -> str | None:
    """The correction that removes what dominates the cosine (``rogue:D``, D the dimensions
    that carry over ``threshold`` at some layer), or None when nothing does."""
    hits = geometry.rogue(threshold)
    return f"rogue:{len({d for _, d, _ in hits})}" if hits else None


def rogue_layers(geometry: Geometry, threshold: float = ROGUE_SHARE, how: str = "--correct {}") -> str | None:
    """One line for a user when one dimension dominates the cosine somewhere, else None.

    ``how`` says how to ask for a correction where the line is shown (``{}`` takes its
    name): the CLI's ``--correct {}``; the app names its selector."""
    hits = geometry.rogue(threshold)
    if not hits:
        return None
    dims = sorted({d for _, d, _ in hits})
    layers = [layer for layer, _, _ in hits]
    worst = max(s for _, _, s in hits)
    return (
        f"{geometry.site}: at {len(layers)} of {geometry.n_layers} layers ({_ranges(layers)}) one dimension "
        f"(dim {', '.join(map(str, dims))}) carries over {threshold:.0%} of the expected cosine (up to {worst:.0%}); "
        f"those neighbour lists mostly reflect it: try {how.format(suggested_correction(geometry, threshold))} or {how.format('zscore')}"
    )


def _ranges(xs: Sequence[int]) -> str:
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


# ---- corrections ----------------------------------------------------------------------------
def fit_correction(spec: str, vectors: Tensor | np.ndarray, source: str = "text") -> Correction:
    """The correction ``spec`` (``center``, ``zscore``, ``rogue:D``, ``abtt:D``) fitted to (n, d) vectors.

    Pass a text's site vectors at one layer (what a trace does), or a corpus's (``source="given"``)."""
    name, count = parse_correction(spec)
    v = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors).double()
    if v.ndim != 2 or v.shape[0] < 1:
        raise InputError(f"a correction is fitted to an (n, d) array of vectors, got shape {tuple(v.shape)}")
    n, d = v.shape
    ones = torch.ones(d, dtype=torch.float64, device=v.device)
    zero = torch.zeros(d, dtype=torch.float64, device=v.device)
    mu = v.mean(0)
    if name == "center":
        return Correction(spec, mu, ones, None, source=source)
    if name == "zscore":
        sd = v.std(0, unbiased=False)
        return Correction(spec, mu, torch.where(sd > 0, 1 / sd.clamp_min(1e-300), zero), None, source=source)
    if name == "rogue":
        if count > d:
            raise InputError(f"rogue:{count} removes more dimensions than the vectors have ({d})")
        if n < 2:
            raise InputError(
                "rogue:D ranks dimensions by their share of the cosine between tokens: it needs at least 2 tokens"
            )
        terms = torch.as_tensor(cosine_terms(v.cpu()))
        top = torch.argsort(-terms, stable=True)[:count].tolist()
        scale = ones.clone()
        scale[top] = 0.0
        return Correction(spec, zero, scale, None, removed=tuple(int(i) for i in top), source=source)
    # abtt: top-D principal directions of the centred vectors
    if count > min(n - 1, d):
        raise InputError(f"abtt:{count} needs more than {count} tokens (the text has {n}): use a smaller D")
    _, _, vh = torch.linalg.svd(v - mu, full_matrices=False)
    return Correction(spec, mu, ones, vh[:count].T.contiguous(), source=source)


def fit_corpus_correction(spec: str, stats: LayerStats) -> Correction:
    """The correction ``spec`` fitted to one site and layer of a corpus study
    (:func:`tokentrail.store.stats.read_stats`), ``source="corpus"``.

    ``center``/``zscore``: the exact corpus mean and population std (over every token of
    the study). ``rogue:D``: the D dimensions with the largest terms of the *corpus*
    baseline (pairs of sampled tokens from different texts, :func:`cosine_terms` with
    groups). ``abtt:D``: the top D principal directions of the corpus sample, centred on
    the corpus mean."""
    name, count = parse_correction(spec)
    mu = torch.as_tensor(stats.mean, dtype=torch.float64)
    d = mu.shape[0]
    ones, zero = torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    if name == "center":
        return Correction(spec, mu, ones, None, source="corpus")
    if name == "zscore":
        sd = torch.as_tensor(stats.std, dtype=torch.float64)
        return Correction(spec, mu, torch.where(sd > 0, 1 / sd.clamp_min(1e-300), zero), None, source="corpus")
    sample = torch.as_tensor(stats.sample, dtype=torch.float64)
    if count > d:
        raise InputError(f"{name}:{count} removes more dimensions than the vectors have ({d})")
    if name == "rogue":
        if len(np.unique(stats.texts)) < 2:
            raise InputError(
                "rogue:D from a corpus ranks dimensions by the cosine between tokens of different texts: the study's sample holds one text"
            )
        terms = torch.as_tensor(cosine_terms(sample, stats.texts))
        top = torch.argsort(-terms, stable=True)[:count].tolist()
        scale = ones.clone()
        scale[top] = 0.0
        return Correction(spec, zero, scale, None, removed=tuple(int(i) for i in top), source="corpus")
    if count > min(sample.shape[0] - 1, d):
        raise InputError(
            f"abtt:{count} needs more than {count} sampled tokens (the study's sample has {sample.shape[0]}): use a smaller D"
        )
    # the top eigenvectors of the (d x d) scatter matrix: the same directions as the SVD of
    # the (m x d) sample, several times cheaper for a sample of thousands of tokens
    xc = sample - mu
    _, vecs = torch.linalg.eigh(xc.T @ xc)  # ascending eigenvalues
    return Correction(spec, mu, ones, vecs[:, -count:].flip(1).contiguous(), source="corpus")
