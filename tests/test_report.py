"""Terminal rendering of a Trail built by hand (no model): deep grids must fit the terminal."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from tokentrail.present.report import print_report
from tokentrail.results.trail import RunInfo, Trail, View


def fake_trail(n_layers: int = 30, n_tokens: int = 12, vocab: int = 49152, seed: int = 0) -> Trail:
    """A Trail of SmolLM2's shape (30 layers, 9 heads), ranks spanning the whole vocabulary."""
    rng = np.random.default_rng(seed)
    L, n, k = n_layers, n_tokens, 5
    rank = rng.integers(0, vocab, size=(L, n))
    rank[0, 0], rank[-1, -1] = 0, vocab - 1  # the widest possible cell
    view = View(
        site="attn_resid",
        space="encodings",
        similarity="cosine",
        metrics={
            "self_sim": rng.random((L, n)),
            "rank": rank,
            "overlap": rng.integers(0, 100, size=(L, n)).astype(float),
        },
        top_ids=rng.integers(0, vocab, size=(L, n, k)),
        top_sims=rng.random((L, n, k)),
        overlap_k=100,
        anisotropy=rng.random(L),
    )
    info = RunInfo("smollm2", "llama", "llama", None, True, "0", "0", "0", "now")
    tokens = tuple(
        [
            "<|im_start|>",
            "␣Time",
            "␣flies",
            "␣like",
            "␣an",
            "␣arrow",
            ".",
            "␣Fruit",
            "␣flies",
            "␣like",
            "␣a",
            "␣banana",
        ][:n]
    )
    return Trail(
        info=info,
        text=" ".join(tokens),
        tokens=tokens,
        ids=np.arange(n),
        positions=np.arange(n),
        special=np.array([i == 0 for i in range(n)]),
        n_layers=L,
        n_heads=9,
        views=(view,),
        labels={},
    )


def render(trail: Trail, width: int, **kw) -> str:
    buf = io.StringIO()
    print_report(Console(file=buf, width=width, color_system=None, highlight=False), trail, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("n_layers", [30, 48])
def test_deep_grid_fits_without_cut_cells(width, n_layers):
    trail = fake_trail(n_layers=n_layers)
    text = render(trail, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    headers = re.findall(r"\bL(\d+)\b", text)
    assert sorted(map(int, headers)) == list(range(n_layers))  # every layer shown once
    # every rank appears in full: the widest (vocab - 1) is there
    assert "49151" in text and f"{len(trail.tokens) - 1}:␣banana" in text


def test_shallow_grid_is_one_table():
    text = render(fake_trail(n_layers=6), 120)
    assert len(re.findall(r"^token ", text, flags=re.M)) == 1
