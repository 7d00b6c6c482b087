"""What only the model can tell about options, checked before its forward pass
(:func:`check_against`), and whether a trace streams (:func:`streams`)."""

from __future__ import annotations

from typing import cast

from tokentrail.adapters import Adapter
from tokentrail.adapters.seq2seq import EncoderStack
from tokentrail.engine import budget
from tokentrail.engine.budget import captured_bytes, check_fits, estimate_run, estimate_seq2seq
from tokentrail.engine.spaces import space_refusal
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import (
    ALL_SITES,
    ALL_SPACES,
    CROSS_SITES,
    DEFAULT_OVERLAP_K,
    HEAD_SITE,
    HEAD_SPACES,
    RESIDUAL_SITES,
    TraceOptions,
    parse_correction,
)
from tokentrail.store.stats import read_stats


def check_against(
    adapter: Adapter,
    options: TraceOptions,
    tokens: int | None = None,
    decoder_tokens: int | None = None,
    streamed: bool | None = None,
) -> TraceOptions:
    """What only the model can tell about options, checked before the forward pass;
    returns them with the overlap set size settled (default: 100, or the vocabulary if
    smaller). With ``tokens``, also refuses a run whose estimated peak memory exceeds
    what the machine has, with the figure and the fix. An encoder-decoder's ``tokens`` are
    its source's; with ``decoder_tokens`` (its decoder input's length, or the most it may
    have) the estimate is both stacks' and their cross-attention's, without it the
    encoder stack's alone. ``streamed``: whether the trace streams (None: one text, as
    :func:`streams` decides; a batch of texts is captured whole, False)."""
    adapter.resolve_causal(options.causal)
    options = _settle_cross_sites(adapter, options)
    options = _settle_spaces(adapter, options)
    lens_reader = (
        cast(EncoderStack, adapter).decoder_stack() if adapter.is_seq2seq else adapter
    )  # an encoder-decoder's lens reads its decoder (its primary adapter is the EncoderStack)
    if adapter.is_seq2seq:
        lens_reader.resolve_causal(options.causal)
    if options.lens and lens_reader.lens_head() is None:
        raise ModelError(lens_reader.lens_unavailable_reason())
    vocab = adapter.vocab_size
    for name, value in (("k", options.k), ("overlap k", options.overlap_k)):
        if value is not None and value > vocab:
            raise InputError(
                f"{name} = {value:,} is more than the model's vocabulary of {vocab:,} tokens: use at most {vocab:,}"
            )
    if options.overlap_k is None:
        options = options.settled(overlap_k=min(DEFAULT_OVERLAP_K, vocab))
    if options.correct is not None and adapter.embedding_projection() is not None:
        raise ModelError(
            f"{adapter.family}: geometry corrections are not supported on this checkpoint: its encodings end in "
            "embeddings_project, which the corrections do not fold into the rows; trace without --correct"
        )
    if options.correct_from is not None:
        _check_study(adapter, options)
    if options.correct is not None and options.correct_from is None and tokens is not None:
        name, count = parse_correction(options.correct)
        if name in ("rogue", "abtt") and tokens < max(2, (count or 0) + 1 if name == "abtt" else 2):
            raise InputError(
                f"--correct {options.correct} is fitted to the text's own tokens and needs more of them than {tokens}: use a longer text or a smaller D"
            )
    if tokens is not None:
        pairs, similarities = options.pairs(), len(options.similarities)
        if adapter.is_seq2seq:
            check_fits(
                estimate_seq2seq(
                    adapter,
                    lens_reader,
                    source_tokens=tokens,
                    decoder_tokens=decoder_tokens,
                    lens=options.lens,
                    pairs=pairs,
                    similarities=similarities,
                    k=options.k,
                    overlap_k=options.overlap_k,
                )
            )
        else:
            streamed = streams(adapter, options, tokens) if streamed is None else streamed
            check_fits(
                estimate_run(
                    adapter,
                    tokens=tokens,
                    lens=options.lens,
                    streamed=streamed,
                    pairs=pairs,
                    similarities=similarities,
                    k=options.k,
                    overlap_k=options.overlap_k,
                )
            )
    return options


def _settle_cross_sites(adapter: Adapter, options: TraceOptions) -> TraceOptions:
    """The cross-attention sites exist only in encoder-decoders: ``all`` on another model
    means every site it has; naming one there is an error."""
    asked = [s for s in options.sites if s in CROSS_SITES]
    if adapter.is_seq2seq or not asked:
        return options
    rest = tuple(s for s in options.sites if s not in CROSS_SITES)
    if set(rest) != set(ALL_SITES) - set(CROSS_SITES):
        raise InputError(
            f"{asked[0]} is a site of encoder-decoder models (the decoder's cross-attention); "
            f"this {adapter.family} model has no cross-attention"
        )
    return options.settled(sites=rest)


def _settle_spaces(adapter: Adapter, options: TraceOptions) -> TraceOptions:
    """A space the model cannot factorise (``space_refusal``: mBART's head spaces, ELECTRA's
    embeddings when its embedding stage is narrower than the residual stream): ``all``
    means every space it has (and the heads site goes when none of its spaces is left,
    under ``site=all``); naming one is refused with its one-line reason."""
    stacks = [adapter, cast(EncoderStack, adapter).decoder_stack()] if adapter.is_seq2seq else [adapter]
    refused = {s: why for s in options.spaces for a in stacks if (why := space_refusal(a, s))}
    if not refused:
        return options
    first = next(iter(refused.values()))
    if not set(ALL_SPACES) <= set(options.spaces):
        raise ModelError(first)
    spaces = tuple(s for s in options.spaces if s not in refused)
    sites = options.sites
    if HEAD_SITE in sites and not any(s in HEAD_SPACES for s in spaces):
        if not set(ALL_SITES) - set(CROSS_SITES) <= set(sites):
            raise ModelError(first)
        sites = tuple(s for s in sites if s != HEAD_SITE)
    return options.settled(spaces=spaces, sites=sites)


def _check_study(adapter: Adapter, options: TraceOptions) -> None:
    """A corpus-fitted correction: the study must be of this model, mask and sites."""
    stats = read_stats(options.correct_from)
    stats.check_model(
        {
            "model_type": str(adapter.config.model_type),
            "n_layers": adapter.n_layers,
            "d_model": adapter.d_model,
            "vocab_size": adapter.vocab_size,
        }
    )
    mask = adapter.resolve_causal(options.causal)
    if mask != adapter.resolve_causal(stats.causal):
        raise InputError(
            f"the study at {options.correct_from} ran {'with' if not mask else 'without'} the causal mask, this trace {'with' if mask else 'without'}: correct from a study with the same mask"
        )
    for site in options.sites:
        if site in RESIDUAL_SITES:
            stats.get(site, 0)


def streams(adapter: Adapter, options: TraceOptions, tokens: int) -> bool:
    """Whether a trace of one text of ``tokens`` tokens is computed layer by layer during
    the forward pass (:func:`stream_views`): when its captured activations would pass
    :data:`~tokentrail.engine.budget.STREAM_BYTES` and it can stream (:func:`unstreamable`)."""
    return (
        unstreamable(adapter, options) is None
        and captured_bytes(adapter.n_layers, tokens, adapter.d_model) > budget.STREAM_BYTES
    )


def unstreamable(adapter: Adapter, options: TraceOptions) -> str | None:
    """Why a trace cannot stream, or None: an encoder-decoder's two stacks, or a geometry
    correction (fitted to, or read for, every layer's vectors before scoring)."""
    if adapter.is_seq2seq:
        return f"this {adapter.family} model is an encoder-decoder: its trace is not streamed"
    if options.correct is not None:
        return (
            f"--correct {options.correct} needs every layer's vectors before scoring: a corrected trace is not streamed"
        )
    return None
