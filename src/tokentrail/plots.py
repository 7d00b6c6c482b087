"""``tt.plots``: the figures of results, one module for users (plotly figures; the code
lives in :mod:`tokentrail.present`): a Trail's lines, grids and journeys, a head's
attention row, a comparison's curves and heatmaps, the cross-attention map, the logit
lens' layers × positions picture and every head's attention pattern."""

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
from tokentrail.present.plots_attention import attention_pattern
from tokentrail.present.plots_compare import compare_heatmaps, compare_lines, cosine_figure
from tokentrail.present.plots_cross import cross_attention_map
from tokentrail.present.plots_lens import LENS_COLOURS, lens_heatmap

__all__ = [
    "LENS_COLOURS",
    "LINE_METRICS",
    "SELECTOR_METRICS",
    "attention_pattern",
    "attention_row",
    "compare_heatmaps",
    "compare_lines",
    "cosine_figure",
    "cross_attention_map",
    "grid",
    "journey",
    "layer_grid",
    "layer_lines",
    "lens_heatmap",
    "metric_by_layer",
    "subtitle",
    "token_labels",
]
