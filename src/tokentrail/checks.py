"""Option checks shared by the CLI and the Python API: each refusal is one InputError.

They run at the edge, as early as the fact they need is known: types before anything,
the vocabulary size after the model is loaded, before any analysis.
"""

from __future__ import annotations

import numbers
import os
from pathlib import PurePath

from .errors import InputError


def check_count(name: str, value: object) -> int:
    """A positive whole number given as an int (not a str, float or bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number, not {type(value).__name__} {value!r}")
    if value < 1:
        raise InputError(f"{name} must be at least 1 (got {value})")
    return int(value)


def check_model_name(model: object) -> object:
    """A model name, hub id, local folder (str or path), or an already loaded model."""
    if isinstance(model, (PurePath, os.PathLike)):
        return os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise InputError("the model name is empty: give a bundled name (see `tokentrail models`), a hub id or a folder")
        return model
    if hasattr(model, "adapter") and hasattr(model, "tokenizer"):
        return model
    raise InputError(f"model must be a name, a folder path or a loaded model, not {type(model).__name__}")


DEFAULT_OVERLAP_K = 100  # SPEC default; a smaller vocabulary caps it (only when not asked for)


def check_k_in_vocab(k: int, overlap_k: int | None, vocab_size: int) -> int:
    """k and overlap k cannot ask for more neighbours than the vocabulary has; returns the
    overlap k to use (``None``: the default, capped by the vocabulary)."""
    for name, value in (("k", k), ("overlap k", overlap_k)):
        if value is not None and value > vocab_size:
            raise InputError(f"{name} = {value:,} is more than the model's vocabulary of {vocab_size:,} tokens: use at most {vocab_size:,}")
    return min(DEFAULT_OVERLAP_K, vocab_size) if overlap_k is None else overlap_k


def check_layer(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise InputError(f"layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return layer % n_layers


def check_head(head: int, n_heads: int) -> int:
    if not 0 <= head < n_heads:
        raise InputError(f"head {head} is out of range: the model has {n_heads} heads (0..{n_heads - 1})")
    return head
