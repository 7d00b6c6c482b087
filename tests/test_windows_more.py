"""Sliding windows of the newer decoders (issue 23, point 3): Qwen3's ``use_sliding_window``
(the layers from ``max_window_layers`` on slide) and Phi-3's ``sliding_window`` (every
layer slides; ``Phi3Model`` has no ``layer_types``), modelled instead of capping the text.

Each case: a text longer than the window traces; the captured attention is Hugging Face's
own ``output_attentions``; the walkthrough recomputes it, hiding what the window hides;
verify passes, and fails when the adapter's window is one key off. On the code before
(texts capped at the window, the plain causal mask assumed), the window, walkthrough,
verify and command-line tests failed; the attention test guards that the window really
hides keys in these texts.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import tokentrail
from test_parity_new_decoders import tiny_new
from tokentrail.adapters import adapter_for
from tokentrail.cli.commands import app
from tokentrail.engine.capture import capture
from tokentrail.engine.walkthrough import attention_step
from tokentrail.session.verification import verify_adapter
from tokentrail.spec.errors import ModelError

IDS = torch.tensor([5, 17, 33, 8, 60, 41, 12, 29, 71, 44, 9])  # 11 tokens: longer than every window below
CASES = {
    # 2 layers, max_window_layers=1: layer_types full, sliding
    "qwen3": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "phi3": dict(sliding_window=3),  # both layers slide
}
WINDOWS = {"qwen3": [None, 4], "phi3": [3, 3]}


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    model = tiny_new(request.param, **CASES[request.param])
    return request.param, model, adapter_for(model)


def test_the_window_is_read_per_layer_and_does_not_cap_the_text(tiny):
    family, model, adapter = tiny
    assert [adapter.attention_window(l) for l in range(adapter.n_layers)] == WINDOWS[family]
    assert adapter.max_tokens == 64  # max_position_embeddings, not the window
    if family == "qwen3":
        assert model.config.layer_types == ["full_attention", "sliding_attention"]


def test_attention_is_the_models_own_and_the_window_hides_keys(tiny):
    """The captured probabilities are HF's output_attentions, and they are zero where the
    window hides a key (so the window really acts on this text)."""
    family, model, adapter = tiny
    acts = capture(adapter, IDS)
    with torch.no_grad():
        own = model(IDS[None], output_attentions=True).attentions
    n = IDS.shape[0]
    t, s = torch.arange(n)[:, None], torch.arange(n)[None, :]
    for layer, window in enumerate(WINDOWS[family]):
        torch.testing.assert_close(acts.attentions[layer], own[layer][0].float(), rtol=1e-5, atol=1e-6)
        hidden = (s > t) | ((t - s >= window) if window is not None else torch.zeros(n, n, dtype=torch.bool))
        assert (own[layer][0][:, hidden] == 0).all() and (own[layer][0][:, ~hidden] > 0).all(), (family, layer)


def test_walkthrough_recomputes_the_models_attention(tiny):
    family, _, adapter = tiny
    acts = capture(adapter, IDS)
    n = IDS.shape[0]
    for layer, window in enumerate(WINDOWS[family]):
        for head in range(adapter.n_heads):
            for token in (0, 3, n - 1):
                step = attention_step(adapter, acts, layer, head, token)
                assert step.matches_model(1e-5), (family, layer, head, token, step.checks)
        step = attention_step(adapter, acts, layer, 1, n - 1)
        seen = torch.arange(n) > n - 1 - (window if window is not None else n)
        assert (step.masked == ~seen).all(), (family, layer)
        assert ("sliding window" in step.formulas["scaled"]) == (window is not None)


def test_verify_passes(tiny):
    family, _, adapter = tiny
    result = verify_adapter(adapter, IDS, sample=8)
    assert result.passed, (family, [(c.identity, c.where) for c in result.failed])


@pytest.mark.parametrize("off", [-1, 1])
def test_verify_fails_when_the_window_is_off_by_one(tiny, off, monkeypatch):
    family, _, adapter = tiny
    windows = WINDOWS[family]
    layer = max(l for l, w in enumerate(windows) if w is not None)
    monkeypatch.setattr(
        type(adapter), "attention_window", lambda self, l: None if windows[l] is None else windows[l] + off
    )
    result = verify_adapter(adapter, IDS, sample=8, layers=[layer])
    assert "attention probabilities" in {c.identity for c in result.failed}, (family, off)


runner = CliRunner()


@pytest.mark.parametrize("family", sorted(CASES))
def test_cli_traces_and_verifies_a_text_longer_than_the_window(family, tmp_path, tokenizer, save_model):
    text = "time flies like an arrow and fruit flies like a banana"
    assert len(tokenizer(text)["input_ids"]) > 2 * max(w for w in WINDOWS[family] if w is not None)
    folder = save_model(tmp_path / family, tiny_new(family, vocab_size=len(tokenizer), **CASES[family]), tokenizer)
    res = runner.invoke(app, ["verify", str(folder), "--text", text, "-q"])
    assert res.exit_code == 0, res.output
    assert "identities hold" in res.output
    res = runner.invoke(app, ["trace", text, "-m", str(folder), "--site", "all", "--space", "all"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    # the walkthrough of the loaded model (what the app shows): the last token's window
    run = tokentrail.load(str(folder)).run(text)
    n, window = len(run.tokens), WINDOWS[family][-1]
    step = run.step(1, 0, n - 1)
    assert step.matches_model(1e-5), step.checks
    assert int(step.masked.sum()) == n - window


def test_phi3_ignores_a_stray_layer_types_as_its_model_does():
    """Phi3Model masks every layer with sliding_window whatever config.layer_types says (it
    builds one mask): the adapter does not read it, and verify passes on the model's own
    attention in the layer the stray entry calls full."""
    model = tiny_new("phi3", **CASES["phi3"])
    model.config.layer_types = ["full_attention", "sliding_attention"]
    adapter = adapter_for(model)
    assert [adapter.attention_window(l) for l in range(2)] == [3, 3]
    assert verify_adapter(adapter, IDS, sample=8, layers=[0]).passed


def test_phi3_refuses_an_unmodelled_layer_type_before_any_work():
    model = tiny_new("phi3", **CASES["phi3"])
    model.config.layer_types = ["chunked_attention", "sliding_attention"]
    with pytest.raises(ModelError, match="'chunked_attention' is not modelled"):
        adapter_for(model)
