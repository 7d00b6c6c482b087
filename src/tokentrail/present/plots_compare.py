"""Plotly figures of a :class:`~tokentrail.session.comparison.Comparison` (built from the result only).

One model: the x axis is the layer; two models: the relative depth ``(layer + 1) / L``,
so that both models' last layers meet at 1. Both sides always share one y scale (and,
in heatmaps, one colour scale).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tokentrail.present.plots import ACCENT, LINE_METRICS, _layout
from tokentrail.session.comparison import Comparison, Side
from tokentrail.spec.axes import rank_axis

SIDE_COLOURS = {"a": ACCENT, "b": "#1c7ed6"}
METRICS = {
    name: LINE_METRICS[name] for name in ("self_sim", "rank")
}  # what a comparison computes per side; titles from the registry


def _x(c: Comparison, s: Side) -> np.ndarray:
    return np.arange(s.n_layers) if c.same_model else s.depth


def _label(s: Side) -> str:
    who = f"{s.token}: {s.token_str}" if s.token is not None else "all tokens"
    return f"{s.name} · {s.model} · {who}"


def compare_lines(c: Comparison, metric: str = "self_sim", *, head: int | None = None, height: int = 320) -> go.Figure:
    """Each side's ``self_sim`` or ``rank`` across layers (heads site: one ``head``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")
    traces = []
    for s in c.sides:
        y = (s.self_sim if metric == "self_sim" else s.rank.astype(float) + 1.0).astype(float)
        if c.per_head:
            y = y[:, 0 if head is None else head]
        traces.append(
            go.Scatter(
                x=_x(c, s),
                y=y,
                mode="lines+markers",
                name=_label(s),
                line=dict(color=SIDE_COLOURS[s.name], width=3, dash="solid" if s.name == "a" else "dash"),
                text=[f"{v:g}" for v in (y - 1.0 if metric == "rank" else y)],
                hovertemplate=_label(s)
                + ("<br>%{x}: rank %{text}" if metric == "rank" else "<br>%{x}: %{y:.3f}")
                + "<extra></extra>",
            )
        )
    title = METRICS[metric] + (f", head {0 if head is None else head}" if c.per_head else "")
    layout = _layout(
        title,
        height,
        xaxis=_xaxis(c),
        yaxis=rank_axis(max(float(s.rank.max()) for s in c.sides))
        if metric == "rank"
        else dict(title_text=c.similarity),
    )
    layout.update(showlegend=True, legend=dict(orientation="h", y=-0.25))
    return go.Figure(data=traces, layout=layout)


def _xaxis(c: Comparison) -> dict:
    if c.same_model:
        return dict(title_text="layer", dtick=1 if c.a.n_layers <= 16 else 2)
    return dict(title_text="relative depth (layer + 1) / L", range=[0, 1.02])


def cosine_figure(c: Comparison, *, height: int = 320) -> go.Figure:
    """One model: the cosine between the two occurrences per layer (a line) or per layer
    and head (a heatmap), the lowest marked."""
    if c.cosine is None:
        raise ValueError("the cosine between two occurrences needs one model on both sides")
    d = c.diverge
    title = f"Cosine between {c.a.token_str!r} ({c.a.token}) and {c.b.token_str!r} ({c.b.token})"
    if c.per_head:
        L, H = c.cosine.shape
        return go.Figure(
            go.Heatmap(
                z=c.cosine,
                x=[f"head {h}" for h in range(H)],
                y=[f"L{l}" for l in range(L)],
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                colorbar=dict(title="cosine", thickness=12),
                hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>",
            ),
            layout=_layout(
                f"{title}; lowest at layer {d[0]}, head {d[1]}",
                max(height, 80 + 22 * L),
                yaxis=dict(autorange="reversed"),
            ),
        )
    L = c.cosine.shape[0]
    fig = go.Figure(
        [
            go.Scatter(
                x=np.arange(L),
                y=c.cosine,
                mode="lines+markers",
                line=dict(color="#495057", width=3),
                hovertemplate="layer %{x}: %{y:.4f}<extra></extra>",
            ),
            go.Scatter(
                x=[d[0]],
                y=[c.cosine[d[0]]],
                mode="markers",
                marker=dict(color=ACCENT, size=13, symbol="diamond"),
                hovertemplate="lowest: layer %{x}, %{y:.4f}<extra></extra>",
            ),
        ],
        layout=_layout(f"{title}; lowest at layer {d[0]}", height, xaxis=_xaxis(c), yaxis=dict(title_text="cosine")),
    )
    return fig


def compare_heatmaps(c: Comparison, *, height: int | None = None) -> go.Figure:
    """Both sides' token × layer self-similarity grids side by side, one colour scale
    (residual sites; for two models the rows are labelled with the relative depth)."""
    from plotly.subplots import make_subplots

    if c.a.grid is None or c.b.grid is None:
        raise ValueError("heatmaps of every token need a residual site (the heads site keeps one token)")
    lo = float(min(np.nanmin(c.a.grid), np.nanmin(c.b.grid)))
    hi = float(max(np.nanmax(c.a.grid), np.nanmax(c.b.grid)))
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=[f"{s.name}: {s.model}" for s in c.sides], horizontal_spacing=0.12
    )
    for col, s in enumerate(c.sides, start=1):
        L, n = s.grid.shape
        rows = [f"L{l}" for l in range(L)] if c.same_model else [f"{d:.2f} (L{l})" for l, d in enumerate(s.depth)]
        fig.add_trace(
            go.Heatmap(
                z=s.grid,
                x=[f"{i}: {t}" for i, t in enumerate(s.tokens)],
                y=rows,
                zmin=lo,
                zmax=hi,
                colorscale="Viridis",
                showscale=col == 2,
                colorbar=dict(title="self_sim", thickness=12),
                hovertemplate=f"{s.name} " + "%{x}, %{y}: %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col)
        fig.update_xaxes(type="category", tickangle=-45, row=1, col=col)
    L = max(c.a.n_layers, c.b.n_layers)
    fig.update_layout(
        _layout("Similarity to the original encoding: token × layer", height or max(320, 120 + 16 * L)),
    )
    fig.update_layout(
        xaxis2=dict(type="category"), yaxis2=dict(autorange="reversed", type="category"), margin=dict(t=84)
    )
    fig.update_annotations(yshift=6)
    return fig
