"""Plotly figures built from results only (a :class:`Trail`, a :class:`HeadsAt`).

Every figure labels tokens as ``"i: token"``: plotly merges equal category names, and a
text often repeats a token ("flies" ... "flies").
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tokentrail.engine.cells import MetricNames, adjusted_metric
from tokentrail.results.figures import FONT
from tokentrail.results.trail import HeadsAt, Trail, View
from tokentrail.spec.errors import InputError

ACCENT = "#d9480f"  # the selected token, everywhere in the app
MUTED = "rgba(120, 130, 150, 0.35)"
SUBTITLE_CHARS = 56  # a subtitle line at most (fits a plot ~400 px wide)

LINE_METRICS = MetricNames("title")
"""Every metric a figure shows, name -> title: the registry's (:data:`tokentrail.engine.metrics.CELL_METRICS`),
read live, so a metric registered later is drawn too."""
SELECTOR_METRICS = MetricNames("short", first=("rank",))
"""The same metrics as a selector lists them, name -> short label (the app's heatmap), rank first."""


def token_labels(trail: Trail) -> list[str]:
    """Unique, readable labels for the tokens of a trail: ``"i: token"``."""
    return [f"{i}: {t}" for i, t in enumerate(trail.tokens)]


def subtitle(trail: Trail, view: View | None = None, token: int | None = None) -> str:
    """What a figure shows, so that an exported image says it: the highlighted token,
    the model, the site/space/similarity and the start of the text."""
    from pathlib import Path

    parts = []
    if token is not None:
        parts.append(f"token {token_labels(trail)[token]}")
    parts.append(Path(trail.info.model).name or trail.info.model)
    if view is not None:
        parts.append("/".join(view.key))
    text = trail.text if len(trail.text) <= 48 else trail.text[:47] + "…"
    parts.append(repr(text))
    parts = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts]
    # plotly does not wrap titles: break between parts so a plot ~400 px wide (three
    # side by side, or a narrow window) shows the whole subtitle
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 3 + len(part) <= SUBTITLE_CHARS:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "<br>".join(lines)


def _layout(title: str, height: int, sub: str | None = None, **axes) -> dict:
    """One layout dict for a figure (built once: plotly's property-by-property updates
    cost more than the data on a token click)."""
    axis = dict(gridcolor="#eef0f3", zeroline=False, linecolor="#cbd2d9")
    text = title if sub is None else title + "".join(f"<br><sup>{line}</sup>" for line in sub.split("<br>"))
    n_sub = 0 if sub is None else sub.count("<br>") + 1
    return dict(
        title=dict(text=text, x=0.01, xanchor="left", font=dict(size=14)),
        height=height + 14 * max(n_sub - 1, 0),
        margin=dict(l=56, r=16, t=44 + 18 * n_sub + (2 if n_sub else 0), b=44),
        font=FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        showlegend=False,
        hoverlabel=dict(font_size=12),
        xaxis={**axis, **axes.get("xaxis", {})},
        yaxis={**axis, **axes.get("yaxis", {})},
        shapes=axes.get("shapes", []),
    )


def metric_by_layer(view: View, metric: str, adjusted: bool = False) -> np.ndarray:
    """(L, n) values of ``metric`` for a residual view, as the app shows them; ``adjusted``
    shows the metric registered as its adjusted form (``self_sim``: ``adjusted_self_sim``)."""
    if metric not in LINE_METRICS or metric not in view.metrics:
        raise ValueError(f"unknown metric {metric!r}: choose from {', '.join(LINE_METRICS)}")
    adjusted_name = adjusted_metric(metric) if adjusted else None
    return view.metric(adjusted_name or metric)


def layer_lines(
    trail: Trail, view: View, metric: str, token: int | str, *, adjusted: bool = False, height: int = 300
) -> go.Figure:
    """One line per token across layers; ``token`` (an index, or a token's text as
    :meth:`Trail.token_index` reads it) drawn on top in the accent colour.

    ``rank`` is drawn as ``1 + rank`` on a log axis (rank 0, its own token nearest, sits at 1).
    """
    token = trail.token_index(token)
    values = metric_by_layer(view, metric, adjusted).astype(float)
    L, n = values.shape
    if metric == "rank":
        values = values + 1.0
    labels = token_labels(trail)
    fmt = "%{y:.3f}" if metric == "self_sim" else "%{y}"
    hover = "%{customdata}<br>layer %{x}: " + fmt + "<extra></extra>"
    traces = []
    # all other tokens as one trace per kind (gaps between tokens): cheap for 256 tokens
    for special, dash in ((False, "solid"), (True, "dot")):
        others = [t for t in range(n) if t != token and bool(trail.special[t]) == special]
        if not others:
            continue
        traces.append(
            go.Scatter(
                x=np.concatenate([np.append(np.arange(L), np.nan) for _ in others]),
                y=np.concatenate([np.append(values[:, t], np.nan) for t in others]),
                customdata=[labels[t] for t in others for _ in range(L + 1)],
                mode="lines",
                line=dict(color=MUTED, width=1.2, dash=dash),
                connectgaps=False,
                name="special tokens" if special else "other tokens",
                hovertemplate=hover,
            )
        )
    traces.append(
        go.Scatter(
            x=np.arange(L),
            y=values[:, token],
            customdata=[labels[token]] * L,
            mode="lines+markers",
            line=dict(color=ACCENT, width=3),
            marker=dict(size=6),
            name=labels[token],
            hovertemplate=hover,
        )
    )
    title = LINE_METRICS[metric]
    if metric == "self_sim" and adjusted:
        title += " − anisotropy"
    if metric == "overlap":
        title += f" (of {view.overlap_k})"
    xaxis = dict(title_text="layer", dtick=1 if L <= 16 else 2, range=[-0.4, L - 0.6])
    if metric == "rank":
        yaxis = dict(type="log", title_text="1 + rank", dtick=1)
    elif metric == "overlap":
        yaxis = dict(title_text="shared ids", range=[-0.5, view.overlap_k + 0.5])
    else:
        yaxis = dict(title_text=view.similarity)
    return go.Figure(data=traces, layout=_layout(title, height, subtitle(trail, view, token), xaxis=xaxis, yaxis=yaxis))


def attention_row(trail: Trail, heads: HeadsAt, *, height: int | None = None) -> go.Figure:
    """Heads × source tokens: how much the selected token attended to each token."""
    labels = token_labels(trail)
    H, n = heads.attention.shape
    return go.Figure(
        go.Heatmap(
            z=heads.attention,
            x=labels,
            y=[f"head {h}" for h in range(H)],
            colorscale="Oranges",
            zmin=0.0,
            zmax=1.0,
            colorbar=dict(title="weight", thickness=12),
            hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>",
        ),
        layout=_layout(
            f"Attention of '{trail.tokens[heads.token]}' at layer {heads.layer}, per head",
            height or max(260, 90 + 22 * H),
            xaxis=dict(tickangle=-45, type="category"),
            yaxis=dict(autorange="reversed"),
        ),
    )


def layer_grid(
    trail: Trail, view: View, metric: str, *, adjusted: bool = False, selected: tuple[int, int] | None = None
) -> go.Figure:
    """Token × layer heatmap of one metric (the app's clickable grid, as a figure for export)."""
    values = metric_by_layer(view, metric, adjusted).astype(float).T  # (n, L)
    z = np.log10(values + 1.0) if metric == "rank" else values
    labels = token_labels(trail)
    n, L = values.shape
    shapes = []
    if selected is not None:
        t, l = selected
        shapes.append(
            dict(type="rect", x0=l - 0.5, x1=l + 0.5, y0=t - 0.5, y1=t + 0.5, line=dict(color=ACCENT, width=3))
        )
    return go.Figure(
        go.Heatmap(
            z=z,
            x=[f"L{l}" for l in range(L)],
            y=labels,
            customdata=values,
            colorscale="Viridis_r" if metric == "rank" else "Viridis",
            colorbar=dict(title="log10(1+rank)" if metric == "rank" else metric, thickness=12),
            hovertemplate="%{y}, %{x}: %{customdata}<extra></extra>",
        ),
        layout=_layout(
            f"{LINE_METRICS[metric]}: token × layer",
            max(300, 60 + 18 * n),
            subtitle(trail, view, selected[0] if selected is not None else None),
            yaxis=dict(autorange="reversed", type="category"),
            shapes=shapes,
        ),
    )


# ---- notebook entry points: a Trail and a token by name ---------------------------------------
def _residual_view(trail: Trail, site: str | None, space: str | None, similarity: str | None) -> View:
    view = trail.view(site, space, similarity)
    if view.per_head:
        if site is None:
            residual = [
                v
                for v in trail.views
                if not v.per_head
                and (space is None or v.space == space)
                and (similarity is None or v.similarity == similarity)
            ]
            if residual:
                return residual[0]
        raise InputError("these plots show residual sites; for heads use Run.heads() and plots.attention_row")
    return view


def journey(
    trail: Trail,
    token: int | str,
    metric: str = "rank",
    *,
    site: str | None = None,
    space: str | None = None,
    similarity: str | None = None,
    adjusted: bool = False,
    height: int = 320,
) -> go.Figure:
    """How one token (index or text, e.g. ``"flies"`` or ``"flies:1"``) fares across layers,
    against every other token of the text: ``metric`` is any of :data:`LINE_METRICS`
    (``rank``, ``self_sim``, ``overlap``, ``margin``, ...); the view is the first computed residual one unless named."""
    if metric not in LINE_METRICS:
        raise InputError(f"unknown metric {metric!r}: choose from {', '.join(LINE_METRICS)}")
    view = _residual_view(trail, site, space, similarity)
    return layer_lines(trail, view, metric, token, adjusted=adjusted, height=height)


def grid(
    trail: Trail,
    metric: str = "rank",
    *,
    token: int | str | None = None,
    layer: int | None = None,
    site: str | None = None,
    space: str | None = None,
    similarity: str | None = None,
    adjusted: bool = False,
) -> go.Figure:
    """Token × layer heatmap of ``metric``; ``token`` and ``layer`` outline one cell."""
    if metric not in LINE_METRICS:
        raise InputError(f"unknown metric {metric!r}: choose from {', '.join(LINE_METRICS)}")
    view = _residual_view(trail, site, space, similarity)
    selected = None
    if token is not None:
        selected = (trail.token_index(token), trail.check_layer(layer if layer is not None else -1))
    return layer_grid(trail, view, metric, adjusted=adjusted, selected=selected)
