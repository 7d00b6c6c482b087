"""Issue 23's encoder families (DistilBERT, ELECTRA, ModernBERT) and mBART, proven on the
tiny random models of ``tests/tiny_models.py`` (seeded; every norm, bias and matrix
perturbed, so a missing term fails).

Against Hugging Face's own modules, hooked independently of tokentrail's capture: the
embedding stage (ELECTRA's projection included), each layer's q/k/v maps, the attention
probabilities (ModernBERT's local windows and per-type RoPE), the output projection,
every hidden state, the value/key/query/encodings spaces against rows built with the
model's modules, and the logit lens at every layer. ``verify`` passes on each and fails
when one module is broken (a 1.01x attention output) or one fact of the adapter is
wrong. mBART's head spaces (two LayerNorms around a position-dependent sum) factorise
too, proven against its own modules and brute-force ranks; ``site="all", space="all"``
traces every family (ELECTRA with a projected embedding leaves out ``embeddings``, which
is refused alone in one line).
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import tiny_models
from test_parity_decoders import _check_space, _outputs_of
from test_parity_encoders import _brute_metrics
from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.engine.capture import capture
from tokentrail.engine.capture_cross import capture_cross
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import build_space, space_refusal
from tokentrail.engine.walkthrough import attention_step
from tokentrail.session.verification import verify_adapter, verify_seq2seq
from tokentrail.spec.errors import ModelError
from tokentrail.spec.options import TraceOptions

RTOL, ATOL = 1e-4, 1e-5
IDS = torch.tensor([0, 17, 22, 8, 17, 33, 5, 31, 12, 9, 2])
TGT = torch.tensor([2, 0, 14, 8, 25, 8])
ENCODERS = ("distilbert", "electra", "electra_disc", "modernbert")


def _build(name: str) -> torch.nn.Module:
    if name == "electra_disc":  # the discriminator: no vocabulary head
        import transformers

        cfg = transformers.AutoConfig.for_model("electra", **tiny_models.TINY["electra"].config)
        torch.manual_seed(0)
        model = transformers.ElectraForPreTraining(cfg)
        model.set_attn_implementation("eager")
        return tiny_models.perturb(model, 101)
    return tiny_models.build(name)


@pytest.fixture(scope="module", params=ENCODERS)
def enc(request):
    model = _build(request.param)
    return request.param, model, adapter_for(model)


# ---- the model's own modules, per family ------------------------------------------------------
def _parts(name: str, model):
    """(base, layers, {q,k,v module or fused}, out module, hidden -> attention input) of a family."""
    base = model.base_model
    if name == "distilbert":
        layers = base.transformer.layer
        return (
            base,
            layers,
            lambda l: (layers[l].attention.q_lin, layers[l].attention.k_lin, layers[l].attention.v_lin),
            lambda l: layers[l].attention.out_lin,
            lambda l, h: h,
        )
    if name.startswith("electra"):
        layers = base.encoder.layer
        return (
            base,
            layers,
            lambda l: (layers[l].attention.self.query, layers[l].attention.self.key, layers[l].attention.self.value),
            lambda l: layers[l].attention.output.dense,
            lambda l, h: h,
        )
    layers = base.layers  # modernbert: one fused Wqkv, split by tokentrail's rule in the test below
    return (
        base,
        layers,
        lambda l: (layers[l].attn.Wqkv,),
        lambda l: layers[l].attn.Wo,
        lambda l, h: layers[l].attn_norm(h),
    )


def _own_embedding(name: str, model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Emb(v, p) for each (id, position) with the model's own modules, by hand."""
    base = model.base_model
    emb = base.embeddings
    if name == "modernbert":
        return emb.norm(emb.tok_embeddings(ids))
    x = emb.word_embeddings(ids) + emb.position_embeddings(positions)
    if name == "distilbert":
        return emb.LayerNorm(x)
    x = emb.LayerNorm(x + emb.token_type_embeddings.weight[0])
    return base.embeddings_project(x) if hasattr(base, "embeddings_project") else x


def test_every_identity_holds(enc):
    name, _, adapter = enc
    result = verify_adapter(adapter, IDS, sample=8)
    assert result.passed, result.frame().to_string()
    na = {r.identity for r in result.rows if r.passed is None}
    if name == "electra_disc":
        assert "lens = logits" in na and "discriminator" in result.row("lens = logits").note
    else:
        assert result.row("lens = logits").passed
    assert result.row("value/key/query spaces").passed


def test_against_the_models_own_modules(enc):
    """hidden states, q/k/v, attention probabilities, z through the output projection."""
    name, model, adapter = enc
    _, layers, qkv, out_mod, attn_in = _parts(name, model)
    H, dh, n = adapter.n_heads, adapter.d_head, len(IDS)
    watched = {f"{l}.{i}": m for l in range(adapter.n_layers) for i, m in enumerate(qkv(l))}
    outs = {f"{l}.o": out_mod(l) for l in range(adapter.n_layers)}
    with torch.no_grad(), _outputs_of({**watched, **outs}) as got, _outputs_of(outs, inputs=True) as got_in:
        own = model.base_model(input_ids=IDS[None], output_hidden_states=True, output_attentions=True)
    acts = capture(adapter, IDS)
    hidden = [h[0] for h in own.hidden_states]
    with torch.no_grad():
        assert_close(acts.embedded, _own_embedding(name, model, IDS, torch.arange(n)), rtol=RTOL, atol=ATOL)
    assert_close(acts.embedded, hidden[0], rtol=RTOL, atol=ATOL)
    for layer in range(adapter.n_layers):
        with torch.no_grad():
            x = attn_in(layer, hidden[layer])
        if name == "modernbert":
            fused = got[f"{layer}.0"].view(n, 3, H, dh)
            mine = [adapter.projection(layer, w)(x) for w in "qkv"]
            for i in range(3):
                assert_close(mine[i], fused[:, i], rtol=RTOL, atol=ATOL)
        else:
            for i, w in enumerate("qkv"):
                assert_close(adapter.projection(layer, w)(x), got[f"{layer}.{i}"].view(n, H, dh), rtol=RTOL, atol=ATOL)
        assert_close(acts.attentions[layer], own.attentions[layer][0], rtol=RTOL, atol=ATOL)
        assert_close(acts.z[layer].reshape(n, -1), got_in[f"{layer}.o"], rtol=RTOL, atol=ATOL)
        w_o, b_o = adapter.output_projection(layer)
        attn = torch.einsum("nhk,hkd->nd", acts.z[layer], w_o) + (0 if b_o is None else b_o)
        assert_close(attn, got[f"{layer}.o"], rtol=RTOL, atol=ATOL)
        last = layer == adapter.n_layers - 1 and name == "modernbert"  # the framework's last is after final_norm
        with torch.no_grad():
            mine = adapter.final_norm()(acts.layer_out[layer]) if last else acts.layer_out[layer]
        assert_close(mine, hidden[layer + 1], rtol=RTOL, atol=ATOL)


def test_lens_at_every_layer_is_the_models_own_head(enc):
    name, model, adapter = enc
    head = adapter.lens_head()
    if name == "electra_disc":
        assert head is None
        return
    acts = capture(adapter, IDS)
    with torch.no_grad():
        logits = model(input_ids=IDS[None]).logits[0]
        assert_close(head(acts.layer_out[-1]), logits, rtol=RTOL, atol=1e-4)
        for layer in range(adapter.n_layers):  # each layer through the head modules, by hand
            h = acts.layer_out[layer]
            if name == "distilbert":
                want = model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
            elif name == "electra":
                want = model.generator_lm_head(model.generator_predictions(h))
            else:
                want = model.decoder(model.head(model.model.final_norm(h)))
            assert_close(head(h), want, rtol=RTOL, atol=1e-4)


def test_spaces_are_rows_of_the_models_own_modules(enc):
    name, model, adapter = enc
    _, layers, qkv, _, attn_in = _parts(name, model)
    g = torch.Generator().manual_seed(3)
    V, H, dh = adapter.vocab_size, adapter.n_heads, adapter.d_head
    every = torch.arange(V)
    for p in (0, 6):
        pos = torch.tensor([p])
        with torch.no_grad():
            enc_rows = _own_embedding(name, model, every, torch.full((V,), p))
            _check_space(build_space(adapter, "encodings"), enc_rows.float()[None], pos, g, IDS[:4], 1e-4)
            for layer in range(adapter.n_layers):
                x = attn_in(layer, enc_rows)
                if name == "modernbert":
                    fused = qkv(layer)[0](x).view(V, 3, H, dh)
                    maps = {kind: fused[:, i] for i, kind in enumerate(("query", "key", "value"))}
                else:
                    maps = {kind: m(x).view(V, H, dh) for kind, m in zip(("query", "key", "value"), qkv(layer))}
                for kind, rows in maps.items():
                    rows = rows.float()
                    rot = adapter.rotary(layer) if kind != "value" else None
                    if rot is not None:
                        rows = rot(rows, torch.full((V,), p))
                    _check_space(build_space(adapter, kind, layer), rows.transpose(0, 1), pos, g, IDS[:4], 1e-4)


def test_a_broken_attention_output_fails_verify(enc):
    """A 1.01x scale on one layer's attention output: the model is no longer what the
    adapter's weights say, and verify must see it."""
    name, model, adapter = enc
    _, _, _, out_mod, _ = _parts(name, model)
    handle = out_mod(1).register_forward_hook(lambda m, a, o: o * 1.01)
    try:
        result = verify_adapter(adapter, IDS, sample=4, layers=[0])
    finally:
        handle.remove()
    assert "heads recombine" in {r.identity for r in result.failed}


# ---- what is particular to each family ----------------------------------------------------------
def test_distilbert_has_no_token_types_and_reads_its_position_table():
    model = tiny_models.build("distilbert", sinusoidal_pos_embds=True)
    adapter = adapter_for(model)
    assert_close(
        adapter.position_offset(torch.tensor([3])), model.distilbert.embeddings.position_embeddings.weight[[3]].detach()
    )
    assert verify_adapter(adapter, IDS, sample=4).passed


def test_electra_projection_is_modelled_and_the_embeddings_space_refused():
    model = tiny_models.build("electra")
    adapter = adapter_for(model)
    w, b = adapter.embedding_projection()
    assert w.shape == (32, 16) and adapter.embedding_table().shape[1] == 16
    why = space_refusal(adapter, "embeddings")
    assert why and "16 wide" in why and "\n" not in why
    with pytest.raises(ModelError, match="embeddings space does not apply"):
        build_space(adapter, "embeddings")
    broken = adapter_for(model)
    broken.embedding_projection = lambda: (w, None)  # forgets the projection's bias
    failed = {r.identity for r in verify_adapter(broken, IDS, sample=4, layers=[0]).failed}
    assert {"embedding", "encodings own rows", "value/key/query spaces"} <= failed
    # without a projection (embedding_size == hidden_size) every space is the plain BERT form
    same = adapter_for(tiny_models.build("electra", embedding_size=32))
    assert same.embedding_projection() is None and space_refusal(same, "embeddings") is None
    assert verify_adapter(same, IDS, sample=4).passed


@pytest.mark.parametrize("kind", ["cosine", "euclidean"])
def test_electra_projected_encodings_rank_equal_brute_force(kind):
    """Residual sites against the projected encodings (one group through the head-space
    path): rank, top-k and self_sim against all rows built with the model's own modules."""
    model = tiny_models.build("electra")
    adapter = adapter_for(model)
    k = 5
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        IDS,
        text="t",
        tokens=[str(i) for i in IDS.tolist()],
        special=[False] * len(IDS),
        label=lambda vs: {int(v): str(v) for v in vs},
        model_name="electra",
        options=TraceOptions(
            sites=("attn_resid", "layer_out"), spaces=("encodings",), similarities=(kind,), k=k, overlap_k=k
        ),
    )
    acts = capture(adapter, IDS)
    V = adapter.vocab_size
    with torch.no_grad():
        rows = {
            t: _own_embedding("electra", model, torch.arange(V), torch.full((V,), t)).double() for t in range(len(IDS))
        }
    for site in ("attn_resid", "layer_out"):
        view = trail.view(site, "encodings", kind)
        for layer in range(adapter.n_layers):
            for t in range(len(IDS)):
                s, rank, top = _brute_metrics(acts.site(site)[layer][t], rows[t], int(IDS[t]), kind, k)
                assert view.rank[layer, t] == rank, (site, layer, t)
                assert view.top_ids[layer, t].tolist() == top.tolist(), (site, layer, t)
                assert view.self_sim[layer, t] == pytest.approx(s, rel=RTOL, abs=ATOL)


def test_electra_projection_refuses_geometry_corrections_in_one_line():
    from tokentrail.analysis.checks import check_against

    adapter = adapter_for(tiny_models.build("electra"))
    with pytest.raises(ModelError, match="corrections are not supported"):
        check_against(adapter, TraceOptions.make(correct="zscore"))


def test_modernbert_local_layers_are_windowed_and_use_their_own_rope():
    model = tiny_models.build("modernbert")
    adapter = adapter_for(model)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    w = model.config.sliding_window
    acts = capture(adapter, IDS)
    far = (torch.arange(len(IDS))[:, None] - torch.arange(len(IDS))[None]).abs() > w
    assert acts.attentions[1][:, far].abs().max() == 0  # the local layer never looks past its window
    assert acts.attentions[0][:, far].abs().min() > 0  # the global ones do
    assert adapter.rotary(0).rotary_emb.layer_type == "full_attention"
    assert not torch.equal(adapter.rotary(1).rotary_emb.inv_freq, adapter.rotary(0).rotary_emb.inv_freq)
    # a local layer rotated with the global theta, or without its window: verify fails
    wrong_rope = adapter_for(model)
    wrong_rope.rotary = lambda layer: adapter.rotary(0)
    assert "attention probabilities" in {r.identity for r in verify_adapter(wrong_rope, IDS, sample=4).failed}
    no_window = adapter_for(model)
    no_window.attention_bias = lambda layer, n: None
    assert "attention probabilities" in {r.identity for r in verify_adapter(no_window, IDS, sample=4).failed}


def test_modernbert_walkthrough_shows_the_window():
    adapter = adapter_for(tiny_models.build("modernbert"))
    acts = capture(adapter, IDS)
    step = attention_step(adapter, acts, 1, 2, 5)
    assert step.matches_model(ATOL), step.checks
    assert step.masked.tolist() == [abs(5 - s) > adapter.config.sliding_window for s in range(len(IDS))]
    assert "local window" in step.formulas["scaled"]
    assert "local window" not in attention_step(adapter, acts, 0, 2, 5).formulas["scaled"]


def test_modernbert_head_spaces_factorise_over_the_normed_table():
    """Layers after 0 read LN_l(LN_emb(W_E[v])): position-free, so every head space is exact."""
    adapter = adapter_for(tiny_models.build("modernbert"))
    assert adapter.attn_input_norm(0) is None and adapter.attn_input_norm(1) is not None
    assert all(space_refusal(adapter, k) is None for k in ("embeddings", "encodings", "value", "key", "query"))


# ---- mBART -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mbart():
    model = tiny_models.build("mbart")
    return model, adapter_for(model)


def test_mbart_every_identity_holds_on_both_stacks(mbart):
    _, enc_adapter = mbart
    result = verify_seq2seq(enc_adapter, IDS, TGT, sample=8)
    assert result.passed, result.frame().to_string()
    assert result.row("decoder: lens = logits").passed
    assert result.row("decoder: cross-attention probabilities").passed
    assert result.row("encoder: value/key/query spaces").passed
    assert result.row("decoder: value/key/query spaces").passed


def test_mbart_against_its_own_modules(mbart):
    model, enc_adapter = mbart
    dec = enc_adapter.decoder_stack()
    acts = capture_cross(dec, IDS, TGT)
    with torch.no_grad():
        own = model(
            input_ids=IDS[None],
            decoder_input_ids=TGT[None],
            output_hidden_states=True,
            output_attentions=True,
            use_cache=False,
        )
        for stack, hidden in (("encoder", own.encoder_hidden_states), ("decoder", own.decoder_hidden_states)):
            a = capture(enc_adapter, IDS) if stack == "encoder" else acts
            mod = model.model.encoder if stack == "encoder" else model.model.decoder
            ids = IDS if stack == "encoder" else TGT
            # Emb = LN_emb(W_E[v] * scale + W_P[p + 2]), by hand
            by_hand = mod.layernorm_embedding(
                mod.embed_tokens(ids) + mod.embed_positions.weight[torch.arange(len(ids)) + 2]
            )
            assert_close(a.embedded, by_hand, rtol=RTOL, atol=ATOL)
            assert_close(a.embedded, hidden[0][0], rtol=RTOL, atol=ATOL)
            for layer in range(len(hidden) - 1):
                mine = a.layer_out[layer]
                if layer == len(hidden) - 2:
                    mine = mod.layer_norm(mine)  # the framework's last hidden state is after it
                assert_close(mine, hidden[layer + 1][0], rtol=RTOL, atol=ATOL)
        assert_close(acts.encoder_out, own.encoder_last_hidden_state[0], rtol=RTOL, atol=ATOL)
        for layer in range(dec.n_layers):
            assert_close(acts.cross_attentions[layer], own.cross_attentions[layer][0], rtol=RTOL, atol=ATOL)
            assert_close(acts.attentions[layer], own.decoder_attentions[layer][0], rtol=RTOL, atol=ATOL)
            lay = model.model.decoder.layers[layer]
            q = dec.cross_projection(layer, "q")(lay.encoder_attn_layer_norm(acts.attn_resid_ln[layer]))
            assert_close(
                q.reshape(len(TGT), -1),
                lay.encoder_attn.q_proj(lay.encoder_attn_layer_norm(acts.attn_resid_ln[layer])),
                rtol=RTOL,
                atol=ATOL,
            )
        assert_close(dec.lens_head()(acts.layer_out[-1]), own.logits[0], rtol=RTOL, atol=1e-4)


def test_mbart_teacher_forcing_is_its_own_shift(mbart):
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    _, enc_adapter = mbart
    labels = torch.tensor([14, 8, 25, 2, 3])  # words, </s>, a language code
    assert enc_adapter.decoder_input(labels).tolist() == shift_tokens_right(labels[None], 1)[0].tolist()


def test_mbart_broken_cross_query_norm_fails_verify(mbart):
    model, enc_adapter = mbart
    dec = enc_adapter.decoder_stack()
    dec.cross_query_norm = lambda layer: None  # forgets encoder_attn_layer_norm
    try:
        result = verify_seq2seq(enc_adapter, IDS, TGT, sample=4, layers=[0])
    finally:
        del dec.cross_query_norm
    assert "decoder: cross-attention probabilities" in {r.identity for r in result.failed}


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_mbart_broken_attention_output_fails_verify(mbart, stack):
    model, enc_adapter = mbart
    layer = (model.model.encoder if stack == "encoder" else model.model.decoder).layers[1]
    handle = layer.self_attn.out_proj.register_forward_hook(lambda m, a, o: o * 1.01)
    try:
        result = verify_seq2seq(enc_adapter, IDS, TGT, sample=4, layers=[0])
    finally:
        handle.remove()
    assert f"{stack}: heads recombine" in {r.identity for r in result.failed}


def _mbart_rows(model, stack: str, layer: int, p: int, kind: str) -> torch.Tensor:
    """(G, V, k): every vocabulary row of head space ``kind`` at position ``p``, with the
    stack's own modules: q/k/v_proj(self_attn_layer_norm(layernorm_embedding(...)))."""
    mod = model.model.encoder if stack == "encoder" else model.model.decoder
    V = mod.embed_tokens.weight.shape[0]
    lay = mod.layers[layer]
    lin = {"query": lay.self_attn.q_proj, "key": lay.self_attn.k_proj, "value": lay.self_attn.v_proj}[kind]
    with torch.no_grad():
        x = mod.layernorm_embedding(mod.embed_tokens(torch.arange(V)) + mod.embed_positions.weight[p + 2])
        return lin(lay.self_attn_layer_norm(x)).view(V, 4, 8).transpose(0, 1).float()


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_mbart_head_spaces_are_rows_of_its_own_modules(mbart, stack):
    """Two LayerNorms around a moving sum still factorise (DoubleNormSpace): dots, norms and
    explicit rows against the stack's own modules, at several positions and layers."""
    model, enc_adapter = mbart
    adapter = enc_adapter if stack == "encoder" else enc_adapter.decoder_stack()
    g = torch.Generator().manual_seed(5)
    for layer in range(adapter.n_layers):
        for kind in ("value", "key", "query"):
            assert space_refusal(adapter, kind) is None
            space = build_space(adapter, kind, layer)
            for p in (0, 7):
                _check_space(space, _mbart_rows(model, stack, layer, p, kind), torch.tensor([p]), g, IDS[:4], 1e-4)


def test_mbart_heads_site_ranks_equal_brute_force(mbart):
    """The fused cosine path (cosine_rows) of the double-norm spaces: every head's rank,
    top-k and self_sim against brute force over all rows from the model's own modules."""
    from test_parity_encoders import _brute_metrics
    from tokentrail.analysis.bare import analyse
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.spec.options import TraceOptions

    model, adapter = mbart
    k = 5
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        IDS,
        text="t",
        tokens=[str(i) for i in IDS.tolist()],
        special=[False] * len(IDS),
        label=lambda vs: {int(v): str(v) for v in vs},
        model_name="mbart",
        options=TraceOptions(sites=("heads",), spaces=("value", "key", "query"), k=k, overlap_k=k),
    )
    acts = capture(adapter, IDS)
    for kind, which in (("value", "v"), ("key", "k"), ("query", "q")):
        view = trail.view("heads", kind, "cosine")
        for layer in range(adapter.n_layers):
            own = (
                acts.z[layer]
                if kind == "value"
                else adapter.projection(layer, which)(adapter.attn_input_norm(layer)(acts.layer_input(layer)))
            )
            for t in range(len(IDS)):
                rows = _mbart_rows(model, "encoder", layer, t, kind)
                for h in range(adapter.n_heads):
                    s, rank, top = _brute_metrics(own[t, h], rows[h].double(), int(IDS[t]), "cosine", k)
                    assert view.rank[layer, h, t] == rank, (kind, layer, h, t)
                    assert view.top_ids[layer, h, t].tolist() == top.tolist(), (kind, layer, h, t)
                    assert view.self_sim[layer, h, t] == pytest.approx(s, rel=RTOL, abs=ATOL)


# ---- through the loader and the public API ------------------------------------------------------
def test_saved_checkpoints_load_with_their_heads_and_trace_everything(tmp_path):
    import tokentrail

    for model_type, cls in (("distilbert", "DistilBertForMaskedLM"), ("modernbert", "ModernBertForMaskedLM")):
        loaded = tokentrail.load(str(tiny_models.save(tiny_models.build(model_type), tmp_path / model_type)))
        assert type(loaded.adapter.model).__name__ == cls
        trail = tokentrail.trace("the cat sat on the mat", loaded, site="all", space="all", lens=True)
        assert {(v.site, v.space) for v in trail.views} >= {("heads", "query"), ("layer_out", "embeddings")}
        assert tokentrail.verify(loaded, "the cat sat on the mat").passed
    # a ModernBERT classifier has a prediction head too, but not the vocabulary's: loaded bare
    import transformers

    clf = transformers.ModernBertForSequenceClassification(tiny_models.build("modernbert", auto="base").config)
    bare = tokentrail.load(str(tiny_models.save(clf, tmp_path / "clf")))
    assert type(bare.adapter.model).__name__ == "ModernBertModel" and bare.adapter.lens_head() is None
    # the discriminator's checkpoint has no vocabulary head: loaded bare, the lens refused in one line
    disc = tokentrail.load(str(tiny_models.save(_build("electra_disc"), tmp_path / "disc")))
    assert type(disc.adapter.model).__name__ == "ElectraModel"
    with pytest.raises(ModelError, match="discriminator"):
        tokentrail.trace("the cat sat", disc, lens=True)
    with pytest.raises(ModelError, match="embeddings space does not apply"):
        tokentrail.trace("the cat sat", disc, space="embeddings")
    trail = tokentrail.trace("the cat sat", disc, site="all", space="all")
    assert "embeddings" not in {v.space for v in trail.views} and "heads" in {v.site for v in trail.views}


def test_mbart_traces_every_site_and_space(tmp_path):
    import tokentrail

    loaded = tokentrail.load(str(tiny_models.save(tiny_models.build("mbart"), tmp_path / "mbart")))
    trail = tokentrail.trace("the cat sat on the mat", loaded, target="le chat", site="all", space="all", lens=True)
    assert trail.decoder is not None and trail.decoder.cross_views
    for t in (trail, trail.decoder):
        assert {v.space for v in t.views} == {"encodings", "embeddings", "value", "key", "query"}
        assert "heads" in {v.site for v in t.views}


def test_a_space_that_does_not_factorise_is_named_not_a_crash(mbart):
    """A layout the spaces do not cover (here: mBART's layer norm swapped for an RMSNorm, so
    the two norms differ in kind): each head space is refused in one line, verify marks
    the spaces row n/a with the reason instead of crashing, and the options settle."""
    from tokentrail.adapters.base import Norm
    from tokentrail.adapters.mbart import MBartEncoderAdapter
    from tokentrail.analysis.checks import check_against

    model, _ = mbart
    broken = MBartEncoderAdapter(model)
    own = broken.attn_input_norm

    def rms(layer: int) -> Norm:
        n = own(layer)
        return Norm("rmsnorm", n.weight, None, n.eps)

    broken.attn_input_norm = rms
    why = space_refusal(broken, "value")
    assert why and "the value space does not factorise" in why and "\n" not in why
    row = verify_adapter(broken, IDS, sample=4, layers=[0]).row("value/key/query spaces")
    assert row.passed is None and "do not factorise" in row.note
    settled = check_against(broken, TraceOptions.make(site="all", space="all"))
    assert set(settled.spaces) == {"embeddings", "encodings"} and "heads" not in settled.sites
    with pytest.raises(ModelError, match="the key space does not factorise"):
        check_against(broken, TraceOptions.make(site="heads", space="key"))
