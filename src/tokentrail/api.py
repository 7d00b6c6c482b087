"""The Python API's one-liners: ``tokentrail.trace(text, model=...)`` and ``tokentrail.run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokentrail.analysis.views import Progress
from tokentrail.results.trail import Trail
from tokentrail.session.models import DEFAULT_MODEL, LoadedModel, load
from tokentrail.session.runner import Run
from tokentrail.session.translating import translate
from tokentrail.spec.options import TraceOptions
from tokentrail.spec.text import check_decoder_input, check_text


def run(
    text: str,
    model: Any = DEFAULT_MODEL,
    *,
    options: TraceOptions | None = None,
    causal: bool | None = None,
    truncate: bool | None = None,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    target: str | None = None,
    max_new_tokens: int | None = None,
) -> Run:
    """One forward pass of ``model`` over ``text``: a :class:`~tokentrail.session.runner.Run` to derive
    Trails, heads, walkthroughs and the logit lens from without another pass.

    ``model``: a bundled name, hub id, local folder (str or Path), a loaded model, or a
    ``transformers`` model object (with ``tokenizer=``). Encoder-decoders: ``target`` is
    the decoder's input; without it the decoder reads the model's own greedy output (at
    most ``max_new_tokens`` new tokens, default 20)."""
    check_text(text)  # fail fast, before loading anything
    check_decoder_input(target, max_new_tokens)
    loaded = _model(model, tokenizer, device, dtype, allow_pickle, revision)
    return loaded.run(text, options, causal=causal, truncate=truncate, target=target, max_new_tokens=max_new_tokens)


def trace(
    text: str,
    model: Any = DEFAULT_MODEL,
    *,
    options: TraceOptions | None = None,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    progress: Progress | None = None,
    revision: str | None = None,
    target: str | None = None,
    max_new_tokens: int | None = None,
    translator: str | Path | None = None,
    **option_values: Any,
) -> Trail:
    """Follow every token of ``text`` through ``model``.

    The options of the trace are :meth:`TraceOptions.make <tokentrail.spec.options.TraceOptions.make>`'s
    keywords (``site``, ``space``, ``similarity``, ``k``, ``overlap_k``, ``lens``,
    ``lens_site``, ``causal``, ``truncate``, ``correct``, ``correct_from``), or a ready
    :class:`~tokentrail.spec.options.TraceOptions` as ``options``; they are validated
    once, before any model work.
    ``overlap_k`` defaults to 100 (or the vocabulary size, if smaller); asking for more
    than the vocabulary has is an error, as is ``k`` above it.
    ``site``, ``space`` and ``similarity`` take one name, a list, a comma-separated string
    or ``"all"``. ``causal=False`` runs a decoder with its causal mask off. ``correct`` corrects the
    geometry of residual sites (``zscore``, ``center``, ``rogue:D``, ``abtt:D``; see
    :mod:`tokentrail.engine.geometry`), fitted to the text's own vectors or, with
    ``correct_from``, to a corpus study of the same model (its folder). ``model`` takes
    what :func:`run` takes. Encoder-decoders: the source is ``text``, the decoder reads
    ``target`` or the model's own greedy output (``max_new_tokens``); the Trail is the
    encoder's, with the decoder's as ``trail.decoder`` (cross-attention included).
    ``translator``: the folder of a fitted translator (``tokentrail fit``) of this model:
    an identity translator adds the ``<site>_translated`` views, a prediction translator
    the fitted lens (``trail.fitted_lens``).
    """
    opts = options or TraceOptions.make(**option_values)  # validated here, before any model work
    check_text(text)
    check_decoder_input(target, max_new_tokens)
    loaded = _model(model, tokenizer, device, dtype, allow_pickle, revision)
    run = loaded.run(text, opts, target=target, max_new_tokens=max_new_tokens)
    trail = run.trail(progress=progress)
    return trail if translator is None else translate(run, trail, translator)


def _model(model, tokenizer, device, dtype, allow_pickle, revision) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    return load(model, tokenizer=tokenizer, device=device, dtype=dtype, allow_pickle=allow_pickle, revision=revision)
