"""The app's two per-click library functions, proved against the model's own numbers.

* ``walkthrough.attention_step`` recomputes one head's attention for one token from the
  captured layer input and the adapter's projections: its softmax weights must equal the
  model's attention probabilities, its ``z`` the captured per-head vector, its output the
  attention sublayer's output, its residual ``attn_resid`` and (post-LN) its LayerNorm
  the FFN's input.
* ``analysis.heads_at`` computes the ``heads`` site for one layer and token; it must equal
  ``analyse(sites=["heads"])`` at that layer and token.

Tiny random models of every family for breadth (fp32, eager attention); the bundled
MiniLM for truth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.analysis.heads import heads_at
from tokentrail.engine.capture import capture
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.walkthrough import attention_step
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions

ATOL = 1e-5  # fp32, tiny models; the bundled model is checked at 1e-4


def tiny(family: str):
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaModel,
    )

    torch.manual_seed(0)
    if family == "bert":
        cfg = BertConfig(
            vocab_size=97,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
        )
        model = BertModel(cfg, add_pooling_layer=False)
    elif family == "roberta":
        cfg = RobertaConfig(
            vocab_size=97,
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=48,
            max_position_embeddings=70,
            pad_token_id=1,
        )
        model = RobertaModel(cfg, add_pooling_layer=False)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=97, n_embd=24, n_layer=2, n_head=4, n_positions=64)
        model = GPT2LMHeadModel(cfg)
    elif family == "llama":  # grouped-query attention, RoPE, and q/k/v biases (as Qwen2 has)
        cfg = LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            attention_bias=True,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(family)
    model.config._attn_implementation = "eager"
    return adapter_for(_perturb(model).eval())


@torch.no_grad()
def _perturb(model, seed: int = 0):
    """Random inits leave norm gains at 1 and biases at 0, which would hide a missing
    gamma/beta/bias term: make every 1-D parameter non-trivial."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            noise = torch.randn(p.shape, generator=g)
            p.copy_(0.2 * noise if name.endswith("bias") else 1 + 0.3 * noise)
    return model


IDS = torch.tensor([5, 17, 42, 8, 17, 63, 2, 91, 30])


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_attention_step_matches_the_model(family):
    adapter = tiny(family)
    modes = [True, False] if adapter.is_decoder else [None]
    for causal in modes:
        acts = capture(adapter, IDS, causal=causal)
        for layer in range(adapter.n_layers):
            for head in sorted({0, adapter.n_heads - 1}):
                for token in (0, 4, len(IDS) - 1):
                    step = attention_step(adapter, acts, layer, head, token, causal=causal)
                    assert step.matches_model(ATOL), (family, causal, layer, head, token, step.checks)
                    torch.testing.assert_close(step.weights, acts.attentions[layer, head, token], rtol=0, atol=ATOL)
                    torch.testing.assert_close(step.z, acts.z[layer, token, head], rtol=0, atol=ATOL)
                    assert abs(float(step.weights.sum()) - 1) < 1e-5
                    if causal:
                        assert bool(step.masked[token + 1 :].all()) and not bool(step.masked[: token + 1].any())
                        assert float(step.weights[token + 1 :].abs().sum()) == 0.0
                    # the scaled scores are the scores over sqrt(d_head), where unmasked
                    keep = ~step.masked
                    torch.testing.assert_close(step.scaled[keep], step.scores[keep] / step.d_head**0.5)
        post_ln = adapter.norm_placement == "post"
        assert ("LayerNorm (attn_resid_ln)" in step.checks) == post_ln
        assert (step.normed is not None) == post_ln


def test_attention_step_knows_its_grouped_key_value_head():
    adapter = tiny("llama")
    acts = capture(adapter, IDS)
    step = attention_step(adapter, acts, 1, 3, 5)
    assert step.kv_head == int(adapter.kv_heads()[3]) == 1


def test_attention_step_refuses_out_of_range():
    adapter = tiny("bert")
    acts = capture(adapter, IDS)
    for args, msg in (((2, 0, 0), "layer 2"), ((0, 4, 0), "head 4"), ((0, 0, 9), "token index 9")):
        with pytest.raises(InputError, match=msg):
            attention_step(adapter, acts, *args)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
@pytest.mark.parametrize("kind", ["value", "key", "query"])
@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_heads_at_equals_the_full_analysis(family, kind, similarity):
    adapter = tiny(family)
    spaces = SpaceCache(adapter)
    trail = analyse(
        adapter,
        spaces,
        IDS,
        text="",
        tokens=[str(i) for i in IDS.tolist()],
        special=[False] * len(IDS),
        label=lambda ids: {i: str(i) for i in ids},
        model_name=family,
        options=TraceOptions(sites=("heads",), spaces=(kind,), similarities=(similarity,), k=7),
    )
    view = trail.view("heads", kind, similarity)
    acts = capture(adapter, IDS)
    # euclidean: -sqrt(|a|^2 - 2a.b + |b|^2) amplifies fp32 rounding near distance 0
    atol = 1e-3 if similarity == "euclidean" else 1e-6
    for layer in range(adapter.n_layers):
        for token in (0, 3, len(IDS) - 1):
            got = heads_at(adapter, spaces, acts, layer, token, kind=kind, similarity=similarity, k=7)
            np.testing.assert_array_equal(got.top_ids, view.top_ids[layer, :, token])
            np.testing.assert_allclose(got.top_sims, view.top_sims[layer, :, token], rtol=1e-5, atol=atol)
            np.testing.assert_array_equal(got.rank, view.rank[layer, :, token])
            np.testing.assert_allclose(got.self_sim, view.self_sim[layer, :, token], rtol=1e-5, atol=atol)
            np.testing.assert_allclose(got.attention, trail.attentions[layer, :, token])
            assert got.own_id == int(IDS[token]) and set(got.labels) >= {int(i) for i in got.top_ids.ravel()}


@pytest.mark.slow
def test_bundled_model_walkthrough_and_heads():
    import tokentrail as tt
    from tokentrail.session.inputs import encode

    loaded = tt.load("minilm")
    text = "Time flies like an arrow. Fruit flies like a banana."
    enc = encode(loaded, text)
    acts = capture(loaded.adapter, enc.ids)
    for layer in range(loaded.adapter.n_layers):
        for head in (0, 5, 11):
            step = attention_step(loaded.adapter, acts, layer, head, 2)
            assert step.matches_model(1e-4), (layer, head, step.checks)
    trail = tt.trace(text, loaded, site="heads", space="value")
    view = trail.view("heads", "value")
    for layer in (0, 3, 5):
        got = heads_at(loaded.adapter, loaded.spaces, acts, layer, 2, label=loaded.labels)
        np.testing.assert_array_equal(got.top_ids, view.top_ids[layer, :, 2])
        np.testing.assert_array_equal(got.rank, view.rank[layer, :, 2])
        assert got.labels[int(got.top_ids[0, 0])] == trail.labels[int(view.top_ids[layer, 0, 2, 0])]
