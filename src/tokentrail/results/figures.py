"""The natural figures of result objects (their ``.plot()``): the logit lens as tuned-lens
draws it (layers × positions, the top prediction in each cell) and attention patterns as
bertviz and CircuitsVis draw them (query × source tokens per head, a layer's heads as small
multiples, a picker). Data in, plotly figure out; ``tt.plots`` publishes them with the
figures of :mod:`tokentrail.present`. plotly is imported when a figure is drawn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import check_index

if TYPE_CHECKING:
    import plotly.graph_objects as go

FONT = dict(family="Inter, system-ui, sans-serif", size=12, color="#1f2937")
"""The figures' font (every figure of tt.plots)."""

LENS_COLOURS = {
    "prob": "probability of the top token",
    "entropy": "entropy of the prediction (nats)",
    "kl": "KL(final layer ‖ this layer) (nats)",
    "rank": "rank of the actual next token",  # encoders: of the token itself (the masked-LM reading)
}
"""What :func:`lens_figure` can colour cells by, name -> what the colour is."""

CELL_CHARS = 7  # a cell's text at most (a longer prediction ends in "…"; hover has it whole)
TEXT_UP_TO = 40  # positions with text in the cells; a longer text is colour only (hover still tells)


def _html(text: str) -> str:
    """Plotly reads labels as HTML: ``<s>`` would vanish."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _short(text: str) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


PICKER_VALUES = 2_000_000
"""A figure holds every layer (and head) for its picker up to this many weights; a bigger
one holds the asked layer (or head) alone, and its subtitle says so."""


def colour_values(lens: Any, color: str) -> tuple[np.ndarray, str]:
    """(L, n) values a cell is coloured by, and what a cell's colour says."""
    if color not in LENS_COLOURS:
        raise InputError(f"unknown lens colour {color!r}: choose from {', '.join(LENS_COLOURS)}")
    if color == "prob":
        return lens.top_probs[:, :, 0].astype(np.float64), LENS_COLOURS[color]
    if color == "entropy":
        return lens.entropy.astype(np.float64), LENS_COLOURS[color]
    if color == "kl":
        if lens.kl is None:
            raise InputError(
                "this lens has no KL to the final layer (a streamed trace holds one layer at a time; the embeddings row has no layers): colour by prob, entropy or rank"
            )
        return lens.kl.astype(np.float64), LENS_COLOURS[color]
    if lens.next_rank is not None:
        rank = lens.next_rank.astype(np.float64)
        rank[lens.next_rank < 0] = np.nan
        return rank, "rank of the actual next token (0 = predicted; blank: the last token has none)"
    return lens.own_rank.astype(np.float64), "rank of the token itself (masked-LM reading; 0 = predicted)"


def lens_figure(
    lens: Any,
    color: str = "prob",
    *,
    hover_k: int = 5,
    height: int | None = None,
    title: str | None = None,
    about: str | None = None,
) -> go.Figure:
    """The logit lens as tuned-lens draws it: layers (rows, the last on top) × positions
    (columns); each cell shows the top prediction at that layer and position and is coloured
    by ``color``: ``prob`` (the top token's probability), ``entropy``, ``kl`` (KL divergence
    from the final layer's distribution) or ``rank`` (of the actual next token for decoders,
    of the token itself for encoders, log-scaled colour). Hover shows the top ``hover_k``.

    Args:
        lens: a :class:`LensResult` (``run.lens()``, ``trail.lens``).
        color: one of :data:`LENS_COLOURS`.
        about: a line for the subtitle (the model and the text).
    Returns:
        A plotly figure; its subtitle says what a cell is.
    """
    import plotly.graph_objects as go

    values, what = colour_values(lens, color)
    L, n = values.shape
    kk = max(1, min(hover_k, lens.k))
    tokens = [_html(f"{t}: {lens.token_text(t)}") for t in range(n)]
    top_text = [[_html(lens.label(int(lens.top_ids[l, t, 0]))) for t in range(n)] for l in range(L)]
    cell_text = [[_short(s) for s in row] for row in top_text] if n <= TEXT_UP_TO else None
    hover = []
    for l in range(L):
        row = []
        for t in range(n):
            tops = "<br>".join(
                f"{p:.3f}  {_html(lens.label(int(i)))}"
                for i, p in zip(lens.top_ids[l, t, :kk], lens.top_probs[l, t, :kk])
            )
            extra = f"entropy {lens.entropy[l, t]:.2f} nats"
            if lens.kl is not None:
                extra += f" · KL to final {lens.kl[l, t]:.2f}"
            if lens.next_rank is not None and t + 1 < n:
                extra += f"<br>next token {_html(lens.token_text(t + 1))!s}: rank {int(lens.next_rank[l, t])}"
            row.append(f"layer {l} · {tokens[t]}<br>{extra}<br><b>top {kk}</b><br>{tops}")
        hover.append(row)
    if color == "rank":
        z, colorbar = (
            np.log10(values + 1.0),
            dict(title="rank", tickvals=[0, 1, 2, 3, 4], ticktext=["0", "9", "99", "999", "9999"]),
        )
        scale, zmin, zmax = (
            "Blues_r",
            0.0,
            max(1.0, float(np.nanmax(np.log10(values + 1.0))) if np.isfinite(values).any() else 1.0),
        )
    elif color == "prob":
        z, colorbar, scale, zmin, zmax = values, dict(title="p(top)"), "Blues", 0.0, 1.0
    else:
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        z, colorbar, scale, zmin, zmax = values, dict(title="nats"), "Blues_r", 0.0, max(top, 1e-6)
    heat = go.Heatmap(
        z=z,
        x=tokens,
        y=[f"L{l}" for l in range(L)],
        text=cell_text,
        texttemplate="%{text}" if cell_text is not None else None,
        textfont=dict(size=10),
        customdata=hover,
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=scale,
        zmin=zmin,
        zmax=zmax,
        colorbar=dict(thickness=12, **colorbar),
        xgap=1,
        ygap=1,
    )
    sub = [f"cell: the lens' top prediction at that layer and position ({lens.site}); colour: {what}"]
    if about:
        sub.append(_html(about))
    head = title or "Logit lens"
    fig = go.Figure(heat)
    fig.update_layout(
        title=dict(text=head + "".join(f"<br><sup>{s}</sup>" for s in sub), x=0.01, xanchor="left", font=dict(size=14)),
        height=height or max(320, 110 + 26 * L),
        width=max(640, 140 + 62 * min(n, TEXT_UP_TO)) if n <= TEXT_UP_TO else None,
        margin=dict(l=56, r=16, t=48 + 18 * len(sub), b=90),
        font=FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        xaxis=dict(type="category", tickangle=-45, title_text="position"),
        yaxis=dict(type="category", title_text="layer"),
    )
    return fig


def _labels(tokens: tuple[str, ...]) -> list[str]:
    return [_html(f"{i}: {t}") for i, t in enumerate(tokens)]


def _what(p: Any) -> str:
    """The subtitle's line on what a cell is."""
    if p.kind == "cross":
        return "cell: how much decoder token (row) attends to source token (column); rows sum to 1"
    mask = " (causal: later tokens get 0)" if p.causal else ""
    return f"cell: how much query token (row) attends to key token (column){mask}; rows sum to 1"


def _title(p: Any, layer: int, head: int | None) -> str:
    stack = f"{p.stack} " if p.stack else ""
    kind = "cross-attention" if p.kind == "cross" else "attention"
    which = f"layer {layer}, head {head}" if head is not None else f"layer {layer}, all {p.n_heads} heads"
    return f"{stack}{kind} pattern, {which}".capitalize()


def attention_figure(
    p: Any,
    layer: int = 0,
    head: int | None = None,
    *,
    columns: int | None = None,
    height: int | None = None,
) -> go.Figure:
    """Query tokens (rows) × source tokens (columns): one head's attention pattern, or every
    head of ``layer`` as small multiples when ``head`` is None; a dropdown picks another
    layer (small multiples) or another layer and head (one head).

    Args:
        p: the patterns (``run.attention()``, ``trail.attention()``).
        layer, head: which (negative counts from the end).
        columns: small multiples per row (default: about square).
    Returns:
        A plotly figure; its subtitle says what a cell is.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L, H, n, m = p.weights.shape
    layer = check_index(layer, L, "layer", f"the model has {L} layers")
    if head is not None:
        head = check_index(head, H, "head", f"the model has {H} heads")
    rows_l, cols_l = _labels(p.tokens), _labels(p.source_tokens)
    hover = "query %{y}<br>source %{x}<br>weight %{z:.3f}<extra></extra>"
    sub = [_what(p), _html(f"{Path(p.model).name or p.model}")] if p.model else [_what(p)]
    heat: dict[str, Any] = dict(x=cols_l, y=rows_l, colorscale="Blues", zmin=0.0, zmax=1.0, hovertemplate=hover)
    if head is not None:
        choices = [(l, h) for l in range(L) for h in range(H)] if L * H * n * m <= PICKER_VALUES else [(layer, head)]
        if len(choices) == 1 and L * H > 1:
            sub.append("one head (the text is too long to hold every head for the picker)")
        fig = go.Figure(go.Heatmap(z=p.weights[layer, head], colorbar=dict(title="weight", thickness=12), **heat))
        buttons = [
            dict(
                label=f"layer {l}, head {h}",
                method="update",
                args=[{"z": [p.weights[l, h]]}, {"title.text": _full_title(_title(p, l, h), sub)}],
            )
            for l, h in choices
        ]
        active = choices.index((layer, head))
        size = max(360, 140 + 22 * n)
        fig.update_layout(height=height or size, width=max(480, 200 + 22 * m))
    else:
        cols = columns or max(1, math.ceil(math.sqrt(H)))
        nrows = math.ceil(H / cols)
        fig = make_subplots(
            rows=nrows,
            cols=cols,
            subplot_titles=[f"head {h}" for h in range(H)],
            horizontal_spacing=0.02,
            vertical_spacing=0.06 if nrows > 1 else 0.0,
            shared_xaxes=True,
            shared_yaxes=True,
        )
        for h in range(H):
            fig.add_trace(
                go.Heatmap(
                    z=p.weights[layer, h], showscale=h == 0, colorbar=dict(title="weight", thickness=12), **heat
                ),
                row=h // cols + 1,
                col=h % cols + 1,
            )
        choices_l = list(range(L)) if L * H * n * m <= PICKER_VALUES else [layer]
        if len(choices_l) == 1 and L > 1:
            sub.append("one layer (the text is too long to hold every layer for the picker)")
        buttons = [
            dict(
                label=f"layer {l}",
                method="update",
                args=[{"z": [p.weights[l, h] for h in range(H)]}, {"title.text": _full_title(_title(p, l, None), sub)}],
            )
            for l in choices_l
        ]
        active = choices_l.index(layer)
        small = max(110, min(220, 12 * max(n, m)))
        fig.update_layout(height=height or 120 + nrows * (small + 30), width=80 + cols * (small + 10))
        fig.update_xaxes(showticklabels=n <= 24 and m <= 24, tickangle=-90, tickfont=dict(size=8), type="category")
        fig.update_yaxes(showticklabels=n <= 24, tickfont=dict(size=8), type="category")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=dict(text=_full_title(_title(p, layer, head), sub), x=0.01, xanchor="left", font=dict(size=14)),
        margin=dict(l=60, r=16, t=64 + 18 * len(sub), b=60),
        font=FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        updatemenus=[
            dict(buttons=buttons, active=active, x=1.0, xanchor="right", y=1.0, yanchor="bottom", pad=dict(t=4))
        ]
        if len(buttons) > 1
        else [],
    )
    return fig


def _full_title(title: str, sub: list[str]) -> str:
    return title + "".join(f"<br><sup>{s}</sup>" for s in sub)


def mean_pattern(p: Any) -> np.ndarray:
    """(L, H) the mean over queries of the largest weight each gave (how peaked each head is)."""
    return p.weights.max(axis=-1).mean(axis=-1)
