"""A Trail in a notebook: a short repr, an HTML summary with the token table, plots by
token name, and a real notebook run (nbclient) that traces the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

import tokentrail as tt

TEXT = "Time flies like an arrow, time flies."


@pytest.fixture(scope="module")
def trail(loaded_tiny):
    return tt.trace(TEXT, loaded_tiny, site="attn_resid,heads", k=4, lens=True)


def test_repr_is_short_and_says_what_the_trail_is(trail):
    text = repr(trail)
    assert len(text) < 400, len(text)  # the dataclass dump was 46,000 characters on MiniLM
    assert (
        "11 tokens, 2 layers × 4 heads" in text and "attn_resid/encodings/cosine" in text and "lens@layer_out" in text
    )


def test_repr_html_has_the_summary_and_the_token_table(trail):
    html = trail._repr_html_()
    assert "tokentrail-summary" in html and "tokentrail-tokens" in html
    assert "11 tokens × 2 layers × 4 heads" in html and "logit lens on layer_out" in html
    view = trail.view("attn_resid")

    # one row per token with its self-similarity at every layer, the rank where not 0 (hand-read from the view)
    def cell(l):
        r = int(view.rank[l, 2])
        return f"<td>{view.self_sim[l, 2]:.2f}" + (f"<small>·{r}</small>" if r else "") + "</td>"

    row = f"<td>2</td><td style='text-align:left'>flies</td><td>{int(trail.ids[2])}</td>{cell(0)}{cell(1)}"
    assert row in html
    assert "<td style='text-align:left'>[CLS] <small>(special)</small></td>" in html


def test_show_marks_a_token_by_name_and_lists_its_neighbours(trail):
    html = tt.show(trail, "flies:1")._repr_html_()
    assert "nearest tokens of 8: &#x27;flies&#x27;" in html
    assert html.count("outline:2px solid") == 1
    with pytest.raises(tt.InputError, match="no token 'banana'"):
        tt.show(trail, "banana")


def test_html_escapes_token_text(loaded_tiny):
    t = tt.trace("<b>x</b> & y", loaded_tiny, k=2)
    html = t._repr_html_()
    assert "<b>x</b>" not in html and "&lt;" in html


def test_plots_take_a_trail_and_a_token_by_name(trail):
    fig = tt.plots.journey(trail, "flies:1", "rank")
    assert fig.data[-1].name == "8: flies" and list(fig.data[-1].y) == list(trail.view("attn_resid").rank[:, 8] + 1)
    # the figure says what it shows (an exported image keeps it): token, model, view, text
    assert "token 8: flies" in fig.layout.title.text and "attn_resid/encodings/cosine" in fig.layout.title.text
    assert Path(trail.info.model).name in fig.layout.title.text and "Time flies like" in fig.layout.title.text
    fig = tt.plots.grid(trail, "self_sim", token="arrow", layer=1)
    assert "token 5: arrow" in fig.layout.title.text
    assert fig.layout.shapes[0].y0 == trail.token_index("arrow") - 0.5
    with pytest.raises(tt.InputError, match="unknown metric 'bogus'"):
        tt.plots.journey(trail, 0, "bogus")


@pytest.mark.slow
def test_a_real_notebook_traces_and_displays_a_trail(bert_folder, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    src = str(Path(tt.__file__).parents[1])
    cells = [
        f"import sys; sys.path.insert(0, {src!r})\nimport tokentrail as tt\nassert tt.__file__.startswith({src!r})",
        f"trail = tt.trace({TEXT!r}, {str(bert_folder)!r}, k=4, lens=True)\ntrail",
        "fig = tt.plots.journey(trail, 'flies', 'rank')\nprint(type(fig).__name__, fig.data[-1].name)",
        "tt.show(trail, 'arrow')",
        f"trail.export({str(tmp_path / 't.parquet')!r}); print(tt.Trail.load({str(tmp_path / 't.parquet')!r}) == trail)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    def result(cell):
        (out,) = [o for o in cell.outputs if o["output_type"] == "execute_result"]
        return out["data"]

    def stdout(cell):
        return "".join(
            o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout"
        ).strip()

    # the first load printed tqdm's "IProgress not found" (no ipywidgets) in the trace's cell
    streams = [o.get("text", "") for cell in nb.cells for o in cell.outputs if o["output_type"] == "stream"]
    assert not any("IProgress" in text for text in streams), streams
    shown = result(nb.cells[1])
    assert "tokentrail-summary" in shown["text/html"] and "tokentrail-tokens" in shown["text/html"]
    assert shown["text/plain"].startswith("<Trail ") and len(shown["text/plain"]) < 400
    assert stdout(nb.cells[2]) == "Figure 2: flies"
    assert "nearest tokens of 5: &#x27;arrow&#x27;" in result(nb.cells[3])["text/html"]
    assert stdout(nb.cells[4]) == "True"
