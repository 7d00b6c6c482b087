"""A trace of a bare adapter, without a loaded model: the public path of tests, tiny
random models and benchmarks (:func:`analyse`, :func:`analyse_batch`).

The same steps as :class:`tokentrail.session.runner.Run` (check the options against the
model, one forward pass, the views, the lens, the Trail), with the caller's tokens and
labels instead of a tokenizer's."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.batch import compute_views_batch
from tokentrail.analysis.checks import check_against, streams
from tokentrail.analysis.lens import logit_lens
from tokentrail.analysis.stream import stream_views
from tokentrail.analysis.trail import Labeller, make_trail
from tokentrail.analysis.views import Progress, compute_views
from tokentrail.engine.capture import capture, capture_batch
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.results.trail import Trail
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions

__all__ = ["analyse", "analyse_batch"]


def analyse(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Tensor,
    *,
    text: str,
    tokens: Sequence[str],
    special: Sequence[bool],
    label: Labeller,
    model_name: str,
    options: TraceOptions = TraceOptions(),
    revision: str | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
    stream: bool | None = None,
) -> Trail:
    """Every metric of SPEC for every token and layer of one text, for a bare adapter.

    The same path as :meth:`tokentrail.session.runner.Run.trail` (one forward pass, then
    :func:`compute_views` and :func:`make_trail`), for callers without a loaded model.
    ``stream``: score the layers during the forward pass (:func:`stream_views`); None
    (default) does so where :func:`streams` says, for long texts."""
    options = options.validate()
    if stream is None:
        stream = streams(adapter, options, len(input_ids))
    options = check_against(adapter, options, tokens=len(input_ids), streamed=stream)
    say = progress or (lambda f, m: None)
    say(0.0, "running the model")
    lens = None
    if stream:
        views, lens, acts = stream_views(adapter, spaces, input_ids, options, say, chunk_bytes)
    else:
        acts = capture(adapter, input_ids, causal=options.causal)
        views = compute_views(adapter, spaces, acts, options, say, chunk_bytes)
        if options.lens:
            say(0.99, "logit lens")
            lens = logit_lens(adapter, acts, k=options.k, site=options.lens_site)
    say(1.0, "done")
    return make_trail(
        adapter,
        acts,
        views,
        lens,
        options=options,
        text=text,
        tokens=tokens,
        special=special,
        label=label,
        model_name=model_name,
        revision=revision,
    )


def analyse_batch(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Sequence[Tensor],
    *,
    texts: Sequence[str],
    tokens: Sequence[Sequence[str]],
    special: Sequence[Sequence[bool]],
    label: Labeller,
    model_name: str,
    options: TraceOptions = TraceOptions(),
    revision: str | None = None,
    padding_side: str = "right",
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> list[Trail]:
    """:func:`analyse` for several texts at once: one padded forward pass
    (:func:`~tokentrail.engine.capture.capture_batch`) and :func:`compute_views_batch`; per
    text, the Trail it gets alone."""
    if not (len(input_ids) == len(texts) == len(tokens) == len(special)):
        raise InputError("a batch needs as many texts, token lists and special flags as id tensors")
    options = check_against(adapter, options.validate(), tokens=sum(len(t) for t in input_ids), streamed=False)
    say = progress or (lambda f, m: None)
    say(0.0, f"running the model on {len(input_ids)} texts")
    acts = capture_batch(adapter, input_ids, causal=options.causal, padding_side=padding_side)
    per_text = compute_views_batch(adapter, spaces, acts, options, say, chunk_bytes)
    trails = []
    for i, (a, views) in enumerate(zip(acts, per_text)):
        lens = None
        if options.lens:
            lens = logit_lens(adapter, a, k=options.k, site=options.lens_site)
        trails.append(
            make_trail(
                adapter,
                a,
                views,
                lens,
                options=options,
                text=texts[i],
                tokens=tokens[i],
                special=special[i],
                label=label,
                model_name=model_name,
                revision=revision,
            )
        )
    say(1.0, "done")
    return trails
