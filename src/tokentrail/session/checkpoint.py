"""Does a folder's checkpoint fit what it claims? Checked before and after the weights load.

* Before: the config.json is read with bounds (its size, its nesting) and its sizes are
  positive integers; the output head is looked for among the checkpoint's tensor names
  (safetensors headers, no weight read), so a decoder saved without its head loads as the
  bare model instead of getting a freshly initialised, random head.
* After: transformers' own loading report (missing and unexpected tensors) is read, so a
  checkpoint that does not fill the model its config builds (``gpt2`` over BERT weights)
  is refused with the first missing names instead of running on random weights.
* A local folder's identity (what ``--resume`` compares) is a hash of its model files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tokentrail.adapters import adapter_class, decoder_model_types, seq2seq_model_types
from tokentrail.spec.errors import ModelError

#: the largest config.json read (real ones are a few kB; a label map can reach hundreds)
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: the deepest nesting of a config.json read (real ones nest 3 or 4 deep)
MAX_CONFIG_DEPTH = 32
#: config fields that are sizes (under any family's alias): when present, positive integers
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "num_layers",
    "num_decoder_layers",
    "d_model",
    "d_ff",
    "d_kv",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "n_inner",
)
#: how many names an error lists
SHOWN = 3


# ---- the config ------------------------------------------------------------------------
def check_config_file(path: Path) -> dict[str, Any]:
    """The config.json at ``path`` as a dict, refused when it is too large, not a JSON
    object, or nested deeper than :data:`MAX_CONFIG_DEPTH` (before transformers reads it)."""
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ModelError(
            f"{path} is {size:,} bytes; tokentrail reads a config.json of at most {MAX_CONFIG_BYTES:,} bytes"
        )
    try:
        doc = json.loads(path.read_bytes())
    except RecursionError:
        raise ModelError(f"{path} nests deeper than {MAX_CONFIG_DEPTH} levels: not a model config") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the config in {path.parent}: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path} is not a JSON object: not a model config")
    if _depth(doc) > MAX_CONFIG_DEPTH:
        raise ModelError(f"{path} nests deeper than {MAX_CONFIG_DEPTH} levels: not a model config")
    return doc


def _depth(doc: Any) -> int:
    """How deep ``doc``'s dicts and lists nest (a scalar is 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def check_sizes(config: Any, where: Path) -> None:
    """Refuse a config whose sizes (layers, widths, heads, vocabulary) are not positive integers."""
    for field in SIZE_FIELDS:
        try:
            value = getattr(config, field, None)
        except Exception:  # an alias whose computation fails on a bad value
            value = "?"
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(
                f"the config in {where} gives {field} = {value!r}: sizes (layers, widths, heads, vocabulary) "
                "must be positive integers"
            )


# ---- the output head -------------------------------------------------------------------
def has_output_head(config: Any, keys: Iterable[str]) -> bool:
    """Whether the checkpoint (tensor names ``keys``) gives the model its output head:
    one of the adapter's head tensors is there, or the config ties the head to the
    embedding table and the adapter's head is nothing but that table."""
    cls = adapter_class(config.model_type)
    if cls is None:
        return False
    prefixes = cls.head_key_prefixes
    if prefixes and any(k.startswith(prefixes) for k in keys):
        return True
    return cls.head_tied_to_embedding and bool(getattr(config, "tie_word_embeddings", False))


def auto_class(config: Any, keys: list[str]) -> Any:
    """The transformers Auto class that loads ``config``'s model: with its output head when
    the checkpoint (tensor names ``keys``) has one, the bare model otherwise. An
    encoder-decoder always loads whole (both stacks run through it); a missing untied head
    is then refused by :func:`check_filled`."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    model_type = config.model_type
    if model_type in seq2seq_model_types():
        return AutoModelForSeq2SeqLM
    if not has_output_head(config, keys):
        return AutoModel
    if getattr(config, "is_decoder", False) or model_type in decoder_model_types():
        return AutoModelForCausalLM
    return AutoModelForMaskedLM


# ---- after the load: does the checkpoint fill the model? -------------------------------
def check_filled(model: Any, info: Mapping[str, Any], folder: Path) -> None:
    """Refuse a model that its checkpoint does not fill: tensors the model needs that the
    checkpoint lacks (they would be random), or tensors of the model's own modules that
    the model has no place for (a checkpoint of a larger or other model). Modules the
    adapter never reads (its ``unread_key_prefixes``) and heads outside the base model
    (a classifier, a next-sentence head) are allowed."""
    cls = adapter_class(model.config.model_type)
    unread = cls.unread_key_prefixes if cls is not None else ()
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    base = model.base_model
    own = {name for name, _ in base.named_children()}

    def below_base(key: str) -> str:
        return key[len(prefix) :] if prefix and key.startswith(prefix) else key

    order = {k: i for i, k in enumerate(model.state_dict())}  # the model's own order: embeddings first
    missing = sorted(
        (k for k in info.get("missing_keys", ()) if not below_base(k).startswith(unread)),
        key=lambda k: order.get(k, len(order)),
    )
    unexpected = [
        k
        for k in info.get("unexpected_keys", ())
        if not below_base(k).startswith(unread) and below_base(k).split(".")[0] in own
    ]
    if not missing and not unexpected:
        return
    kind = f"{type(model).__name__} (model_type {model.config.model_type!r})"
    parts = []
    if missing:
        parts.append(f"{len(missing):,} of its tensors are missing ({_names(missing, sort=False)})")
    if unexpected:
        parts.append(f"{len(unexpected):,} tensors have no place in it ({_names(unexpected)})")
    raise ModelError(
        f"the weights in {folder} do not fill the {kind} its config.json builds: {'; '.join(parts)}; "
        "the config and the weights belong to different models"
    )


def check_names(config: Any, auto: Any, keys: list[str], folder: Path) -> None:
    """Before any weight is read: refuse a checkpoint that holds none of the tensors of the
    model its config builds (by name, against the model's skeleton on the ``meta``
    device), such as a ``gpt2`` config over BERT weights. A partial fit is left to
    :func:`check_filled`, which reads transformers' own report after the load."""
    import torch

    try:
        with torch.device("meta"):
            skeleton = auto.from_config(config, attn_implementation="eager")
    except Exception:  # a config transformers cannot build: the load says why
        return
    prefix = f"{skeleton.base_model_prefix}."
    base = skeleton.base_model
    wanted = [k for k in base.state_dict()]
    have = {k[len(prefix) :] if k.startswith(prefix) else k for k in keys}
    if not wanted or any(k in have for k in wanted):
        return
    raise ModelError(
        f"the weights in {folder} hold none of the tensors of the {type(skeleton).__name__} "
        f"(model_type {config.model_type!r}) its config.json builds (it needs {_names(wanted, sort=False)}; "
        f"the checkpoint has {_names(sorted(keys), sort=False)}): the config and the weights belong to different models"
    )


def _names(keys: list[str], sort: bool = True) -> str:
    keys = sorted(keys) if sort else keys
    more = f", … {len(keys) - SHOWN:,} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


# ---- a local folder's identity ---------------------------------------------------------
#: the files whose bytes are a local model: weights, their index, config and tokenizer
IDENTITY_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
)
#: files larger than this are announced while they are hashed
ANNOUNCE_BYTES = 256 * 1024 * 1024
_CHUNK = 8 * 1024 * 1024
_hashed: dict[tuple[str, int, int, int], str] = {}


def folder_revision(folder: Path, progress: Callable[[str], None] | None = None) -> str:
    """``sha256:<hex>`` over a local model folder's files (:data:`IDENTITY_PATTERNS`):
    each file's name, size and full content (streamed in 8 MiB chunks, so memory stays
    bounded whatever the size). Any changed byte of the weights, config or tokenizer
    changes it. A file's digest is kept for the process while its size, mtime and inode
    are unchanged, so checking and then loading a folder hashes it once."""
    say = progress or (lambda message: None)
    files = sorted({p for pattern in IDENTITY_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    total = hashlib.sha256()
    for path in files:
        total.update(f"{path.name}\0{_file_digest(path, say)}\n".encode())
    return f"sha256:{total.hexdigest()}"


def _file_digest(path: Path, say: Callable[[str], None]) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _hashed.get(key)
    if digest is None:
        if st.st_size > ANNOUNCE_BYTES:
            say(f"hashing {path.name} ({st.st_size / 1e9:.1f} GB) to identify the model")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        digest = _hashed[key] = f"{st.st_size}:{h.hexdigest()}"
    return digest
