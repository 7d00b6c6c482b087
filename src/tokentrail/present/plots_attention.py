"""Attention patterns (bertviz' head view, CircuitsVis' attention patterns) of a Run, a Trail
or the patterns themselves (the figure: :func:`tokentrail.results.figures.attention_figure`)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from tokentrail.results.figures import PICKER_VALUES, attention_figure
from tokentrail.results.trail import AttentionPatterns, Trail


def patterns_of(source: Any, kind: str = "self", stack: str | None = None) -> AttentionPatterns:
    """The attention patterns of a Run (from its pass: ``run.attention()``), a Trail
    (``trail.attention()``) or the patterns themselves."""
    if isinstance(source, AttentionPatterns):
        return source
    if isinstance(source, Trail):
        return source.attention(kind, stack=stack)
    return source.attention(kind, stack=stack)  # a Run; an encoder-decoder's takes the stack


def attention_pattern(
    source: Any,
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
