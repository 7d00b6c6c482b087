"""The logit-lens picture (tuned-lens' plot) from a LensResult or a Trail: layers ×
positions, each cell the lens' top prediction, coloured by one measure, the top-k on hover
(the figure itself: :func:`tokentrail.results.figures.lens_figure`)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from tokentrail.results.figures import LENS_COLOURS, colour_values, lens_figure
from tokentrail.results.trail import LensResult, Trail
from tokentrail.spec.errors import InputError


def lens_of(source: LensResult | Trail) -> tuple[LensResult, Trail | None]:
    """The lens of ``source``: a LensResult, or a Trail traced with the lens (an
    encoder-decoder's Trail: its decoder's)."""
    if isinstance(source, LensResult):
        return source, None
    trail = source.decoder if source.decoder is not None else source
    if trail.lens is None:
        raise InputError("this Trail has no logit lens: trace with lens=True (--lens), or use run.lens()")
    return trail.lens, trail


def lens_heatmap(
    source: LensResult | Trail,
    color: str = "prob",
    *,
    hover_k: int = 5,
    height: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """The logit lens as tuned-lens draws it: layers (rows, the last on top) × positions
    (columns); each cell shows the top prediction at that layer and position and is coloured
    by ``color``: ``prob`` (the top token's probability), ``entropy``, ``kl`` (KL divergence
    from the final layer's distribution) or ``rank`` (of the actual next token for decoders,
    of the token itself for encoders, log-scaled colour). Hover shows the top ``hover_k``.

    Args:
        source: a :class:`LensResult` (``run.lens()``) or a Trail traced with the lens
            (its subtitle then names the model and the text).
        color: one of :data:`LENS_COLOURS`.
    Returns:
        A plotly figure; its subtitle says what a cell is.
    """
    lens, trail = lens_of(source)
    about = None
    if trail is not None:
        text = trail.text if len(trail.text) <= 48 else trail.text[:47] + "…"
        about = f"{Path(trail.info.model).name or trail.info.model} · {text!r}"
    return lens_figure(lens, color, hover_k=hover_k, height=height, title=title, about=about)


__all__ = ["LENS_COLOURS", "colour_values", "lens_heatmap", "lens_of"]
