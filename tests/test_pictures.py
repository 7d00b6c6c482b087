"""The two pictures of issue 24: the logit lens as layers × positions (tt.plots.lens_heatmap)
and every head's attention pattern (tt.plots.attention_pattern), on tiny random models: what
each cell shows and is coloured by is read back from the figure and compared with the result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import seq2seq_models as sm
import tokentrail as tt
from test_parity_decoders import tiny_model

TEXT = "time flies like an arrow, time flies."


@pytest.fixture(scope="module")
def decoder_run(tokenizer):
    return tt.run(TEXT, tiny_model("llama"), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bart") / "bart"
    sm.bart(folder)
    return tt.load(str(folder)).run("the cat sat on the mat", target="le chat est sur le tapis")


def test_lens_heatmap_cells_are_the_top_prediction_coloured_by_its_probability(decoder_run):
    lens = decoder_run.lens(k=5)
    fig = tt.plots.lens_heatmap(lens)
    heat = fig.data[0]
    L, n = lens.n_layers, lens.n_tokens
    assert np.asarray(heat.z).shape == (L, n)
    assert np.allclose(np.asarray(heat.z, dtype=float), lens.top_probs[:, :, 0])
    # the cell's text is the top token's, the hover has the top 5 and the next token's rank
    top = lens.labels[int(lens.top_ids[1, 2, 0])]
    assert heat.text[1][2] == (top if len(top) <= 7 else top[:6] + "…")
    hover = heat.customdata[1][2]
    assert hover.count("<br>") >= 5 + 2 and f"rank {int(lens.next_rank[1, 2])}" in hover
    assert list(heat.x)[2] == "2: " + lens.tokens[2] and lens.tokens == tuple(decoder_run.tokens)
    assert "cell: the lens' top prediction" in fig.layout.title.text and "probability of the top token" in (
        fig.layout.title.text
    )


@pytest.mark.parametrize("color", ["entropy", "kl", "rank"])
def test_lens_heatmap_colours_by_each_measure(decoder_run, color):
    lens = decoder_run.lens(k=5)
    fig = tt.plots.lens_heatmap(lens, color)
    z = np.asarray(fig.data[0].z, dtype=float)
    if color == "rank":  # the actual next token's rank, log-scaled; the last token has none
        want = np.log10(lens.next_rank[:, :-1].astype(float) + 1)
        assert np.isnan(z[:, -1]).all() and np.allclose(z[:, :-1], want)
        assert "rank of the actual next token" in fig.layout.title.text
    else:
        assert np.allclose(z, getattr(lens, color))
    assert (lens.kl[-1] == 0).all() and (lens.kl[:-1] > 0).all()  # the final layer is the reference


def test_lens_heatmap_refuses_kl_where_the_lens_has_none(decoder_run):
    streamed = dataclasses.replace(decoder_run.lens(k=5), kl=None)
    with pytest.raises(tt.InputError, match="no KL to the final layer"):
        tt.plots.lens_heatmap(streamed, "kl")
    with pytest.raises(tt.InputError, match="unknown lens colour"):
        tt.plots.lens_heatmap(streamed, "colour")


def test_lens_plot_and_trail_give_the_same_picture(decoder_run):
    trail = decoder_run.trail(lens=True, k=5)
    a, b = tt.plots.lens_heatmap(trail), trail.lens.plot()
    assert np.array_equal(np.asarray(a.data[0].z), np.asarray(b.data[0].z))
    assert "time flies" in a.layout.title.text  # a Trail adds the model and the text
    with pytest.raises(tt.InputError, match="no logit lens"):
        tt.plots.lens_heatmap(decoder_run.trail(k=5))


def test_attention_pattern_of_one_head_is_its_weights_with_a_picker(decoder_run):
    acts = decoder_run.acts
    fig = tt.plots.attention_pattern(decoder_run, layer=1, head=4)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.allclose(z, acts.attentions[1, 4].numpy())
    assert np.allclose(z.sum(1), 1, atol=1e-5) and np.allclose(np.triu(z, 1), 0)  # causal rows
    L, H = acts.attentions.shape[:2]
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == L * H and fig.layout.updatemenus[0].active == 1 * H + 4
    assert np.allclose(np.asarray(buttons[3].args[0]["z"][0]), acts.attentions[0, 3].numpy())
    assert "causal" in fig.layout.title.text and "cell: how much query token" in fig.layout.title.text


def test_attention_pattern_of_a_layer_is_every_head_as_small_multiples(decoder_run):
    trail = decoder_run.trail(k=3)
    fig = tt.plots.attention_pattern(trail, layer=-1)
    H = trail.n_heads
    assert len(fig.data) == H
    for h, heat in enumerate(fig.data):
        assert np.allclose(np.asarray(heat.z, dtype=float), trail.attentions[-1, h])
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == [f"layer {l}" for l in range(trail.n_layers)]
    assert len(buttons[0].args[0]["z"]) == H
    with pytest.raises(tt.InputError, match="layer"):
        tt.plots.attention_pattern(trail, layer=9)


def test_attention_patterns_frame_names_the_tokens(decoder_run):
    p = decoder_run.attention()
    frame = p.frame()
    L, H, n, _ = p.weights.shape
    assert len(frame) == L * H * n * n
    row = frame[(frame.layer == 1) & (frame["head"] == 2) & (frame.token == 3) & (frame.source == 1)].iloc[0]
    assert row.token_str == decoder_run.tokens[3] and row.source_str == decoder_run.tokens[1]
    assert row.weight == pytest.approx(float(p.weights[1, 2, 3, 1]))


def test_encoder_decoder_self_and_cross_patterns(seq2seq):
    cross = tt.plots.attention_pattern(seq2seq, layer=0, head=1, kind="cross")
    want = seq2seq.decoder_acts.cross_attentions[0, 1].numpy()
    assert np.allclose(np.asarray(cross.data[0].z, dtype=float), want)
    assert list(cross.data[0].x)[1].endswith(seq2seq.tokens[1]) and "decoder token (row)" in cross.layout.title.text
    dec = tt.plots.attention_pattern(seq2seq, layer=0, stack="decoder")
    assert np.allclose(np.asarray(dec.data[0].z, dtype=float), seq2seq.decoder_acts.attentions[0, 0].numpy())
    trail = seq2seq.trail()
    via_trail = tt.plots.attention_pattern(trail, layer=0, head=1, kind="cross")
    assert np.allclose(np.asarray(via_trail.data[0].z, dtype=float), want)
