"""The web app driven through ``gradio_client``, as another program would use it.

One server (in this process, on 127.0.0.1) serves the bundled MiniLM plus two tiny random
models saved to a temporary folder and allow-listed by the operator (``build_app(models=)``):
a RoBERTa (model switching) and a grouped-query Llama (the decoder-only causal toggle).
Each test gets its own client, hence its own session. Assertions compare what the page
receives with the library's own results for the same text.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client not installed: pip install -e '.[test]'")

import tokentrail as tt  # noqa: E402
from tokentrail.app import build_app, launch_options  # noqa: E402
from tokentrail.app import layout as app_layout  # noqa: E402
from tokentrail.app import session as app_session  # noqa: E402
from tokentrail.app import views as app_views  # noqa: E402
from tokentrail.app import wiring as app_wiring  # noqa: E402

TEXT = "Time flies like an arrow. Fruit flies like a banana."
VIEWS = app_views.VIEWS
DEFAULTS = dict(
    positional=True,
    site="attn_resid",
    similarity="cosine",
    k=15,
    causal=True,
    correct="none",
    adjusted=False,
    metric="rank",
)

pytestmark = pytest.mark.slow  # loads the bundled model


def _load_harness():
    """tests/e2e/conftest.py's ``serve`` (loopback launcher), without making tests a package."""
    path = Path(__file__).parent / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tokentrail_e2e_harness", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


harness = _load_harness()


# ---- tiny random models, saved as an operator would point at them ---------------------------
def save_tiny_models(folder: Path) -> dict[str, Path]:
    """A tiny byte-level BPE tokenizer, and random RoBERTa and Llama (GQA) models using it."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM

    corpus = [TEXT, "The quick brown fox jumps over the lazy dog.", "Naïve café, 漢字 and emoji 🙂."] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus,
        vocab_size=330,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe._tokenizer.post_processor = RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    torch.manual_seed(0)
    out = {}
    rob = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=300,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    llama = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    for name, model in (("tiny-roberta", RobertaForMaskedLM(rob)), ("tiny-llama", LlamaForCausalLM(llama))):
        path = folder / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def demo(tiny):
    return build_app(models=[str(p) for p in tiny.values()], max_queue=4)


@pytest.fixture(scope="module")
def url(demo):
    with harness.serve(demo, **launch_options()) as u:
        yield u


@pytest.fixture
def client(url):
    return gradio_client.Client(url, verbose=False)


@pytest.fixture(scope="module")
def trail():
    """The library's own answer for the page's default text and options."""
    return tt.trace(TEXT, "minilm")


def tokenize(client, text=TEXT, model="minilm", api="/tokenize", **opts) -> dict:
    o = {**DEFAULTS, **opts}
    out = client.predict(
        text,
        model,
        o["positional"],
        o["site"],
        o["similarity"],
        o["k"],
        o["causal"],
        o["correct"],
        o["adjusted"],
        o["metric"],
        api_name=api,
    )
    return dict(zip(VIEWS, out))


def call(client, api, *args) -> dict:
    return dict(zip(VIEWS, client.predict(*args, api_name=api)))


def shown(value):
    """An output's value; an output the callback also makes visible (``gr.Plot(fig,
    visible=True)``: no empty frame before it has one) comes as Gradio's update dict."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        value = value.get("value")
    return value


def file_path(value) -> str:
    """A gr.File output's path, shown or not."""
    value = shown(value)
    return value["path"] if isinstance(value, dict) else value


def plot_data(value) -> dict:
    value = shown(value)
    assert value["type"] == "plotly"
    return json.loads(value["plot"])


def arr(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed-array form {"dtype", "bdata"[, "shape"]}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return a.reshape([int(x) for x in str(value["shape"]).split(",")]) if "shape" in value else a
    return np.array([np.nan if x is None else x for x in value], dtype=float)


def frame(value) -> pd.DataFrame:
    value = shown(value)
    return pd.DataFrame(value["data"], columns=value["headers"])


def problem(status: str) -> str:
    assert status.startswith("**Problem:**"), status
    return status


# ---- the endpoints ---------------------------------------------------------------------------------
def test_event_handlers_have_stable_api_names(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    for api in (
        "/tokenize",
        "/analyse",
        "/select_token",
        "/select_layer",
        "/display",
        "/switch_model",
        "/export_results",
        "/export_plot",
        "/show_layers",
        "/show_heatmaps",
        "/show_heads",
        "/show_walkthrough",
        "/show_lens",
        "/head_space",
        "/lens_site",
    ):
        assert api in names, f"{api} missing from {sorted(names)}"


def test_tokenize_shows_tokens_table_and_plots_of_the_library(client, trail):
    v = tokenize(client)
    assert "minilm" in v["status"] and f"{trail.n_tokens} tokens" in v["status"]
    assert [label for label, _ in v["tokens"]["choices"]] == list(trail.tokens)
    t = v["tokens"]["value"]
    assert t == 1 and trail.tokens[t] == "time"  # the first non-special token is selected
    assert v["layer"]["maximum"] == trail.n_layers - 1 and v["head"]["maximum"] == trail.n_heads - 1

    # the table: one column per layer, top-k with similarity, own token starred
    table = frame(v["table"])
    assert list(table.columns) == ["rank", "emb", *[f"layer {l}" for l in range(trail.n_layers)]]
    assert len(table) == 15 + 1  # k rows and the own-token row
    origin = trail.view().origin_top_ids[t]  # emb: the original encoding's neighbours, as the CLI's emb column
    assert [c.lstrip("★ ").split(" ")[0] for c in table["emb"][:15]] == [trail.labels[int(i)] for i in origin[:15]]
    assert table["emb"][0].startswith("★ time")  # in the encodings space e_t is its own row's exact copy
    for l in range(trail.n_layers):
        nb = trail.neighbours(t, l)
        for place in (0, 1, 14):
            cell = table[f"layer {l}"][place]
            assert nb.token[place] in cell and f"{nb.similarity[place]:.3f}" in cell
            assert cell.startswith("★") == bool(nb.own[place])

    # the plots: every token a line, the selected one last and highlighted
    view = trail.view("attn_resid", "encodings", "cosine")
    sim, rank, ov = (plot_data(v[k]) for k in ("plot_sim", "plot_rank", "plot_overlap"))
    np.testing.assert_allclose(arr(sim["data"][-1]["y"]), view.self_sim[:, t], rtol=1e-5)
    np.testing.assert_allclose(arr(rank["data"][-1]["y"]), view.rank[:, t] + 1)
    assert rank["layout"]["yaxis"]["type"] == "log"
    np.testing.assert_allclose(arr(ov["data"][-1]["y"]), view.overlap[:, t])
    assert sim["data"][-1]["line"]["color"] != sim["data"][0]["line"]["color"]
    others = np.concatenate([arr(tr["y"]) for tr in sim["data"][:-1]])
    assert np.isfinite(others).sum() == (trail.n_tokens - 1) * trail.n_layers  # every other token's line


def _count(monkeypatch, module, name: str) -> list:
    from patching import count_calls

    return count_calls(monkeypatch, module, name)


def test_select_token_rerenders_from_the_cached_analysis(client, trail, monkeypatch):
    import tokentrail.engine.capture
    import tokentrail.session.runner

    calls = _count(monkeypatch, tokentrail.session.runner, "compute_views")
    passes = _count(monkeypatch, tokentrail.engine.capture, "capture")
    tokenize(client)
    assert len(calls) == 1 and len(passes) == 1
    for token in (2, 8, 11):
        v = call(client, "/select_token", token, False, "rank")
        assert f"(token {token})" in v["status"]
        nb = trail.neighbours(token, 0)
        assert frame(v["table"])["layer 0"][0].lstrip("★ ") == f"{nb.token[0]} {nb.similarity[0]:.3f}"
    assert len(calls) == 1, "a click must not re-run the analysis"
    tokenize(client, api="/analyse")  # same text and options: the cached result
    assert len(calls) == 1
    v = tokenize(client, api="/analyse", similarity="euclidean")
    assert len(calls) == 2 and "euclidean" in v["status"]
    assert len(passes) == 1, "another similarity re-scores the same forward pass"
    assert "(token 11)" in v["status"], "changing an option keeps the selected token"


def test_heads_and_walkthrough_run_no_second_forward_pass(client, monkeypatch):
    import tokentrail.engine.capture

    passes = _count(monkeypatch, tokentrail.engine.capture, "capture")
    tokenize(client, text="The river bank was muddy.")
    assert len(passes) == 1
    call(client, "/show_heads", False, "rank")
    call(client, "/show_walkthrough", False, "rank")
    call(client, "/select_layer", 3, False, "rank")
    assert len(passes) == 1, "heads and the walkthrough reuse the analysis' forward pass"


def test_correction_selector_rescores_the_cached_run_and_matches_the_library(client, monkeypatch):
    import tokentrail.engine.capture
    import tokentrail.session.runner

    corrections = ("zscore", "rogue:1", "abtt:2")
    lib = {c: tt.trace(TEXT, "minilm", site="attn_resid_ln", correct=c) for c in corrections}
    passes = _count(monkeypatch, tokentrail.engine.capture, "capture")
    scored = _count(monkeypatch, tokentrail.session.runner, "compute_views")
    v = tokenize(client, site="attn_resid_ln")
    # MiniLM's attn_resid_ln: one dimension carries over half the cosine at layers 2-4
    assert "⚠" in v["status"] and "dim 223" in v["status"] and "Correction rogue:1" in v["status"]
    t = v["tokens"]["value"]
    for correct in corrections:
        v = tokenize(client, api="/analyse", site="attn_resid_ln", correct=correct)
        assert f"corrected **{correct}**" in v["status"] and "⚠" not in v["status"]
        table = frame(v["table"])
        for l in range(lib[correct].n_layers):
            nb = lib[correct].neighbours(t, l, site="attn_resid_ln")
            assert table[f"layer {l}"][0].lstrip("★ ") == f"{nb.token[0]} {nb.similarity[0]:.3f}"
    assert len(passes) == 1, "a correction re-scores the page's one forward pass"
    assert len(scored) == 4
    v = tokenize(client, api="/analyse", site="attn_resid_ln", correct="none")
    assert "corrected" not in v["status"] and "⚠" in v["status"]
    assert len(scored) == 4, "back to no correction: the cached analysis"
    assert "unknown correction" in problem(tokenize(client, api="/analyse", correct="zcore")["status"])


def test_a_rogue_dimension_puts_the_corrected_view_beside_the_raw_one(client):
    """MiniLM's attn_resid_ln (one dimension carries over half the cosine): a check box
    offers the suggested correction; one click shows its neighbours (the library's) beside
    the raw table; unticked, they go. Without such a dimension there is no box."""
    lib = tt.trace(TEXT, "minilm", site="attn_resid_ln", correct="rogue:1")
    v = tokenize(client, site="attn_resid_ln")
    assert v["fix"]["visible"] is True and "rogue:1" in v["fix"]["label"]
    assert v["table_fixed"]["visible"] is False
    t = v["tokens"]["value"]
    raw = frame(v["table"])
    v = call(client, "/show_corrected", True, False, "rank")
    fixed = frame(v["table_fixed"])
    assert v["table_fixed"]["visible"] is True
    for l in range(lib.n_layers):
        nb = lib.neighbours(t, l, site="attn_resid_ln")
        assert fixed[f"layer {l}"][0].lstrip("★ ") == f"{nb.token[0]} {nb.similarity[0]:.3f}"
    assert frame(v["table"]).equals(raw)  # the raw view stays beside it
    assert (fixed != raw).any().any()
    v = call(client, "/show_corrected", False, False, "rank")
    assert v["table_fixed"]["visible"] is False
    v = tokenize(client)
    assert v["fix"]["visible"] is False


def test_map_endpoint_draws_the_library_maps_from_the_cached_run(client, trail, monkeypatch):
    import tokentrail.engine.capture
    from tokentrail.app.map_tab import MODES

    paths, heads = list(MODES)
    assert "Analyse a text first" in client.predict(paths, "pca", "", "", api_name="/map")[0]
    run = tt.load("minilm").run(TEXT)
    tokenize(client)
    passes = _count(monkeypatch, tokentrail.engine.capture, "capture")
    status, plot, points = client.predict(paths, "pca", "flies", "0-2, 5", api_name="/map")
    assert "points: paths at `attn_resid`" in status
    # the points as a table (the keyboard's way to a point): each token point, its token and layer
    table = frame(points)
    assert sorted(set(table["token"])) == [2, 8] and len(table) == 2 * 5  # the encoding + 4 layers each
    assert sorted(set(table["layer"]) - {""}) == [0, 1, 2, 5]
    fig = plot_data(plot)
    names = [t["name"] for t in fig["data"]]
    assert names == ["nearest vocabulary tokens", "'flies' #2", "'flies' #8"]
    _, expected = tt.maps.trajectory_map(run, tokens=[2, 8], layers=[0, 1, 2, 5])
    got = np.concatenate([arr(fig["data"][i]["x"]) for i in (1, 2)])
    want = expected[expected.kind == "token"].sort_values(["token_index", "step"]).x.to_numpy()
    np.testing.assert_allclose(np.abs(got), np.abs(want), rtol=1e-6)  # the same PCA, up to sign
    call(client, "/select_layer", 3, 4, False, "rank")
    status, plot, _ = client.predict(heads, "pca", "", "", api_name="/map")
    assert "queries and keys of layer 3, head 4" in status
    assert "layer 3, head 4" in plot_data(plot)["layout"]["title"]["text"]
    assert len(passes) == 0, "maps draw the page's forward pass"
    assert "out of range" in problem(client.predict(paths, "pca", "", "2-9", api_name="/map")[0])
    assert "no token &#x27;zebra&#x27;" in problem(client.predict(paths, "pca", "zebra", "", api_name="/map")[0])
    call(client, "/select_token", 8, False, "rank")  # the selected token's path is drawn bold
    _, plot, _ = client.predict(paths, "pca", "flies", "", api_name="/map")
    names = [t["name"] for t in plot_data(plot)["data"]]
    assert names == ["nearest vocabulary tokens", "'flies' #2", "'flies' #8 (followed)"]


def test_heads_key_and_query_spaces_match_the_library(client, tiny):
    llama = str(tiny["tiny-llama"].resolve())
    tokenize(client, model=llama)
    call(client, "/select_token", 3, False, "rank")
    call(client, "/select_layer", 2, 0, False, "rank")
    call(client, "/show_heads", False, "rank")
    run = tt.load(llama).run(TEXT)
    for space in ("key", "query", "value"):
        heads = frame(call(client, "/head_space", space, False, "rank")["heads"])
        ref = run.heads(2, 3, kind=space, k=15)
        assert heads["own rank"].tolist() == ref.rank.tolist(), space
        assert heads["own sim"].tolist() == pytest.approx(ref.self_sim.tolist(), abs=1e-3)
    with pytest.raises(Exception):  # noqa: B017 (the client raises the server's refusal as whatever gradio makes of it)
        client.predict("values", False, "rank", api_name="/head_space")


def test_lens_tab_matches_the_library_with_an_embeddings_row(client, tiny):
    llama = str(tiny["tiny-llama"].resolve())
    tokenize(client, model=llama)
    t = 4
    call(client, "/select_token", t, False, "rank")
    v = call(client, "/show_lens", False, "rank")
    run = tt.load(llama).run(TEXT)
    for site in ("layer_out", "attn_resid"):
        if site == "attn_resid":
            v = call(client, "/lens_site", "attn_resid", False, "rank")
        table = frame(v["lens_table"])
        lens, emb = run.lens(k=5, site=site), run.lens(k=5, site="embeddings")
        assert table["layer"].tolist() == ["emb", *[f"L{l}" for l in range(lens.n_layers)]]
        assert table["own rank"].tolist() == [int(emb.own_rank[0, t]), *lens.own_rank[:, t].tolist()]
        assert [int(x) for x in table["next rank"]] == [int(emb.next_rank[0, t]), *lens.next_rank[:, t].tolist()]
        assert table["entropy (nats)"].tolist() == pytest.approx(
            [float(emb.entropy[0, t]), *lens.entropy[:, t].tolist()], abs=1e-3
        )
        labels = tt.load(llama).labels(lens.top_ids[-1, t].tolist())
        first = labels[int(lens.top_ids[-1, t, 0])]
        assert table["top predictions"].iloc[-1].lstrip("★ ").startswith(first)
        assert f"applied to **{site}**" in v["lens_note"]
        # the picture: layers x positions, each cell's top prediction as its text
        cells = plot_data(v["lens_heat"])["data"][0]
        assert cells["type"] == "heatmap" and len(cells["text"][0]) == run.n_tokens
    # the last layer of the lens is the model's own prediction
    assert int(lens.top_ids[-1, t, 0]) == int(
        np.argmax(run.model.adapter.model(torch_ids(run))[0][0, t].detach().numpy())
    )
    # MiniLM has no output head: the tab says so, the page keeps working
    tokenize(client)
    v = call(client, "/show_lens", False, "rank")
    assert v["lens_note"].startswith("**No logit lens for minilm**") and "minilm" in v["status"]
    assert "choose a model with an output head" in v["lens_note"]


def torch_ids(run):
    import torch

    return torch.from_numpy(run.trail().ids)[None]


def test_own_rank_is_appended_when_outside_top_k(client):
    v = tokenize(client, k=1)
    tr = tt.trace(TEXT, "minilm", k=1)
    view = tr.view()
    t = int(np.argmax(view.rank.max(axis=0)))  # the token that strays furthest
    v = call(client, "/select_token", t, False, "rank")
    last = frame(v["table"]).iloc[-1]
    for l in range(tr.n_layers):
        r = int(view.rank[l, t])
        if r >= 1:
            assert last[f"layer {l}"].startswith("★") and f"rank {r}" in last[f"layer {l}"]
        else:
            assert last[f"layer {l}"] == "rank 0"


def test_heads_view_matches_the_library(client, trail):
    tokenize(client)
    layer, token = 3, 2
    call(client, "/select_token", token, False, "rank")
    call(client, "/select_layer", layer, 0, False, "rank")
    v = call(client, "/show_heads", False, "rank")
    heads = frame(v["heads"])
    ref = tt.trace(TEXT, "minilm", site="heads", space="value")
    hv = ref.view("heads", "value")
    assert len(heads) == ref.n_heads
    assert list(heads["own rank"]) == [int(r) for r in hv.rank[layer, :, token]]
    for h in range(ref.n_heads):
        first = ref.labels[int(hv.top_ids[layer, h, token, 0])]
        assert heads["0"][h].lstrip("★ ").startswith(first)
    att = plot_data(v["attention"])["data"][0]
    np.testing.assert_allclose(arr(att["z"]), trail.attentions[layer, :, token], atol=1e-6)
    assert len(att["x"]) == trail.n_tokens
    # a click while the heads tab is shown re-renders the heads for the new token
    v = call(client, "/select_token", 8, False, "rank")
    assert list(frame(v["heads"])["own rank"]) == [int(r) for r in hv.rank[layer, :, 8]]


def test_walkthrough_numbers_are_the_models(client, trail):
    tokenize(client)
    call(client, "/select_layer", 4, 7, False, "rank")
    v = call(client, "/show_walkthrough", False, "rank")
    assert "Layer 4, head 7" in v["walk"] and "✓ **Matches the model's own numbers**" in v["walk"]
    src = frame(v["walk_sources"])
    np.testing.assert_allclose(src["softmax w"], src["model's w"], atol=2e-4)
    np.testing.assert_allclose(src["model's w"], trail.attentions[4, 7, 1].round(4), atol=1e-4)
    assert abs(src["softmax w"].sum() - 1) < 1e-3
    vec = frame(v["walk_vectors"])
    assert list(vec["vector"])[-1] == "LayerNorm(h + attention)"  # post-LN model


def test_heatmap_is_a_clickable_token_by_layer_grid(client, trail):
    tokenize(client)
    call(client, "/select_token", 2, False, "rank")
    html = call(client, "/show_heatmaps", False, "rank")["heat"]
    assert html.count("<td data-t=") == trail.n_tokens * trail.n_layers
    assert '<td data-t="2" data-l="0" class="sel"' in html
    view = trail.view()
    assert f'title="2: flies, layer 5: rank {view.rank[5, 2]}"' in html
    html = call(client, "/display", False, "self_sim")["heat"]
    assert f">{view.self_sim[5, 2]:.2f}</td>" in html


def test_options_reach_the_analysis(client):
    v = tokenize(client, positional=False, site="layer_out", similarity="euclidean", k=5)
    assert "space `embeddings`" in v["status"] and "site `layer_out`" in v["status"] and "euclidean" in v["status"]
    assert len(frame(v["table"])) == 5 + 1
    adjusted = call(client, "/display", True, "rank")
    ref = tt.trace(TEXT, "minilm", site="layer_out", space="embeddings", similarity="euclidean", k=5).view()
    np.testing.assert_allclose(
        arr(plot_data(adjusted["plot_sim"])["data"][-1]["y"]), ref.adjusted_self_sim[:, 1], rtol=1e-5
    )


# ---- models: allowlist, switching, isolation -----------------------------------------------------
def test_switch_model_is_per_session(url, tiny):
    a, b = gradio_client.Client(url, verbose=False), gradio_client.Client(url, verbose=False)
    tokenize(a)
    tokenize(b)
    out = b.predict(str(tiny["tiny-roberta"].resolve()), TEXT, *DEFAULTS.values(), api_name="/switch_model")
    v = dict(zip(VIEWS, out[2:]))
    assert "tiny-roberta (local folder)" in v["status"] and "roberta" in v["status"]
    assert v["tokens"]["choices"][0][0] == "<s>"
    assert out[1]["visible"] is False  # no causal toggle for an encoder
    # the other page still shows MiniLM, and clicks there still use its cached analysis
    va = call(a, "/select_token", 2, False, "rank")
    assert "minilm" in va["status"] and va["tokens"]["choices"][0][0] == "[CLS]"
    vb = call(b, "/select_token", 2, False, "rank")
    assert "tiny-roberta" in vb["status"]


def test_unavailable_model_stays_listed_and_says_why(client, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    toasts = []
    monkeypatch.setattr(
        app_layout.gr, "Warning", lambda msg, *a, **k: toasts.append(msg)
    )  # the server runs in this process
    tokenize(client)
    out = client.predict("gpt2", TEXT, *DEFAULTS.values(), api_name="/switch_model")
    status = out[2]
    assert "cannot be used here" in problem(status) and "Still using minilm" in status
    # said once, in the status line: no toast over the model menu as well (issue 11, point 14)
    assert toasts == [] and status.count("cannot be used here") == 1
    assert out[0]["value"] == "minilm"  # the menu goes back to the model in use
    assert "minilm" in call(client, "/select_token", 3, False, "rank")["status"]


def test_serve_says_how_to_share_instead_of_gradios_hint(tiny, capfd, monkeypatch):
    import torch

    from tokentrail.app import launch, startup_message

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this test process's threads
    port = harness.free_port()
    demo = launch(port=port, models=[str(tiny["tiny-llama"])], block=False)
    try:
        out = capfd.readouterr().out
    finally:
        demo.close()
    assert "share=True" not in out and "launch()" not in out  # Gradio's hint is for Python callers, not the CLI
    assert f"tokentrail app running on http://127.0.0.1:{port}" in out
    assert "reachable from this machine only" in out and "`tokentrail serve --share`" in out
    shared = startup_message("http://0.0.0.0:7860/", "0.0.0.0", True, "https://abc.gradio.live")
    assert "public share link: https://abc.gradio.live" in shared and "--share" not in shared
    assert "no share link could be created" in startup_message("http://127.0.0.1:7860/", "127.0.0.1", True, None)


@pytest.mark.parametrize("name", ["/etc", "../../models", "bert-base-cased", "http://example.com/model"])
def test_models_outside_the_allowlist_are_refused(client, name):
    with pytest.raises(Exception) as err:
        client.predict(name, TEXT, *DEFAULTS.values(), api_name="/switch_model")
    assert "choices" in str(err.value) or "not offered" in str(err.value)
    with pytest.raises(Exception):  # noqa: B017 (the client raises the server's refusal as whatever gradio makes of it)
        tokenize(client, model=name)
    assert "minilm" in tokenize(client)["status"]  # and the app keeps serving


def test_decoder_shows_the_causal_toggle_and_says_which_mode(client, tiny):
    llama = str(tiny["tiny-llama"].resolve())
    out = client.predict(llama, TEXT, *DEFAULTS.values(), api_name="/switch_model")
    assert out[1]["visible"] is True
    v = dict(zip(VIEWS, out[2:]))
    assert "causal mask **on**" in v["status"]
    v = tokenize(client, model=llama, api="/analyse", causal=False)
    assert "causal mask **off**" in v["status"]
    w = call(client, "/show_walkthrough", False, "rank")
    assert "no mask" in w["walk"] and "✓ **Matches" in w["walk"]
    call(client, "/select_layer", 1, 3, False, "rank")
    w = call(client, "/select_token", 2, False, "rank")
    assert "(reads key/value head 1)" in w["walk"] and "✓ **Matches" in w["walk"]  # grouped-query attention
    v = tokenize(client, model=llama, api="/analyse", causal=True)
    w = call(client, "/select_token", 1, False, "rank")
    assert "causal mask **on**" in w["status"] and "causal: tokens after it are masked out" in w["walk"]
    src = frame(w["walk_sources"])
    assert src["masked"].tolist() == [s > 1 for s in range(len(src))]
    out = client.predict("minilm", TEXT, *DEFAULTS.values(), api_name="/switch_model")
    assert out[1]["visible"] is False


# ---- bad inputs: a message in the page, never a stack trace ------------------------------------------
def test_click_before_tokenizing(client):
    # there are no token chips yet: Gradio itself refuses a token, with a plain message
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
        call(client, "/select_token", 3, False, "rank")
    # the layer/head sliders and tabs exist before any text: the page says what to do
    status = call(client, "/select_layer", 1, 1, False, "rank")["status"]
    assert "nothing to select yet" in problem(status) and "Analyse" in status
    assert "minilm" in tokenize(client)["status"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the text is empty"),
        ("   \n ", "the text is empty"),
        ("x" * 2001, "at most 2,000"),
        ("a " * 300, "at most 256"),
        ("bad \x00 byte", "control character U+0000"),
    ],
)
def test_bad_text_says_what_is_wrong(client, text, message):
    status = tokenize(client, text=text)["status"]
    assert message in problem(status)
    assert "Traceback" not in status


def test_odd_unicode_is_analysed(client):
    v = tokenize(client, text="Naïve café ‮RTL‬ 漢字 🙂 zero\u200bwidth")
    assert v["status"].startswith("**minilm**")
    assert len(v["tokens"]["choices"]) > 5


def test_text_that_is_not_unicode_says_so():
    """A lone surrogate cannot travel as UTF-8 (gradio_client refuses to send it); a
    browser can send one escaped in JSON, which reaches the session like this."""
    with pytest.raises(tt.InputError, match="lone surrogate U\\+D800"):
        app_session.Session(model="minilm").analyse("lone \ud800 surrogate", app_session.DEFAULT_OPTIONS)


def test_a_text_over_the_page_limit_is_told_in_the_pages_words():
    """The library's over-long error is typed (:class:`tokentrail.TooLong`, with the count
    and the limit); the session catches it by type and says it with the page's limit."""
    text = " ".join(["word"] * 300)  # 302 tokens with [CLS] and [SEP], under MAX_CHARS
    with pytest.raises(tt.TooLong, match="pass --truncate to keep the first 256") as info:
        tt.load("minilm").encode(text, max_tokens=app_session.MAX_TOKENS)
    assert (info.value.tokens, info.value.limit) == (302, 256)
    with pytest.raises(
        tt.InputError, match="the text is 302 tokens for minilm; this app analyses at most 256 at once"
    ) as info:
        app_session.Session(model="minilm").analyse(text, app_session.DEFAULT_OPTIONS)
    assert not isinstance(info.value, tt.TooLong)


@pytest.mark.parametrize(
    "api, args, message",
    [
        ("/select_token", (99, False, "rank"), "not in the list of choices"),
        ("/select_layer", (17, 0, False, "rank"), "greater than maximum value 5"),
        ("/select_layer", (0, -1, False, "rank"), "less than minimum value 0"),
    ],
)
def test_bad_selection_is_refused_and_the_app_keeps_serving(client, api, args, message):
    tokenize(client)
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        call(client, api, *args)
    assert "minilm" in call(client, "/select_token", 2, False, "rank")["status"]


def test_session_checks_selection_ranges_itself(trail):
    """Behind Gradio's own checks, the session refuses out-of-range picks with our message."""
    s = app_session.Session(model="minilm")
    s.trail = trail
    for kwargs, message in (
        ({"token": 99}, "token index 99 is out of range"),
        ({"layer": 17}, "layer 17 is out of range"),
        ({"head": 12}, "head 12 is out of range"),
        ({"layer": 1.5}, "whole number"),
    ):
        with pytest.raises(tt.InputError, match=message):
            s.select(**kwargs)


# ---- export ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["CSV", "Parquet", "JSON"])
def test_export_results(client, trail, fmt):
    tokenize(client)
    value, status = client.predict(fmt, api_name="/export_results")
    path = file_path(value)
    assert f"as {fmt}" in status
    path = Path(path)
    if fmt == "CSV":
        df = pd.read_csv(path)
    elif fmt == "Parquet":
        df = pd.read_parquet(path)
    else:
        df = pd.DataFrame(json.loads(path.read_text())["metrics"])
    assert {"token", "layer", "metric", "value"} <= set(df.columns)
    ranks = df[(df.metric == "rank") & (df.token == 2)].sort_values("layer")["value"].to_numpy()
    np.testing.assert_array_equal(ranks, trail.view().rank[:, 2])
    back = tt.Trail.load(path)  # the download is a whole Trail: every table, readable back
    assert back.tokens == trail.tokens and np.array_equal(back.view().top_ids, trail.view().top_ids)
    assert (
        np.array_equal(back.view().origin_top_ids, trail.view().origin_top_ids)
        and back.attentions.shape == trail.attentions.shape
    )


def test_export_plot_html(client):
    tokenize(client)
    value, status = client.predict("rank across layers", "HTML", False, "rank", api_name="/export_plot")
    path = file_path(value)
    text = Path(path).read_text()
    assert "<html>" in text and "plotly" in text.lower() and "rank (log scale; 0 = nearest)" in text


@pytest.mark.skipif(
    importlib.util.find_spec("kaleido") is None, reason="SVG export needs kaleido (pip install kaleido)"
)
def test_export_plot_svg(client):
    tokenize(client)
    value, status = client.predict("heatmap (token × layer)", "SVG", False, "rank", api_name="/export_plot")
    path = file_path(value)
    assert Path(path).read_text().startswith("<svg")


def test_export_before_analysis(client):
    _, status = client.predict("CSV", api_name="/export_results")
    assert "nothing to select yet" in problem(status)


# ---- serving ----------------------------------------------------------------------------------------
def test_bounded_queue_says_busy(tiny, monkeypatch):
    """With Gradio's workers busy and its queue full, extra requests get Gradio's 'queue is
    full' message; the app then keeps serving. (One worker here, so that one model's
    requests fill it: with the page's workers, its per-model limit refuses them first,
    tests/test_app_queues.py.)"""
    monkeypatch.setattr(app_wiring, "EVENTS", dict(app_wiring.EVENTS, concurrency_limit=1))
    demo = build_app(max_queue=1)
    with harness.serve(demo, **launch_options()) as u:
        c = gradio_client.Client(u, verbose=False)
        jobs = [
            c.submit(
                f"{TEXT} Number {i} of many, with a few more words to chew on.",
                "minilm",
                *DEFAULTS.values(),
                api_name="/tokenize",
            )
            for i in range(8)
        ]
        errors = []
        for job in jobs:
            try:
                job.result(timeout=120)
            except Exception as exc:  # noqa: BLE001
                errors.append(str(exc))
        assert any("queue is full" in e.lower() for e in errors), errors
        assert "minilm" in tokenize(c)["status"]


def test_launch_binds_loopback_without_share(monkeypatch):
    import os

    import torch

    from tokentrail import app

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw, demo=self))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    app.launch(block=False)
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and seen["server_port"] == 7860
    # model work leaves a core for other pages' clicks (issue 11, point 18)
    assert seen["threads"] == max(1, (os.cpu_count() or 1) - 1)
    # no general file access: only the app's own private folder of served exports
    assert seen["allowed_paths"] == [str(seen["demo"].tokentrail_folder.cache)]


def test_app_never_asks_for_pickle_or_remote_code():
    src = "".join(p.read_text() for p in Path(app_layout.__file__).parent.glob("*.py"))
    assert "allow_pickle" not in src and "trust_remote_code" not in src


def test_sessions_run_concurrently(url):
    """Two pages analysing at once both get their own, complete result."""
    results = {}

    def run(name, text):
        c = gradio_client.Client(url, verbose=False)
        results[name] = tokenize(c, text=text)

    threads = [
        threading.Thread(target=run, args=(n, t))
        for n, t in (("a", "Fruit flies like a banana."), ("b", "Colourless green ideas sleep furiously."))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [c[0] for c in results["a"]["tokens"]["choices"]][1:3] == ["fruit", "flies"]
    assert [c[0] for c in results["b"]["tokens"]["choices"]][1] == "colourless" or "colour" in results["b"]["tokens"][
        "choices"
    ][1][0]


# ---- the web server: hardening (issue 11, point 22) ------------------------------------------------
def _http(url, method="GET", body=b"", headers=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class _Records(__import__("logging").Handler):
    def __init__(self):
        super().__init__(level=0)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_server_refuses_uploads_sets_security_headers_and_rejects_bad_calls_quietly(url):
    import logging

    status, headers, _ = _http(url)
    assert status == 200
    assert headers["x-frame-options"] == "SAMEORIGIN" and headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'self'" in headers["content-security-policy"]
    # the page has no upload: any file, any size, is refused before it is read
    boundary = "tokentrailboundary"
    body = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.bin"\r\n\r\n').encode()
        + b"x" * 100_000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, headers, text = _http(
        url + "gradio_api/upload", "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 403 and b"uploads are disabled" in text and headers["x-content-type-options"] == "nosniff"
    # an invalid API call: a clear 4xx, and no traceback in the log
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "gradio", "tokentrail.app")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        for _ in range(2):
            payload = json.dumps(
                {"data": [], "fn_index": 999, "session_hash": "abc", "event_data": None, "trigger_id": None}
            ).encode()
            status, _, text = _http(
                url + "gradio_api/queue/join", "POST", payload, {"Content-Type": "application/json"}
            )
            assert 400 <= status < 500, (status, text[:300])
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not [r for r in handler.records if r.exc_info], [r.getMessage() for r in handler.records]


def test_exports_live_in_a_private_folder_under_unguessable_names(demo, client):
    import os
    import re
    import stat

    folder = demo.tokentrail_folder
    assert stat.S_IMODE(os.stat(folder.root).st_mode) == 0o700
    tokenize(client)
    value, _ = client.predict("CSV", api_name="/export_results")
    path = file_path(value)
    made = [f for f in folder.path.iterdir() if f.name.endswith(Path(path).suffix)]
    assert made and all(re.search(r"-[0-9a-f]{32}\.csv$", f.name) for f in made)
    # Gradio's served copy is in the private folder too, not in the system temp folder
    copies = [f for f in folder.cache.rglob("*.csv")]
    assert copies and all(Path(f).resolve().is_relative_to(folder.root.resolve()) for f in copies)


def test_the_app_leaves_no_temp_folder_behind(tmp_path):
    import os
    import subprocess
    import sys

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = "from tokentrail.app import build_app\ndemo = build_app()\nassert demo.tokentrail_folder.root.is_dir()\nprint(demo.tokentrail_folder.root)"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(Path(tt.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(tmp))
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("tokentrail-app-")]


# ---- progress on the page (issue 11, point 10) ----------------------------------------------------
def test_the_page_receives_analysis_progress_as_step_counts(url):
    """An analysis streams the library's progress to the page as done/total steps (the
    page's options: one residual space, one step), read over Gradio's own event stream."""
    spec = importlib.util.spec_from_file_location(
        "tokentrail_bench_app_latency", Path(__file__).parents[1] / "benchmarks" / "bench_app_latency.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    client = bench.PageClient(url)
    out, progress = client.call(
        "tokenize", "A fresh text, so that the analysis really runs.", "minilm", *DEFAULTS.values()
    )
    assert "minilm" in out[1]
    steps = [(p["index"], p["length"], p["unit"], p["desc"]) for p in progress if p["length"] is not None]
    assert steps, progress
    assert all(length == 1 and index in (0, 1) and unit == "steps" for index, length, unit, _ in steps)
    assert {d for *_, d in steps} <= {"running the model", "comparing with encodings", "done"}


def test_map_tab_reads_tokens_and_layers(trail):
    from tokentrail.app.map_tab import parse_layers, parse_tokens
    from tokentrail.spec.errors import InputError

    assert parse_tokens(trail, " ") is None and parse_layers("", 6) is None
    assert parse_tokens(trail, "flies") == [2, 8]  # a bare text: every occurrence
    assert parse_tokens(trail, "flies:1, 1, -1") == [8, 1, 13]
    assert parse_layers("0-2, 5, 1", 6) == [0, 1, 2, 5]
    for bad, message in (
        ("3-1", "out of range"),
        ("6", "out of range"),
        ("a", "whole numbers"),
        ("1-", "whole numbers"),
    ):
        with pytest.raises(InputError, match=message):
            parse_layers(bad, 6)
