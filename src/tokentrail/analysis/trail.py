"""One text's computed views, lens and run metadata wrapped into a
:class:`~tokentrail.results.trail.Trail` (:func:`make_trail`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone

import numpy as np
import torch

from tokentrail.adapters import Adapter
from tokentrail.engine.capture import Activations, Passed
from tokentrail.results.trail import CrossView, LensResult, RunInfo, Trail, View
from tokentrail.spec.options import TraceOptions
from tokentrail.spec.version import __version__

Labeller = Callable[[Iterable[int]], dict[int, str]]


def make_trail(
    adapter: Adapter,
    acts: Activations | Passed,
    views: Sequence[View],
    lens: LensResult | None,
    *,
    options: TraceOptions,
    text: str,
    tokens: Sequence[str],
    special: Sequence[bool],
    label: Labeller,
    model_name: str,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    truncated_from: int | None = None,
    cross: Sequence[CrossView] = (),
    source_tokens: Sequence[str] | None = None,
    decoder: Trail | None = None,
    decoder_input: str | None = None,
) -> Trail:
    """Wrap computed views (and lens) of one text with its metadata.

    Encoder-decoders: each stack's Trail says which it is (``stack``); the encoder's carries
    the decoder's (``decoder``), which carries the cross-attention views and probabilities
    and the source tokens they point at; ``decoder_input`` says where the decoder's input
    came from (the user's target, or the model's own greedy output)."""
    input_ids = acts.input_ids
    ids_used = {int(i) for v in views for i in np.unique(v.top_ids)} | {int(i) for i in input_ids}
    ids_used |= {int(i) for v in views if v.origin_top_ids is not None for i in np.unique(v.origin_top_ids)}
    if lens is not None:
        ids_used |= lens.ids_used()
    info = _run_info(adapter, acts, options, model_name, revision, device, dtype, truncated_from, decoder_input)
    cross_att = getattr(acts, "cross_attentions", None)
    return Trail(
        info=info,
        text=text,
        tokens=tuple(tokens),
        ids=input_ids.cpu().numpy().copy(),
        positions=acts.position_ids.cpu().numpy().copy(),
        special=np.asarray(special, dtype=bool),
        n_layers=adapter.n_layers,
        n_heads=adapter.n_heads,
        views=tuple(views),
        labels=label(sorted(ids_used)),
        attentions=acts.attentions.cpu().numpy(),
        kv_groups=adapter.n_heads // adapter.n_kv_heads,
        lens=lens,
        stack=adapter.stack,
        decoder=decoder,
        cross_views=tuple(cross),
        cross_attentions=None if cross_att is None else cross_att.cpu().numpy(),
        source_tokens=None if source_tokens is None else tuple(source_tokens),
    )


def _run_info(
    adapter: Adapter,
    acts: Activations | Passed,
    options: TraceOptions,
    model_name: str,
    revision,
    device: str,
    dtype: str,
    truncated_from,
    decoder_input,
) -> RunInfo:
    """The run metadata of a Trail: model, versions, options, device and dtype, and when it was made."""
    causal = acts.causal
    return RunInfo(
        model=model_name,
        model_type=str(adapter.config.model_type),
        family=adapter.family,
        revision=revision,
        causal=causal if adapter.is_decoder else None,
        tokentrail_version=__version__,
        torch_version=torch.__version__,
        transformers_version=_transformers_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        options=options,
        device=device,
        dtype=dtype,
        exact=dtype == "float32",
        truncated_from=truncated_from,
        decoder_input=decoder_input,
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
