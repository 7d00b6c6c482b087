"""Attention patterns (bertviz' head view, CircuitsVis' attention patterns) of a Run, a Trail
or the patterns themselves (the figure: :func:`tokentrail.results.figures.attention_figure`)."""

from __future__ import annotations

import plotly.graph_objects as go

from tokentrail.results.figures import PICKER_VALUES, attention_figure
from tokentrail.results.trail import AttentionPatterns, Trail
from tokentrail.session.runner import Run
from tokentrail.session.seq2seq_run import Seq2SeqRun
from tokentrail.spec.errors import InputError


def patterns_of(
    source: Run | Trail | AttentionPatterns, kind: str = "self", stack: str | None = None
) -> AttentionPatterns:
    """The attention patterns of a Run (computed from its pass), a Trail or the patterns themselves."""
    if isinstance(source, AttentionPatterns):
        return source
    if isinstance(source, Seq2SeqRun):
        return source.attention(kind, stack=stack or ("decoder" if kind == "cross" else "encoder"))
    if isinstance(source, Run):
        if stack is not None:
            raise InputError(f"stack={stack!r} is for encoder-decoders; this model has one stack")
        return source.attention(kind)
    return source.attention(kind, stack=stack)


def attention_pattern(
    source: Run | Trail | AttentionPatterns,
    layer: int = 0,
    head: int | None = None,
    *,
    kind: str = "self",
    stack: str | None = None,
    columns: int | None = None,
    height: int | None = None,
) -> go.Figure:
    """Query tokens (rows) × source tokens (columns): one head's attention pattern, or every
    head of ``layer`` as small multiples when ``head`` is None; a dropdown picks another
    layer (small multiples) or another layer and head (one head).

    Args:
        source: a Run (``tt.run(...)``), a Trail or :class:`AttentionPatterns`.
        layer, head: which (negative counts from the end).
        kind: ``self``, or ``cross`` (an encoder-decoder's decoder over the source tokens).
        stack: an encoder-decoder's ``encoder`` (default for self) or ``decoder``.
        columns: small multiples per row (default: about square).
    Returns:
        A plotly figure; its subtitle says what a cell is.
    """
    return attention_figure(patterns_of(source, kind, stack), layer, head, columns=columns, height=height)


__all__ = ["PICKER_VALUES", "attention_pattern", "patterns_of"]
