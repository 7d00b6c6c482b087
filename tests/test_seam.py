"""The library seam (issue "One run, every caller"): Run, typed options, bring-your-own
model, device/dtype, the metric registry, new sites, and a cheap ``import tokentrail``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import tokentrail as tt
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import ALL_SITES, TraceOptions

TEXT = "Time flies like an arrow."


# ---- fast start -----------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["tokentrail", "tokentrail.cli.commands", "tokentrail.spec.options"])
def test_import_pulls_in_nothing_heavy(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'pandas', 'gradio', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from typer.testing import CliRunner; from tokentrail.cli.commands import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "print([m for m in ('torch', 'transformers', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_names_resolve():
    assert tt.Trail.__name__ == "Trail" and callable(tt.trace) and callable(tt.run) and tt.Run.__name__ == "Run"
    with pytest.raises(AttributeError):
        tt.no_such_name  # noqa: B018


# ---- typed options ----------------------------------------------------------------------------
def test_options_expand_validate_and_round_trip():
    o = TraceOptions.make(site="attn_resid, heads", space="all", similarity=["euclidean"], k=3, overlap_k=7, lens=True)
    assert o.sites == ("attn_resid", "heads") and o.similarities == ("euclidean",)
    assert TraceOptions.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    assert TraceOptions.make(site="all").sites == ALL_SITES
    for bad, msg in (
        (dict(k="5"), "k must be a whole number, not the string '5'"),
        (dict(k=2.5), "k must be a whole number"),
        (dict(lens="yes"), "lens must be True or False"),
        (dict(lens_site="heads"), "the logit lens reads layer_out or attn_resid"),
        (dict(site=3), "expected a name"),
    ):
        with pytest.raises(InputError, match=msg):
            TraceOptions.make(**bad)
    with pytest.raises(InputError, match="unknown trace options"):
        TraceOptions.from_dict({"k": 3, "kk": 1})


def test_options_travel_typed_through_parquet_and_json(loaded_tiny, tmp_path):
    trail = tt.trace("time flies like an arrow", loaded_tiny, site="layer_out,mlp_out", k=4, overlap_k=6)
    assert isinstance(trail.info.options, TraceOptions) and trail.info.options.sites == ("layer_out", "mlp_out")
    trail.to_parquet(tmp_path / "t.parquet")
    meta = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"tokentrail"])
    assert (
        tt.RunInfo.from_dict({k: v for k, v in meta.items() if k not in ("text", "tokens", "kv_groups")}) == trail.info
    )
    doc = json.loads(trail.to_json())
    assert TraceOptions.from_dict(doc["meta"]["options"]) == trail.info.options


# ---- the Run ---------------------------------------------------------------------------------
def test_one_run_gives_every_view(loaded_tiny, monkeypatch):
    import tokentrail.engine.capture
    from patching import count_calls

    passes = count_calls(monkeypatch, tokentrail.engine.capture, "capture")
    run = loaded_tiny.run("time flies like an arrow", TraceOptions.make(site="heads,layer_out", k=5))
    trail = run.trail()
    assert run.trail() is trail, "a Run caches its Trail per options"
    heads = run.heads(1, 2, k=5)
    ref = trail.view("heads", "value")
    np.testing.assert_array_equal(heads.top_ids, ref.top_ids[1, :, 2])
    np.testing.assert_array_equal(heads.rank, ref.rank[1, :, 2])
    step = run.step(1, 3, 2)
    assert step.matches_model(1e-5)
    other = run.trail(similarities=("euclidean",), k=2)
    assert other.info.options.k == 2 and other.view().similarity == "euclidean"
    assert len(passes) == 1, "the Trail, heads, walkthrough and other options share one forward pass"
    with pytest.raises(ValueError, match="mask and truncation are fixed"):
        run.trail(truncate=True)


def test_run_equals_trace(loaded_tiny):
    a = tt.trace("the cat sat on the mat", loaded_tiny, site="all", space="encodings", k=3, overlap_k=5)
    b = tt.run("the cat sat on the mat", loaded_tiny, options=a.info.options).trail()
    for va, vb in zip(a.views, b.views):
        assert va.key == vb.key
        for name in va.metrics:
            np.testing.assert_array_equal(va.metrics[name], vb.metrics[name])
        np.testing.assert_array_equal(va.top_ids, vb.top_ids)


def test_new_sites_hold_their_identities(loaded_tiny):
    """resid_pre[l] == layer_out[l-1] (h_0 = e); post-LN: LN_out(mlp_out + attn_resid_ln) == layer_out."""
    run = loaded_tiny.run("time flies like an arrow")
    acts, adapter = run.acts, loaded_tiny.adapter
    torch.testing.assert_close(acts.site("resid_pre")[0], acts.embedded)
    torch.testing.assert_close(acts.site("resid_pre")[1:], acts.layer_out[:-1])
    for layer in range(adapter.n_layers):
        ln = adapter.model.base_model.encoder.layer[layer].output.LayerNorm
        with torch.no_grad():
            torch.testing.assert_close(
                ln(acts.mlp_out[layer] + acts.attn_resid_ln[layer]), acts.layer_out[layer], rtol=1e-4, atol=1e-5
            )


# ---- a new metric is one function and one registration --------------------------------------
def test_registering_a_metric_reaches_views_and_exports(loaded_tiny, bert_folder, tmp_path):
    """One registration reaches every surface: the trace's views and frame(), every export
    and its round trip, the figures, the app's selectors, and a study's columns,
    aggregates and report (the figures and the study read the registry, no list of their own)."""
    from tokentrail.app import render
    from tokentrail.corpus.report import named_figures
    from tokentrail.engine import metrics
    from tokentrail.present import plots
    from tokentrail.store.schema import token_schema

    name = "self_sim_squared"

    @metrics.cell_metric(name, title="Self-similarity squared", short="self-sim²", dtype="float64")
    def _sq(c: metrics.Cells) -> np.ndarray:
        """self_sim squared (a test metric)."""
        return c.own_sim.astype(np.float64) ** 2

    try:
        # the trace: views and frame()
        trail = tt.trace("time flies", loaded_tiny, k=2, overlap_k=3)
        v = trail.view()
        np.testing.assert_allclose(v.metric(name), v.self_sim.astype(np.float64) ** 2)
        assert name in set(trail.frame().metric)
        # every export, and each read back equal
        assert name in set(trail.tables()["metrics"].metric)
        for fmt in ("parquet", "csv", "json"):
            back = tt.Trail.load(trail.export(tmp_path / f"t.{fmt}"))
            assert back == trail, fmt
            np.testing.assert_array_equal(back.view().metric(name), v.metric(name))
        # the figures and the app's selectors
        assert plots.LINE_METRICS[name] == "Self-similarity squared"
        assert render.HEAT_METRICS[name] == "self-sim²"
        assert plots.journey(trail, 0, name).layout.title.text.startswith("Self-similarity squared")
        assert len(plots.grid(trail, name).data[0].z) == trail.n_tokens
        assert f'data-metric="{name}"' in render.heat_html(trail, v, name, 0, 0)
        # a study: its columns, aggregates and report
        assert token_schema().field(name).type == pa.float64()
        study = tt.study(
            ["time flies like an arrow .", "the cat sat on the mat ."], str(bert_folder), tmp_path / "study", sample=4
        )
        assert name in study.query("SELECT * FROM tokens").columns
        agg = study.aggregate()
        assert {f"{name}_mean", f"{name}_median", f"{name}_q90"} <= set(agg["by_class"].columns)
        assert f"{name}_mean" in agg["by_token"].columns
        assert name in named_figures(agg)
    finally:
        del metrics.CELL_METRICS[name]
    assert name not in plots.LINE_METRICS and name not in render.HEAT_METRICS and name not in token_schema().names


def test_margin_is_top1_minus_own_in_the_trace_and_its_exports(loaded_tiny):
    """margin = top-1 similarity - own similarity, >= 0, and exactly 0 where the token is
    its own nearest (rank 0), at every site including heads; exported as a metric."""
    trail = tt.trace(
        "time flies like an arrow", loaded_tiny, site=("layer_out", "heads"), space=("encodings", "value"), k=2
    )
    for v in trail.views:
        m = v.metric("margin")
        np.testing.assert_array_equal(m, np.where(v.rank == 0, 0, v.top_sims[..., 0] - v.self_sim))
        assert (m >= 0).all() and (m[v.rank == 0] == 0).all() and (m[v.rank > 0] > 0).all()
    assert "margin" in set(trail.frame().metric)


# ---- bring your own model ---------------------------------------------------------------------
def test_a_model_object_traces_like_its_folder(bert_folder, tokenizer):
    from transformers import AutoModelForMaskedLM

    obj = AutoModelForMaskedLM.from_pretrained(str(bert_folder), attn_implementation="sdpa")  # not eager on purpose
    from_obj = tt.trace("time flies like an arrow", obj, tokenizer=tokenizer, site="all", k=4, overlap_k=6, lens=True)
    from_folder = tt.trace("time flies like an arrow", str(bert_folder), site="all", k=4, overlap_k=6, lens=True)
    assert from_obj.info.model_type == "bert" and from_obj.tokens == from_folder.tokens
    for va, vb in zip(from_obj.views, from_folder.views):
        np.testing.assert_allclose(va.self_sim, vb.self_sim, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(va.rank, vb.rank)
    np.testing.assert_array_equal(from_obj.lens.top_ids, from_folder.lens.top_ids)
    assert tt.load(obj, tokenizer=tokenizer) is tt.load(obj, tokenizer=tokenizer), (
        "the wrapper (and its spaces) is reused"
    )


def test_a_decoder_object_with_grouped_query_attention():
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    obj = transformers.LlamaForCausalLM(cfg).eval()

    class Tok:  # the least a tokenizer must do here: ids in, strings out
        all_special_ids: list[int] = []

        def __call__(self, text, add_special_tokens=True, **kw):
            return {"input_ids": [3 + (ord(c) % 60) for c in text]}

        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    trail = tt.trace("abcdef", obj, tokenizer=Tok(), site="heads", space="key", k=3)
    assert trail.info.model_type == "llama" and trail.info.causal is True and trail.kv_groups == 2
    assert trail.view("heads", "key").rank.shape == (2, 4, 6)


@pytest.mark.slow
def test_the_bundled_minilm_object_matches_the_named_model(minilm):
    from transformers import AutoModel, AutoTokenizer

    from tokentrail.session.resolve import CATALOGUE, package_file

    folder = str(package_file(CATALOGUE["minilm"]))
    obj, tok = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    mine = tt.trace(TEXT, obj, tokenizer=tok, site="attn_resid,layer_out")
    ref = tt.trace(TEXT, minilm, site="attn_resid,layer_out")
    for va, vb in zip(mine.views, ref.views):
        np.testing.assert_array_equal(va.rank, vb.rank)
        np.testing.assert_array_equal(va.top_ids, vb.top_ids)
        np.testing.assert_allclose(va.self_sim, vb.self_sim, rtol=1e-5, atol=1e-6)


def test_unsupported_objects_get_one_clear_error(tokenizer):
    with pytest.raises(ModelError, match="not a transformers model"):
        tt.load(torch.nn.Linear(2, 2), tokenizer=tokenizer)
    import transformers

    bloom = transformers.BloomModel(transformers.BloomConfig(vocab_size=32, hidden_size=8, n_layer=1, n_head=2))
    with pytest.raises(ModelError, match="unsupported model type 'bloom'"):
        tt.load(bloom, tokenizer=tokenizer)
    with pytest.raises(InputError, match="pass the model's tokenizer too"):
        tt.load(bloom)
    with pytest.raises(InputError, match="model must be a name"):
        tt.load(42)
    with pytest.raises(InputError, match="tokenizer= goes with a model object"):
        tt.load("minilm", tokenizer=tokenizer)


# ---- device and dtype ---------------------------------------------------------------------------
def test_device_and_dtype_are_checked_before_loading():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        tt.load("minilm", device="tpu")
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        tt.load("minilm", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is usable here"):
            tt.load("minilm", device="cuda")
    from tokentrail.session.models import resolve_device, resolve_dtype

    assert resolve_dtype("bf16") == "bfloat16" and resolve_dtype(torch.float16) == "float16"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")


def _deviation(exact: tt.Trail, approx: tt.Trail) -> tuple[int, int]:
    """(largest |rank change|, largest top-k set difference) over every cell of every view."""
    worst_rank = worst_set = 0
    for ve, va in zip(exact.views, approx.views):
        worst_rank = max(worst_rank, int(np.abs(ve.rank.astype(np.int64) - va.rank.astype(np.int64)).max()))
        k = ve.top_ids.shape[-1]
        a, b = ve.top_ids.reshape(-1, k), va.top_ids.reshape(-1, k)
        worst_set = max(worst_set, max(k - len(set(x) & set(y)) for x, y in zip(a.tolist(), b.tolist())))
    return worst_rank, worst_set


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_reduced_precision_is_labelled_approximate_unless_it_keeps_the_exactness_rule(name):
    """SPEC "Exactness": a faster dtype changes no rank by more than 1 and no top-k set by
    more than one member, or results say they are approximate."""
    from tokentrail.session.resolve import CATALOGUE, package_file

    if package_file(CATALOGUE[name]) is None:
        pytest.skip(f"bundled {name} is not installed")
    exact = tt.trace(TEXT, name, site="attn_resid,layer_out")
    approx = tt.trace(TEXT, name, site="attn_resid,layer_out", dtype="bfloat16")
    assert exact.info.exact and exact.info.dtype == "float32"
    assert approx.info.dtype == "bfloat16"
    worst_rank, worst_set = _deviation(exact, approx)
    print(f"{name} bfloat16 vs float32: max rank change {worst_rank}, max top-15 set difference {worst_set}")
    assert (worst_rank <= 1 and worst_set <= 1) or not approx.info.exact
    assert not approx.info.exact, "reduced precision is always labelled approximate"


def test_runs_of_a_batch_equal_runs_alone(loaded_tiny):
    texts = ["time flies like an arrow", "the cat sat", "red blue green one two three four"]
    opts = TraceOptions.make(site="attn_resid,mlp_out,heads", similarity="all", k=4, overlap_k=6, lens=True)
    together = tt.trail_many(loaded_tiny.runs(texts, opts))
    for text, got in zip(texts, together):
        want = loaded_tiny.run(text, opts).trail()
        assert got.tokens == want.tokens and got.info.options == want.info.options
        for g, w in zip(got.views, want.views):
            assert g.key == w.key and g.metrics.keys() == w.metrics.keys()
            for name in g.metrics:
                if name == "rank" or g.similarity == "cosine":
                    np.testing.assert_allclose(
                        g.metrics[name],
                        w.metrics[name],
                        rtol=1e-4,
                        atol=1e-5,
                        equal_nan=True,
                        err_msg=f"{g.key} {name}",
                    )
            np.testing.assert_array_equal(g.top_ids, w.top_ids)
            np.testing.assert_allclose(g.anisotropy, w.anisotropy, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got.lens.top_ids, want.lens.top_ids)


def test_recorded_hooks_are_removed_even_when_the_pass_fails():
    from tokentrail.engine.capture import recorded

    lin = torch.nn.Linear(3, 2)
    with recorded([(lin, "in", True), (lin, "out", False)]) as store:
        lin(torch.ones(1, 3))
    # a 2-D (batch * n, d) tensor is read as (batch, n, d), as OPT's flattened FFN is
    assert [t.shape for t in store["in"]] == [(1, 1, 3)] and [t.shape for t in store["out"]] == [(1, 1, 2)]
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"), recorded([(lin, "out", False)]):
        raise RuntimeError("boom")
    assert not lin._forward_hooks and not lin._forward_pre_hooks
