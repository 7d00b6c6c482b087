"""Results are data: frozen dataclasses with run metadata and tidy exports.

Nothing here runs a model. Plots, the CLI and the web app read these objects only.
A :class:`Trail` is made of the parts in :mod:`~tokentrail.results.records` (re-exported
here, where results are imported from); :mod:`~tokentrail.results.trailio` writes its
files and :mod:`~tokentrail.results.loading` reads them back into its parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokentrail.engine.cells import metric_label
from tokentrail.results import loading, trailio
from tokentrail.results.notebook import trail_html
from tokentrail.results.records import (  # noqa: F401 - re-exported
    LENS_METRICS,
    AttentionPatterns,
    CrossView,
    HeadsAt,
    LensResult,
    RunInfo,
    View,
    same,
)
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import check_index
from tokentrail.spec.tokens import find_token


@dataclass(frozen=True)
class Trail:
    """The journey of every token of one text through one model."""

    info: RunInfo
    text: str
    tokens: tuple[str, ...]  # readable token strings
    ids: np.ndarray  # (n,)
    positions: np.ndarray  # (n,) the model's position ids
    special: np.ndarray  # (n,) bool
    n_layers: int
    n_heads: int
    views: tuple[View, ...]
    labels: dict[int, str]  # vocabulary id -> readable token, for every id in the results
    attentions: np.ndarray | None = None  # (L, H, n, n)
    kv_groups: int = 1  # query heads sharing one key/value head (grouped-query attention)
    lens: LensResult | None = None  # when the logit lens was asked for
    # encoder-decoders (None / empty for single-stack models): which stack these rows are,
    # the decoder's Trail (on the encoder's), and on the decoder's: cross-attention
    stack: str | None = None  # "encoder" / "decoder"
    decoder: Trail | None = None
    cross_views: tuple[CrossView, ...] = ()
    cross_attentions: np.ndarray | None = None  # (L, H, n, m) cross-attention probabilities
    source_tokens: tuple[str, ...] | None = None  # the m source tokens cross-attention reads

    # ---- lookup ------------------------------------------------------------------
    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def view(self, site: str | None = None, space: str | None = None, similarity: str | None = None) -> View:
        """The view for (site, space, similarity); None picks the first computed value."""
        matches = [
            v
            for v in self.views
            if (site is None or v.site == site)
            and (space is None or v.space == space)
            and (similarity is None or v.similarity == similarity)
        ]
        if not matches:
            have = ", ".join("/".join(v.key) for v in self.views)
            raise InputError(f"no result for site={site} space={space} similarity={similarity}; computed: {have}")
        return matches[0]

    @property
    def stacks(self) -> tuple[Trail, ...]:
        """This Trail and, for an encoder-decoder, its decoder's: one per stack."""
        return (self,) if self.decoder is None else (self, self.decoder)

    def cross_view(self, space: str | None = None, similarity: str | None = None) -> CrossView:
        """The decoder's ``cross_heads`` view (from the encoder's Trail too)."""
        trail = self.decoder if self.decoder is not None else self
        matches = [
            v
            for v in trail.cross_views
            if (space is None or v.space == space) and (similarity is None or v.similarity == similarity)
        ]
        if not matches:
            have = ", ".join("/".join(v.key) for v in trail.cross_views) or "none"
            raise InputError(
                f"no cross_heads result for space={space} similarity={similarity} (computed: {have}); trace an encoder-decoder with --site cross_heads"
            )
        return matches[0]

    def sources(
        self, token: int | str, layer: int, head: int, *, space: str | None = None, similarity: str | None = None
    ) -> pd.DataFrame:
        """Which source tokens a decoder token's cross-attention head output is nearest to:
        one row per source token, nearest first (``place`` is its rank), with the head's
        attention probability on it."""
        trail = self.decoder if self.decoder is not None else self
        v = trail.cross_view(space, similarity)
        t = trail.token_index(token)
        layer = trail.check_layer(layer)
        h = trail.check_head(head)
        order = v.source_order[layer, h, t]
        att = trail.cross_attentions[layer, h, t] if trail.cross_attentions is not None else np.full(len(order), np.nan)
        src = trail.source_tokens or tuple(str(i) for i in range(len(order)))
        return pd.DataFrame(
            {
                "place": np.arange(len(order)),
                "source": order.astype(np.int64),
                "source_token": [src[int(s)] for s in order],
                "similarity": v.source_sims[layer, h, t].astype(np.float64),
                "attention": att[order].astype(np.float64),
            }
        )

    def attention(self, kind: str = "self", *, stack: str | None = None) -> AttentionPatterns:
        """Every head's attention pattern (``kind`` self, or cross for an encoder-decoder's
        decoder) of one stack: this Trail's, or ``stack`` ("encoder"/"decoder") of an
        encoder-decoder (cross reads the decoder)."""
        trail = self
        if kind not in ("self", "cross"):
            raise InputError(f"unknown attention kind {kind!r}: choose self or cross")
        if stack is not None:
            if stack not in ("encoder", "decoder") or self.stack is None:
                raise InputError(
                    f"stack={stack!r}: stacks are encoder and decoder, of an encoder-decoder's Trail"
                    + ("" if self.stack is not None else " (this model has one stack: leave stack out)")
                )
            trail = self.decoder if stack == "decoder" and self.decoder is not None else self
        if kind == "cross":
            trail = self.decoder if self.decoder is not None else self
            if trail.cross_attentions is None or trail.source_tokens is None:
                raise InputError("this Trail has no cross-attention: trace an encoder-decoder model (BART, Marian, T5)")
            weights, sources = trail.cross_attentions, trail.source_tokens
        else:
            if trail.attentions is None:
                raise InputError("this Trail has no attention weights (read back from an export without them)")
            weights, sources = trail.attentions, trail.tokens
        return AttentionPatterns(
            weights=weights,
            tokens=trail.tokens,
            source_tokens=tuple(sources),
            kind=kind,
            stack=trail.stack,
            causal=bool(trail.info.causal) and kind == "self",
            model=trail.info.model,
        )

    def token_index(self, token: int | str) -> int:
        """Resolve a token index (negative counts from the end), its text or ``text:N``
        (the N-th occurrence from 0) to an index (see :func:`tokentrail.spec.tokens.find_token`)."""
        return find_token(self.tokens, int(token) if isinstance(token, np.integer) else token)[0]

    def check_layer(self, layer: int) -> int:
        return check_index(layer, self.n_layers, "layer", f"the model has {self.n_layers} layers")

    def check_head(self, head: int) -> int:
        return check_index(head, self.n_heads, "head", f"the model has {self.n_heads} heads")

    # ---- tables ------------------------------------------------------------------
    def neighbours(
        self,
        token: int | str,
        layer: int,
        *,
        site: str | None = None,
        space: str | None = None,
        similarity: str | None = None,
        head: int | None = None,
        k: int | None = None,
    ) -> pd.DataFrame:
        """The nearest vocabulary tokens of one token at one layer (and head, for ``heads``)."""
        t = self.token_index(token)
        layer = self.check_layer(layer)
        if head is not None and site is None:
            site = "heads"
        v = self.view(site, space, similarity)
        if v.per_head:
            if head is None:
                raise InputError("the heads site needs a head index (--head)")
            h = self.check_head(head)
            ids, sims, rank = v.top_ids[layer, h, t], v.top_sims[layer, h, t], v.rank[layer, h, t]
        else:
            ids, sims, rank = v.top_ids[layer, t], v.top_sims[layer, t], v.rank[layer, t]
        if k is not None:
            ids, sims = ids[:k], sims[:k]
        own = int(self.ids[t])
        return pd.DataFrame(
            {
                "place": np.arange(len(ids)),
                "id": ids.astype(np.int64),
                "token": [self.labels.get(int(i), str(i)) for i in ids],
                "similarity": sims.astype(np.float64),
                "own": ids == own,
            }
        ).assign(own_rank=int(rank))

    def frame(self) -> pd.DataFrame:
        """Tidy long format: one row per token, layer, head, site, space, similarity, metric
        (encoder-decoders: both stacks, with a ``stack`` column)."""
        if self.decoder is not None:
            return pd.concat([self.stack_frame(), self.decoder.stack_frame()], ignore_index=True)
        return self.stack_frame()

    def stack_frame(self) -> pd.DataFrame:
        """:meth:`frame` of this stack alone (the whole frame of a single-stack model)."""
        parts = []
        for v in self.views:
            parts.append(_view_frame(self, v))
        if not parts:  # an encoder-decoder's encoder when only cross-attention sites were asked for
            return pd.DataFrame(
                columns=[
                    "token",
                    "token_str",
                    "position",
                    "layer",
                    "head",
                    "site",
                    "space",
                    "similarity",
                    "metric",
                    "value",
                ]
            )
        return pd.concat(parts, ignore_index=True)

    def neighbours_frame(self) -> pd.DataFrame:
        """Tidy top-k neighbours: one row per token, layer, head, site, space, similarity, place."""
        rows = []
        for v in self.views:
            L, n, k = v.top_ids.shape[0], self.n_tokens, v.top_ids.shape[-1]
            H = v.top_ids.shape[1] if v.per_head else 1
            ids = v.top_ids.reshape(L, H, n, k)
            sims = v.top_sims.reshape(L, H, n, k)
            li, hi, ti, pi = np.meshgrid(np.arange(L), np.arange(H), np.arange(n), np.arange(k), indexing="ij")
            flat_ids = ids.reshape(-1)
            rows.append(
                pd.DataFrame(
                    {
                        "token": ti.reshape(-1),
                        "layer": li.reshape(-1),
                        "head": hi.reshape(-1) if v.per_head else -1,
                        "site": v.site,
                        "space": v.space,
                        "similarity": v.similarity,
                        "place": pi.reshape(-1),
                        "neighbour_id": flat_ids,
                        "neighbour": [self.labels.get(int(i), str(i)) for i in flat_ids],
                        "value": sims.reshape(-1).astype(np.float64),
                    }
                )
            )
        return pd.concat(rows, ignore_index=True)

    # ---- export ------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "text": self.text, "tokens": list(self.tokens), "kv_groups": self.kv_groups}

    def tables(self, attention: bool | None = None) -> dict[str, pd.DataFrame]:
        """Every table an export holds (tokens, metrics, neighbours, attention, lens, lens_top),
        each with its own columns; see :mod:`tokentrail.results.trailio`."""
        return trailio.tables(self, attention)

    def to_parquet(self, path: str | Path, attention: bool | None = None) -> Path:
        """Every table as one long Parquet table with a ``table`` column (:mod:`tokentrail.results.trailio`)."""
        return trailio.write_parquet(self, path, attention)

    def to_csv(self, path, attention: bool | None = None) -> Path | None:
        """Every table as one long CSV table with a ``table`` column, to a path or a text
        stream; text cells escaped as :mod:`tokentrail.spec.fileio` documents."""
        trailio.write_csv_table(self, path if hasattr(path, "write") else Path(path), attention)
        return None if hasattr(path, "write") else Path(path)

    def to_json(self, path: str | Path | None = None, attention: bool | None = None) -> str:
        """Metadata and every table as one JSON document (each table a list of records)."""
        return trailio.write_json(self, path, attention)

    @classmethod
    def load(cls, path: str | Path) -> Trail:
        """Read a Parquet, CSV or JSON export back into a Trail equal to the one written."""
        return cls.from_parts(loading.load(path))

    @classmethod
    def from_parts(cls, parts: Mapping[str, Any]) -> Trail:
        """A Trail from its fields as :mod:`~tokentrail.results.loading` reads them (the
        decoder's, of an encoder-decoder, as a mapping of its own)."""
        decoder = parts.get("decoder")
        return cls(**{**parts, "decoder": None if decoder is None else cls.from_parts(decoder)})

    def __eq__(self, other: object) -> bool:
        """Equal when every field is: arrays by dtype, shape and values (NaN equals NaN)."""
        if not isinstance(other, Trail):
            return NotImplemented
        return same(self, other)

    def __repr__(self) -> str:
        every: tuple[View | CrossView, ...] = (*self.views, *self.cross_views)
        views = ", ".join("/".join(v.key) for v in every)
        lens = f", lens@{self.lens.site}" if self.lens is not None else ""
        text = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        stack = f" {self.stack} stack" if self.stack is not None else ""
        dec = f"; decoder: {self.decoder!r}" if self.decoder is not None else ""
        return (
            f"<Trail {self.info.model!r}{stack}: {self.n_tokens} tokens, {self.n_layers} layers × {self.n_heads} heads; "
            f"views {views}{lens}; text {text!r}{dec}>"
        )

    def _repr_html_(self) -> str:
        return trail_html(self)

    def export(self, path: str | Path, fmt: str | None = None, *, attention: bool | None = None) -> Path:
        """Write every table (see :mod:`tokentrail.results.trailio`) as Parquet, CSV or JSON.

        ``attention``: the L·H·n² attention table is included up to
        :data:`tokentrail.results.trailio.MAX_ATTENTION_ROWS` rows (None), always (True) or never
        (False); a Trail read back without it has ``attentions`` None."""
        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt == "parquet":
            return self.to_parquet(path, attention)
        if fmt == "csv":
            return self.to_csv(path, attention)
        if fmt == "json":
            self.to_json(path, attention)
            return path
        raise InputError(f"unknown export format {fmt!r}: use parquet, csv or json")


def _view_frame(trail: Trail, v: View) -> pd.DataFrame:
    L, n = v.rank.shape[0], trail.n_tokens
    H = v.rank.shape[1] if v.per_head else 1
    shape = (L, H, n)
    li, hi, ti = np.meshgrid(np.arange(L), np.arange(H), np.arange(n), indexing="ij")
    aniso = np.broadcast_to(v.anisotropy.reshape(L, H, 1) if v.per_head else v.anisotropy.reshape(L, 1, 1), shape)
    metrics = {"anisotropy": aniso} | {metric_label(name, v): vals.reshape(shape) for name, vals in v.metrics.items()}
    base = {
        "token": ti.reshape(-1),
        "token_str": np.array(trail.tokens, dtype=object)[ti.reshape(-1)],
        "position": trail.positions[ti.reshape(-1)],
        "layer": li.reshape(-1),
        "head": hi.reshape(-1) if v.per_head else np.full(ti.size, -1),
        "site": v.site,
        "space": v.space,
        "similarity": v.similarity,
    }
    if trail.stack is not None:  # encoder-decoders: which stack the rows belong to
        base["stack"] = trail.stack
    frames = [
        pd.DataFrame({**base, "metric": name, "value": vals.reshape(-1).astype(np.float64)})
        for name, vals in metrics.items()
    ]
    return pd.concat(frames, ignore_index=True)
