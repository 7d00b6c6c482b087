"""What is particular to the GPT-NeoX, Gemma and Phi adapters, proven on tiny random models.

Every SPEC identity for these families runs in ``test_parity_decoders.py`` (its ``FAMILIES``
includes them, built by :func:`tiny_model`). Here: the facts those shared checks rely on,
each against a hand-computed or model-module reference, the parallel-residual meaning of
the sites, the walkthrough on each family, and what is refused.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from test_parity_decoders import FAMILIES, _outputs_of, tiny_model
from tokentrail.adapters import adapter_for, decoder_model_types, supported_model_types
from tokentrail.engine.capture import capture
from tokentrail.engine.walkthrough import attention_step, projection_formula
from tokentrail.spec.errors import ModelError

RTOL, ATOL = 1e-4, 1e-5
NEW = ("gpt_neox", "gpt_neox_seq", "gemma", "phi")
IDS = torch.tensor([5, 17, 42, 8, 17, 63, 2, 91, 30])


@pytest.fixture(scope="module", params=NEW)
def tiny(request):
    model = tiny_model(request.param)
    return request.param, model, adapter_for(model)


def test_registered_as_decoders():
    assert set(NEW) <= set(FAMILIES)
    for model_type in ("gpt_neox", "gemma", "phi"):
        assert model_type in supported_model_types() and model_type in decoder_model_types()


def test_partial_rotary_rotates_only_the_leading_dims(tiny):
    family, model, adapter = tiny
    factor = {"gemma": 1.0, "phi": 0.5}.get(family, 0.25)
    rot = adapter.rotary(0)
    assert rot.rotary_dim == int(adapter.d_head * factor)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, adapter.d_head, generator=g)
    pos = torch.tensor([0, 3, 9, 30])
    y = rot(x, pos)
    rd = rot.rotary_dim
    assert_close(y[..., rd:], x[..., rd:], rtol=0, atol=0)  # pass-through dims untouched
    assert (y[1:, :, :rd] - x[1:, :, :rd]).abs().max() > 1e-3  # the rotary ones move
    assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=RTOL, atol=ATOL)  # a rotation
    # pair (i, i + rd/2) at position p turns by p * theta^(-2i/rd), the inv_freq of RoPE
    theta = model.config.rope_parameters["rope_theta"]
    i, p = 1, 9
    ang = p * theta ** (-2 * i / rd)
    a, b = x[2, 0, i], x[2, 0, i + rd // 2]
    c, s = torch.cos(torch.tensor(ang)), torch.sin(torch.tensor(ang))
    assert_close(y[2, 0, i], a * c - b * s, rtol=RTOL, atol=ATOL)
    assert_close(y[2, 0, i + rd // 2], b * c + a * s, rtol=RTOL, atol=ATOL)


def test_gemma_folds_its_scale_and_norm():
    model = tiny_model("gemma")
    adapter = adapter_for(model)
    raw = model.model.embed_tokens.weight
    assert_close(adapter.embedding_table(), raw * model.config.hidden_size**0.5, rtol=1e-6, atol=0)
    ln = model.model.layers[1].input_layernorm
    norm = adapter.attn_input_norm(1)
    assert_close(norm.weight, 1 + ln.weight, rtol=0, atol=0)
    x = torch.randn(3, adapter.d_model)
    want = x / x.pow(2).mean(-1, keepdim=True).add(ln.eps).sqrt() * (1 + ln.weight)  # by hand
    assert_close(norm(x), want.detach(), rtol=RTOL, atol=ATOL)
    assert adapter.d_head == 12 != adapter.d_model // adapter.n_heads and adapter.n_kv_heads == 1
    assert adapter.vocab_size == raw.shape[0]


def test_gpt_neox_fused_projection_is_interleaved_per_head():
    model = tiny_model("gpt_neox")
    adapter = adapter_for(model)
    w = model.gpt_neox.layers[0].attention.query_key_value.weight
    H, dh = adapter.n_heads, adapter.d_head
    # head 1's key rows are rows [1*3dh + dh, 1*3dh + 2dh) of the fused weight
    assert_close(adapter.projection(0, "k").weight[1], w[3 * dh + dh : 3 * dh + 2 * dh].detach(), rtol=0, atol=0)
    assert_close(adapter.projection(0, "v").weight[H - 1], w[-dh:].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt_neox", "phi"])
def test_parallel_residual_sites(family):
    """attn_resid = h_l + attn_l; attn_resid_ln = the MLP's input, its norm of h_l (not of attn_resid);
    h_{l+1} = h_l + attn_l + mlp_l."""
    model = tiny_model(family)
    adapter = adapter_for(model)
    mlps = {str(l): model.base_model.layers[l].mlp for l in range(adapter.n_layers)}
    with _outputs_of(mlps) as mlp_out:
        acts = capture(adapter, IDS)
    layers = model.base_model.layers
    for layer in range(adapter.n_layers):
        norm = layers[layer].input_layernorm if family == "phi" else layers[layer].post_attention_layernorm
        h = acts.layer_in[layer]
        with torch.no_grad():
            assert_close(acts.attn_resid_ln[layer], norm(h), rtol=RTOL, atol=ATOL)
        assert (acts.attn_resid_ln[layer] - acts.attn_resid[layer]).abs().max() > 1e-2
        assert_close(acts.attn_resid[layer], h + acts.attn[layer], rtol=0, atol=0)
        assert_close(h + acts.attn[layer] + mlp_out[str(layer)], acts.layer_out[layer], rtol=RTOL, atol=ATOL)


def test_sequential_gpt_neox_keeps_spec_pre_ln_rule():
    adapter = adapter_for(tiny_model("gpt_neox_seq"))
    acts = capture(adapter, IDS)
    assert_close(acts.attn_resid_ln, acts.attn_resid, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_walkthrough_recomputes_the_models_attention(tiny, causal):
    _, _, adapter = tiny
    acts = capture(adapter, IDS, causal=causal)
    for layer in range(adapter.n_layers):
        for head in sorted({0, adapter.n_heads - 1}):
            for token in (0, 4, len(IDS) - 1):
                step = attention_step(adapter, acts, layer, head, token, causal=causal)
                assert step.matches_model(ATOL), (layer, head, token, step.checks)
                assert_close(step.weights, acts.attentions[layer, head, token], rtol=0, atol=ATOL)


def test_walkthrough_formulas_say_what_the_model_does():
    formulas = {
        f: {w: projection_formula(adapter_for(tiny_model(f)), 0, w) for w in "qkv"}
        for f in ("gpt2", "mistral", "qwen2", "gpt_neox", "phi", "gemma")
    }
    assert formulas["gpt2"] == {"q": "q = W_Q x + b_Q", "k": "k = W_K x + b_K", "v": "v = W_V x + b_V"}
    assert formulas["mistral"] == {
        "q": "q = RoPE_{p_t}(W_Q x)",
        "k": "k = RoPE_{p_s}(W_K x)",
        "v": "v = W_V x",
    }  # no biases
    assert formulas["qwen2"]["q"] == "q = RoPE_{p_t}(W_Q x + b_Q)"
    assert formulas["gpt_neox"]["k"] == "k = RoPE_{p_s}[0:4 of 16](W_K x + b_K)"  # 25% of d_head 16
    assert formulas["phi"]["q"] == "q = RoPE_{p_t}[0:4 of 8](W_Q x + b_Q)"  # 50% of d_head 8
    assert formulas["gemma"]["v"] == "v = W_V x + b_V" and formulas["gemma"]["q"] == "q = RoPE_{p_t}(W_Q x + b_Q)"
    adapter = adapter_for(tiny_model("llama"))
    step = attention_step(adapter, capture(adapter, IDS), 0, 0, 3)
    assert step.formulas["q"] == "q = RoPE_{p_t}(W_Q x + b_Q)"  # this tiny Llama has attention_bias=True


def test_walkthrough_page_text_shows_rope():
    from tokentrail.app.render import step_summary

    class _Trail:  # step_summary reads only tokens and n_heads
        tokens = [str(i) for i in IDS.tolist()]
        n_heads = 6

    adapter = adapter_for(tiny_model("mistral"))
    step = attention_step(adapter, capture(adapter, IDS), 1, 2, 4)
    text = step_summary(_Trail(), step)
    assert "`q = RoPE_{p_t}(W_Q x)`" in text and "`k = RoPE_{p_s}(W_K x)`" in text and "b_Q" not in text
    assert "No norm here" in text and not step.parallel
    adapter = adapter_for(tiny_model("phi"))
    step = attention_step(adapter, capture(adapter, IDS), 1, 2, 4)
    text = step_summary(_Trail(), step)
    assert step.parallel and "Parallel feed-forward" in text and "[0:4 of 8]" in text and "b_Q" in text


def test_phi_qk_layernorm_is_refused():
    cfg = transformers.PhiConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=1,
        intermediate_size=40,
        vocab_size=50,
        qk_layernorm=True,
    )
    cfg._attn_implementation = "eager"
    with pytest.raises(ModelError, match="qk_layernorm"):
        adapter_for(transformers.PhiForCausalLM(cfg).eval())
