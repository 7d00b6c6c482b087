"""Results are data: frozen dataclasses with run metadata and tidy exports.

Nothing here runs a model. Plots, the CLI and the web app read these objects only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions, check_index
from tokentrail.spec.tokens import find_token


@dataclass(frozen=True)
class RunInfo:
    """Where a result came from: enough to reproduce it."""

    model: str
    model_type: str
    family: str
    revision: str | None
    causal: bool | None  # decoders: was the causal mask on? None for encoders
    tokentrail_version: str
    torch_version: str
    transformers_version: str
    created: str
    options: TraceOptions = field(default_factory=TraceOptions)
    device: str = "cpu"  # where the model ran
    dtype: str = "float32"  # the model's weights; float32 is the exact reference
    exact: bool = True  # False when a reduced-precision dtype ran the model (SPEC "Exactness")
    truncated_from: int | None = None  # token count before an opted-in truncation
    decoder_input: str | None = None  # encoder-decoders: where the decoder's input came from (target / greedy output)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = self.options.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunInfo":
        kw = dict(d)
        kw["options"] = TraceOptions.from_dict(kw.get("options") or {})
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in names})


@dataclass(frozen=True)
class View:
    """One (site, space, similarity) combination over all layers and tokens.

    Residual sites have arrays shaped (L, n[, k]); the ``heads`` site (L, H, n[, k]),
    each head compared with its own layer's ``value``/``key``/``query`` space. Per-cell
    metrics live in ``metrics`` (name -> (L, [H,] n) array), one entry per metric of
    :data:`tokentrail.engine.metrics.CELL_METRICS`.
    """

    site: str
    space: str
    similarity: str
    metrics: Mapping[str, np.ndarray]  # name -> (L, [H,] n)
    top_ids: np.ndarray  # (L, [H,] n, k) nearest vocabulary ids, most similar first
    top_sims: np.ndarray  # (L, [H,] n, k)
    overlap_k: int
    anisotropy: np.ndarray  # (L, [H]) mean similarity between distinct positions
    origin_top_ids: np.ndarray | None = None  # (n, k) neighbours of the original encoding
    origin_top_sims: np.ndarray | None = None

    @property
    def per_head(self) -> bool:
        return self.top_ids.ndim == 4

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.site, self.space, self.similarity)

    def metric(self, name: str) -> np.ndarray:
        try:
            return self.metrics[name]
        except KeyError:
            raise InputError(f"unknown metric {name!r}: this view has {', '.join(self.metrics)}") from None

    # the SPEC metrics by name, for readable call sites
    @property
    def self_sim(self) -> np.ndarray:
        """(L, [H,] n) similarity to the token's own row."""
        return self.metrics["self_sim"]

    @property
    def rank(self) -> np.ndarray:
        """(L, [H,] n) int: rows strictly more similar than the own row."""
        return self.metrics["rank"]

    @property
    def overlap(self) -> np.ndarray:
        """(L, [H,] n) |top-K_l ∩ top-K_{l-1}|; NaN where undefined."""
        return self.metrics["overlap"]

    @property
    def adjusted_self_sim(self) -> np.ndarray:
        """Self-similarity minus the layer's anisotropy (Ethayarajh 2019)."""
        return self.metrics["adjusted_self_sim"]


@dataclass(frozen=True)
class CrossView:
    """The ``cross_heads`` site of an encoder-decoder's decoder in one space and similarity:
    each cross-attention head's vector against the source tokens of this input (SPEC: a
    cross head's space is the encoder output tokens, not the vocabulary).

    ``space`` value: the head's ``z`` vs the source tokens' values; key: the decoder token's
    cross query vs the source tokens' keys. Arrays (L, H, n, m): n decoder tokens, m source
    tokens; ``source_order[l, h, t]`` lists source token indices most similar first (ties:
    lower index), so a source token's place in it is its rank."""

    site: str
    space: str
    similarity: str
    source_order: np.ndarray  # (L, H, n, m) int64
    source_sims: np.ndarray  # (L, H, n, m)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.site, self.space, self.similarity)


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
    decoder: "Trail | None" = None
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
    def stacks(self) -> tuple["Trail", ...]:
        """This Trail and, for an encoder-decoder, its decoder's: one per stack."""
        return (self,) if self.decoder is None else (self, self.decoder)

    def cross_view(self, space: str | None = None, similarity: str | None = None) -> CrossView:
        """The decoder's ``cross_heads`` view (from the encoder's Trail too)."""
        trail = self.decoder if self.decoder is not None else self
        matches = [v for v in trail.cross_views if (space is None or v.space == space) and (similarity is None or v.similarity == similarity)]
        if not matches:
            have = ", ".join("/".join(v.key) for v in trail.cross_views) or "none"
            raise InputError(f"no cross_heads result for space={space} similarity={similarity} (computed: {have}); trace an encoder-decoder with --site cross_heads")
        return matches[0]

    def sources(self, token: int | str, layer: int, head: int, *, space: str | None = None, similarity: str | None = None) -> pd.DataFrame:
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
            return pd.DataFrame(columns=["token", "token_str", "position", "layer", "head", "site", "space", "similarity", "metric", "value"])
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
        from tokentrail.results.trailio import tables

        return tables(self, attention)

    def to_parquet(self, path: str | Path, attention: bool | None = None) -> Path:
        """Every table as one long Parquet table with a ``table`` column (:mod:`tokentrail.results.trailio`)."""
        from tokentrail.results.trailio import write_parquet

        return write_parquet(self, path, attention)

    def to_csv(self, path, attention: bool | None = None) -> Path | None:
        """Every table as one long CSV table with a ``table`` column, to a path or a text
        stream; text cells escaped as :mod:`tokentrail.spec.fileio` documents."""
        from tokentrail.results.trailio import write_csv_table

        write_csv_table(self, path if hasattr(path, "write") else Path(path), attention)
        return None if hasattr(path, "write") else Path(path)

    def to_json(self, path: str | Path | None = None, attention: bool | None = None) -> str:
        """Metadata and every table as one JSON document (each table a list of records)."""
        from tokentrail.results.trailio import write_json

        return write_json(self, path, attention)

    @classmethod
    def load(cls, path: str | Path) -> "Trail":
        """Read a Parquet, CSV or JSON export back into a Trail equal to the one written."""
        from tokentrail.results.trailio import load

        return load(path)

    def __eq__(self, other: object) -> bool:
        """Equal when every field is: arrays by dtype, shape and values (NaN equals NaN)."""
        if not isinstance(other, Trail):
            return NotImplemented
        from tokentrail.results.trailio import same

        return same(self, other)

    def __repr__(self) -> str:
        views = ", ".join("/".join(v.key) for v in (*self.views, *self.cross_views))
        lens = f", lens@{self.lens.site}" if self.lens is not None else ""
        text = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        stack = f" {self.stack} stack" if self.stack is not None else ""
        dec = f"; decoder: {self.decoder!r}" if self.decoder is not None else ""
        return (f"<Trail {self.info.model!r}{stack}: {self.n_tokens} tokens, {self.n_layers} layers × {self.n_heads} heads; "
                f"views {views}{lens}; text {text!r}{dec}>")

    def _repr_html_(self) -> str:
        from tokentrail.results.notebook import trail_html

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
    from tokentrail.engine.metrics import metric_label

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
    frames = [pd.DataFrame({**base, "metric": name, "value": vals.reshape(-1).astype(np.float64)}) for name, vals in metrics.items()]
    return pd.concat(frames, ignore_index=True)


LENS_METRICS = ("own_rank", "own_prob", "next_rank", "next_prob", "entropy")


@dataclass(frozen=True)
class LensResult:
    """The logit lens over all layers and tokens of one text.

    Arrays are shaped (L, n) or (L, n, k): L layers, n tokens, k predictions per cell.
    """

    site: str  # the residual site read: "layer_out" or "attn_resid"
    is_decoder: bool
    input_ids: np.ndarray  # (n,)
    top_ids: np.ndarray  # (L, n, k) int64, most probable first (ties: lower id)
    top_probs: np.ndarray  # (L, n, k) float32
    own_rank: np.ndarray  # (L, n) int64: ids with a strictly higher logit than token t's own
    own_prob: np.ndarray  # (L, n) float32
    next_rank: np.ndarray | None  # (L, n) int64, rank of token t+1; -1 at the last token; None for encoders
    next_prob: np.ndarray | None  # (L, n) float32; NaN at the last token; None for encoders
    entropy: np.ndarray  # (L, n) float32, nats

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.top_ids.shape[1]

    @property
    def k(self) -> int:
        return self.top_ids.shape[2]

    def ids_used(self) -> set[int]:
        """Every vocabulary id the result names (for labelling)."""
        return {int(i) for i in np.unique(self.top_ids)}

    def metrics(self) -> dict[str, np.ndarray]:
        """Per-cell metrics as float (L, n) arrays; undefined cells are NaN."""
        out = {"own_rank": self.own_rank.astype(np.float64), "own_prob": self.own_prob.astype(np.float64)}
        if self.next_rank is not None and self.next_prob is not None:
            nr = self.next_rank.astype(np.float64)
            nr[self.next_rank < 0] = np.nan
            out["next_rank"] = nr
            out["next_prob"] = self.next_prob.astype(np.float64)
        out["entropy"] = self.entropy.astype(np.float64)
        return out

    def frame(self) -> pd.DataFrame:
        """Tidy: one row per token, layer and metric (columns token, layer, metric, value)."""
        L, n = self.n_layers, self.n_tokens
        li, ti = np.meshgrid(np.arange(L), np.arange(n), indexing="ij")
        parts = [
            pd.DataFrame({"token": ti.reshape(-1), "layer": li.reshape(-1), "metric": name, "value": vals.reshape(-1)})
            for name, vals in self.metrics().items()
        ]
        return pd.concat(parts, ignore_index=True)

    def top_frame(self) -> pd.DataFrame:
        """Tidy top-k: one row per token, layer and place (columns token, layer, place, id, prob)."""
        L, n, k = self.top_ids.shape
        li, ti, pi = np.meshgrid(np.arange(L), np.arange(n), np.arange(k), indexing="ij")
        return pd.DataFrame(
            {
                "token": ti.reshape(-1),
                "layer": li.reshape(-1),
                "place": pi.reshape(-1),
                "id": self.top_ids.reshape(-1).astype(np.int64),
                "prob": self.top_probs.reshape(-1).astype(np.float64),
            }
        )


@dataclass(frozen=True)
class HeadsAt:
    """Every head of one layer, for one token: nearest vocabulary rows in each head's
    own space (SPEC ``heads`` site) and the token's row of each attention pattern."""

    layer: int
    token: int
    own_id: int
    space: str  # value / key / query
    similarity: str
    self_sim: np.ndarray  # (H,)
    rank: np.ndarray  # (H,) int, 0-based; ties favour the token
    top_ids: np.ndarray  # (H, k)
    top_sims: np.ndarray  # (H, k)
    attention: np.ndarray  # (H, n) how much the token attended to each source token
    labels: dict[int, str]  # vocabulary id -> readable token, for every id above

    @property
    def n_heads(self) -> int:
        return self.rank.shape[0]
