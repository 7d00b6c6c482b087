"""What a model is, read from its config.json before its weights load.

The command line checks ``--layer``, ``--head``, ``--token`` and the text's length against
these facts first, so that a wrong option is refused in seconds rather than after the load
(tens of seconds for a large checkpoint). The counts are the adapter's own: the adapter is
built on the config's module skeleton on the ``meta`` device (shapes, no weights, no
memory), so every fact is the one the loaded model will report, encoder-decoder stacks
and position limits included, with no family's config keys repeated here.

Cheap only: a bundled name, a local folder or a hub id already in the local cache, by
the rules :func:`tokentrail.session.models.load` follows; never a download, never remote
code. Where the facts cannot be had so (the bundled GGUF model, which is converted on its
first load; a hub id not cached; a folder the load will refuse) :func:`model_facts`
returns None and the checks wait for the load, which says what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokentrail.adapters import adapter_for
from tokentrail.session.checkpoint import auto_class
from tokentrail.session.inputs import Encoded, encode
from tokentrail.session.loaded import Stack
from tokentrail.session.models import DEFAULT_MODEL, read_config, read_tokenizer
from tokentrail.session.resolve import CATALOGUE, HUB_ID, package_file, weights_keys
from tokentrail.spec.errors import ModelError


@dataclass(frozen=True)
class ModelFacts:
    """A model's shape, read from its config.json and its checkpoint's tensor names (see
    :func:`model_facts`).

    The same names as :class:`~tokentrail.session.loaded.LoadedModel`'s, so a check
    written against a loaded model runs on these before the load."""

    name: str  # as the caller named it (what the loaded model's errors say)
    folder: Path  # the folder holding config.json (and, usually, the tokenizer)
    family: str  # "bert", "gpt2", "t5", ...
    is_decoder: bool  # a decoder-only LM
    is_seq2seq: bool  # an encoder-decoder: two stacks
    stacks: tuple[Stack, ...]  # (encoder, decoder) for an encoder-decoder, else one
    vocab_size: int  # rows of the embedding table
    max_tokens: int | None  # most tokens one forward pass takes (None: no hard limit)
    # why the logit lens will be refused (the checkpoint has no output head), by the load's
    # own rule on the checkpoint's tensor names; None when it has one or that is not known
    lens_unavailable: str | None = None

    @property
    def n_layers(self) -> int:
        """Layers of the (encoder) stack."""
        return self.stacks[0].n_layers

    @property
    def n_heads(self) -> int:
        """Attention heads per layer of the (encoder) stack."""
        return self.stacks[0].n_heads

    def encode(self, text: str, *, truncate: bool = False) -> Encoded | None:
        """``text`` tokenized as the loaded model will (its special tokens, its length
        limit: :class:`~tokentrail.spec.errors.TooLong` unless ``truncate``), with the
        tokenizer in :attr:`folder` (local files only); None when there is none to load
        cheaply (the load then reports why)."""
        try:
            tokenizer = read_tokenizer(self.folder)
        except ModelError:
            return None
        # encode reads only the model's name, tokenizer and adapter's position limit
        stand_in = SimpleNamespace(
            name=self.name, tokenizer=tokenizer, adapter=SimpleNamespace(max_tokens=self.max_tokens)
        )
        return encode(stand_in, text, truncate=truncate)


def model_facts(name: str | None = None, *, revision: str | None = None) -> ModelFacts | None:
    """The facts of the model ``load(name, revision=revision)`` would load, from its
    config.json and the tensor names in its safetensors headers: no weights read, nothing
    downloaded, no remote code run.

    Args:
        name: a bundled name (see ``tokentrail models``), a local folder or a hub id;
            None for the default model.
        revision: a hub revision (hub ids only), as for ``load``.

    Returns:
        The :class:`ModelFacts`, or None where they cannot be had cheaply: the bundled
        GGUF model (converted on its first load), a hub id not in the local cache, an
        unreadable or unsupported config (``load`` says what is wrong with it).
    """
    folder = _config_folder((name or DEFAULT_MODEL).strip(), revision)
    if folder is None:
        return None
    config = _read_config(folder)
    if config is None:
        return None
    keys = _tensor_names(folder)
    adapter = _skeleton_adapter(config, keys or [])
    if adapter is None:
        return None
    no_lens = keys is not None and not adapter.is_seq2seq and adapter.lens_head() is None
    stacks = (adapter, adapter.decoder_stack()) if adapter.is_seq2seq else (adapter,)
    return ModelFacts(
        name=(name or DEFAULT_MODEL).strip(),
        folder=folder,
        family=adapter.family,
        is_decoder=adapter.is_decoder,
        is_seq2seq=adapter.is_seq2seq,
        stacks=tuple(Stack(a.stack, a.n_layers, a.n_heads) for a in stacks),
        vocab_size=adapter.vocab_size,
        max_tokens=adapter.max_tokens,
        lens_unavailable=adapter.lens_unavailable_reason() if no_lens else None,
    )


def _tensor_names(folder: Path) -> list[str] | None:
    """The checkpoint's tensor names from its safetensors headers (no weight read); None
    where they are not cheap (pickled weights) or the load will refuse the files."""
    try:
        return weights_keys(folder, allow_pickle=False)
    except ModelError:
        return None


def _config_folder(name: str, revision: str | None) -> Path | None:
    """The local folder whose config.json ``load`` would read, by its resolution order:
    a bundled name, a local folder, then a hub id (only if already cached)."""
    entry = CATALOGUE.get(name)
    if entry is not None and entry.package:
        path = package_file(entry)
        return path if path is not None and path.is_dir() else None  # a .gguf has no config.json until converted
    local = Path(name).expanduser()
    if local.is_dir():
        return local.resolve() if (local / "config.json").is_file() else None
    hub_id = entry.hub_id if entry is not None and entry.hub_id else name
    if not HUB_ID.match(hub_id):
        return None
    return _cached_snapshot(hub_id, revision)


def _cached_snapshot(hub_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of ``hub_id`` holding its config.json; None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    except Exception:  # a malformed id or cache: the load reports it
        return None
    return Path(found).parent if isinstance(found, str) else None


def _read_config(folder: Path) -> Any:
    """The folder's config as the load reads it, or None where the load would refuse it (it says why)."""
    try:
        return read_config(folder)
    except ModelError:
        return None


def _skeleton_adapter(config: Any, keys: list[str]) -> Any:
    """The model's adapter, built on the module skeleton the load would build (its Auto
    class by :func:`~tokentrail.session.checkpoint.auto_class`: with the output head only
    where the checkpoint's tensor names ``keys`` give one) on the ``meta`` device: every
    shape, no weights and no memory, so the adapter's facts need no family code here."""
    import torch

    try:
        with torch.device("meta"):
            model = auto_class(config, keys).from_config(config, attn_implementation="eager")
        return adapter_for(model)
    except Exception:  # a config the load refuses too (it says why): no early facts
        return None
