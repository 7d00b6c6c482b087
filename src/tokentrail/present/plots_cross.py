"""Figures of an encoder-decoder's cross-attention, from results only."""

from __future__ import annotations

import plotly.graph_objects as go

from tokentrail.results.trail import Trail
from tokentrail.spec.errors import InputError


def cross_attention_map(
    trail: Trail, layer: int, head: int, *, token: int | str | None = None, height: int = 360
) -> go.Figure:
    """Decoder tokens (rows) × source tokens (columns): cross-attention head ``head`` of
    decoder ``layer`` (``trail``: an encoder-decoder's Trail, or its decoder's);
    ``token`` outlines one decoder token's row."""
    dec = trail.decoder if trail.decoder is not None else trail
    if dec.cross_attentions is None:
        raise InputError("this Trail has no cross-attention: trace an encoder-decoder model (BART, Marian, T5)")
    layer, head = dec.check_layer(layer), dec.check_head(head)
    # plotly reads labels as HTML: "<s>" would vanish
    src = [f"{i}:{s}".replace("<", "&lt;") for i, s in enumerate(dec.source_tokens)]
    tgt = [f"{i}:{s}".replace("<", "&lt;") for i, s in enumerate(dec.tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=dec.cross_attentions[layer, head],
            x=src,
            y=tgt,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title="weight"),
            hovertemplate="decoder %{y}<br>source %{x}<br>weight %{z:.3f}<extra></extra>",
        )
    )
    if token is not None:
        t = dec.token_index(token)
        fig.add_shape(
            type="rect", x0=-0.5, x1=len(src) - 0.5, y0=t - 0.5, y1=t + 0.5, line=dict(color="#d62728", width=2)
        )
    fig.update_layout(
        title=dict(
            text=f"Cross-attention, decoder layer {layer}, head {head}<br><sup>queries: decoder · keys/values: encoder output</sup>",
            font=dict(size=13),
        ),
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        yaxis=dict(autorange="reversed", title="decoder token"),
        xaxis=dict(title="source token (encoder output)"),
    )
    return fig
