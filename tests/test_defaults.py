"""Defaults that say something (issue 24, point 5): the trace grid shows each token's
self-similarity at every layer, with its rank only where another row is nearer (MiniLM's
rank grid was 78 zeros of 84 cells); where a few dimensions dominate the raw cosine, the
corrected rank and neighbours print beside the raw ones (``--beside``, auto by default)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import tokentrail as tt
from tokentrail.cli.commands import app
from tokentrail.present.report import print_report

TEXT = "time flies like an arrow , time flies ."


def _report(trail, **kw) -> str:
    console = Console(record=True, width=200, color_system=None)
    print_report(console, trail, **kw)
    return console.export_text()


def test_the_grid_shows_self_similarity_and_the_rank_only_where_it_is_not_zero(loaded_tiny):
    trail = tt.trace(TEXT, loaded_tiny, k=3)
    v = trail.view()
    text = _report(trail)
    assert "cosine self-similarity; ·N: its rank where not 0" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:1].isdigit() and ":" in line}
    assert rows, text
    for t in range(trail.n_tokens):
        cells = rows[f"{t}:{trail.tokens[t]}" + ("*" if trail.special[t] else "")]
        for l, cell in enumerate(cells):
            want = f"{v.self_sim[l, t]:.2f}" + ("" if v.rank[l, t] == 0 else f"·{int(v.rank[l, t])}")
            assert cell == want, (t, l, cell, want)
    assert (v.rank > 0).any() and (v.rank == 0).any()  # both kinds of cell were checked


def test_beside_prints_the_corrected_rank_and_neighbours_next_to_the_raw_ones(loaded_tiny):
    run = tt.run(TEXT, loaded_tiny)
    raw, fixed = run.trail(k=5), run.trail(k=5, correct="zscore")
    text = _report(raw, token="flies", beside=fixed)
    assert "nearest 5 raw" in text and "rank zscore" in text and "nearest 5 corrected (zscore)" in text
    v, w = raw.view(), fixed.view()
    line = next(x for x in text.splitlines() if x.split()[:1] == ["1"])
    words = line.split()
    assert words[2] == str(int(v.rank[1, 2])) and str(int(w.rank[1, 2])) in words[3:]
    assert fixed.labels[int(w.top_ids[1, 2, 0])] in line.split(str(int(w.rank[1, 2])), 1)[-1]


def test_the_suggested_correction_removes_the_dominant_dimensions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 16, generator=g, dtype=torch.float64) + 3.0  # the cosine spread over every dimension
    assert tt.geometry.suggested_correction(tt.geometry.diagnose(x)) is None
    x[:, :, 5] += 40.0  # one dimension dominates every layer's cosine
    x[1, :, 9] += 80.0  # and another at one layer
    assert tt.geometry.suggested_correction(tt.geometry.diagnose(x)) == "rogue:2"
    assert "--correct rogue:2" in tt.geometry.rogue_layers(tt.geometry.diagnose(x))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--beside", "banana"], "unknown correction"),
        (["--beside", "zscore", "--correct", "center"], "with --correct there is no raw view"),
    ],
)
def test_bad_beside_is_refused_before_the_model_loads(args, message, tmp_path):
    result = CliRunner().invoke(app, ["trace", "x", "-m", str(tmp_path / "no-such-model"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_beside_on_a_token(bert_folder):
    result = CliRunner().invoke(
        app,
        ["trace", TEXT, "-m", str(bert_folder), "--token", "flies", "--beside", "zscore", "-q"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "nearest 5 corrected (zscore)" in result.output and "rank zscore" in result.output
    off = CliRunner().invoke(
        app,
        ["trace", TEXT, "-m", str(bert_folder), "--token", "flies", "--beside", "off", "-q"],
        env={"COLUMNS": "200"},
    )
    assert off.exit_code == 0 and "corrected" not in off.output and np.char.count(off.output, "nearest 15").item() == 1
