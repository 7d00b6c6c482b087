"""The per-cell metric registry: a metric is one function and one :func:`cell_metric`
registration, and every surface reads :data:`CELL_METRICS` (never a list of its own):
the trace's views and ``frame()``, every export and ``Trail.load``, the figures and the
app's selectors (:class:`MetricNames`), a study's columns, aggregates and report.

numpy only (no torch), so that the figures and the command line read it cheaply; the
tensor maths the cells come from is in :mod:`tokentrail.engine.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np


# ---- per-cell metrics: one function and one registration each ------------------------------
@dataclass(frozen=True)
class Cells:
    """What the scoring pass gives for every cell of a view, as numpy arrays.

    own_sim, rank, overlap, top_sim: (L, [H,] n); anisotropy: (L, [H]); overlap_k: the
    set size. ``top_sim`` is the similarity of the nearest vocabulary row (top-1)."""

    own_sim: np.ndarray
    rank: np.ndarray
    overlap: np.ndarray
    anisotropy: np.ndarray
    overlap_k: int
    top_sim: np.ndarray


@dataclass(frozen=True)
class CellMetric:
    """One registered metric: how it is computed and how every surface names it."""

    name: str
    compute: Callable[[Cells], np.ndarray]  # -> (L, [H,] n)
    label: str  # its name in tidy exports; "{overlap_k}" is filled in
    doc: str
    title: str  # a figure's title (plots, the study report)
    short: str  # a selector's label (the app)
    dtype: str  # how a study stores it (a numpy dtype name)
    adjusts: str | None = None  # the metric this one adjusts: shown through an "adjusted" toggle, not listed
    summary: str = "quantiles"  # a study's aggregates: "quantiles" (mean, median, quantiles) or "mean"


CELL_METRICS: dict[str, CellMetric] = {}
"""Every per-cell metric a view carries, in export order. Add one with :func:`cell_metric`:
the trace, every export, the figures, the app's selectors and a study's columns,
aggregates and report read this registry, never a list of their own."""


def cell_metric(
    name: str,
    label: str | None = None,
    *,
    title: str | None = None,
    short: str | None = None,
    dtype: str = "float32",
    adjusts: str | None = None,
    summary: str | None = None,
):
    """Register ``fn(cells) -> (L, [H,] n) array`` as the metric ``name`` (a decorator).

    ``label``: its column name in exports (default ``name``); ``title``/``short``: its name
    in figures and selectors (default: the docstring's first line, ``name``); ``dtype``:
    its column type in a study; ``adjusts``: the metric this one is an adjusted form of
    (shown by that metric's "adjusted" toggle); ``summary``: a study's aggregates of it,
    ``quantiles`` (the default; ``mean`` for an adjusted metric)."""

    def register(fn: Callable[[Cells], np.ndarray]) -> Callable[[Cells], np.ndarray]:
        doc = (fn.__doc__ or "").strip()
        CELL_METRICS[name] = CellMetric(
            name,
            fn,
            label or name,
            doc,
            title or doc.split("\n")[0] or name,
            short or name,
            dtype,
            adjusts,
            summary or ("mean" if adjusts else "quantiles"),
        )
        return fn

    return register


def derive_metrics(cells: Cells) -> dict[str, np.ndarray]:
    """Every registered metric of one view."""
    return {name: m.compute(cells) for name, m in CELL_METRICS.items()}


def metric_label(name: str, view) -> str:
    """A metric's column name in exports (e.g. ``overlap@100``)."""
    m = CELL_METRICS.get(name)
    return name if m is None else m.label.format(overlap_k=view.overlap_k)


def adjusted_metric(name: str) -> str | None:
    """The registered metric that adjusts ``name`` (``self_sim`` -> ``adjusted_self_sim``), if any."""
    return next((m.name for m in CELL_METRICS.values() if m.adjusts == name), None)


class MetricNames(Mapping[str, str]):
    """A live ``name -> text`` view of the registry's listed metrics (those that adjust
    none): a metric registered later is in it. ``attr`` is a :class:`CellMetric` field
    (``title``, ``short``); ``first``: names put first, in that order, where registered."""

    def __init__(self, attr: str, first: tuple[str, ...] = ()):
        self.attr, self.first = attr, first

    def _names(self) -> list[str]:
        listed = [n for n, m in CELL_METRICS.items() if m.adjusts is None]
        return [n for n in self.first if n in listed] + [n for n in listed if n not in self.first]

    def __getitem__(self, name: str) -> str:
        m = CELL_METRICS.get(name)
        if m is None or m.adjusts is not None:
            raise KeyError(name)
        return getattr(m, self.attr)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"MetricNames({dict(self)!r})"


@cell_metric("self_sim", title="Similarity to the original encoding", short="self-similarity")
def _self_sim(c: Cells) -> np.ndarray:
    """s(r, R[x]): similarity of the site vector to the token's own row (SPEC)."""
    return c.own_sim


@cell_metric("rank", title="Rank of its own token (log; lower is better)", dtype="int64")
def _rank(c: Cells) -> np.ndarray:
    """Rows strictly more similar than the own row; 0 = nearest (SPEC)."""
    return c.rank


@cell_metric("overlap", label="overlap@{overlap_k}", title="Top-k overlap with the previous layer", dtype="int32")
def _overlap(c: Cells) -> np.ndarray:
    """|top-K at this layer ∩ top-K at the previous one| (layer 0: the original encoding's)."""
    return c.overlap


@cell_metric("adjusted_self_sim", adjusts="self_sim")
def _adjusted_self_sim(c: Cells) -> np.ndarray:
    """self_sim minus the layer's anisotropy baseline (Ethayarajh 2019)."""
    return c.own_sim - c.anisotropy[..., None]


@cell_metric("margin", title="Margin of the nearest token over its own")
def _margin(c: Cells) -> np.ndarray:
    """Top-1 similarity minus own similarity: >= 0, and 0 when the token is its own nearest (SPEC)."""
    gap = np.maximum(c.top_sim - c.own_sim, 0)
    return np.where(c.rank == 0, np.zeros_like(gap), gap)
