"""The parts of a result: run metadata (:class:`RunInfo`), one (site, space, similarity)
view (:class:`View`, :class:`CrossView`), the logit lens (:class:`LensResult`), one
layer's heads (:class:`HeadsAt`), and :func:`same`, the structural equality every
result uses. Frozen data only: a :class:`~tokentrail.results.trail.Trail` is made of
these, and its files (:mod:`~tokentrail.results.trailio`) write and read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from tokentrail.results import figures
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions


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
    def from_dict(cls, d: Mapping[str, Any]) -> RunInfo:
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


LENS_METRICS = ("own_rank", "own_prob", "next_rank", "next_prob", "entropy", "kl")


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
    # (L, n) float32, nats: KL(final layer's distribution ‖ this layer's); None where it was
    # not computed (a streamed trace, which holds one layer at a time; the embeddings row)
    kl: np.ndarray | None = None
    tokens: tuple[str, ...] = ()  # the text's tokens, for display (empty when not known)
    labels: Mapping[int, str] = field(default_factory=dict)  # vocabulary id -> readable token, for display

    def labelled(self, tokens: tuple[str, ...] | list[str], label: Any) -> LensResult:
        """This result with the text's tokens and a label for every vocabulary id it names
        (``label``: ids -> {id: text}, a loaded model's ``labels``)."""
        ids = sorted(self.ids_used() | {int(i) for i in self.input_ids})
        return replace(self, tokens=tuple(tokens), labels=dict(label(ids)))

    def token_text(self, t: int) -> str:
        """Token ``t``'s text (its id when the result carries no tokens)."""
        return self.tokens[t] if self.tokens else self.label(int(self.input_ids[t]))

    def label(self, i: int) -> str:
        """Vocabulary id ``i``'s readable text (the id itself when not labelled)."""
        return self.labels.get(int(i), str(int(i)))

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.top_ids.shape[1]

    @property
    def k(self) -> int:
        return self.top_ids.shape[2]

    def plot(self, color: str = "prob", **kw: Any) -> Any:
        """The lens as tuned-lens draws it (layers × positions, the top prediction in each
        cell, coloured by ``color``: prob, entropy, kl or rank); see :func:`tokentrail.plots.lens_heatmap`."""
        return figures.lens_figure(self, color, **kw)

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
        if self.kl is not None:
            out["kl"] = self.kl.astype(np.float64)
        return out

    def frame(self) -> pd.DataFrame:
        """Tidy: one row per token, layer and metric (columns token, token_str, layer,
        metric, value), the first layer's tokens first, so ``head()`` shows the text."""
        L, n = self.n_layers, self.n_tokens
        li, ti = np.meshgrid(np.arange(L), np.arange(n), indexing="ij")
        text = np.array([self.token_text(t) for t in range(n)], dtype=object)[ti.reshape(-1)]
        parts = [
            pd.DataFrame(
                {
                    "token": ti.reshape(-1),
                    "token_str": text,
                    "layer": li.reshape(-1),
                    "metric": name,
                    "value": vals.reshape(-1),
                }
            )
            for name, vals in self.metrics().items()
        ]
        return pd.concat(parts, ignore_index=True)

    def top_frame(self) -> pd.DataFrame:
        """Tidy top-k: one row per token, layer and place (columns token, token_str, layer,
        place, id, id_str, prob)."""
        L, n, k = self.top_ids.shape
        li, ti, pi = np.meshgrid(np.arange(L), np.arange(n), np.arange(k), indexing="ij")
        ids = self.top_ids.reshape(-1).astype(np.int64)
        return pd.DataFrame(
            {
                "token": ti.reshape(-1),
                "token_str": np.array([self.token_text(t) for t in range(n)], dtype=object)[ti.reshape(-1)],
                "layer": li.reshape(-1),
                "place": pi.reshape(-1),
                "id": ids,
                "id_str": [self.label(int(i)) for i in ids],
                "prob": self.top_probs.reshape(-1).astype(np.float64),
            }
        )


@dataclass(frozen=True)
class AttentionPatterns:
    """Every head's attention probabilities of one stack of one text: ``weights[l, h, q, s]``
    is how much query token ``q`` attended to source token ``s`` in head ``h`` of layer
    ``l`` (rows sum to 1). ``kind`` self: the sources are the same tokens; cross (an
    encoder-decoder's decoder): the sources are the encoder output's tokens."""

    weights: np.ndarray  # (L, H, n, m)
    tokens: tuple[str, ...]  # the n query tokens
    source_tokens: tuple[str, ...]  # the m source tokens (the same tokens for self-attention)
    kind: str = "self"  # "self" or "cross"
    stack: str | None = None  # encoder-decoders: "encoder" / "decoder"
    causal: bool = False  # a causal mask: a query attends to itself and earlier tokens only
    model: str = ""

    @property
    def n_layers(self) -> int:
        return self.weights.shape[0]

    @property
    def n_heads(self) -> int:
        return self.weights.shape[1]

    def plot(self, layer: int = 0, head: int | None = None, **kw: Any) -> Any:
        """One head's pattern, or every head of ``layer`` (``head`` None), with a picker;
        see :func:`tokentrail.plots.attention_pattern`."""
        return figures.attention_figure(self, layer, head, **kw)

    def frame(self) -> pd.DataFrame:
        """Tidy: one row per layer, head, query and source token (columns layer, head,
        token, token_str, source, source_str, weight), the first head's rows first."""
        L, H, n, m = self.weights.shape
        li, hi, qi, si = np.meshgrid(np.arange(L), np.arange(H), np.arange(n), np.arange(m), indexing="ij")
        q, src = qi.reshape(-1), si.reshape(-1)
        return pd.DataFrame(
            {
                "layer": li.reshape(-1),
                "head": hi.reshape(-1),
                "token": q,
                "token_str": np.array(self.tokens, dtype=object)[q],
                "source": src,
                "source_str": np.array(self.source_tokens, dtype=object)[src],
                "weight": self.weights.reshape(-1).astype(np.float64),
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


def same(a: Any, b: Any) -> bool:
    """Structural equality for results: arrays by dtype, shape and values (NaN equal to NaN)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.dtype != b.dtype or a.shape != b.shape:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b))
        )
    return bool(a == b)
