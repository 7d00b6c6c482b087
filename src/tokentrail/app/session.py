"""What one browser session is looking at, and the results it has already computed.

A :class:`Session` lives in a ``gr.State``: each page (and each ``gradio_client``
client) has its own, so one user switching model or text never changes another's page.
It caches results, never models: loaded models sit in :func:`tokentrail.load`'s
shared LRU (two at a time), and a session only remembers a model's *name*.

The click path stays cheap: a text is analysed once per (model, text, options) and the
:class:`~tokentrail.results.trail.Trail` kept here; a token click re-renders from it. The
per-head view and the attention walkthrough need the activations of one forward pass,
captured once per (model, text, mask) and then computed for one layer and token at a time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tokentrail as tt
from tokentrail import AttentionStep, HeadsAt, LensResult, LoadedModel, Run, Trail
from tokentrail.app.options import (
    DEFAULT_OPTIONS,
    MAX_TOKENS,
    check_page_text,
    whole_number,
)
from tokentrail.app.queues import concurrency_for
from tokentrail.present.maps import head_map, trajectory_map
from tokentrail.present.plots_lens import LENS_COLOURS
from tokentrail.present.progress import CallbackProgress, Steps, analysis_steps
from tokentrail.spec.errors import InputError, ModelError, TooLong
from tokentrail.spec.options import HEAD_SPACES, LENS_SITES, TraceOptions

LENS_K = 5  # predictions the lens tab shows per layer
PATTERNS = ("all heads", "one head")  # the attention tab: every head of the layer (small multiples), or the one chosen
SESSION_BYTES = 600_000_000  # one session's cached results at most (older analyses dropped)


# ---- the model allowlist -------------------------------------------------------------
@dataclass(frozen=True)
class MenuEntry:
    value: str  # what tokentrail.load() is given
    label: str  # what the page shows
    status: str
    description: str

    @property
    def available(self) -> bool:
        return tt.is_available(self.value)


class ModelMenu:
    """The only models a page may ask for: the catalogue, the local hub cache, and what the
    server's operator named (hub ids or local folders). Pages send a name; anything not
    on this list is refused before it reaches the model loader."""

    def __init__(self, extra: Sequence[str] | None = None):
        self.entries: dict[str, MenuEntry] = {}
        for row in tt.list_models().to_dict("records"):
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
        elif name in tt.CATALOGUE or tt.HUB_ID.match(name):
            status = "hub: cached" if tt.is_available(name) else "hub: not cached (needs internet once)"
            entry = MenuEntry(name, name, status, "named by the server's operator")
        else:
            raise ModelError(
                f"cannot offer model {name!r}: it is neither a known name, a hub id (owner/name) nor an existing folder"
            )
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
        if tt.DEFAULT_MODEL in self.entries:
            return tt.DEFAULT_MODEL
        return next(iter(self.entries))


def load_model(name: str, say: Callable[[str], None] | None = None) -> LoadedModel:
    return tt.load(name, progress=say)


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
    lens_colour: str = "prob"  # what colours the lens heatmap's cells
    pattern: str = "all heads"  # the attention tab: every head of the layer, or the head chosen
    max_trails: int = 3  # analyses kept per session (256 tokens on a 30-layer model: ~100 MB each)
    max_bytes: int = SESSION_BYTES  # older analyses are dropped beyond this (the current one stays)
    evicted: str | None = None  # why the cached results were dropped (said on the next click)
    last_used: float = field(default_factory=time.monotonic, compare=False)
    _trails: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _run: Run | None = field(default=None, repr=False)
    _rogue: tuple = field(
        default=(None, None, None), repr=False
    )  # (analysis key, the rogue-dimension line, the correction it suggests)
    show_corrected: bool = False  # the Layers tab shows the suggested correction's view beside the raw one
    translator: tuple[str, Path] | None = None  # (name, folder) of the fitted translator chosen (serve --translators)
    lock: threading.RLock = field(
        default_factory=threading.RLock, repr=False, compare=False
    )  # one event at a time per page

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
                progress.start_analysis(analysis_steps(options.pairs(), loaded.n_layers))
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
            except TooLong as exc:
                raise InputError(
                    f"the text is {exc.tokens} tokens for {loaded.name}; this app analyses at most "
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
        and the Run's own caches), each array once (:func:`tokentrail.held_bytes`)."""
        return tt.held_bytes(self.trail, *self._trails.values(), *(self._run.kept() if self._run is not None else ()))

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
            self.token = trail.token_index(whole_number(token, "token"))
        if layer is not None:
            self.layer = trail.check_layer(whole_number(layer, "layer"))
        if head is not None:
            self.head = trail.check_head(whole_number(head, "head"))

    # ---- per-layer views, from the same forward pass as the Trail -------------------------
    def _current_run(self) -> Run:
        trail = self.require_trail()
        return self._run_for(load_model(self.model), trail.text, self.options)

    def heads(self) -> HeadsAt:
        """Every head of the selected layer, for the selected token, in ``head_space``."""
        with concurrency_for(self.model):
            return self._current_run().heads(
                self.layer, self.token, kind=self.head_space, similarity=self.options.similarities[0], k=self.options.k
            )

    def choose(
        self, head_space: object = None, lens_site: object = None, lens_colour: object = None, pattern: object = None
    ) -> None:
        """Pick the heads tab's space, the residual the lens reads, what colours the lens
        heatmap and whether the attention tab shows every head of the layer or one."""
        if lens_colour is not None:
            if lens_colour not in LENS_COLOURS:
                raise InputError(f"the lens heatmap is coloured by {', '.join(LENS_COLOURS)}, not {lens_colour!r}")
            self.lens_colour = str(lens_colour)
        if pattern is not None:
            if pattern not in PATTERNS:
                raise InputError(f"the attention tab shows {' or '.join(PATTERNS)}, not {pattern!r}")
            self.pattern = str(pattern)
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
                raise ModelError(
                    "an encoder-decoder's logit lens reads its decoder, not the text above: see the Cross-attn tab and `tokentrail trace --lens`"
                )
            return run.lens(k=LENS_K, site=self.lens_site), run.lens(k=LENS_K, site="embeddings")

    def trajectory_map(self, tokens: Sequence[int] | None, layers: Sequence[int] | None, method: str = "pca"):
        """:func:`tokentrail.present.maps.trajectory_map` of the analysis at its site and
        space; the selected token's path drawn bold (when it is among ``tokens``)."""
        site, space = self.options.sites[0], self.options.spaces[0]
        run = self._current_run()
        chosen = self.token if tokens is None or self.token in tokens else None
        return trajectory_map(
            run, site=site, space=space, tokens=tokens, layers=layers, method=method, highlight=chosen
        )

    def head_map(self, tokens: Sequence[int] | None, method: str = "pca"):
        """:func:`tokentrail.present.maps.head_map` of the selected layer and head."""
        return head_map(self._current_run(), self.layer, self.head, tokens=tokens, method=method)

    def rogue_note(self) -> str | None:
        """When the analysis is uncorrected and one dimension carries over half the expected
        cosine of its site somewhere (:func:`tokentrail.geometry.rogue_layers`): the line
        that says so and which correction to pick; else None. Cached per analysis."""
        trail = self.require_trail()
        if self.options.correct is not None:
            return None
        key = (self.model, trail.text, self.options.sites[0], self.options.causal)
        if self._rogue[0] != key:
            diagnosis = tt.geometry.diagnose_run(self._current_run(), self.options.sites[0])
            note = tt.geometry.rogue_layers(diagnosis, how="Correction {}")
            fix = None if note is None else f"rogue:{len({d for _, d, _ in diagnosis.rogue()})}"
            self._rogue = (key, note, fix)
        return self._rogue[1]

    def corrected(self) -> tuple[str, Trail] | None:
        """``(correction, Trail)``: the analysis re-scored with the correction the
        rogue-dimension line suggests (``rogue:N``, N the dimensions it names), from the
        same forward pass; None when there is no such line."""
        if self.rogue_note() is None:
            return None
        trail = self.require_trail()
        spec = self._rogue[2]
        options = self.options.with_(correct=spec)
        key = (self.model, trail.text, options)
        with concurrency_for(self.model):
            fixed = self._trails.get(key)
            if fixed is None:
                fixed = self._current_run().trail(options)
                self._trails[key] = fixed
        self._fit(keep=(self.model, trail.text, self.options))
        return spec, fixed

    def translated(self) -> Trail | None:
        """The analysis with the chosen translator's views or fitted lens added
        (:func:`tokentrail.translate`, from the same forward pass; cached per analysis);
        None when none is chosen. An InputError (one line) when it is another model's."""
        if self.translator is None:
            return None
        trail = self.require_trail()
        name, folder = self.translator
        key = (self.model, trail.text, self.options, "translator", str(folder))
        with concurrency_for(self.model):
            done = self._trails.get(key)
            if done is None:
                try:
                    done = tt.translate(self._current_run(), trail, folder)
                except InputError as exc:  # the page names the translator, not the server's folder
                    raise InputError(str(exc).replace(str(folder), name)) from None
                self._trails[key] = done
        self._fit(keep=(self.model, trail.text, self.options))
        return done

    def labels(self, ids) -> dict[int, str]:
        """Readable tokens for vocabulary ids the Trail does not name (the lens' predictions)."""
        with concurrency_for(self.model):
            return load_model(self.model).labels(sorted({int(i) for i in ids}))

    def step(self) -> AttentionStep:
        """The selected head's attention for the selected token, step by step."""
        with concurrency_for(self.model):
            return self._current_run().step(self.layer, self.head, self.token)


def first_content_token(trail: Trail) -> int:
    """The first token that is not a special token (or 0)."""
    for i, special in enumerate(trail.special):
        if not special:
            return i
    return 0
