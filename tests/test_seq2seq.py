"""Encoder-decoders end to end (issue 12): tiny random BART and Marian saved with
``save_pretrained`` (with a tiny tokenizer built offline) load by folder, trace both stacks
with every site, the decoder with cross-attention, from the API, the CLI and exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import seq2seq_models as sm
import tokentrail as tt
from tokentrail.adapters import DecoderStack, EncoderStack
from tokentrail.cli.commands import app
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import ALL_SITES, CROSS_SITES, TraceOptions

SOURCE = "the cat sat on the mat"
TARGET = "le chat est sur le tapis"
FAMILIES = ("bart", "marian", "t5")


def _cross_modules(name, model, layer):
    """(cross-attention output projection, its value map) of a decoder layer, the model's own modules."""
    if name == "t5":
        att = model.get_decoder().block[layer].layer[1].EncDecAttention
        return att.o, att.v
    att = model.get_decoder().layers[layer].encoder_attn
    return att.out_proj, att.v_proj


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq2seq")
    out = {}
    for name in FAMILIES:
        getattr(sm, name)(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, folders):
    return request.param, tt.load(folders[request.param])


def test_a_folder_loads_as_two_stacks(family):
    name, m = family
    assert isinstance(m.adapter, EncoderStack) and m.adapter.stack == "encoder" and m.is_seq2seq
    dec = m.adapter.decoder_stack()
    assert isinstance(dec, DecoderStack) and dec.stack == "decoder" and dec.is_decoder
    assert m.adapter.family == dec.family == name


def test_target_traces_both_stacks_with_every_site(family):
    name, m = family
    trail = tt.trace(SOURCE, m, target=TARGET, site="all", space="all", similarity="all", k=4, lens=True)
    assert trail.stack == "encoder" and trail.decoder.stack == "decoder"
    enc_sites = {v.site for v in trail.views}
    dec_sites = {v.site for v in trail.decoder.views}
    assert enc_sites == set(ALL_SITES) - set(CROSS_SITES)
    assert dec_sites == set(ALL_SITES) - {"cross_heads"}
    assert {v.key for v in trail.decoder.cross_views} == {
        ("cross_heads", sp, s) for sp in ("value", "key") for s in ("cosine", "euclidean")
    }
    assert trail.lens is None and trail.decoder.lens is not None  # the lens reads the decoder
    # the decoder's input is the model's teacher-forcing input: decoder start, then the target without its eos
    labels = m.tokenizer(text_target=TARGET)["input_ids"]
    assert labels[-1] == m.adapter.eos_id
    assert trail.decoder.ids.tolist() == [m.adapter.decoder_start_id] + labels[:-1]
    assert trail.info.decoder_input == trail.decoder.info.decoder_input == "target"
    assert trail.decoder.text == TARGET and trail.decoder.source_tokens == trail.tokens
    L, H, n, m_ = trail.decoder.cross_attentions.shape
    assert (n, m_) == (trail.decoder.n_tokens, trail.n_tokens)
    assert np.allclose(trail.decoder.cross_attentions.sum(-1), 1, atol=1e-5)


def test_without_target_the_decoder_reads_the_models_greedy_output(family):
    """The decoder input is what an independent argmax loop over the model's own logits gives,
    bounded by max_new_tokens, and the result says so."""
    _, m = family
    run = m.run(SOURCE, max_new_tokens=5)
    src = m.encode(SOURCE).ids[None]
    ids = torch.tensor([[m.adapter.decoder_start_id]])
    with torch.no_grad():
        for _ in range(5):
            nxt = int(m.adapter.model(input_ids=src, decoder_input_ids=ids).logits[0, -1].argmax())
            if nxt == m.adapter.eos_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert run.decoder_acts.input_ids.tolist() == ids[0].tolist()
    assert run.decoder_input == "greedy output of the model (at most 5 new tokens)"
    trail = run.trail()
    assert trail.decoder.info.decoder_input == run.decoder_input
    with pytest.raises(InputError, match="not both"):
        m.run(SOURCE, target=TARGET, max_new_tokens=3)


def test_cross_heads_name_the_nearest_source_tokens(family):
    """Hand-computed with the model's own modules: each cross head's z against
    v_proj(encoder output), sorted by cosine; the attention column is the framework's."""
    name, m = family
    trail = tt.trace(SOURCE, m, target=TARGET, site="cross_heads", k=3)
    dec = trail.decoder
    model = m.adapter.model
    src = m.encode(SOURCE).ids[None]
    tgt = torch.tensor(dec.ids)[None]
    mods = [_cross_modules(name, model, layer) for layer in range(dec.n_layers)]
    z = {}
    hooks = [
        o.register_forward_pre_hook(lambda mod, a, l=l: z.__setitem__(l, a[0][0])) for l, (o, _) in enumerate(mods)
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    H, dh = dec.n_heads, 8  # every tiny family here: 4 heads of 8
    for layer in range(dec.n_layers):
        with torch.no_grad():
            values = mods[layer][1](out.encoder_last_hidden_state[0]).view(-1, H, dh)  # (m, H, dh)
        zl = z[layer].view(-1, H, dh)  # (n, H, dh)
        cos = torch.nn.functional.cosine_similarity(
            zl[:, :, None, :], values.transpose(0, 1)[None], dim=-1
        )  # (n, H, m)
        for t in (1, dec.n_tokens - 1):
            for h in range(H):
                frame = trail.sources(t, layer, h)
                expect = torch.sort(cos[t, h].double(), descending=True, stable=True)
                assert frame["source"].tolist() == expect.indices.tolist()
                np.testing.assert_allclose(frame["similarity"], expect.values.numpy(), rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(
                    frame["attention"],
                    out.cross_attentions[layer][0, h, t][expect.indices].numpy(),
                    rtol=1e-5,
                    atol=1e-6,
                )
                assert frame["source_token"].tolist() == [trail.tokens[i] for i in expect.indices.tolist()]
                assert frame["place"].tolist() == list(range(trail.n_tokens))


def test_exports_say_which_stack_and_read_back(family, tmp_path):
    _, m = family
    trail = tt.trace(SOURCE, m, target=TARGET, site="attn_resid,cross_resid,heads,cross_heads", k=3, lens=True)
    for ext in ("parquet", "csv", "json"):
        path = trail.export(tmp_path / f"t.{ext}")
        back = tt.Trail.load(path)
        assert back == trail and back.decoder == trail.decoder
    frame = pd.read_parquet(tmp_path / "t.parquet")
    assert set(frame["stack"].dropna()) == {"encoder", "decoder"} and frame.loc[
        frame["stack"].isna(), "table"
    ].tolist() == ["meta"]
    assert set(frame.loc[frame["site"] == "cross_resid", "stack"]) == {"decoder"}
    assert set(frame.loc[frame["table"] == "cross", "stack"]) == {"decoder"}
    assert set(trail.frame()["stack"]) == {"encoder", "decoder"}
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["meta"]["decoder"]["trail"]["stack"] == "decoder"
    assert {r["stack"] for r in doc["cross_attention"]} == {"decoder"}


def test_only_cross_sites_leave_the_encoder_without_views(family, tmp_path):
    _, m = family
    trail = tt.trace(SOURCE, m, target=TARGET, site="cross_resid")
    assert trail.views == () and [v.site for v in trail.decoder.views] == ["cross_resid"]
    assert tt.Trail.load(trail.export(tmp_path / "c.json")) == trail


def test_single_stack_models_are_unaffected(minilm, tmp_path):
    trail = tt.trace("a cat", minilm, site="all", k=3)
    assert trail.stack is None and trail.decoder is None and trail.cross_views == ()
    assert not any(v.site in CROSS_SITES for v in trail.views)
    assert "stack" not in trail.frame().columns
    assert "stack" not in pd.read_parquet(trail.export(tmp_path / "m.parquet")).columns
    with pytest.raises(InputError, match="cross_resid is a site of encoder-decoder models"):
        tt.trace("a cat", minilm, site="attn_resid,cross_resid")
    with pytest.raises(InputError, match="encoder-decoder models"):
        minilm.run("a cat", target="x")
    assert TraceOptions.make(site="all").sites == ALL_SITES


def test_heads_and_walkthrough_of_either_stack(family):
    _, m = family
    run = m.run(SOURCE, target=TARGET)
    enc, dec = run.heads(1, 2), run.heads(1, 2, stack="decoder")
    assert enc.own_id == int(run.acts.input_ids[2]) and dec.own_id == int(run.decoder_acts.input_ids[2])
    step = run.step(1, 0, 3, stack="decoder")
    assert step.causal and bool(step.masked[4:].all())
    assert max(step.checks.values()) < 1e-4
    with pytest.raises(InputError, match="unknown stack"):
        run.heads(0, 0, stack="middle")


runner = CliRunner()


def test_cli_traces_both_stacks(folders):
    res = runner.invoke(
        app, ["trace", SOURCE, "--model", folders["bart"], "--target", TARGET, "--site", "attn_resid,cross_heads", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "encoder stack" in res.output and "decoder stack" in res.output
    assert f"its input is the target: '{TARGET}'" in res.output
    assert "cross-attention" in res.output and "nearest source tokens" in res.output
    res = runner.invoke(
        app, ["trace", SOURCE, "--model", folders["bart"], "--max-new-tokens", "3", "--stack", "decoder", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert "greedy output of the model (at most 3 new tokens)" in res.output and "encoder stack" not in res.output


@pytest.mark.parametrize("name", FAMILIES)
def test_cli_verify_passes_on_each_tiny_family(folders, name):
    res = runner.invoke(app, ["verify", folders[name], "--text", SOURCE, "--sample", "8", "-q"])
    assert res.exit_code == 0, res.output
    for identity in (
        "encoder: layer_out",
        "decoder: layer_out",
        "decoder: cross heads recombine",
        "decoder: cross-attention probabilities",
        "decoder: lens = logits",
        "decoder: cross_resid is the FFN input",
    ):
        assert identity in res.output
    assert "FAIL" not in res.output


def test_cli_verify_fails_on_a_corrupted_cross_attention(folders, monkeypatch):
    """T5 does not scale its cross-attention scores: an adapter that does is caught, by name."""
    from tokentrail.adapters.t5 import T5DecoderAdapter

    monkeypatch.setattr(T5DecoderAdapter, "cross_scale", lambda self: self.d_head**-0.5)
    res = runner.invoke(app, ["verify", folders["t5"], "--text", SOURCE, "--sample", "8", "-q"])
    assert res.exit_code == 1, res.output
    failed = res.output.split("failed:")[-1]
    assert "decoder: cross-attention probabilities" in failed and "encoder:" not in failed


def test_cli_exports_both_stacks(folders, tmp_path):
    out = tmp_path / "x.csv"
    res = runner.invoke(
        app,
        [
            "trace",
            SOURCE,
            "--model",
            folders["marian"],
            "--target",
            TARGET,
            "--site",
            "cross_resid,cross_heads",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(out)
    assert set(frame["stack"].dropna()) == {"encoder", "decoder"}


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--stack", "middle"], "unknown stack"),
        (["--target", "x", "--max-new-tokens", "2"], "give one of them"),
        (["--target", ""], "empty"),
        (["--max-new-tokens", "513"], "at most 512"),
    ],
)
def test_cli_bad_seq2seq_options_exit_2_before_loading(args, msg):
    res = runner.invoke(app, ["trace", SOURCE, "--model", "/no/such/folder", *args])
    assert res.exit_code == 2 and msg in res.output, res.output


def test_cli_token_needs_one_stack(folders):
    res = runner.invoke(app, ["trace", SOURCE, "--model", folders["bart"], "--token", "1", "-q"])
    assert res.exit_code == 2 and "one stack" in res.output
    res = runner.invoke(
        app,
        [
            "trace",
            SOURCE,
            "--model",
            folders["bart"],
            "--target",
            TARGET,
            "--token",
            "chat",
            "--stack",
            "decoder",
            "-q",
        ],
    )
    assert res.exit_code == 0 and "token 3 chat" in res.output, res.output


def test_cross_attention_walkthrough_matches_the_model(family):
    """Query from the decoder, keys/values from the encoder output: every step is the model's."""
    _, m = family
    run = m.run(SOURCE, target=TARGET)
    dec = m.adapter.decoder_stack()
    for layer in range(dec.n_layers):
        step = run.cross_step(layer, 1, 3)
        assert step.max_error < 1e-4, step.checks
        assert step.keys.shape == (run.n_tokens, dec.d_head)  # one key per source token
        torch.testing.assert_close(step.weights, run.decoder_acts.cross_attentions[layer, 1, 3], rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="the decoder has"):
        run.cross_step(0, 99, 0)


def test_app_cross_tab_shows_both_stacks_and_the_source_tokens(folders):
    """The tab's callback, through the page's model menu: the grid of the chosen stack, the
    nearest source tokens with their weights, the map and a walkthrough that matches."""
    from tokentrail.app.cross_tab import cross_views
    from tokentrail.app.session import ModelMenu

    menu = ModelMenu([folders["bart"]])
    name = menu.add(folders["bart"]).value
    status, grid_fig, table, cross_map, step = cross_views(
        menu, SOURCE, name, "attn_resid", "cosine", TARGET, "decoder", "chat", 1, 2
    )
    assert "decoder token **3 `chat`**" in status and "its input the target" in status
    assert grid_fig.layout.title.text.startswith("decoder stack") and len(grid_fig.data[0].y) == 8
    trail = tt.trace(SOURCE, tt.load(folders["bart"]), target=TARGET, site="cross_heads")
    expect = trail.sources("chat", 1, 2)
    assert table["source token"].tolist() == [f"{s}:{t}" for s, t in zip(expect["source"], expect["source_token"])]
    assert list(cross_map.data[0].x)[2] == "2:cat" and "Matches the model's own numbers" in step
    status, grid_fig, *_ = cross_views(menu, SOURCE, name, "layer_out", "cosine", "", "encoder", "-1", 0, 0)
    assert grid_fig.layout.title.text.startswith("encoder stack") and "greedy output" in status
    with pytest.raises(InputError, match="one stack"):
        cross_views(ModelMenu(), SOURCE, "minilm", "attn_resid", "cosine", "", "decoder", "-1", 0, 0)


def test_cross_walkthrough_formulas_are_the_models(family):
    name, m = family
    step = m.run(SOURCE, target=TARGET).cross_step(0, 0, 1)
    if name == "t5":  # pre-RMSNorm, no biases
        assert step.formulas == {"q": "q = W_Q RMSNorm(x)", "k": "k_s = W_K e_s", "v": "v_s = W_V e_s"}
    else:
        assert step.formulas == {"q": "q = W_Q x + b_Q", "k": "k_s = W_K e_s + b_K", "v": "v_s = W_V e_s + b_V"}


def test_memory_check_counts_the_decoder_and_cross_attention_before_any_model_work(family, monkeypatch):
    """A limit the encoder stack fits in but both stacks do not: the run is refused with the
    figure, before the greedy output is generated or the decoder runs; above both, it runs."""
    from tokentrail.analysis.checks import check_against
    from tokentrail.engine import budget

    _, m = family
    opts = check_against(m.adapter, TraceOptions())
    sizes = dict(
        pairs=opts.pairs(), similarities=len(opts.similarities), k=opts.k, overlap_k=opts.overlap_k, lens=opts.lens
    )
    source = len(m.encode(SOURCE).ids)
    target = len(
        m.tokenizer(text_target=TARGET)["input_ids"]
    )  # the decoder input: start, then the target without its eos
    for kw, n in (({"target": TARGET}, target), ({"max_new_tokens": 40}, 41)):
        alone = budget.estimate_seq2seq(
            m.adapter, m.adapter.decoder_stack(), source_tokens=source, decoder_tokens=None, **sizes
        ).total
        both = budget.estimate_seq2seq(
            m.adapter, m.adapter.decoder_stack(), source_tokens=source, decoder_tokens=n, **sizes
        ).total
        assert both > alone
        monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int((alone + both) / 2 / budget.HEADROOM)))
        with monkeypatch.context() as mp:
            mp.setattr(m.adapter, "greedy", lambda *a: pytest.fail("generated before the memory check"))
            mp.setattr(
                "tokentrail.engine.capture_cross.capture_cross",
                lambda *a: pytest.fail("ran the decoder before the memory check"),
            )
            with pytest.raises(InputError, match="would need about"):
                m.run(SOURCE, **kw)
        monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int(both / budget.HEADROOM) + 1))
        run = m.run(SOURCE, **kw)
        assert len(run.decoder_tokens) <= n
        kept = budget.estimate_seq2seq(
            m.adapter, m.adapter.decoder_stack(), source_tokens=source, decoder_tokens=len(run.decoder_tokens), **sizes
        ).total
        monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int((alone + kept) / 2 / budget.HEADROOM)))
        with pytest.raises(InputError, match="would need about"):  # another trail of the kept run: both stacks again
            run.trail(overlap_k=opts.overlap_k - 1)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"max_new_tokens": 0}, "at least 1"),
        ({"max_new_tokens": 10**6}, "at most 512"),
        ({"target": "x", "max_new_tokens": 2}, "not both"),
        ({"target": " "}, "empty"),
    ],
)
def test_api_checks_the_decoder_input_before_loading(kw, msg):
    with pytest.raises(InputError, match=msg):
        tt.trace(SOURCE, "/no/such/folder", **kw)


def test_compare_refuses_cross_sites():
    with pytest.raises(InputError, match="compare takes one site"):
        tt.compare("a b", "a c", model="/no/such/folder", token="a", site="cross_resid")


def test_walkthrough_states_how_each_family_scales_its_scores(family):
    name, m = family
    run = m.run(SOURCE, target=TARGET)
    for stack in ("encoder", "decoder"):
        step = run.step(0, 0, 2, stack=stack)
        assert step.formulas["scaled"] == ("q·k (unscaled) + relative position bias" if name == "t5" else "q·k / √8")
        assert step.max_error < 1e-4
