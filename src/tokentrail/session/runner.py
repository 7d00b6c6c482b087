"""A :class:`Run`: one text through one loaded model, one forward pass, every view from it.

``model.run(text)`` tokenizes once and captures once; the Trail (any options), a layer's
heads, the attention walkthrough and the logit lens are all derived from the captured
activations, and cached on the Run. A long text (``analysis.streams``) is not captured
up front: its Trail is scored layer by layer during a forward pass of its own, holding one
layer's activations at a time, and the capture is made only if something else asks for
it. The CLI, the app and notebooks use this object and nothing below it. An
encoder-decoder's run is a :class:`~tokentrail.session.seq2seq_run.Seq2SeqRun`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol, TypedDict

import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.batch import compute_views_batch
from tokentrail.analysis.checks import check_against, streams
from tokentrail.analysis.heads import heads_at
from tokentrail.analysis.lens import logit_lens
from tokentrail.analysis.stream import stream_views
from tokentrail.analysis.trail import make_trail
from tokentrail.analysis.views import Progress, compute_views
from tokentrail.engine.budget import check_fits, estimate_capture, held_bytes
from tokentrail.engine.capture import Activations, capture, head_qkv
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.walkthrough import AttentionStep, attention_step
from tokentrail.results.trail import AttentionPatterns, HeadsAt, LensResult, Trail
from tokentrail.session.inputs import Encoded
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions


class Model(Protocol):
    """What a Run needs of its model (a :class:`tokentrail.session.loaded.LoadedModel`)."""

    name: str
    revision: str | None
    adapter: Adapter
    tokenizer: Any
    spaces: SpaceCache
    lock: Any  # a threading.RLock

    def labels(self, ids: Any) -> dict[int, str]: ...

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def n_layers(self) -> int: ...

    @property
    def n_heads(self) -> int: ...

    @property
    def decoder_spaces(self) -> SpaceCache: ...


class Lengths(TypedDict, total=False):
    """The text lengths a memory check reads (:func:`check_against`'s keywords)."""

    tokens: int
    decoder_tokens: int


class Run:
    """One text's forward pass through ``model``, and everything derived from it.

    Build it with :meth:`tokentrail.session.models.LoadedModel.run` (or :func:`tokentrail.run`).
    ``options`` are the trace options it was made with; :meth:`trail` may ask for other
    sites, spaces, similarities or k on the same pass, but not another mask or truncation.
    """

    def __init__(self, model: Model, text: str, encoded: Encoded, acts: Activations | None, options: TraceOptions):
        self.model = model
        self.text = text
        self.encoded = encoded
        self._acts = acts  # None: captured when first needed (a long text's Trail streams instead)
        self.options = options
        self._lock = threading.RLock()
        self._trails: OrderedDict[TraceOptions, Trail] = OrderedDict()
        self._lenses: dict[tuple[int, str], LensResult] = {}
        self._heads: OrderedDict[tuple, HeadsAt] = OrderedDict()

    # ---- what the pass saw --------------------------------------------------------------
    @property
    def tokens(self) -> list[str]:
        return self.encoded.tokens

    @property
    def ids(self) -> Tensor:
        return self.encoded.ids

    @property
    def n_tokens(self) -> int:
        return len(self.encoded.tokens)

    @property
    def acts(self) -> Activations:
        """Every layer's activations of this text, captured on first use if the run has not
        captured them yet (:meth:`trail` of a long text does without: it streams)."""
        with self._lock:
            if self._acts is None:
                # a long text's trail streams; asking for all of it (attention patterns, heads)
                # captures every layer at once: refused with the figure when it cannot fit
                a = self.model.adapter
                check_fits(
                    estimate_capture(tokens=self.n_tokens, layers=a.n_layers, heads=a.n_heads, d_model=a.d_model)
                )
                with self.model.lock:  # hooks on shared modules: one pass at a time per model
                    self._acts = capture(self.model.adapter, self.ids, causal=self.options.causal)
            return self._acts

    @property
    def causal(self) -> bool:
        return self.model.adapter.resolve_causal(self.options.causal)

    def __repr__(self) -> str:
        return f"Run(model={self.model.name!r}, tokens={self.n_tokens}, causal={self.causal})"

    def kept(self) -> list:
        """What this run keeps in memory: its activations and every cached Trail, lens and
        heads view (for :func:`tokentrail.engine.budget.held_bytes`; the model is not included)."""
        with self._lock:
            return [self._acts, self.encoded, *self._trails.values(), *self._lenses.values(), *self._heads.values()]

    @property
    def nbytes(self) -> int:
        """Bytes this run keeps (:meth:`kept`, each buffer once)."""
        return held_bytes(*self.kept())

    # ---- derived views --------------------------------------------------------------------
    def trail(self, options: TraceOptions | None = None, *, progress: Progress | None = None, **changes: Any) -> Trail:
        """The Trail of this run for ``options`` (default: the run's own), changed by ``changes``.

        ``changes`` take the option fields (``sites=("layer_out",)``, ``k=5``, ...). Cached."""
        opts = self._options(options, changes)
        cached = self._cached(opts)
        if cached is not None:
            return cached
        say = progress or (lambda f, m: None)
        m = self.model
        if self._acts is None and streams(m.adapter, opts, self.n_tokens):
            # a long text, not captured: its layers are scored during the forward pass
            with m.lock:
                views, lens, passed = stream_views(m.adapter, m.spaces, self.ids, opts, say)
            if lens is not None:
                with self._lock:
                    self._lenses[(opts.k, opts.lens_site)] = lens.labelled(self.tokens, m.labels)
            return self._keep(opts, views, say, passed)
        return self._keep(opts, compute_views(m.adapter, m.spaces, self.acts, opts, say), say)

    def _options(self, options: TraceOptions | None, changes: dict) -> TraceOptions:
        opts = (options or self.options).with_(**changes) if changes else (options or self.options).validate()
        if (opts.causal, opts.truncate) != (self.options.causal, self.options.truncate):
            raise ValueError("a Run's mask and truncation are fixed: make another Run for other ones")
        return check_against(self.model.adapter, opts, **self._lengths())

    def _lengths(self) -> Lengths:
        """What the memory check of another set of options reads: the text's length."""
        return {"tokens": self.n_tokens}

    def _cached(self, opts: TraceOptions) -> Trail | None:
        with self._lock:
            if opts in self._trails:
                self._trails.move_to_end(opts)
                return self._trails[opts]
        return None

    def _keep(self, opts: TraceOptions, views, say, passed=None) -> Trail:
        """Wrap computed views into this run's Trail for ``opts`` (with the lens), and cache it.
        ``passed``: what a streamed pass kept (else the run's activations)."""
        lens = None
        if opts.lens:
            say(0.99, "logit lens")
            lens = self.lens(k=opts.k, site=opts.lens_site)
        say(1.0, "done")
        m = self.model
        trail = make_trail(
            m.adapter,
            self.acts if passed is None else passed,
            views,
            lens,
            options=opts,
            text=self.text,
            tokens=self.tokens,
            special=self.encoded.special,
            label=m.labels,
            model_name=m.name,
            revision=m.revision,
            device=m.device,
            dtype=m.dtype,
            truncated_from=self.encoded.truncated_from,
        )
        return self._store(opts, trail)

    def _store(self, opts: TraceOptions, trail: Trail) -> Trail:
        """Keep ``trail`` as this run's Trail for ``opts`` (the four most recent are kept)."""
        with self._lock:
            self._trails[opts] = trail
            while len(self._trails) > 4:
                self._trails.popitem(last=False)
        return trail

    def lens(self, *, k: int = 15, site: str = "layer_out") -> LensResult:
        """The logit lens over every layer and token (SPEC ``lens``). Cached.

        ``site`` is the residual read (``layer_out`` or ``attn_resid``), or ``embeddings``
        for the one-row lens of the original encodings (SPEC: the embeddings row)."""
        key = (k, site)
        with self._lock:
            if key not in self._lenses:
                lens = logit_lens(self.model.adapter, self.acts, k=k, site=site)
                self._lenses[key] = lens.labelled(self.tokens, self.model.labels)
            return self._lenses[key]

    def attention(self, kind: str = "self", *, stack: str | None = None) -> AttentionPatterns:
        """Every head's attention pattern of this text, (L, H, n, n), without scoring
        anything against the vocabulary (``kind``: self; cross and ``stack`` are for encoder-decoders)."""
        if stack is not None:
            raise InputError(f"stack={stack!r} is for encoder-decoders; this model has one stack")
        if kind != "self":
            raise InputError(f"kind={kind!r}: a {self.model.adapter.family} model has self-attention only")
        m = self.model
        return AttentionPatterns(
            weights=self.acts.attentions.cpu().numpy(),
            tokens=tuple(self.tokens),
            source_tokens=tuple(self.tokens),
            causal=self.causal,
            model=m.name,
        )

    def heads(self, layer: int, token: int, *, kind: str = "value", similarity: str = "cosine", k: int = 15) -> HeadsAt:
        """Every head of ``layer`` for ``token``, each against its own ``kind`` space. Cached."""
        key = (layer, token, kind, similarity, k)
        with self._lock:
            if key in self._heads:
                self._heads.move_to_end(key)
                return self._heads[key]
        m = self.model
        result = heads_at(
            m.adapter, m.spaces, self.acts, layer, token, label=m.labels, kind=kind, similarity=similarity, k=k
        )
        result = replace(result, tokens=tuple(self.tokens))
        with self._lock:
            self._heads[key] = result
            while len(self._heads) > 64:
                self._heads.popitem(last=False)
        return result

    def queries_keys(self, layer: int, head: int) -> tuple[Tensor, Tensor, int]:
        """One head's queries and the keys it reads at ``layer``: ``(n, d_head)`` each, and
        the key/value head those keys come from (``head`` itself unless keys are shared)."""
        adapter = self.model.adapter
        kv = int(adapter.kv_heads()[head])
        with torch.no_grad():
            q = head_qkv(adapter, self.acts, layer, "q")[:, head]
            k = head_qkv(adapter, self.acts, layer, "k")[:, kv]
        return q, k, kv

    def step(self, layer: int, head: int, token: int) -> AttentionStep:
        """How ``head`` of ``layer`` computed ``token``'s output, with the live numbers."""
        return replace(attention_step(self.model.adapter, self.acts, layer, head, token), tokens=tuple(self.tokens))


def trail_many(
    runs: Sequence[Run], options: TraceOptions | None = None, *, progress: Progress | None = None
) -> list[Trail]:
    """The Trails of several runs of one model, their tokens scored against the vocabulary
    together (one chunked pass, shared position statistics); per run, what ``run.trail``
    gives. ``options`` default to each run's own (they must then agree)."""
    if not runs:
        return []
    model = runs[0].model
    if any(r.model is not model for r in runs):
        raise ValueError("trail_many takes runs of one model")
    opts = [r._options(options, {}) for r in runs]
    if len(set(opts)) != 1:
        raise ValueError("trail_many needs one set of options for every run")
    todo = [r for r in runs if r._cached(opts[0]) is None]
    say = progress or (lambda f, m: None)
    if todo:
        per_run = compute_views_batch(model.adapter, model.spaces, [r.acts for r in todo], opts[0], say)
        for r, views in zip(todo, per_run):
            r._keep(opts[0], views, lambda f, m: None)
    return [r.trail(opts[0]) for r in runs]
