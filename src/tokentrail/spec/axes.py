"""Axes every figure shares, as plain plotly layout dicts (no plotly import here).

A rank axis is logarithmic, so it draws ``1 + rank``; its ticks are labelled with the
rank itself (0, 1, 10, 100, ...) and its title says so, instead of plotly's default log
labels ("10, 5, 2, 1, 5, 2") and a raw ``rank_median + 1``."""

from __future__ import annotations


def rank_axis(max_rank: float, title: str = "rank (log scale; 0 = nearest)") -> dict:
    """A y axis for ``1 + rank`` values up to ``1 + max_rank``: ticks at ranks 0, 1, 10, 100, ..."""
    ranks = [0, 1]
    while ranks[-1] < max(max_rank, 1):
        ranks.append(ranks[-1] * 10)
    return dict(
        type="log",
        title_text=title,
        tickvals=[r + 1 for r in ranks],
        ticktext=[f"{r:,}" for r in ranks],
    )
