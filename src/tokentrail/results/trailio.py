"""A whole Trail in a file and back: every table in every format.

A :class:`~tokentrail.results.trail.Trail` is written as these tables (one row per ...):

============  ==========================================================================
``meta``      one row: the run's metadata and what rebuilding needs, as JSON (``meta``)
``tokens``    token: ``token_str``, ``position``, ``id``; ``value`` 1 for a special token
``metrics``   token, layer, head, site, space, similarity, metric: ``value``
              (exactly :meth:`Trail.frame`; ``head`` is -1 for residual sites)
``neighbours`` token, layer, head, site, space, similarity, place: ``id``, ``id_str``,
              ``value`` (the similarity); ``layer`` -1 holds the original encoding's
              neighbours (the CLI's ``emb`` column)
``attention`` layer, head, token (the query), ``source``: ``value`` (the probability);
              L·H·n² rows, so by default only up to :data:`MAX_ATTENTION_ROWS`
              (``attention=True`` forces it, ``False`` leaves it out)
``lens``      token, layer, metric: ``value`` (``site`` names the residual the lens read)
``lens_top``  token, layer, place: ``id``, ``id_str``, ``value`` (the probability)
``cross``     encoder-decoders: decoder token, layer, head, site (``cross_heads``), space,
              similarity, place: ``source`` (the source token's index), ``id_str`` (its
              text), ``value`` (the similarity); ``place`` is the source token's rank
``cross_attention`` encoder-decoders: layer, head, token (decoder), ``source``: ``value``
============  ==========================================================================

An encoder-decoder's export holds both stacks: every table has a ``stack`` column
(``encoder`` / ``decoder``), and the metadata the decoder's own under ``decoder``.
Single-stack models' exports have no ``stack`` column.

Parquet and CSV hold ONE long table: the columns :data:`LONG_COLUMNS` in that order, a
``table`` column naming each row's table, and empty cells where a table has no such
column (filter on ``table`` to get one back; CSV text cells are escaped as
:mod:`tokentrail.spec.fileio` documents). Parquet also keeps the metadata in the schema
(key ``tokentrail``). JSON is one document: ``{"meta": {...}, "tokens": [...],
"metrics": [...], ...}``, each table a list of records with its own columns only.

:meth:`Trail.load` reads any of the three back into a Trail equal to the one written
(:mod:`~tokentrail.results.loading`; floats are written with every digit, and each
array's dtype is recorded in the metadata).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from tokentrail.engine.cells import metric_label
from tokentrail.results import trailtables
from tokentrail.spec.fileio import write_csv, write_text
from tokentrail.spec.fileio import write_parquet as write_frame

FORMAT_VERSION = 1
LONG_COLUMNS = [
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
    "place",
    "id",
    "id_str",
    "source",
    "table",
    "meta",
]
INT_COLUMNS = ("token", "position", "layer", "head", "place", "id", "source")
TABLES = ("meta", "tokens", "metrics", "neighbours", "attention", "lens", "lens_top", "cross", "cross_attention")
# The attention table grows as tokens²: 2M rows is MiniLM at 166 tokens or SmolLM2 at 86
# (~130 MB of CSV); SmolLM2 at 1,024 tokens would be 283M rows. Beyond it the table is
# left out unless asked for, and the metadata says so.
MAX_ATTENTION_ROWS = 2_000_000


def attention_included(trail, attention: bool | None = None) -> bool:
    """Whether an export of ``trail`` carries the attention table (None: when it has at
    most :data:`MAX_ATTENTION_ROWS` rows)."""
    if trail.attentions is None or attention is False:
        return False
    return attention is True or trail.attentions.size <= MAX_ATTENTION_ROWS


# ---- writing ------------------------------------------------------------------------------
def rebuild_meta(trail, attention: bool | None = None) -> dict[str, Any]:
    """What :func:`load` needs beyond the tables: shapes, dtypes, labels, view settings."""
    return {
        **({} if trail.stack is None else _stack_meta(trail)),
        "format": FORMAT_VERSION,
        "n_layers": trail.n_layers,
        "n_heads": trail.n_heads,
        "labels": {str(i): s for i, s in trail.labels.items()},
        "dtypes": {
            "ids": str(trail.ids.dtype),
            "positions": str(trail.positions.dtype),
            "special": str(trail.special.dtype),
            "attentions": None if trail.attentions is None else str(trail.attentions.dtype),
        },
        "attention_shape": list(trail.attentions.shape) if attention_included(trail, attention) else None,
        "attention_left_out": _attention_left_out(trail, attention),
        "views": [_view_meta(v) for v in trail.views],
        "lens": None if trail.lens is None else _lens_meta(trail.lens),
    }


def _view_meta(v) -> dict[str, Any]:
    """One view's settings, top-k sizes and dtypes."""
    return {
        "site": v.site,
        "space": v.space,
        "similarity": v.similarity,
        "overlap_k": v.overlap_k,
        "per_head": v.per_head,
        "k": int(v.top_ids.shape[-1]),
        "metrics": [[name, metric_label(name, v), str(vals.dtype)] for name, vals in v.metrics.items()],
        "dtypes": {
            "top_ids": str(v.top_ids.dtype),
            "top_sims": str(v.top_sims.dtype),
            "anisotropy": str(v.anisotropy.dtype),
        },
        "origin_k": None if v.origin_top_ids is None else int(v.origin_top_ids.shape[-1]),
        "origin_dtypes": None
        if v.origin_top_ids is None
        else [str(v.origin_top_ids.dtype), str(v.origin_top_sims.dtype)],
    }


def _stack_meta(trail) -> dict[str, Any]:
    """An encoder-decoder stack's own entries: its name, cross views, cross-attention and source tokens."""
    return {
        "stack": trail.stack,
        "cross": [
            {
                "site": v.site,
                "space": v.space,
                "similarity": v.similarity,
                "dtypes": [str(v.source_order.dtype), str(v.source_sims.dtype)],
            }
            for v in trail.cross_views
        ],
        "cross_attention": None
        if trail.cross_attentions is None
        else [list(trail.cross_attentions.shape), str(trail.cross_attentions.dtype)],
        "source_tokens": None if trail.source_tokens is None else list(trail.source_tokens),
    }


def _attention_left_out(trail, attention: bool | None) -> str | None:
    """Why the attention table is missing from the export (None when it is there or there is none)."""
    if trail.attentions is None or attention_included(trail, attention):
        return None
    return f"{trail.attentions.size:,} rows" + (
        f" (more than the default limit of {MAX_ATTENTION_ROWS:,}; export with attention=True to include it)"
        if attention is None
        else ""
    )


def _lens_meta(lens) -> dict[str, Any]:
    """The logit lens's settings, input ids and dtypes."""
    return {
        "site": lens.site,
        "is_decoder": lens.is_decoder,
        "k": lens.k,
        "n_layers": lens.n_layers,
        "input_ids": lens.input_ids.tolist(),
        "dtypes": {
            name: None if getattr(lens, name) is None else str(getattr(lens, name).dtype)
            for name in (
                "input_ids",
                "top_ids",
                "top_probs",
                "own_rank",
                "own_prob",
                "next_rank",
                "next_prob",
                "entropy",
                "kl",
            )
        },
    }


def full_meta(trail, attention: bool | None = None) -> dict[str, Any]:
    meta = {**trail.meta(), "trail": rebuild_meta(trail, attention)}
    if trail.decoder is not None:
        meta["decoder"] = full_meta(trail.decoder, attention)
    return meta


def tables(trail, attention: bool | None = None) -> dict[str, pd.DataFrame]:
    """Every table of ``trail`` (see the module doc), each with its own columns; an
    encoder-decoder's tables hold both stacks, told apart by the ``stack`` column."""
    out = _stack_tables(trail, attention)
    if trail.decoder is not None:
        for name, frame in _stack_tables(trail.decoder, attention).items():
            out[name] = pd.concat([out[name], frame], ignore_index=True) if name in out else frame
    return out


def _stack_tables(trail, attention: bool | None = None) -> dict[str, pd.DataFrame]:
    """One stack's tables (every table of a single-stack model), built by
    :mod:`~tokentrail.results.trailtables`."""
    out: dict[str, pd.DataFrame] = {
        "tokens": trailtables.tokens_table(trail),
        "metrics": trail.stack_frame(),
        "neighbours": trailtables.neighbours_table(trail),
    }
    if attention_included(trail, attention):
        out["attention"] = trailtables.probability_table(trail.attentions)
    if trail.lens is not None:
        out.update(trailtables.lens_tables(trail, trail.lens))
    if trail.cross_views:
        out["cross"] = trailtables.cross_table(trail)
    if trail.cross_attentions is not None:
        out["cross_attention"] = trailtables.probability_table(trail.cross_attentions)
    if trail.stack is not None:
        out = {name: frame.assign(stack=trail.stack) for name, frame in out.items()}
    return out


def long_frame(trail, attention: bool | None = None) -> pd.DataFrame:
    """Every table in one long frame with a ``table`` column (the Parquet and CSV layout)."""
    meta = pd.DataFrame({"table": ["meta"], "meta": [json.dumps(full_meta(trail, attention))]})
    frames = [meta] + [f.assign(table=name) for name, f in tables(trail, attention).items()]
    columns = LONG_COLUMNS + (["stack"] if trail.stack is not None else [])
    out = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for col in INT_COLUMNS:
        out[col] = out[col].astype("Int64")
    for col in ("token_str", "site", "space", "similarity", "metric", "id_str", "table", "meta") + (
        ("stack",) if trail.stack is not None else ()
    ):
        out[col] = out[col].astype(object)
    return out


def write_parquet(trail, path: str | Path, attention: bool | None = None) -> Path:
    return write_frame(long_frame(trail, attention), path, trail.meta())


def write_csv_table(trail, target, attention: bool | None = None) -> None:
    """The long table as CSV to a path (atomically) or an open text stream."""
    write_csv(long_frame(trail, attention), target)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    cols = []
    for c in frame.columns:
        vals = frame[c].tolist()
        if pd.api.types.is_float_dtype(frame[c]):
            vals = [None if isinstance(x, float) and math.isnan(x) else x for x in vals]
        cols.append(vals)
    names = list(frame.columns)
    return [dict(zip(names, row)) for row in zip(*cols)]


def json_document(trail, attention: bool | None = None) -> str:
    """One JSON document: ``meta`` and every table as records (NaN as null, floats exact)."""
    doc: dict[str, Any] = {"meta": full_meta(trail, attention)}
    for name, frame in tables(trail, attention).items():
        doc[name] = _records(frame)
    return json.dumps(doc, allow_nan=False)


def write_json(trail, path: str | Path | None = None, attention: bool | None = None) -> str:
    text = json_document(trail, attention)
    if path is not None:
        write_text(path, text)
    return text
