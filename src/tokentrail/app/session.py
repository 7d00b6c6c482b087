"""What one browser session is looking at, and the results it has already computed.

A :class:`Session` lives in a ``gr.State``: each page (and each ``gradio_client``
client) has its own, so one user switching model or text never changes another's page.
It caches results, never models: loaded models sit in :func:`tokentrail.models.load`'s
shared LRU (two at a time), and a session only remembers a model's *name*.

The click path stays cheap: a text is analysed once per (model, text, options) and the
:class:`~tokentrail.results.Trail` kept here; a token click re-renders from it. The
per-head view and the attention walkthrough need the activations of one forward pass,
captured once per (model, text, mask) and then computed for one layer and token at a time.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..analysis import heads_at
from ..api import trace
from ..capture import Activations, capture
from ..errors import InputError, ModelError
from ..inputs import check_text, encode
from ..metrics import SIMILARITIES
from ..models import CATALOGUE, DEFAULT_MODEL, LoadedModel, is_available, list_models, load
from ..results import HeadsAt, Trail
from ..walkthrough import AttentionStep, attention_step

INITIAL_TEXT = "Time flies like an arrow. Fruit flies like a banana."
MAX_CHARS = 2_000  # characters a page may send
MAX_TOKENS = 256  # tokens analysed at once: beyond this a click is no longer interactive
SITES = ("attn_resid", "attn_resid_ln", "layer_out")
K_RANGE = (1, 50)
OVERLAP_K = 100  # SPEC default for overlap@k

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


# ---- the model allowlist -------------------------------------------------------------
@dataclass(frozen=True)
class MenuEntry:
    value: str  # what models.load() is given
    label: str  # what the page shows
    status: str
    description: str

    @property
    def available(self) -> bool:
        return is_available(self.value)


class ModelMenu:
    """The only models a page may ask for: the catalogue, the local hub cache, and what the
    server's operator named (hub ids or local folders). Pages send a name; anything not
    on this list is refused before it reaches the model loader."""

    def __init__(self, extra: Sequence[str] | None = None):
        self.entries: dict[str, MenuEntry] = {}
        for row in list_models():
            short = row["name"]
            self.entries[short] = MenuEntry(short, short, row["status"], row["description"])
        for name in extra or ():
            self.add(name)

    def add(self, name: str) -> MenuEntry:
        name = str(name).strip()
        if name in self.entries:
            return self.entries[name]
        folder = Path(name).expanduser()
        if folder.is_dir():
            path = str(folder.resolve())
            entry = MenuEntry(path, f"{folder.resolve().name} (local folder)", "local folder", f"loaded from {path}")
        elif name in CATALOGUE or _HUB_ID.match(name):
            status = "hub: cached" if is_available(name) else "hub: not cached (needs internet once)"
            entry = MenuEntry(name, name, status, "named by the server's operator")
        else:
            raise ModelError(f"cannot offer model {name!r}: it is neither a known name, a hub id (owner/name) nor an existing folder")
        self.entries[entry.value] = entry
        return entry

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs; a model that cannot be loaded here now says why in its label."""
        out = []
        for e in self.entries.values():
            missing = "not installed" in e.status or "not cached" in e.status
            out.append((f"{e.label} — {e.status}" if missing else e.label, e.value))
        return out

    def check(self, name: object) -> MenuEntry:
        if not isinstance(name, str) or name not in self.entries:
            raise InputError(f"model {name!r} is not offered by this server; choose one from the list")
        return self.entries[name]

    @property
    def default(self) -> str:
        if DEFAULT_MODEL in self.entries:
            return DEFAULT_MODEL
        return next(iter(self.entries))


# ---- one lock per model: the loader and the space caches are not thread-safe ---------
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def model_lock(name: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(name, threading.RLock())


def load_model(name: str, say: Callable[[str], None] | None = None) -> LoadedModel:
    with model_lock(name):
        return load(name, progress=say)


# ---- options and the session -----------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """What the page's option controls say (everything that changes the analysis)."""

    site: str = "attn_resid"
    positional: bool = True  # "use positional embeddings": encodings, else embeddings
    similarity: str = "cosine"
    k: int = 15
    causal: bool = True  # decoders only; ignored for encoders

    @property
    def space(self) -> str:
        return "encodings" if self.positional else "embeddings"

    @classmethod
    def from_page(cls, site, positional, similarity, k, causal) -> "Options":
        if site not in SITES:
            raise InputError(f"unknown site {site!r}: choose from {', '.join(SITES)}")
        if similarity not in SIMILARITIES:
            raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise InputError(f"k must be a whole number, not {k!r}") from None
        if not K_RANGE[0] <= k <= K_RANGE[1]:
            raise InputError(f"k must be between {K_RANGE[0]} and {K_RANGE[1]}, not {k}")
        return cls(site=site, positional=bool(positional), similarity=similarity, k=k, causal=bool(causal))


def check_page_text(text: object) -> str:
    """The page's text, or an InputError that says what is wrong (and the limits)."""
    if isinstance(text, str) and len(text) > MAX_CHARS:
        raise InputError(f"the text is {len(text):,} characters; this app takes at most {MAX_CHARS:,} (and {MAX_TOKENS} tokens)")
    return check_text(text)


@dataclass
class Session:
    """One page's model, text, options, selection and cached results."""

    model: str
    options: Options = field(default_factory=Options)
    text: str | None = None
    trail: Trail | None = None
    token: int = 0
    layer: int = 0
    head: int = 0
    tab: str = "layers"  # the view the page shows (only it is rendered on a click)
    max_trails: int = 3  # analyses kept per session (256 tokens on a 30-layer model: ~100 MB each)
    _trails: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _acts: tuple | None = field(default=None, repr=False)  # (key, Activations)
    _heads: OrderedDict = field(default_factory=OrderedDict, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)  # one event at a time per page

    # ---- analysing ------------------------------------------------------------------
    def analyse(self, text: str, options: Options, say: Callable[[float, str], None] | None = None) -> Trail:
        """Analyse ``text`` with this session's model (cached per model, text and options)."""
        say = say or (lambda f, m: None)
        text = check_page_text(text)
        loaded = load_model(self.model, lambda m: say(0.0, m))
        is_decoder = loaded.adapter.is_decoder
        options = options if is_decoder else replace(options, causal=True)
        key = (self.model, text, options)
        trail = self._trails.get(key)
        if trail is None:
            with model_lock(self.model):  # tokenizers and space caches are not thread-safe
                enc = encode(loaded, text, truncate=True, max_tokens=MAX_TOKENS)
                if enc.truncated_from is not None:
                    raise InputError(
                        f"the text is {enc.truncated_from} tokens for {loaded.name}; this app analyses at most "
                        f"{MAX_TOKENS} at once: shorten it (the command line takes longer texts)"
                    )
                trail = trace(
                    text,
                    loaded,
                    site=options.site,
                    space=options.space,
                    similarity=options.similarity,
                    k=options.k,
                    overlap_k=OVERLAP_K,
                    causal=options.causal if is_decoder else None,
                    progress=say,
                )
            self._trails[key] = trail
            while len(self._trails) > self.max_trails:
                self._trails.popitem(last=False)
        self._trails.move_to_end(key)
        if self.trail is None or (self.trail.text, self.trail.info.model) != (trail.text, trail.info.model):
            self.token = first_content_token(trail)  # a new text or model: start at its first word
        self.text, self.options, self.trail = text, options, trail
        self.layer = min(self.layer, trail.n_layers - 1)
        self.head = min(self.head, trail.n_heads - 1)
        return trail

    def switch(self, model: str) -> None:
        if model != self.model:
            self.model = model
            self._acts = None
            self._heads.clear()

    # ---- the selection ------------------------------------------------------------------
    def require_trail(self) -> Trail:
        if self.trail is None:
            raise InputError("there is nothing to select yet: enter a text and press Analyse (or Enter) first")
        return self.trail

    def select(self, token=None, layer=None, head=None) -> None:
        trail = self.require_trail()
        if token is not None:
            self.token = trail.token_index(_whole(token, "token"))
        if layer is not None:
            self.layer = trail.check_layer(_whole(layer, "layer"))
        if head is not None:
            self.head = trail.check_head(_whole(head, "head"))

    # ---- lazy per-layer views -------------------------------------------------------------
    def _activations(self, loaded: LoadedModel) -> Activations:
        trail = self.require_trail()
        key = (self.model, trail.text, trail.info.causal)
        if self._acts is None or self._acts[0] != key:
            with model_lock(self.model):
                acts = capture(loaded.adapter, torch.as_tensor(trail.ids), causal=trail.info.causal)
            self._acts = (key, acts)
            self._heads.clear()
        return self._acts[1]

    def heads(self) -> HeadsAt:
        """Every head of the selected layer, for the selected token (value spaces)."""
        trail = self.require_trail()
        loaded = load_model(self.model)
        acts = self._activations(loaded)
        key = (self._acts[0], self.layer, self.token, self.options.similarity, self.options.k)
        if key not in self._heads:
            with model_lock(self.model):
                self._heads[key] = heads_at(
                    loaded.adapter,
                    loaded.spaces,
                    acts,
                    self.layer,
                    self.token,
                    label=loaded.labels,
                    kind="value",
                    similarity=self.options.similarity,
                    k=self.options.k,
                )
            while len(self._heads) > 64:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        assert self._heads[key].attention.shape[1] == trail.n_tokens
        return self._heads[key]

    def step(self) -> AttentionStep:
        """The selected head's attention for the selected token, step by step."""
        trail = self.require_trail()
        loaded = load_model(self.model)
        acts = self._activations(loaded)
        return attention_step(loaded.adapter, acts, self.layer, self.head, self.token, causal=trail.info.causal)


def first_content_token(trail: Trail) -> int:
    """The first token that is not a special token (or 0)."""
    for i, special in enumerate(trail.special):
        if not special:
            return i
    return 0


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    try:
        f = float(value)  # sliders send floats
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, not {value!r}") from None
    if f != int(f):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    return int(f)
