"""What one browser session is looking at, and the results it has already computed.

A :class:`Session` lives in a ``gr.State``: each page (and each ``gradio_client``
client) has its own, so one user switching model or text never changes another's page.
It caches results, never models: loaded models sit in :func:`tokentrail.session.models.load`'s
shared LRU (two at a time), and a session only remembers a model's *name*.

The click path stays cheap: a text is analysed once per (model, text, options) and the
:class:`~tokentrail.results.trail.Trail` kept here; a token click re-renders from it. The
per-head view and the attention walkthrough need the activations of one forward pass,
captured once per (model, text, mask) and then computed for one layer and token at a time.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tokentrail.engine.budget import held_bytes, human
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.session.inputs import check_text
from tokentrail.session.models import CATALOGUE, DEFAULT_MODEL, HUB_ID, LoadedModel, is_available, list_models, load
from tokentrail.spec.options import LENS_SITES, RESIDUAL_SITES, SIMILARITIES, TraceOptions
from tokentrail.present.progress import CallbackProgress, Steps, analysis_steps
from tokentrail.results.trail import HeadsAt, LensResult, Trail
from tokentrail.session.runner import Run
from tokentrail.engine.walkthrough import AttentionStep
from tokentrail.app.queues import concurrency_for

INITIAL_TEXT = "Time flies like an arrow. Fruit flies like a banana."
MAX_CHARS = 2_000  # characters a page may send
MAX_TOKENS = 256  # tokens analysed at once: beyond this a click is no longer interactive
SITES = RESIDUAL_SITES  # the sites the page offers (heads have their own tab)
K_RANGE = (1, 50)
HEAD_SPACES = ("value", "key", "query")  # the spaces the heads tab offers (SPEC value/key/query@l,h)
LENS_K = 5  # predictions the lens tab shows per layer
SESSION_BYTES = 600_000_000  # one session's cached results at most (older analyses dropped)
TOTAL_BYTES = 3_000_000_000  # every session's cached results together (least recently used dropped)
IDLE_S = 900  # a session unused this long loses its cached results



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
        elif name in CATALOGUE or HUB_ID.match(name):
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


def load_model(name: str, say: Callable[[str], None] | None = None) -> LoadedModel:
    return load(name, progress=say)


# ---- options and the session -----------------------------------------------------------
NO_CORRECTION = "none"
CORRECTION_CHOICES = (NO_CORRECTION, "zscore", "center", "rogue:1", "rogue:2", "rogue:3", "abtt:1", "abtt:2", "abtt:3")
"""The correction selector's menu (any ``rogue:N`` / ``abtt:N`` may be typed)."""


STUDY_FIT = "@"
"""``"zscore@NAME"``: the correction fitted to the operator's study NAME (``serve --studies``)."""
STUDY_FITS = ("zscore", "center", "rogue:2", "abtt:3")  # offered per study (others may be typed)


def correction_choices(studies=None) -> list[tuple[str, str]]:
    """The correction selector's menu as (label, value): fitted to the text, then, for each
    study the server offers (``studies``: the Study tab's shelf), fitted to that study."""
    choices = [(c, c) for c in CORRECTION_CHOICES]
    for name in [] if studies is None else studies.names():
        choices += [(f"{c}, fitted to study {name}", f"{c}{STUDY_FIT}{name}") for c in STUDY_FITS]
    return choices


def page_options(site: object, positional: object, similarity: object, k: object, causal: object, correct: object = NO_CORRECTION, studies=None) -> TraceOptions:
    """The trace options the page's controls describe ("use positional embeddings" picks
    the ``encodings`` space, else ``embeddings``; ``correct`` the geometry correction,
    ``"none"`` for none, ``"zscore@NAME"`` fitted to the offered study NAME of
    ``studies``, the shelf that is the page's only way to a study), validated with the
    page's limits."""
    if site not in SITES:
        raise InputError(f"unknown site {site!r}: choose from {', '.join(SITES)}")
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
    k = _whole(k, "k")
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise InputError(f"k must be between {K_RANGE[0]} and {K_RANGE[1]}, not {k}")
    space = "encodings" if positional else "embeddings"
    correct = None if correct in (None, "", NO_CORRECTION) else correct
    if correct is not None and not isinstance(correct, str):
        raise InputError(f"unknown correction {correct!r}: choose from {', '.join(CORRECTION_CHOICES)}")
    correct_from = None
    if correct is not None and STUDY_FIT in correct:
        correct, name = (part.strip() for part in correct.split(STUDY_FIT, 1))
        if studies is None or not studies.names():
            raise InputError("this server offers no corpus studies to fit a correction to (tokentrail serve --studies DIR)")
        correct_from = str(studies.path(name))  # an offered study, or refused
    return TraceOptions.make(site=site, space=space, similarity=similarity, k=k, causal=bool(causal), correct=correct, correct_from=correct_from)


DEFAULT_OPTIONS = TraceOptions.make(causal=True)  # what page_options gives for the page defaults


def check_page_text(text: object) -> str:
    """The page's text, or an InputError that says what is wrong (and the limits)."""
    if isinstance(text, str) and len(text) > MAX_CHARS:
        raise InputError(f"the text is {len(text):,} characters; this app takes at most {MAX_CHARS:,} (and {MAX_TOKENS} tokens)")
    return check_text(text)


@dataclass
class Session:
    """One page's model, text, options, selection and cached results.

    It keeps the :class:`~tokentrail.session.runner.Run` of its text (one forward pass, shared
    by the Trail, the heads view and the walkthrough) and a few Trails."""

    model: str
    options: TraceOptions = DEFAULT_OPTIONS
    text: str | None = None
    trail: Trail | None = None
    token: int = 0
    layer: int = 0
    head: int = 0
    tab: str = "layers"  # the view the page shows (only it is rendered on a click)
    head_space: str = "value"  # the heads tab compares each head with its value, key or query space
    lens_site: str = "layer_out"  # the residual the logit lens reads
    max_trails: int = 3  # analyses kept per session (256 tokens on a 30-layer model: ~100 MB each)
    max_bytes: int = SESSION_BYTES  # older analyses are dropped beyond this (the current one stays)
    evicted: str | None = None  # why the cached results were dropped (said on the next click)
    last_used: float = field(default_factory=time.monotonic, compare=False)
    _trails: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _run: Run | None = field(default=None, repr=False)
    _rogue: tuple = field(default=(None, None), repr=False)  # (analysis key, the rogue-dimension line)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)  # one event at a time per page

    # ---- analysing ------------------------------------------------------------------
    def analyse(self, text: str, options: TraceOptions, progress: Steps | None = None) -> Trail:
        """Analyse ``text`` with this session's model (cached per model, text and options).
        ``progress`` gets the loading messages and the analysis' steps."""
        progress = progress or CallbackProgress(lambda m, done, total: None)
        text = check_page_text(text)
        with concurrency_for(self.model):
            loaded = load_model(self.model, progress.loading)
            if not loaded.is_decoder:
                options = options.with_(causal=None)  # encoders have no mask to choose
            key = (self.model, text, options)
            trail = self._trails.get(key)
            if trail is None:
                progress.start_analysis(analysis_steps(options.pairs(), loaded.adapter.n_layers))
                progress.analysis(0.0, "running the model")
                trail = self._run_for(loaded, text, options).trail(options, progress=progress.analysis)
                self._trails[key] = trail
        self._trails.move_to_end(key)
        self.evicted = None
        self._fit(keep=key)
        if self.trail is None or (self.trail.text, self.trail.info.model) != (trail.text, trail.info.model):
            self.token = first_content_token(trail)  # a new text or model: start at its first word
        self.text, self.options, self.trail = text, options, trail
        self.layer = min(self.layer, trail.n_layers - 1)
        self.head = min(self.head, trail.n_heads - 1)
        return trail

    def _run_for(self, loaded: LoadedModel, text: str, options: TraceOptions) -> Run:
        """The forward pass of ``text`` under ``options``' mask: reused while they stay."""
        run = self._run
        if run is None or run.model is not loaded or run.text != text or run.options.causal != options.causal:
            try:
                run = loaded.run(text, options, max_tokens=MAX_TOKENS)
            except InputError as exc:
                if "pass --truncate" not in str(exc):
                    raise
                n = len(loaded.encode(text).ids) if len(text) < MAX_CHARS * 4 else "too many"
                raise InputError(
                    f"the text is {n} tokens for {loaded.name}; this app analyses at most "
                    f"{MAX_TOKENS} at once: shorten it (the command line takes longer texts)"
                ) from None
            self._run = run
        return run

    def switch(self, model: str) -> None:
        if model != self.model:
            self.model = model
            self._run = None

    # ---- memory ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes this session's cached results hold: its Trails and its Run (activations
        and the Run's own caches), each array once (:func:`tokentrail.engine.budget.held_bytes`)."""
        return held_bytes(self.trail, *self._trails.values(), *(self._run.kept() if self._run is not None else ()))

    def _fit(self, keep) -> None:
        """At most ``max_trails`` analyses and ``max_bytes``: drop the oldest others."""
        while len(self._trails) > 1 and (len(self._trails) > self.max_trails or self.nbytes > self.max_bytes):
            oldest = next(iter(self._trails))
            if oldest == keep:
                break
            del self._trails[oldest]

    def evict(self, why: str) -> int:
        """Drop every cached result (the page keeps its text, model and options); the next
        click says ``why`` and asks for a new analysis. Returns the bytes it held."""
        held = self.nbytes
        self._trails.clear()
        self._run = None
        self.trail = None
        self.evicted = why
        return held

    # ---- the selection ------------------------------------------------------------------
    def require_trail(self) -> Trail:
        if self.trail is None:
            if self.evicted:
                raise InputError(f"{self.evicted}: press Analyse (or Enter) to compute it again")
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

    # ---- per-layer views, from the same forward pass as the Trail -------------------------
    def _current_run(self) -> Run:
        trail = self.require_trail()
        return self._run_for(load_model(self.model), trail.text, self.options)

    def heads(self) -> HeadsAt:
        """Every head of the selected layer, for the selected token, in ``head_space``."""
        with concurrency_for(self.model):
            return self._current_run().heads(self.layer, self.token, kind=self.head_space, similarity=self.options.similarities[0], k=self.options.k)

    def choose(self, head_space: object = None, lens_site: object = None) -> None:
        """Pick the heads tab's space and the residual the lens reads."""
        if head_space is not None:
            if head_space not in HEAD_SPACES:
                raise InputError(f"unknown head space {head_space!r}: choose {', '.join(HEAD_SPACES)}")
            self.head_space = str(head_space)
        if lens_site is not None:
            if lens_site not in LENS_SITES:
                raise InputError(f"the logit lens reads {' or '.join(LENS_SITES)}, not {lens_site!r}")
            self.lens_site = str(lens_site)

    def lens(self) -> tuple[LensResult, LensResult]:
        """The logit lens at ``lens_site`` and its embeddings row, for every token (top
        ``LENS_K``). A ModelError when the checkpoint has no output head."""
        with concurrency_for(self.model):
            run = self._current_run()
            if load_model(self.model).is_seq2seq:
                raise ModelError("an encoder-decoder's logit lens reads its decoder, not the text above: see the Cross-attention tab and `tokentrail trace --lens`")
            return run.lens(k=LENS_K, site=self.lens_site), run.lens(k=LENS_K, site="embeddings")

    def trajectory_map(self, tokens: Sequence[int] | None, layers: Sequence[int] | None, method: str = "pca"):
        """:func:`tokentrail.present.maps.trajectory_map` of the analysis at its site and space."""
        from tokentrail.present.maps import trajectory_map

        site, space = self.options.sites[0], self.options.spaces[0]
        return trajectory_map(self._current_run(), site=site, space=space, tokens=tokens, layers=layers, method=method)

    def head_map(self, tokens: Sequence[int] | None, method: str = "pca"):
        """:func:`tokentrail.present.maps.head_map` of the selected layer and head."""
        from tokentrail.present.maps import head_map

        return head_map(self._current_run(), self.layer, self.head, tokens=tokens, method=method)

    def rogue_note(self) -> str | None:
        """When the analysis is uncorrected and one dimension carries over half the expected
        cosine of its site somewhere (:func:`tokentrail.engine.geometry.rogue_layers`): the line
        that says so and which correction to pick; else None. Cached per analysis."""
        trail = self.require_trail()
        if self.options.correct is not None:
            return None
        key = (self.model, trail.text, self.options.sites[0], self.options.causal)
        if self._rogue[0] != key:
            from tokentrail.engine.geometry import diagnose_run, rogue_layers

            self._rogue = (key, rogue_layers(diagnose_run(self._current_run(), self.options.sites[0]), how="Correction {}"))
        return self._rogue[1]

    def labels(self, ids) -> dict[int, str]:
        """Readable tokens for vocabulary ids the Trail does not name (the lens' predictions)."""
        with concurrency_for(self.model):
            return load_model(self.model).labels(sorted({int(i) for i in ids}))

    def step(self) -> AttentionStep:
        """The selected head's attention for the selected token, step by step."""
        with concurrency_for(self.model):
            return self._current_run().step(self.layer, self.head, self.token)


class SessionPool:
    """Every page's session, so that their cached results stay bounded together.

    :meth:`use` is called at the start of each event and :meth:`settle` after it: a
    session unused for ``idle_s`` loses its cached results, and while all sessions
    together hold more than ``total_bytes``, the least recently used one loses its own
    (never the one being served, nor one busy with an event). Its page says why on its
    next click. Sessions are held weakly: Gradio's state expiry still frees them.
    :meth:`sweep_every` also clears idle sessions when no page sends an event.
    """

    def __init__(self, total_bytes: int = TOTAL_BYTES, idle_s: float = IDLE_S):
        self.total_bytes = int(total_bytes)
        self.idle_s = float(idle_s)
        self._lock = threading.Lock()
        self._sessions: OrderedDict[int, weakref.ref] = OrderedDict()  # least recently used first

    def use(self, session: Session) -> Session:
        session.last_used = time.monotonic()
        with self._lock:
            self._sessions[id(session)] = weakref.ref(session)
            self._sessions.move_to_end(id(session))
        return session

    def sessions(self) -> list[Session]:
        """The live sessions, least recently used first."""
        with self._lock:
            alive = [(key, ref()) for key, ref in self._sessions.items()]
            for key, s in alive:
                if s is None:
                    del self._sessions[key]
        return [s for _, s in alive if s is not None]

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.sessions())

    def sweep_every(self, seconds: float) -> threading.Event:
        """Clear idle sessions every ``seconds`` from a daemon thread, so that a quiet
        server lets go of idle results too (a click does it as well); returns the Event
        that stops it. The thread holds the pool weakly: it ends with the pool."""
        stop, pool_ref = threading.Event(), weakref.ref(self)

        def sweep() -> None:
            while not stop.wait(seconds):
                pool = pool_ref()
                if pool is None:
                    return
                pool.settle(cap=False)
                del pool

        threading.Thread(target=sweep, name="tokentrail-idle-sweep", daemon=True).start()
        return stop

    def settle(self, current: Session | None = None, *, cap: bool = True) -> list[Session]:
        """Evict idle sessions, then (with ``cap``) least recently used ones while over the
        cap; returns the sessions evicted. Without ``cap`` nothing is measured (cheap
        enough for every click; the cap is checked after each analysis)."""
        now = time.monotonic()
        sessions = [s for s in self.sessions() if s is not current]
        sizes = {id(s): s.nbytes for s in sessions} if cap else {}
        total = sum(sizes.values()) + (current.nbytes if cap and current is not None else 0)
        evicted = []
        for s in sessions:  # least recently used first
            idle = now - s.last_used > self.idle_s
            if not (idle or (cap and total > self.total_bytes)) or s.trail is None and not s._trails:
                continue
            if not s.lock.acquire(blocking=False):  # busy with an event: leave it
                continue
            try:
                why = (f"this page was idle for over {self.idle_s / 60:.0f} minutes and its results were cleared"
                       if idle else f"this page's results were cleared to make room for other users (the server keeps {human(self.total_bytes)} of results)")
                total -= s.evict(why)
                evicted.append(s)
            finally:
                s.lock.release()
        return evicted


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
