"""The tables of a study folder: token rows, the anisotropy sample and the per-layer sums
(what ``store.writer`` writes and ``store.aggregate``/``store.stats`` read)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tokentrail.engine.cells import CELL_METRICS

_TOKEN_KEYS = [
    ("text_id", pa.int64()),
    ("position", pa.int32()),  # token index in its text (0-based)
    ("token_id", pa.int64()),
    ("token", pa.string()),
    ("word_class", pa.string()),
    ("upos", pa.string()),
    ("first_subword", pa.bool_()),
    ("word", pa.int32()),  # the token's word in its text, -1 for none
    ("layer", pa.int16()),
    ("site", pa.string()),
]
_TOKEN_TAIL = [
    ("norm", pa.float32()),  # L2 norm of the site vector
    ("top1_id", pa.int64()),  # nearest vocabulary id
]


def token_schema() -> pa.Schema:
    """The token rows: keys, then one column per registered metric
    (:data:`tokentrail.engine.cells.CELL_METRICS`, in its order and ``dtype``: ``self_sim``,
    ``rank``, ``overlap`` (k = the run's overlap_k), ``adjusted_self_sim`` (self_sim - the
    text's anisotropy at that layer/site), ``margin``, ...), then the norm and nearest id.
    Read at call time, so a metric registered later is a column too."""
    metrics = [(name, pa.from_numpy_dtype(np.dtype(m.dtype))) for name, m in CELL_METRICS.items()]
    return pa.schema(_TOKEN_KEYS + metrics + _TOKEN_TAIL)


TOKEN_SCHEMA = token_schema()
"""The token rows of the built-in metrics (:func:`token_schema` is the live one)."""

SAMPLE_SCHEMA = pa.schema(
    [
        ("text_id", pa.int64()),
        ("position", pa.int32()),
        ("key", pa.float64()),  # the token's sampling key: the corpus sample keeps the smallest
        ("word_class", pa.string()),
        ("site", pa.string()),
        ("layer", pa.int16()),
        ("vector", pa.list_(pa.float32())),
    ]
)


EMBEDDED = "embedded"
"""The stats and sample name of the encodings before the first layer (layer 0): what a
corpus-fitted correction applies to a trace's origin column."""

STATS_SCHEMA = pa.schema(
    [
        ("site", pa.string()),  # a study site, or EMBEDDED
        ("layer", pa.int16()),
        ("count", pa.int64()),  # tokens summed
        ("sum", pa.list_(pa.float64())),  # (d,) sum of the vectors
        ("sumsq", pa.list_(pa.float64())),  # (d,) sum of their squares
    ]
)
