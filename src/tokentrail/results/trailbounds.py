"""What an export may ask of the reader: bounds checked before a Trail's arrays are made.

An export's metadata claims the arrays' shapes (layers, heads, tokens, k, the attention
shape); the reader fills arrays of those shapes from the tables' rows. Every cell of every
array is one row of the file (a neighbours row fills two: the id and the similarity), so
a genuine file's claims are bounded by its rows. A file that claims more is forged or
damaged, and is refused before any array is allocated; so is one whose arrays would not
fit in memory, or a file larger than :data:`MAX_TRAIL_BYTES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokentrail.engine.budget import HEADROOM, human, limit_bytes
from tokentrail.spec.errors import InputError

#: the largest export file read (Parquet counts its uncompressed size)
MAX_TRAIL_BYTES = 2 << 30
#: bytes per claimed cell while a Trail is rebuilt (a float64 scratch array, then the result)
BYTES_PER_CELL = 16
#: the logit lens' per-(layer, token) arrays, one table row per cell each
LENS_METRICS = ("own_rank", "own_prob", "next_rank", "next_prob", "entropy")
#: cells a file may claim beyond two per row (the token arrays, rounding)
SLACK_CELLS = 4096


def check_file_size(path: Path, size: int, what: str = "") -> None:
    """Refuse an export over :data:`MAX_TRAIL_BYTES` before reading it."""
    if size > MAX_TRAIL_BYTES:
        raise InputError(f"{path} is {human(size)}{what}; tokentrail reads exports of at most {human(MAX_TRAIL_BYTES)}")


def check_claims(meta: Mapping[str, Any], rows: int, where: Path | str) -> None:
    """Refuse metadata whose arrays hold more cells than the file has rows to fill (two per
    row), or that would not fit in memory; a decoder nested inside a decoder is refused too."""
    cells = claimed_cells(meta)
    if isinstance(meta.get("decoder"), Mapping):
        if "decoder" in meta["decoder"]:
            raise InputError(f"{where} is not a tokentrail export: its decoder has a decoder of its own")
        cells += claimed_cells(meta["decoder"])
    if cells > 2 * rows + SLACK_CELLS:
        raise InputError(
            f"{where} claims arrays of {cells:,} cells but holds {rows:,} rows: a damaged or forged export "
            "(each cell is one row of a genuine file)"
        )
    need, limit = BYTES_PER_CELL * cells, limit_bytes()
    if limit is not None and need > HEADROOM * limit:
        raise InputError(
            f"{where} would need about {human(need)} of memory to load ({cells:,} cells) and the machine has "
            f"{human(limit)} available"
        )


def claimed_cells(meta: Mapping[str, Any]) -> int:
    """How many array cells one stack's metadata claims (its views, attention, lens and
    cross-attention), from the numbers in the metadata alone."""
    rb = meta["trail"]
    L, H, n = int(rb["n_layers"]), int(rb["n_heads"]), len(meta["tokens"])
    if min(L, H) < 0:
        raise InputError(f"the export claims {L} layers and {H} heads")
    cells = 3 * n  # ids, positions, special
    for spec in rb["views"]:
        cell = L * H * n if spec["per_head"] else L * n
        cells += cell * (len(spec["metrics"]) + 2 * _count(spec["k"])) + (L * H if spec["per_head"] else L)
        if spec.get("origin_k") is not None:
            cells += 2 * n * _count(spec["origin_k"])
    if rb.get("attention_shape") is not None:
        cells += _product(rb["attention_shape"])
    lens = rb.get("lens")
    if lens is not None:
        LL, k = _count(lens["n_layers"]), _count(lens["k"])
        metrics = sum(lens["dtypes"].get(name) is not None for name in LENS_METRICS)
        cells += LL * n * (metrics + 2 * k)
    if rb.get("cross"):
        m = len(rb["source_tokens"])
        cells += len(rb["cross"]) * 2 * L * H * n * m
    if rb.get("cross_attention") is not None:
        cells += _product(rb["cross_attention"][0])
    return cells


def _count(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise InputError(f"the export claims a negative size ({number})")
    return number


def _product(shape: Any) -> int:
    return math.prod(_count(s) for s in shape)
