"""One word in two contexts, two tokens of one text, or one text in two models.

:func:`tokentrail.session.comparing.compare` runs each text once (``model.run(text, options)``) and reads both
occurrences from those runs:

- **one model** (two texts, or two tokens of one text): per layer (and head, for the
  ``heads`` site) the cosine between the two occurrences' vectors, each one's
  self-similarity and rank (from the run's Trail, or ``Run.heads`` for the heads site),
  the overlap of their top-``overlap_k`` neighbour sets, and the neighbours in one set and
  not the other (the words that separate the two senses). The layer (and head) where
  they diverge most, the lowest cosine, is named.
- **two models** (one text): the tokenizers differ, so tokens are aligned by their
  character spans (:func:`align_spans`, from the tokenizers' offsets); each side's curves
  are put on a relative depth axis, ``depth = (layer + 1) / L`` (each model's last layer
  at 1), and each side keeps its token × layer grid for heatmaps. Vectors of two models
  live in different spaces, so no cosine or neighbour overlap is taken between them.

Results are data (:class:`Comparison`, tidy :meth:`Comparison.frame` with a ``side``
column); figures are in :mod:`tokentrail.present.plots_compare`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tokentrail.results.trail import RunInfo
from tokentrail.spec import display
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import write_csv, write_parquet, write_text
from tokentrail.spec.options import (  # the rules live in spec.options
    HEAD_SITE,
    check_compare_options,
    check_index,
)

if TYPE_CHECKING:
    from tokentrail.session.runner import Model

Span = tuple[int, int]

__all__ = ["Comparison", "Side", "align_spans", "check_compare_options", "token_spans"]


# ---- character spans ------------------------------------------------------------------
def token_spans(model: Model, text: str, ids: Sequence[int]) -> list[Span | None]:
    """Each token's character span ``(start, end)`` in ``text``, from the tokenizer's own
    offsets (``return_offsets_mapping``), with surrounding whitespace trimmed; None for a
    token that covers no character (special tokens such as ``[CLS]``)."""
    tok = model.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError(
            f"{model.name}'s tokenizer gives no character offsets (not a fast tokenizer): it cannot be aligned with another model"
        )
    with model.lock:
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
    got = list(enc["input_ids"])[: len(ids)]
    if got != [int(i) for i in ids]:
        raise InputError(
            f"{model.name}'s tokenizer gives other ids with offsets than without: its spans cannot be trusted"
        )
    return [_trim(text, int(s), int(e)) for s, e in enc["offset_mapping"][: len(ids)]]


def _trim(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def align_spans(spans_a: Sequence[Span | None], spans_b: Sequence[Span | None]) -> tuple[tuple[int, ...], ...]:
    """For each token of side a, the tokens of side b whose character spans overlap its
    own (in order); empty for a token without characters. Pure; spans are half-open."""
    out: list[tuple[int, ...]] = []
    for sa in spans_a:
        if sa is None:
            out.append(())
            continue
        out.append(tuple(j for j, sb in enumerate(spans_b) if sb is not None and sb[0] < sa[1] and sa[0] < sb[1]))
    return tuple(out)


# ---- results --------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """One side (``a`` or ``b``) of a comparison: one token of one text in one model.

    Arrays are per layer, ``(L,)``, or per layer and head, ``(L, H)``, for the heads site;
    neighbour arrays add a last axis of ``overlap_k`` (or ``k``, if larger) places. With no
    token (two models, whole text), ``self_sim`` is the mean and ``rank`` the median over
    the text's non-special tokens, and there are no neighbours."""

    name: str
    model: str
    text: str
    tokens: tuple[str, ...]
    token: int | None
    span: Span | None  # the token's characters in the text
    info: RunInfo
    n_layers: int
    n_heads: int
    self_sim: np.ndarray  # (L,[H])
    rank: np.ndarray  # (L,[H])
    top_ids: np.ndarray  # (L,[H],K)
    top_sims: np.ndarray  # (L,[H],K)
    grid: np.ndarray | None  # (L, n) self_sim of every token (residual sites), for heatmaps
    labels: dict[int, str]

    @property
    def depth(self) -> np.ndarray:
        """(L,) relative depth ``(layer + 1) / L``: 1 is the model's last layer."""
        return (np.arange(self.n_layers) + 1) / self.n_layers

    @property
    def token_str(self) -> str:
        return "" if self.token is None else self.tokens[self.token]

    def describe(self) -> str:
        where = "whole text" if self.token is None else f"token {self.token} {self.token_str!r}"
        return f"{self.model}: {where} of {self.text!r}"


@dataclass(frozen=True)
class Comparison:
    """Two occurrences compared layer by layer (see the module docstring)."""

    site: str
    space: str
    similarity: str
    k: int  # neighbours shown per side and separating words kept
    overlap_k: int  # size of the neighbour sets compared
    a: Side
    b: Side
    same_model: bool
    cosine: np.ndarray | None  # (L,[H]) cosine of the two vectors; None across models
    overlap: np.ndarray | None  # (L,[H]) |top_a ∩ top_b| of overlap_k; None across models
    alignment: tuple[tuple[int, ...], ...] | None = None  # two models: b tokens over each a token
    correct: str | None = None  # the geometry correction the cosine and each side's metrics were taken under

    @property
    def per_head(self) -> bool:
        return self.site == HEAD_SITE

    @property
    def sides(self) -> tuple[Side, Side]:
        return (self.a, self.b)

    @property
    def diverge(self) -> tuple[int, int | None] | None:
        """(layer, head) of the lowest cosine (head None for residual sites); None across models."""
        if self.cosine is None:
            return None
        flat = int(np.nanargmin(self.cosine))
        if self.per_head:
            layer, head = np.unravel_index(flat, self.cosine.shape)
            return int(layer), int(head)
        return flat, None

    def separating(self, side: str, layer: int, head: int | None = None) -> pd.DataFrame:
        """The neighbours of ``side`` (a or b) at ``layer`` (and head) that are not among the
        other side's top-``overlap_k``, most similar first, at most ``k`` of them, with the
        similarity on this side. One model only (vocabularies must be the same)."""
        if self.cosine is None:
            raise InputError("separating neighbours need one model on both sides (two models have two vocabularies)")
        mine, other = (self.a, self.b) if side == "a" else (self.b, self.a) if side == "b" else (None, None)
        if mine is None:
            raise InputError(f"side must be 'a' or 'b', not {side!r}")
        where = self._cell(layer, head)
        ids, sims = mine.top_ids[where][: self.overlap_k], mine.top_sims[where][: self.overlap_k]
        theirs = set(other.top_ids[where][: self.overlap_k].tolist())
        keep = [i for i, v in enumerate(ids.tolist()) if v not in theirs][: self.k]
        return pd.DataFrame(
            {
                "id": ids[keep].astype(np.int64),
                "token": [mine.labels.get(int(ids[i]), str(int(ids[i]))) for i in keep],
                "similarity": sims[keep].astype(np.float64),
            }
        )

    def neighbours(self, side: str, layer: int, head: int | None = None) -> pd.DataFrame:
        """The top-``k`` neighbours of one side at one layer (and head)."""
        s = self.a if side == "a" else self.b if side == "b" else None
        if s is None:
            raise InputError(f"side must be 'a' or 'b', not {side!r}")
        where = self._cell(layer, head)
        ids, sims = s.top_ids[where][: self.k], s.top_sims[where][: self.k]
        return pd.DataFrame(
            {
                "id": ids.astype(np.int64),
                "token": [s.labels.get(int(i), str(int(i))) for i in ids],
                "similarity": sims.astype(np.float64),
            }
        )

    def _cell(self, layer: int, head: int | None) -> tuple:
        L = self.a.n_layers
        layer = check_index(layer, L, "layer", f"the model has {L} layers")
        if self.per_head:
            if head is None:
                raise InputError("the heads site needs a head index")
            return (layer, check_index(head, self.a.n_heads, "head", f"the model has {self.a.n_heads} heads"))
        return (layer,)

    # ---- tables ---------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        """Tidy: one row per side, layer, head and metric. ``side`` is ``a`` or ``b`` for one
        side's metrics (self_sim, rank) and ``ab`` for the pair's (cosine, overlap)."""
        parts = []
        for s in self.sides:
            for metric, values in (("self_sim", s.self_sim), ("rank", s.rank)):
                parts.append(self._rows(s, s.name, metric, values))
        if self.cosine is not None:
            parts.append(self._rows(self.a, "ab", "cosine", self.cosine))
            parts.append(self._rows(self.a, "ab", "overlap", self.overlap))
        return pd.concat(parts, ignore_index=True)

    def _rows(self, s: Side, side: str, metric: str, values: np.ndarray) -> pd.DataFrame:
        L = values.shape[0]
        H = values.shape[1] if values.ndim == 2 else 1
        li, hi = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        return pd.DataFrame(
            {
                "side": side,
                "model": s.model if side != "ab" else self.a.model,
                "token": -1 if s.token is None else s.token,
                "token_str": s.token_str,
                "layer": li.reshape(-1),
                "depth": ((li + 1) / L).reshape(-1),
                "head": hi.reshape(-1) if values.ndim == 2 else -1,
                "site": self.site,
                "space": self.space,
                "similarity": self.similarity,
                "metric": metric,
                "value": np.asarray(values, dtype=np.float64).reshape(-1),
            }
        )

    def neighbours_frame(self) -> pd.DataFrame:
        """Tidy neighbours: one row per side, layer, head and place, with ``separating``
        (not in the other side's set; one model only)."""
        rows = []
        for s, other in ((self.a, self.b), (self.b, self.a)):
            if s.top_ids.shape[-1] == 0:
                continue
            L, K = s.top_ids.shape[0], s.top_ids.shape[-1]
            H = s.top_ids.shape[1] if self.per_head else 1
            ids = s.top_ids.reshape(L, H, K)
            sims = s.top_sims.reshape(L, H, K)
            sep = np.zeros_like(ids, dtype=bool)
            if self.cosine is not None:
                oth = other.top_ids.reshape(L, H, -1)[..., : self.overlap_k]
                for l in range(L):
                    for h in range(H):
                        sep[l, h] = ~np.isin(ids[l, h], oth[l, h])
            li, hi, pi = np.meshgrid(np.arange(L), np.arange(H), np.arange(K), indexing="ij")
            flat = ids.reshape(-1)
            rows.append(
                pd.DataFrame(
                    {
                        "side": s.name,
                        "model": s.model,
                        "layer": li.reshape(-1),
                        "head": hi.reshape(-1) if self.per_head else -1,
                        "place": pi.reshape(-1),
                        "neighbour_id": flat.astype(np.int64),
                        "neighbour": [s.labels.get(int(i), str(int(i))) for i in flat],
                        "value": sims.reshape(-1).astype(np.float64),
                        "separating": sep.reshape(-1) if self.cosine is not None else False,
                    }
                )
            )
        return (
            pd.concat(rows, ignore_index=True)
            if rows
            else pd.DataFrame(
                columns=["side", "model", "layer", "head", "place", "neighbour_id", "neighbour", "value", "separating"]
            )
        )

    # ---- export ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        d = self.diverge
        return {
            "site": self.site,
            "space": self.space,
            "similarity": self.similarity,
            "k": self.k,
            "overlap_k": self.overlap_k,
            "same_model": self.same_model,
            "correct": self.correct,
            "diverge_layer": None if d is None else d[0],
            "diverge_head": None if d is None else d[1],
            "sides": {
                s.name: {
                    "model": s.model,
                    "text": s.text,
                    "token": s.token,
                    "token_str": s.token_str,
                    "span": s.span,
                    "tokens": list(s.tokens),
                    "n_layers": s.n_layers,
                    "info": s.info.to_dict(),
                }
                for s in self.sides
            },
            "alignment": None if self.alignment is None else [list(a) for a in self.alignment],
        }

    def to_parquet(self, path: str | Path) -> Path:
        return write_parquet(self.frame(), path, self.meta())

    def to_csv(self, path: str | Path) -> Path:
        write_csv(self.frame(), Path(path))
        return Path(path)

    def to_json(self, path: str | Path | None = None) -> str:
        """Metadata, the tidy metrics and the neighbours as one JSON document."""
        doc = {
            "meta": self.meta(),
            "metrics": json.loads(self.frame().to_json(orient="records")),
            "neighbours": json.loads(self.neighbours_frame().to_json(orient="records")),
        }
        text = json.dumps(doc)
        if path is not None:
            write_text(path, text)
        return text

    # ---- display ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        where = self.diverge
        low = (
            ""
            if where is None
            else f"; lowest cosine at layer {where[0]}" + ("" if where[1] is None else f", head {where[1]}")
        )
        return (
            f"<Comparison {self.site}/{self.space}/{self.similarity}: a = {display.short(self.a.describe(), 160)}; "
            f"b = {display.short(self.b.describe(), 160)}{low}>"
        )

    def _layer_values(self, values: np.ndarray | None) -> list[float | None]:
        """(L,) of a per-layer metric (per-head sites: the mean over heads)."""
        if values is None:
            return [None] * self.a.n_layers
        v = np.asarray(values, dtype=np.float64)
        return (v.mean(axis=1) if v.ndim == 2 else v).tolist()

    def _repr_html_(self) -> str:
        rows = [
            ("a", self.a.describe()),
            ("b", self.b.describe()),
            (
                "view",
                f"{self.site}/{self.space}/{self.similarity}"
                + (f", corrected: {self.correct}" if self.correct else ""),
            ),
        ]
        if self.diverge is not None:
            layer, head = self.diverge
            rows.append(("lowest cosine", f"layer {layer}" + ("" if head is None else f", head {head}")))
        cols = {
            "a self-sim": self._layer_values(self.a.self_sim),
            "b self-sim": self._layer_values(self.b.self_sim),
            "a rank": self._layer_values(self.a.rank),
            "b rank": self._layer_values(self.b.rank),
        }
        if self.cosine is not None:
            cols["cosine a·b"] = self._layer_values(self.cosine)
            cols[f"shared of {self.overlap_k}"] = self._layer_values(self.overlap)
        lines = [
            [str(l)] + ["" if c[l] is None else f"{c[l]:.3g}" for c in cols.values()] for l in range(self.a.n_layers)
        ]
        mean = " (mean over heads)" if self.per_head else ""
        table = display.table(
            ["layer", *cols], lines, caption=f"per layer{mean}; .plot() draws it, .frame() has every number"
        )
        return display.block(display.summary(rows, "Comparison"), table)

    def plot(self, *, height: int = 340) -> Any:
        """Both sides' self-similarity per layer and, for one model, the cosine between them."""
        import plotly.graph_objects as go

        fig = go.Figure()
        layers = list(range(self.a.n_layers))
        for side, colour in ((self.a, "#1c5aa6"), (self.b, "#b3541e")):
            label = f"{side.name}: {side.token_str or 'whole text'}"
            fig.add_scatter(x=layers, y=self._layer_values(side.self_sim), name=label, line=dict(color=colour))
        if self.cosine is not None:
            fig.add_scatter(
                x=layers, y=self._layer_values(self.cosine), name="cosine a·b", line=dict(color="#333", dash="dash")
            )
        mean = " (mean over heads)" if self.per_head else ""
        fig.update_layout(
            title=dict(
                text=f"Comparison: {self.site}/{self.space}/{self.similarity}<br><sup>lines: each side's self-similarity per layer, and the two vectors' cosine{mean}</sup>",
                x=0.01,
                xanchor="left",
            ),
            height=height,
            xaxis=dict(title_text="layer", dtick=1 if len(layers) <= 16 else 2),
            yaxis=dict(title_text=self.similarity),
            plot_bgcolor="white",
            paper_bgcolor="white",
        )
        return fig

    def export(self, path: str | Path, fmt: str | None = None) -> Path:
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt == "parquet":
            return self.to_parquet(path)
        if fmt == "csv":
            return self.to_csv(path)
        if fmt == "json":
            self.to_json(path)
            return path
        raise InputError(f"unknown export format {fmt!r}: use parquet, csv or json")


# ---- checking -------------------------------------------------------------------------
