"""Attention settings beyond ``softmax(q . k / sqrt(d_head))`` under a plain causal mask
(issue 23, point 3): Mistral's ``sliding_window``, Qwen2's ``use_sliding_window`` with
``max_window_layers`` (per-layer ``layer_types``), GPT-2's ``scale_attn_by_inverse_layer_idx``,
``scale_attn_weights=False`` and ``reorder_and_upcast_attn``.

The trace reads the model's own tensors either way; what these show is that the
walkthrough and ``verify`` recompute attention the way the model does (each test fails on
the code before: the walkthrough's weights were off and verify failed on "attention
probabilities"), and that a per-layer mask we do not model is refused in one line.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from test_parity_decoders import _perturb
from tokentrail.adapters import adapter_for
from tokentrail.engine.capture import capture
from tokentrail.engine.walkthrough import attention_step
from tokentrail.session.verification import verify_adapter
from tokentrail.spec.errors import ModelError

IDS = torch.tensor([5, 17, 33, 8, 60, 41, 12, 29, 71, 44, 9])  # 11 tokens: longer than every window below
SPECIAL = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
ROPE = dict(
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=3,
    hidden_size=32,
    intermediate_size=48,
    vocab_size=97,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    **SPECIAL,
)


def _gpt2(**options) -> transformers.GPT2Config:
    return transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=101, n_positions=64, **SPECIAL, **options)


CASES = {
    # every layer slides a window of 3 over an 11-token text
    "mistral-window": (transformers.MistralConfig(sliding_window=3, **ROPE), transformers.MistralForCausalLM),
    # layers >= max_window_layers slide (layer_types: full, sliding, sliding)
    "qwen2-window": (
        transformers.Qwen2Config(use_sliding_window=True, sliding_window=4, max_window_layers=1, **ROPE),
        transformers.Qwen2ForCausalLM,
    ),
    "gpt2-inverse-layer": (_gpt2(scale_attn_by_inverse_layer_idx=True), transformers.GPT2LMHeadModel),
    "gpt2-unscaled": (_gpt2(scale_attn_weights=False), transformers.GPT2LMHeadModel),
    "gpt2-reordered": (
        _gpt2(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
        transformers.GPT2LMHeadModel,
    ),
}


def _model(name: str) -> torch.nn.Module:
    cfg, cls = CASES[name]
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb(cls(cfg), seed=11)


@pytest.fixture(scope="module", params=sorted(CASES))
def tiny(request):
    model = _model(request.param)
    return request.param, model, adapter_for(model)


def test_the_setting_changes_the_models_attention(tiny):
    """Guard: each setting really moves the model's attention away from the plain rule
    (softmax(q.k / sqrt(d)) under a causal mask), so the tests below can fail."""
    name, model, adapter = tiny
    acts = capture(adapter, IDS)
    n = IDS.shape[0]
    plain = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    moved = 0.0
    for layer in range(adapter.n_layers):
        step = attention_step(adapter, acts, layer, 0, n - 1)
        scores = step.scores * adapter.d_head**-0.5
        w = scores.masked_fill(plain[n - 1], float("-inf")).softmax(-1)
        moved = max(moved, float((w - acts.attentions[layer, 0, n - 1]).abs().max()))
    assert moved > 1e-2, name


def test_walkthrough_recomputes_the_models_attention(tiny):
    """Every layer, head and token: the walkthrough's weights, z and output are the model's own."""
    name, _, adapter = tiny
    acts = capture(adapter, IDS)
    for layer in range(adapter.n_layers):
        for head in range(adapter.n_heads):
            for token in (0, 5, IDS.shape[0] - 1):
                step = attention_step(adapter, acts, layer, head, token)
                assert step.matches_model(1e-5), (name, layer, head, token, step.checks)


def test_walkthrough_masks_what_the_window_hides(tiny):
    """The keys a sliding window leaves out are marked masked and get weight 0, in the model too."""
    name, model, adapter = tiny
    acts = capture(adapter, IDS)
    n = IDS.shape[0]
    for layer in range(adapter.n_layers):
        window = adapter.attention_window(layer)
        step = attention_step(adapter, acts, layer, 1, n - 1)
        seen = torch.arange(n) > n - 1 - (window if window is not None else n)
        assert (step.masked == ~seen).all(), (name, layer)
        assert (acts.attentions[layer, 1, n - 1][~seen] == 0).all()
        assert ("sliding window" in step.formulas["scaled"]) == (window is not None)
    if name == "qwen2-window":
        assert [adapter.attention_window(l) for l in range(3)] == [None, 4, 4]
    if name == "mistral-window":
        assert [adapter.attention_window(l) for l in range(3)] == [3, 3, 3]


def test_gpt2_scale_options_are_read_per_layer():
    """scale_attn_by_inverse_layer_idx divides by layer + 1; scale_attn_weights=False drops 1/sqrt(d)."""
    inv = adapter_for(_model("gpt2-inverse-layer"))
    assert [inv.attention_scale(l) for l in range(3)] == pytest.approx([8**-0.5, 8**-0.5 / 2, 8**-0.5 / 3])
    flat = adapter_for(_model("gpt2-unscaled"))
    assert [flat.attention_scale(l) for l in range(3)] == [1.0, 1.0, 1.0]
    assert attention_step(flat, capture(flat, IDS), 0, 0, 3).formulas["scaled"] == "q·k (unscaled)"


def test_verify_passes(tiny):
    name, _, adapter = tiny
    result = verify_adapter(adapter, IDS, sample=8)
    assert result.passed, (name, [(c.identity, c.where) for c in result.failed])


def test_verify_fails_when_the_window_is_not_the_models(monkeypatch):
    """A window one key wider than the model's is caught on "attention probabilities"."""
    adapter = adapter_for(_model("mistral-window"))
    monkeypatch.setattr(type(adapter), "attention_window", lambda self, layer: 4)
    result = verify_adapter(adapter, IDS, sample=8, layers=[0])
    assert "attention probabilities" in {c.identity for c in result.failed}


def test_an_unmodelled_layer_type_is_refused_before_any_work():
    cfg = transformers.Qwen2Config(use_sliding_window=True, sliding_window=4, max_window_layers=1, **ROPE)
    cfg._attn_implementation = "eager"
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    model.config.layer_types = ["full_attention", "chunked_attention", "sliding_attention"]
    with pytest.raises(ModelError, match="'chunked_attention' is not modelled"):
        adapter_for(model)


def test_bidirectional_default_hides_padding_only_even_with_a_window():
    """causal=False lifts the causal mask and the window alike (the 4-D mask is used as given)."""
    adapter = adapter_for(_model("mistral-window"))
    acts = capture(adapter, IDS, causal=False)
    assert (acts.attentions > 0).all()
    step = attention_step(adapter, acts, 2, 0, 0, causal=False)
    assert not step.masked.any() and step.matches_model(1e-5)
    assert_close(step.weights, acts.attentions[2, 0, 0])


def test_a_stray_window_in_a_llama_config_means_nothing():
    """LlamaModel ignores sliding_window and layer_types: so does its adapter (the model's
    attention is the plain causal one, and verify passes)."""
    cfg = transformers.LlamaConfig(**ROPE)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = _perturb(transformers.LlamaForCausalLM(cfg), seed=11)
    model.config.sliding_window = 3
    model.config.layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
    adapter = adapter_for(model)
    assert [adapter.attention_window(l) for l in range(3)] == [None, None, None]
    assert verify_adapter(adapter, IDS, sample=8, layers=[0]).passed
