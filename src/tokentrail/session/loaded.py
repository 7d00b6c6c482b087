"""A loaded model and the running of texts on it: one text (:meth:`LoadedModel.run`),
an encoder-decoder's two stacks, and a padded batch (:meth:`LoadedModel.runs`). Loading
itself (names, folders, the hub, safety rules) is :mod:`tokentrail.session.models`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from tokentrail.adapters import Adapter, EncoderStack
from tokentrail.analysis.checks import check_against, streams
from tokentrail.engine.capture import capture, capture_batch
from tokentrail.engine.capture_cross import capture_cross
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.session.inputs import check_decoder_input, check_text, encode, readable_tokens
from tokentrail.session.runner import Run
from tokentrail.session.seq2seq_run import Seq2SeqRun
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import DEFAULT_NEW_TOKENS, TraceOptions
from tokentrail.store.stats import read_stats


@dataclass(frozen=True)
class Stack:
    """One stack's shape, what a front end checks ``--layer``/``--head`` against."""

    name: str | None  # "encoder" or "decoder" in an encoder-decoder; None in a single-stack model
    n_layers: int
    n_heads: int


@dataclass(eq=False)
class LoadedModel:
    """A loaded model with its tokenizer, adapter and reference-space cache.

    ``run(text)`` is the way in: one forward pass, from which every view is derived."""

    name: str
    source: str  # folder or file it was loaded from
    origin: str  # "bundled", "hub", "local" or "object" (handed in by the caller)
    revision: str | None
    adapter: Adapter
    tokenizer: Any
    spaces: SpaceCache = field(init=False)
    lock: threading.RLock = field(init=False, repr=False)  # tokenizer and hooks are not thread-safe

    def __post_init__(self):
        self.spaces = SpaceCache(self.adapter)
        self.lock = threading.RLock()

    def _encoder(self) -> EncoderStack:
        """The adapter of an encoder-decoder (checked by the caller): its encoder stack."""
        return cast(EncoderStack, self.adapter)

    @property
    def decoder_spaces(self) -> SpaceCache:
        """An encoder-decoder's decoder stack's reference spaces (``spaces`` are the encoder's)."""
        if not self.adapter.is_seq2seq:
            raise ModelError(f"{self.name} is not an encoder-decoder: it has one stack (model.spaces)")
        cache = self.__dict__.get("_decoder_spaces")
        if cache is None or cache.adapter is not self._encoder().decoder_stack():
            cache = self._decoder_spaces = SpaceCache(self._encoder().decoder_stack())
        return cache

    @property
    def is_seq2seq(self) -> bool:
        return self.adapter.is_seq2seq

    @property
    def hf_model(self) -> Any:
        """The Hugging Face module this model runs (a ``transformers`` model in eval mode; an
        encoder-decoder's whole model): for your own hooks or forward passes. tokentrail's
        numbers do not change when you use it, as long as you leave its weights alone."""
        return self.adapter.model

    @property
    def device(self) -> str:
        return str(self.adapter.device)

    @property
    def dtype(self) -> str:
        return str(self.adapter.dtype).removeprefix("torch.")

    @property
    def is_decoder(self) -> bool:
        return self.adapter.is_decoder

    @property
    def family(self) -> str:
        """The architecture family (``bert``, ``gpt2``, ``t5``, ...)."""
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        """Layers of the (encoder) stack."""
        return self.adapter.n_layers

    @property
    def n_heads(self) -> int:
        """Attention heads per layer of the (encoder) stack."""
        return self.adapter.n_heads

    @property
    def stacks(self) -> tuple[Stack, ...]:
        """The model's stacks, in order: (encoder, decoder) for an encoder-decoder, else one."""
        adapters = (self.adapter, self._encoder().decoder_stack()) if self.adapter.is_seq2seq else (self.adapter,)
        return tuple(Stack(a.stack, a.n_layers, a.n_heads) for a in adapters)

    def labels(self, ids) -> dict[int, str]:
        ids = [int(i) for i in ids]
        with self.lock:
            return dict(zip(ids, readable_tokens(self.tokenizer, ids)))

    def encode(self, text: str, *, truncate: bool = False, max_tokens: int | None = None):
        """Tokenize ``text`` with the model's own special tokens (see :func:`tokentrail.session.inputs.encode`)."""
        with self.lock:
            return encode(self, text, truncate=truncate, max_tokens=max_tokens)

    def run(
        self,
        text: str,
        options=None,
        *,
        causal: bool | None = None,
        truncate: bool | None = None,
        max_tokens: int | None = None,
        encoded=None,
        target: str | None = None,
        max_new_tokens: int | None = None,
    ):
        """One forward pass over ``text``: a :class:`tokentrail.session.runner.Run` to derive every view from.

        ``options`` (a :class:`~tokentrail.spec.options.TraceOptions`) default to the standard
        ones; ``causal`` and ``truncate`` override theirs. ``encoded``: this text's
        :meth:`encode`, when the caller already has it (no second tokenization). Refuses,
        with the figure, a run whose estimated memory exceeds what the machine has.

        Encoder-decoders (a :class:`~tokentrail.session.seq2seq_run.Seq2SeqRun`): ``text`` is the source;
        the decoder reads ``target`` (its teacher-forcing input) or, without one, the
        model's own greedy output of at most ``max_new_tokens`` (default
        :data:`~tokentrail.spec.options.DEFAULT_NEW_TOKENS`) new tokens."""
        opts = options or TraceOptions()
        changes = {k: v for k, v in (("causal", causal), ("truncate", truncate)) if v is not None}
        opts = opts.with_(**changes) if changes else opts.validate()
        check_text(text)
        opts = check_against(self.adapter, opts)
        if opts.correct_from is not None:  # the architecture is checked above; the checkpoint here
            read_stats(opts.correct_from).check_model({"model": self.name, "model_revision": self.revision})
        enc = encoded if encoded is not None else self.encode(text, truncate=opts.truncate, max_tokens=max_tokens)
        opts = check_against(self.adapter, opts, tokens=len(enc.ids))
        if self.adapter.is_seq2seq:
            return self._run_seq2seq(text, enc, opts, target, max_new_tokens)
        if target is not None or max_new_tokens is not None:
            raise InputError(
                f"--target and --max-new-tokens are for encoder-decoder models; {self.name} ({self.adapter.family}) has one stack"
            )
        if streams(self.adapter, opts, len(enc.ids)):
            return Run(self, text, enc, None, opts)  # a long text: its Trail streams, the capture waits until asked for
        with self.lock:  # hooks on shared modules: one capture at a time per model
            acts = capture(self.adapter, enc.ids, causal=opts.causal)
        return Run(self, text, enc, acts, opts)

    def _run_seq2seq(self, text, enc, opts, target: str | None, max_new_tokens: int | None):
        """The encoder over the source, then the whole model over (source, decoder input).
        The memory of both stacks is checked first: with the target's length, or with the
        most the greedy output may have (before generating it)."""
        enc_adapter = self._encoder()
        dec = enc_adapter.decoder_stack()
        check_decoder_input(target, max_new_tokens)
        bound = DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
        if target is not None:
            labels = torch.tensor(self.tokenizer(text_target=target)["input_ids"], dtype=torch.long)
            dec_ids = enc_adapter.decoder_input(labels)
            if dec.max_tokens is not None and dec_ids.shape[0] > dec.max_tokens:
                raise InputError(
                    f"the decoder input is {dec_ids.shape[0]} tokens; the {dec.family} decoder takes at most {dec.max_tokens}"
                )
        n_dec = (
            dec_ids.shape[0] if target is not None else min(1 + bound, dec.max_tokens or 1 + bound)
        )  # the start token, then the new ones
        check_against(enc_adapter, opts, tokens=len(enc.ids), decoder_tokens=n_dec)
        with self.lock:
            if target is not None:
                origin = "target"
            else:
                dec_ids = enc_adapter.greedy(enc.ids, bound).cpu()
                origin = f"greedy output of the model (at most {bound} new tokens)"
            acts = capture(enc_adapter, enc.ids, causal=opts.causal)
            dec_acts = capture_cross(dec, enc.ids, dec_ids)
            ids = dec_ids.tolist()
            special_ids = set(getattr(self.tokenizer, "all_special_ids", []))
            dec_text = target if target is not None else self.tokenizer.decode(ids, skip_special_tokens=True)
            dec_tokens = readable_tokens(self.tokenizer, ids)
        return Seq2SeqRun(
            self,
            text,
            enc,
            acts,
            opts,
            decoder_acts=dec_acts,
            decoder_text=dec_text,
            decoder_tokens=dec_tokens,
            decoder_special=[i in special_ids for i in ids],
            decoder_input=origin,
        )

    def runs(
        self,
        texts,
        options=None,
        *,
        truncate: bool | None = None,
        max_tokens: int | None = None,
        padding_side: str | None = None,
    ):
        """One padded forward pass over several texts: a :class:`tokentrail.session.runner.Run`
        per text, each equal to ``run(text)`` (SPEC "Batches"). Score them together with
        :func:`tokentrail.session.runner.trail_many`."""
        opts = options or TraceOptions()
        opts = opts.with_(truncate=truncate) if truncate is not None else opts.validate()
        if self.adapter.is_seq2seq:
            raise InputError(
                f"{self.name} is an encoder-decoder: batches of texts and corpus studies take single-stack models; trace each text (model.run, tokentrail trace)"
            )
        texts = [check_text(t) for t in texts]
        opts = check_against(self.adapter, opts)
        encoded = [self.encode(t, truncate=opts.truncate, max_tokens=max_tokens) for t in texts]
        opts = check_against(
            self.adapter, opts, tokens=sum(len(e.ids) for e in encoded), streamed=False
        )  # a batch is captured whole
        side = padding_side or self.adapter.padding_sides[0]
        with self.lock:
            acts = capture_batch(self.adapter, [e.ids for e in encoded], causal=opts.causal, padding_side=side)
        return [Run(self, t, e, a, opts) for t, e, a in zip(texts, encoded, acts)]

    def trace(
        self, text: str, options=None, *, target: str | None = None, max_new_tokens: int | None = None, **option_values
    ):
        """``run(text).trail()``: the one-line path."""
        opts = options or TraceOptions.make(**option_values)
        return self.run(text, opts, target=target, max_new_tokens=max_new_tokens).trail()
