"""A fitted translator on disk (issue 26): ``DIR/translator.safetensors`` (per site and
layer ``W`` (d, d) and ``b`` (d,), float64) and ``DIR/translator.json`` (what it is: kind,
model and its identity, sites, layers, ridge and token counts per layer, the corpus it was
fitted on). While a fit runs, ``DIR/sums.safetensors`` holds its running sums (the
checkpoint a resumed fit continues from) and ``DIR/manifest.json`` its progress.

A translator is refused in one line for a model other than its own (:func:`check_model`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokentrail.engine.translator import FitSums, Translator
from tokentrail.spec.errors import InputError
from tokentrail.spec.formats import TRANSLATOR_FORMAT, TRANSLATOR_META, TRANSLATOR_WEIGHTS
from tokentrail.store.writer import atomic_write_bytes

WEIGHTS, META, FORMAT = TRANSLATOR_WEIGHTS, TRANSLATOR_META, TRANSLATOR_FORMAT
SUMS = "sums.safetensors"
MODEL_FACTS = ("model", "model_revision", "model_type", "n_layers", "d_model", "vocab_size")


def save_translator(root: str | Path, translator: Translator) -> Path:
    """Write ``translator`` into the folder ``root`` (weights, then its JSON)."""
    from safetensors.numpy import save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for (site, layer), (W, b) in sorted(translator.maps.items()):
        arrays[f"{site}/{layer}/W"] = np.ascontiguousarray(W.numpy())  # safetensors reads the buffer as C order
        arrays[f"{site}/{layer}/b"] = np.ascontiguousarray(b.numpy())
    atomic_write_bytes(root / WEIGHTS, save(arrays))
    meta = {"format": FORMAT, **translator.meta, "kind": translator.kind}
    atomic_write_bytes(root / META, json.dumps(meta, indent=1, default=str).encode())
    return root


def load_translator(root: str | Path, facts: Mapping[str, Any] | None = None) -> Translator:
    """The translator in ``root``; with ``facts`` (a model's), refused unless they match."""
    from safetensors.numpy import load

    root = Path(root)
    if not (root / META).is_file() or not (root / WEIGHTS).is_file():
        raise InputError(
            f"{root} holds no translator ({META} and {WEIGHTS}): run `tokentrail fit CORPUS --out {root}` first"
        )
    try:
        meta = json.loads((root / META).read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{root / META} is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{root} holds a translator of another format ({meta.get('format')!r}); fit it again")
    if facts is not None:
        check_model(meta, facts, root)
    arrays = load((root / WEIGHTS).read_bytes())
    maps = {}
    for name in arrays:
        site, layer, what = name.split("/")
        if what == "W":
            maps[(site, int(layer))] = (
                torch.from_numpy(arrays[name].astype(np.float64)),
                torch.from_numpy(arrays[f"{site}/{layer}/b"].astype(np.float64)),
            )
    return Translator(meta["kind"], maps, meta)


def check_identity(translator: Translator, root: str | Path) -> None:
    """A study adds an identity translator's views; a prediction translator has none."""
    if translator.kind != "identity":
        raise InputError(f"a study adds an identity translator's views; {root} holds a {translator.kind} translator")


def check_model(meta: Mapping[str, Any], facts: Mapping[str, Any], root: str | Path = "") -> None:
    """Refuse a model other than the translator's: every fact given must equal its own."""
    info = meta.get("model_info", {})
    for key in MODEL_FACTS:
        if key in facts and key in info and facts[key] != info[key]:
            raise InputError(
                f"the translator at {root} was fitted on {info.get('model')!r} ({key} {info[key]!r}); "
                f"this model has {key} {facts[key]!r}: fit one for this model"
            )


def save_sums(root: Path, sums: FitSums, done: int) -> None:
    """The running sums after the first ``done`` batches (a resumed fit continues from them)."""
    from safetensors.numpy import save

    atomic_write_bytes(root / SUMS, save(sums.arrays(), metadata={"batches_done": str(done)}))


def load_sums(root: Path) -> tuple[FitSums, int]:
    """The checkpointed sums and how many batches they hold; none yet: empty sums, 0."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = root / SUMS
    if not path.exists():
        return FitSums(), 0
    with safe_open(str(path), framework="numpy") as f:
        done = int((f.metadata() or {}).get("batches_done", "0"))
    return FitSums.from_arrays(load_file(str(path))), done
