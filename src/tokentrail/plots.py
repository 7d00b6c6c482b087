"""``tt.plots``: the figures of results, one module for users (plotly figures; the code
lives in :mod:`tokentrail.present`): a Trail's lines, grids and journeys, a head's
attention row, a comparison's curves and heatmaps, the cross-attention map."""

from tokentrail.present.plots import (
    LINE_METRICS,
    SELECTOR_METRICS,
    attention_row,
    grid,
    journey,
    layer_grid,
    layer_lines,
    metric_by_layer,
    subtitle,
    token_labels,
)
from tokentrail.present.plots_compare import compare_heatmaps, compare_lines, cosine_figure
from tokentrail.present.plots_cross import cross_attention_map

__all__ = [
    "LINE_METRICS",
    "SELECTOR_METRICS",
    "attention_row",
    "compare_heatmaps",
    "compare_lines",
    "cosine_figure",
    "cross_attention_map",
    "grid",
    "journey",
    "layer_grid",
    "layer_lines",
    "metric_by_layer",
    "subtitle",
    "token_labels",
]
