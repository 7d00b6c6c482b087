"""The app's two pictures (issue 24): the Lens tab's layers x positions heatmap and the
Attention tab's token x token patterns, rendered from a page session on a tiny random
Llama (a decoder with an output head), without a browser."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pio = pytest.importorskip("plotly.io")

from tokentrail.app.session import DEFAULT_OPTIONS, ModelMenu, Session  # noqa: E402
from tokentrail.app.views import VIEWS, render_views  # noqa: E402
from tokentrail.spec.errors import InputError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app import save_tiny_models  # noqa: E402

TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = str(save_tiny_models(tmp_path_factory.mktemp("models"))["tiny-llama"])
    menu = ModelMenu([folder])
    session = Session(model=menu.check(folder).value)
    session.analyse(TEXT, DEFAULT_OPTIONS)
    return session, menu


def _view(session, menu, tab: str) -> dict:
    session.tab = tab
    return dict(zip(VIEWS, render_views(session, menu, False, "rank")))


def test_lens_tab_draws_the_layers_by_positions_heatmap(page):
    session, menu = page
    trail = session.trail
    titles = set()
    for colour in ("prob", "rank"):
        session.choose(lens_colour=colour)
        out = _view(session, menu, "lens")
        assert out["lens_heat"].visible is True and out["lens_table"].visible is True
        fig = pio.from_json(out["lens_heat"].value["plot"])
        cells = next(t for t in fig.data if t.type == "heatmap")
        text = np.asarray(cells.text)  # the top token in every cell: layers x positions
        assert text.shape[1] == trail.n_tokens and text.shape[0] >= trail.n_layers
        titles.add(cells.colorbar.title.text)
    assert len(titles) == 2  # the colour follows the choice
    with pytest.raises(InputError, match="coloured by"):
        session.choose(lens_colour="brightness")


def test_attention_tab_draws_every_head_of_the_layer_or_the_head_chosen(page):
    session, menu = page
    trail = session.trail
    session.select(layer=trail.n_layers - 1, head=1)
    session.choose(pattern="all heads")
    every = _view(session, menu, "attention")["pattern"]
    session.choose(pattern="one head")
    one = _view(session, menu, "attention")["pattern"]
    heatmaps = lambda fig: [t for t in fig.data if t.type == "heatmap"]  # noqa: E731
    assert len(heatmaps(every)) == trail.n_heads  # small multiples, one per head
    shown = [t for t in heatmaps(one) if t.visible is not False]
    np.testing.assert_allclose(np.asarray(shown[0].z, dtype=float), trail.attentions[trail.n_layers - 1, 1], atol=1e-6)
    with pytest.raises(InputError, match="attention tab shows"):
        session.choose(pattern="some heads")
