"""Rank axes: a log scale drawn on 1 + rank, labelled with the rank itself."""

from __future__ import annotations

import pandas as pd

import tokentrail as tt
from tokentrail.corpus.report import _by_class_figure, _rank_median_figure
from tokentrail.spec.axes import rank_axis


def test_rank_axis_ticks_are_ranks_by_hand():
    axis = rank_axis(250)
    assert axis["type"] == "log" and "0 = nearest" in axis["title_text"]
    assert axis["tickvals"] == [1, 2, 11, 101, 1001]
    assert axis["ticktext"] == ["0", "1", "10", "100", "1,000"]
    assert rank_axis(0)["ticktext"] == ["0", "1"]


def test_a_journey_hovers_the_rank_not_one_plus_rank(loaded_tiny):
    trail = tt.trace("Time flies like an arrow.", loaded_tiny)
    fig = tt.plots.journey(trail, "flies", "rank")
    rank = trail.view("attn_resid").rank[:, trail.token_index("flies")]
    line = fig.data[-1]
    assert list(line.y) == list(rank + 1)  # drawn on the log axis
    assert list(line.text) == [f"{float(r):g}" for r in rank] and "rank %{text}" in line.hovertemplate
    assert fig.layout.yaxis.ticktext[0] == "0" and fig.layout.yaxis.title.text.startswith("rank")


def test_the_study_reports_rank_axis_is_labelled_in_ranks():
    by = pd.DataFrame(
        {
            "site": "attn_resid",
            "word_class": ["function", "function", "content", "content"],
            "layer": [0, 1, 0, 1],
            "self_sim_mean": [1.0, 0.8, 1.0, 0.9],
            "rank_median": [0.0, 37.0, 0.0, 3.0],
            "rank_mean": [0.5, 80.0, 0.2, 9.0],
            "overlap_mean": [100.0, 60.0, 100.0, 80.0],
        }
    )
    fig = _by_class_figure(by, "rank_median", "Rank (median)", log=True)  # what named_figures draws
    assert fig.layout.yaxis.title.text == "rank (log scale; 0 = nearest)"
    assert list(fig.layout.yaxis.ticktext) == ["0", "1", "10", "100"]
    assert "+ 1" not in fig.layout.yaxis.title.text


def test_a_median_rank_of_zero_everywhere_draws_the_90th_percentile_beside_it():
    by = pd.DataFrame(
        {
            "site": "attn_resid",
            "word_class": ["function", "function", "content", "content"],
            "layer": [0, 1, 0, 1],
            "rank_median": [0.0, 0.0, 0.0, 0.0],
            "rank_q90": [0.0, 12.0, 0.0, 3.0],
        }
    )
    fig = _rank_median_figure(by)
    assert "median is 0 at every layer" in fig.layout.title.text
    dotted = [t for t in fig.data if t.line.dash == "dot"]
    assert [t.name for t in dotted] == ["function, 90th pct.", "content, 90th pct."]
    assert list(dotted[0].y) == [1.0, 13.0] and list(fig.layout.yaxis.ticktext) == ["0", "1", "10", "100"]
    by["rank_median"] = [0.0, 2.0, 0.0, 1.0]  # a median that moves is drawn alone
    moving = _rank_median_figure(by)
    assert not [t for t in moving.data if t.line.dash == "dot"] and "median is 0" not in moving.layout.title.text
