"""One batch of a study, in one home: compute it, tag it with its own counts, write its
parts, and say what the driver records (:func:`run_batch`). Both engines call it: the
local runner here in the driver, the Ray actors (:mod:`.ray_engine`) in theirs."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq

from tokentrail.corpus.compute import BatchResult, StudyOptions, compute_batch
from tokentrail.store.writer import StudyDir, part_name


def model_info(loaded) -> dict[str, Any]:
    a = loaded.adapter
    return {
        "model": loaded.name,
        "model_revision": loaded.revision,
        "model_type": str(a.config.model_type),
        "family": a.family,
        "n_layers": a.n_layers,
        "d_model": a.d_model,
        "vocab_size": a.vocab_size,
        "is_decoder": a.is_decoder,
        "fast_tokenizer": bool(getattr(loaded.tokenizer, "is_fast", False)),
    }


def batch_meta(result: BatchResult) -> dict[str, Any]:
    return {"texts": result.n_texts, "tokens": result.n_tokens, "skipped": result.skipped.as_dict()}


def tag_batch(result: BatchResult) -> BatchResult:
    """Keep the batch's own counts in its data part, so a manifest that lags behind a
    crash can be rebuilt from the parts."""
    meta = {**(result.tokens.schema.metadata or {}), b"tokentrail_batch": json.dumps(batch_meta(result)).encode()}
    result.tokens = result.tokens.replace_schema_metadata(meta)
    return result


def read_batch_meta(sd: StudyDir, batch: int) -> dict[str, Any]:
    meta = pq.read_schema(sd.data / part_name(batch)).metadata or {}
    return json.loads(meta.get(b"tokentrail_batch", b"{}"))


def run_batch(
    loaded, b: int, batch: list, options: StudyOptions, sd: StudyDir, *, threshold: float, strict: bool
) -> tuple[int, dict[str, Any], set[float]]:
    """Compute batch ``b``, tag it (:func:`tag_batch`), write its parts into ``sd`` and
    return ``(b, its counts, its sample keys)``: what the driver records."""
    result = tag_batch(compute_batch(loaded, batch, options, threshold=threshold, strict=strict))
    sd.write_batch(b, result)
    return b, batch_meta(result), set(result.sample.column("key").to_pylist())
