"""Every result object in a notebook (issue 24, point 4): an HTML face under ~10 kB that
summarises and draws (a coloured table or a token table), a plain repr under 1 kB, a
``.frame()`` whose rows carry token text, and a ``.plot()`` for its natural figure, on tiny
random models (a decoder, an encoder with an MLM head, an encoder-decoder, a study).

Before this, on MiniLM: ``Comparison`` printed 97,968 characters, ``AttentionStep``
39,282, ``LensResult`` 21,750, ``HeadsAt`` 10,458, a study's aggregates 25 kB of text."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

import seq2seq_models as sm
import tokentrail as tt
from test_parity_decoders import tiny_model
from tokentrail.spec.display import HTML_BUDGET, REPR_BUDGET

TEXT = "time flies like an arrow , time flies like an arrow and the cat sat on the mat ."


@pytest.fixture(scope="module")
def objects(tokenizer, loaded_tiny, tmp_path_factory):
    """name -> (object, a token text its frame must carry)."""
    options = tt.TraceOptions.make(site=("attn_resid", "heads"), space=("encodings", "value"), k=5, lens=True)
    run = tt.run(TEXT, tiny_model("llama"), tokenizer=tokenizer, options=options)
    trail = run.trail()
    folder = tmp_path_factory.mktemp("bart") / "bart"
    sm.bart(folder)
    s2s = tt.load(str(folder)).run("the cat sat on the mat", target="le chat est sur le tapis")
    study = tt.study(
        ["time flies like an arrow .", "the cat sat on the mat ."],
        loaded_tiny,
        tmp_path_factory.mktemp("study") / "s",
        sample=4,
    )
    return {
        "Trail": (trail, "flies"),
        "Comparison": (tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:1", k=4), "flies"),
        "LensResult": (run.lens(k=5), "flies"),
        "HeadsAt": (run.heads(1, 2), "flies"),
        "AttentionStep": (run.step(1, 3, 5), "flies"),
        "AttentionPatterns": (run.attention(), "flies"),
        "Study": (study, "flies"),
        "Aggregates": (study.aggregate(), None),
        "Seq2Seq Trail": (s2s.trail(lens=True), "cat"),
        "Seq2Seq lens": (s2s.lens(), "chat"),
        "Seq2Seq cross step": (s2s.cross_step(0, 1, 2), "cat"),
        "Seq2Seq cross patterns": (s2s.attention("cross"), "cat"),
    }


NAMES = [
    "Trail",
    "Comparison",
    "LensResult",
    "HeadsAt",
    "AttentionStep",
    "AttentionPatterns",
    "Study",
    "Aggregates",
    "Seq2Seq Trail",
    "Seq2Seq lens",
    "Seq2Seq cross step",
    "Seq2Seq cross patterns",
]


@pytest.mark.parametrize("name", NAMES)
def test_html_and_repr_are_small_and_say_what_they_are(objects, name):
    obj, _ = objects[name]
    html, text = obj._repr_html_(), repr(obj)
    assert len(html) < HTML_BUDGET, (name, len(html))
    assert len(text) < REPR_BUDGET, (name, len(text), text[:200])
    assert "<table" in html  # a summary or a coloured table, not a dump
    assert "array(" not in text and "tensor(" not in text


@pytest.mark.parametrize("name", NAMES)
def test_frames_carry_token_text_and_plot_draws(objects, name):
    obj, word = objects[name]
    frame = obj.frame()
    assert isinstance(frame, pd.DataFrame) and len(frame)
    if word is not None:
        text_columns = [c for c in frame.columns if c in ("token_str", "source_str", "token", "id_str")]
        assert any(frame[c].astype(str).str.contains(word).any() for c in text_columns), (name, list(frame.columns))
    fig = obj.plot()
    assert isinstance(fig, go.Figure) and len(fig.data) >= 1


def test_a_long_text_keeps_the_html_small(tokenizer):
    """Sampling rows and columns (the caption says so) keeps a 40-token lens under budget."""
    run = tt.run(" ".join([TEXT] * 2), tiny_model("llama"), tokenizer=tokenizer)
    lens = run.lens(k=5)
    html = lens._repr_html_()
    assert len(html) < HTML_BUDGET and f"of {lens.n_tokens} columns" in html
    assert len(run.attention()._repr_html_()) < HTML_BUDGET
    trail = run.trail(k=5)
    assert len(trail._repr_html_()) < HTML_BUDGET and f"first 24 of {trail.n_tokens} tokens" in trail._repr_html_()
    marked = tt.show(trail, -1)._repr_html_()  # the marked token is shown even past the cut
    assert len(marked) < HTML_BUDGET and marked.count("outline:2px solid") == 1


def test_the_trail_frame_opens_with_tokens_not_anisotropy(objects):
    frame = objects["Trail"][0].frame()
    head = frame.head()
    assert (head.metric != "anisotropy").all() and head.token_str.nunique() == 5


def test_list_models_is_a_frame_and_the_hf_module_is_public(loaded_tiny):
    models = tt.list_models()
    assert isinstance(models, pd.DataFrame) and "minilm" in set(models["name"])
    assert loaded_tiny.hf_model is loaded_tiny.adapter.model and loaded_tiny.hf_model.training is False
