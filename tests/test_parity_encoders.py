"""Parity: every SPEC identity for post-LN encoders, checked against the model's own
modules and outputs (hooked independently of tokentrail's capture), on tiny random
BERT / BERT-MLM / RoBERTa / XLM-R models and on the bundled MiniLM (slow).

Tolerance: fp32, 1e-4 relative (SPEC); the absolute floor only covers values near 0.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.engine.capture import capture
from tokentrail.engine.metrics import similarity
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import build_space
from tokentrail.spec.options import TraceOptions

RTOL, ATOL = 1e-4, 1e-5


def close(actual, expected, atol: float = ATOL):
    assert_close(actual.double(), expected.double(), rtol=RTOL, atol=atol)


# ---- subjects: (model, adapter, ids) -------------------------------------------------------
@pytest.fixture(
    scope="module", params=["bert", "bert_mlm", "roberta", "xlmr", pytest.param("minilm", marks=pytest.mark.slow)]
)
def subject(request, tiny_models, make_ids):
    if request.param == "minilm":
        loaded = request.getfixturevalue("minilm")
        ids = torch.tensor(loaded.tokenizer("Time flies like an arrow. Fruit flies like a banana.")["input_ids"])
        return request.param, loaded.adapter.model, loaded.adapter, ids
    model = tiny_models[request.param]
    adapter = adapter_for(model)
    return request.param, model, adapter, make_ids(adapter)


@contextmanager
def hooked(model):
    """Record what the model's own modules see and produce, independently of tokentrail."""
    base = model.base_model
    rec: dict[str, list] = {k: [] for k in ("q", "k", "v", "dense_in", "dense_out", "ffn_in", "pos_ids")}

    def out(key):
        return lambda m, a, o: rec[key].append(o[0].detach())

    def inp(key):
        return lambda m, a: rec[key].append(a[0][0].detach())

    hs = [base.embeddings.position_embeddings.register_forward_pre_hook(inp("pos_ids"))]
    for lay in base.encoder.layer:
        att = lay.attention
        hs += [
            att.self.query.register_forward_hook(out("q")),
            att.self.key.register_forward_hook(out("k")),
            att.self.value.register_forward_hook(out("v")),
            att.output.dense.register_forward_pre_hook(inp("dense_in")),
            att.output.dense.register_forward_hook(out("dense_out")),
            lay.intermediate.register_forward_pre_hook(inp("ffn_in")),
        ]
    try:
        yield rec
    finally:
        for h in hs:
            h.remove()


@pytest.fixture(scope="module")
def run(subject):
    """The model run the plain way (its own position rule, no position ids passed) + capture."""
    name, model, adapter, ids = subject
    with torch.no_grad(), hooked(model) as rec:
        out = model(input_ids=ids[None], output_hidden_states=True, output_attentions=True)
    acts = capture(adapter, ids)
    return name, model, adapter, ids, out, rec, acts


def own_hidden(out):
    return [h[0] for h in out.hidden_states]


# ---- the original encoding ------------------------------------------------------------------
def test_original_encoding_is_hidden_state_0(run):
    _, model, adapter, ids, out, rec, acts = run
    h0 = own_hidden(out)[0]
    close(acts.embedded, h0)
    close(adapter.embed(ids, acts.position_ids), h0)
    emb = model.base_model.embeddings  # brute force with the model's own modules
    with torch.no_grad():
        by_hand = emb.LayerNorm(
            emb.word_embeddings.weight[ids]
            + emb.position_embeddings.weight[acts.position_ids]
            + emb.token_type_embeddings.weight[0]
        )
    close(h0, by_hand)


def test_position_ids_are_the_models_own(run):
    name, model, adapter, ids, out, rec, acts = run
    used = rec["pos_ids"][0]
    assert torch.equal(adapter.position_ids(ids), used)
    assert torch.equal(acts.position_ids, used)
    if name in ("roberta", "xlmr"):
        pad = model.base_model.embeddings.padding_idx
        assert torch.equal(used, torch.arange(len(ids)) + pad + 1)
        assert adapter.max_tokens == model.config.max_position_embeddings - pad - 1
    else:
        assert torch.equal(used, torch.arange(len(ids)))
        assert adapter.max_tokens == model.config.max_position_embeddings


@pytest.mark.parametrize("pad", [1, 4])
def test_roberta_positions_follow_padding_idx(pad, make_tiny):
    # no hard-coded offset: positions start at padding_idx + 1 whatever padding_idx is
    model = make_tiny("roberta", seed=3, pad_token_id=pad)
    adapter = adapter_for(model)
    ids = torch.tensor([0, 9, 10, 11, 2])
    assert adapter.position_ids(ids).tolist() == list(range(pad + 1, pad + 6))
    acts = capture(adapter, ids)
    with torch.no_grad():
        h0 = model(input_ids=ids[None], output_hidden_states=True).hidden_states[0][0]
    close(acts.embedded, h0)


# ---- attention ----------------------------------------------------------------------------------
def test_heads_through_output_projection_give_attn(run):
    """concat_h(z) @ W_O + b_O == attn_l == the output dense module's own output."""
    _, model, adapter, ids, out, rec, acts = run
    for layer in range(adapter.n_layers):
        w_o, b_o = adapter.output_projection(layer)  # (H, dh, d), (d,)
        attn = torch.einsum("nhk,hkd->nd", acts.z[layer], w_o) + b_o
        close(attn, rec["dense_out"][layer])
        close(acts.attn[layer], rec["dense_out"][layer])
        close(acts.z[layer].reshape(len(ids), -1), rec["dense_in"][layer])


def test_z_is_attention_weighted_values(run):
    """z_{l,h,t} = sum_s A[t, s] value_{l,h}(s), values from the adapter's projection,
    which must equal the model's own ``value`` Linear output (and likewise q, k)."""
    _, model, adapter, ids, out, rec, acts = run
    n, H, dh = len(ids), adapter.n_heads, adapter.d_head
    hidden = own_hidden(out)
    for layer in range(adapter.n_layers):
        for which in ("q", "k", "v"):
            proj = adapter.projection(layer, which)
            assert proj.weight.shape == (H, dh, adapter.d_model)
            close(proj(hidden[layer]), rec[which][layer].view(n, H, dh))
        A = out.attentions[layer][0]  # (H, n, n) the model's own probabilities
        close(acts.attentions[layer], A)
        values = adapter.projection(layer, "v")(hidden[layer])  # (n, H, dh)
        z = torch.einsum("hts,shk->thk", A, values)
        close(acts.z[layer], z)


def test_layer_out_is_hidden_state(run):
    _, model, adapter, ids, out, rec, acts = run
    hidden = own_hidden(out)
    assert acts.layer_out.shape[0] == adapter.n_layers == len(hidden) - 1
    for layer in range(adapter.n_layers):
        close(acts.layer_out[layer], hidden[layer + 1])
        close(acts.layer_in[layer], hidden[layer])
        close(acts.site("layer_out")[layer], hidden[layer + 1])


def test_attn_resid_and_its_norm_are_what_the_ffn_receives(run):
    _, model, adapter, ids, out, rec, acts = run
    hidden = own_hidden(out)
    layers = model.base_model.encoder.layer
    for layer in range(adapter.n_layers):
        resid = hidden[layer] + rec["dense_out"][layer]
        close(acts.attn_resid[layer], resid)
        with torch.no_grad():
            own_ln = layers[layer].attention.output.LayerNorm(resid)
        close(adapter.attn_resid_norm(layer)(resid), own_ln)
        close(acts.attn_resid_ln[layer], own_ln)
        close(acts.attn_resid_ln[layer], rec["ffn_in"][layer])


def test_lens_head_is_the_models_own_output_head(run):
    name, model, adapter, ids, out, rec, acts = run
    head = adapter.lens_head()
    if name != "bert_mlm":
        assert head is None and "masked-LM head" in adapter.lens_unavailable_reason()
        return
    close(head(acts.layer_out[-1]), out.logits[0], atol=1e-4)


# ---- the encodings space holds e_t ------------------------------------------------------------------
def test_encodings_row_of_own_token_is_e_t(run):
    _, model, adapter, ids, out, rec, acts = run
    space = build_space(adapter, "encodings")
    for t, (v, p) in enumerate(zip(ids.tolist(), acts.position_ids.tolist())):
        close(space.rows(torch.tensor([v]), p)[0, 0], acts.embedded[t])
    # and through the factorised dots: e_t's cosine with its own row is 1, rank 0
    stats = space.position_stats(acts.position_ids)
    dots = space.dots(acts.embedded[:, None], stats, torch.arange(len(ids)))[:, 0]
    own = dots.gather(1, ids[:, None])[:, 0]
    cos = own / (acts.embedded.pow(2).sum(-1) * stats.sq_norm[torch.arange(len(ids)), 0, ids]).sqrt()
    close(cos, torch.ones(len(ids)))


# ---- end to end: analyse against a brute-force computation --------------------------------------------
def _brute_rows(model, adapter, position: int, layer: int | None = None) -> torch.Tensor:
    """All V rows of ``encodings`` (layer None: (V, d)) or ``value@layer`` ((V, H, dh)) at ``position``,
    built with the model's own modules, in float64."""
    emb = model.base_model.embeddings
    with torch.no_grad():
        enc = emb.LayerNorm(
            emb.word_embeddings.weight + emb.position_embeddings.weight[position] + emb.token_type_embeddings.weight[0]
        )
        if layer is None:
            return enc.double()
        val = model.base_model.encoder.layer[layer].attention.self.value(enc)
    return val.view(-1, adapter.n_heads, adapter.d_head).double()


def _brute_metrics(r: torch.Tensor, rows: torch.Tensor, own: int, kind: str, K: int):
    """self_sim, rank and top-K of one vector against all rows, by full stable sort."""
    s = similarity(r.double()[None], rows, kind)[0]  # (V,)
    order = torch.sort(-s, stable=True).indices  # ties: lower id first
    return s[own].item(), int((s > s[own]).sum()), order[:K]


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_analyse_equals_brute_force(family, kind, tiny_models, make_ids):
    model = tiny_models[family]
    adapter = adapter_for(model)
    ids = make_ids(adapter, n=7, seed=5)
    k, ok = 5, 12
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        ids,
        text="t",
        tokens=[str(i) for i in ids.tolist()],
        special=[False] * len(ids),
        label=lambda vs: {int(v): str(v) for v in vs},
        model_name=family,
        options=TraceOptions(
            sites=("attn_resid", "attn_resid_ln", "layer_out", "heads"),
            spaces=("encodings", "value"),
            similarities=(kind,),
            k=k,
            overlap_k=ok,
        ),
    )
    with torch.no_grad(), hooked(model) as rec:
        out = model(input_ids=ids[None], output_hidden_states=True, output_attentions=True)
    hidden = own_hidden(out)
    L, n = adapter.n_layers, len(ids)
    positions = adapter.position_ids(ids).tolist()
    enc_rows = {p: _brute_rows(model, adapter, p) for p in set(positions)}
    sites = {
        "attn_resid": [hidden[l] + rec["dense_out"][l] for l in range(L)],
        "attn_resid_ln": rec["ffn_in"],
        "layer_out": hidden[1:],
    }
    for site, vecs in sites.items():
        v = trail.view(site, "encodings", kind)
        for t in range(n):
            rows, own = enc_rows[positions[t]], int(ids[t])
            _, _, prev = _brute_metrics(hidden[0][t], rows, own, kind, ok)  # layer 0 compares with e_t
            if site == "attn_resid":
                assert v.origin_top_ids[t].tolist() == prev[:k].tolist()
            for layer in range(L):
                s, rank, top = _brute_metrics(vecs[layer][t], rows, own, kind, ok)
                assert v.rank[layer, t] == rank, (site, layer, t)
                assert v.top_ids[layer, t].tolist() == top[:k].tolist(), (site, layer, t)
                assert v.overlap[layer, t] == len(set(top.tolist()) & set(prev.tolist()))
                assert v.self_sim[layer, t] == pytest.approx(s, rel=RTOL, abs=ATOL)
                prev = top
        aniso = [
            np.mean(
                [
                    similarity(x[None], y[None], kind).item()
                    for i, x in enumerate(vecs[l])
                    for j, y in enumerate(vecs[l])
                    if i != j
                ]
            )
            for l in range(L)
        ]
        assert v.anisotropy.tolist() == pytest.approx(aniso, rel=RTOL, abs=ATOL)
    # heads: z (recomputed from the model's attention and its own value outputs) vs value@l,h
    v = trail.view("heads", "value", kind)
    assert v.rank.shape == (L, adapter.n_heads, n)
    for layer in range(L):
        vals = rec["v"][layer].view(n, adapter.n_heads, adapter.d_head)
        z = torch.einsum("hts,shk->thk", out.attentions[layer][0], vals)
        for p in set(positions):
            rows = _brute_rows(model, adapter, p, layer)
            for t in [t for t in range(n) if positions[t] == p]:
                for h in range(adapter.n_heads):
                    s, rank, top = _brute_metrics(z[t, h], rows[:, h], int(ids[t]), kind, k)
                    assert v.rank[layer, h, t] == rank, (layer, h, t)
                    assert v.top_ids[layer, h, t].tolist() == top.tolist(), (layer, h, t)
                    assert v.self_sim[layer, h, t] == pytest.approx(s, rel=RTOL, abs=ATOL)


def test_analyse_tie_rules_on_duplicated_vocabulary_rows(make_tiny):
    """Two vocabulary ids with identical embedding rows tie in every position's encodings:
    the token's own rank does not count its twin, and top-k lists the lower id first."""
    model = make_tiny("bert", seed=11)
    low, high = 20, 40
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[low] = model.embeddings.word_embeddings.weight[high]
    adapter = adapter_for(model)
    ids = torch.tensor([2, high, 7, low, 9])
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        ids,
        text="t",
        tokens=[str(i) for i in ids.tolist()],
        special=[False] * 5,
        label=lambda vs: {int(v): str(v) for v in vs},
        model_name="tie",
        options=TraceOptions(
            sites=("attn_resid", "layer_out"), similarities=("cosine", "euclidean"), k=96, overlap_k=96
        ),
    )
    for view in trail.views:
        for layer in range(adapter.n_layers):
            for t in (1, 3):  # the twins themselves
                top = view.top_ids[layer, t].tolist()
                i_low, i_high = top.index(low), top.index(high)
                assert i_high == i_low + 1, "twins must sit side by side, lower id first"
                assert view.top_sims[layer, t, i_low] == view.top_sims[layer, t, i_high]
                # the rank counts strictly better rows: the twin never counts
                assert view.rank[layer, t] == top.index(int(ids[t])) - (1 if t == 1 else 0)
