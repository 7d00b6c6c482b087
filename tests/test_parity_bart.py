"""BART (issue 12's encoder-decoders), proven on a tiny random BART with
scaled embeddings and perturbed norms and biases.

Encoder stack: every SPEC identity through ``verify_adapter`` (against the framework's own
outputs) and every space against brute-force rows from the encoder's own modules.
Decoder stack: embedding and layer outputs equal the framework's; self- and
cross-attention heads recombine into the modules' outputs; cross-attention probabilities
and per-head vectors are recomputed from the canonical maps with the encoder output as
keys/values; the post-LN norms chain the sites."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from test_parity_decoders import _check_space, _perturb
from tokentrail.adapters.bart import BartEncoderAdapter
from tokentrail.engine.capture import capture
from tokentrail.engine.spaces import build_space
from tokentrail.session.verification import verify_adapter
from tokentrail.spec.errors import InputError

IDS = torch.tensor([0, 17, 42, 8, 17, 63, 5, 91, 2])


@pytest.fixture(scope="module")
def bart():
    cfg = transformers.BartConfig(
        vocab_size=97,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=40,
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = _perturb(transformers.BartForConditionalGeneration(cfg), seed=11)
    return model, BartEncoderAdapter(model)


def test_every_identity_holds(bart):
    _, adapter = bart
    result = verify_adapter(adapter, IDS, sample=8)
    assert result.passed, result.frame().to_string()
    assert {r.identity for r in result.rows if r.passed is None} == {
        "lens = logits",
        "layer_out = attn_resid + mlp_out",
    }
    assert not result.causal


def _emb_rows(model, p: int) -> torch.Tensor:
    enc = model.get_encoder()
    V = enc.embed_tokens.weight.shape[0]
    x = enc.embed_tokens(torch.arange(V)) + enc.embed_positions.weight[p + 2]  # the model's offset
    return enc.layernorm_embedding(x)


def test_spaces_match_the_encoders_own_modules(bart):
    model, adapter = bart
    g = torch.Generator().manual_seed(3)
    enc = model.get_encoder()
    for p in (0, 6):
        pos = torch.tensor([p])
        with torch.no_grad():
            rows = _emb_rows(model, p)
            _check_space(build_space(adapter, "encodings"), rows.float()[None], pos, g, IDS[:4], 1e-4)
            V = rows.shape[0]
            emb = enc.embed_tokens(torch.arange(V))[None]
            _check_space(build_space(adapter, "embeddings"), emb.float(), pos, g, IDS[:4], 1e-4)
            for layer in range(adapter.n_layers):
                att = enc.layers[layer].self_attn
                for kind, lin in (("query", att.q_proj), ("key", att.k_proj), ("value", att.v_proj)):
                    head_rows = lin(rows).view(V, adapter.n_heads, adapter.d_head).transpose(0, 1)
                    _check_space(build_space(adapter, kind, layer), head_rows.float(), pos, g, IDS[:4], 1e-4)


def test_scaled_table_and_position_offset(bart):
    model, adapter = bart
    enc = model.get_encoder()
    assert_close(adapter.embedding_table(), enc.embed_tokens.weight.detach() * 32**0.5, rtol=1e-6, atol=0)
    assert_close(
        adapter.position_offset(torch.tensor([0, 3])), enc.embed_positions.weight.detach()[[2, 5]], rtol=0, atol=0
    )
    acts = capture(adapter, IDS)
    assert (acts.attn_resid_ln - acts.attn_resid).abs().max() > 1e-2  # post-LN: the FFN reads the normed vector


def test_a_missing_position_offset_is_caught(bart):
    _, adapter = bart
    broken = BartEncoderAdapter(adapter.model)
    weight = broken.stack_module.embed_positions.weight.detach()
    broken.position_offset = lambda ids: weight[ids].float()  # forgets BART's offset of 2
    result = verify_adapter(broken, IDS, sample=8, layers=[0])
    assert {"embedding", "encodings own rows"} <= {r.identity for r in result.failed}


def test_other_position_ids_are_refused(bart):
    _, adapter = bart
    with pytest.raises(InputError, match="numbers its positions itself"):
        adapter.forward(IDS[None], torch.arange(len(IDS))[None] + 1, torch.ones(1, len(IDS), dtype=torch.long))


# ---- the decoder stack and cross-attention ------------------------------------------------------
TGT = torch.tensor([2, 0, 33, 8, 71, 8])


@pytest.fixture(scope="module")
def bart_dec(bart):
    from tokentrail.adapters.bart import BartDecoderAdapter
    from tokentrail.engine.capture_cross import capture_cross

    model, _ = bart
    dec = BartDecoderAdapter(model)
    return model, dec, capture_cross(dec, IDS, TGT)


def test_decoder_stack_every_identity_holds(bart):
    """The decoder stack, bound to a source, is an adapter like any other: every SPEC identity."""
    from tokentrail.adapters.bart import BartDecoderAdapter

    model, _ = bart
    result = verify_adapter(BartDecoderAdapter(model).bind(IDS), TGT, sample=8)
    assert result.passed, result.frame().to_string()
    assert result.causal


def test_decoder_embedding_and_layer_out_are_the_frameworks(bart_dec):
    _, dec, acts = bart_dec
    assert_close(dec.embed(TGT, torch.arange(len(TGT))), acts.hidden_states[0], rtol=1e-4, atol=1e-5)
    for layer in range(dec.n_layers):
        assert_close(acts.layer_out[layer], acts.hidden_states[layer + 1], rtol=0, atol=0)


def test_heads_recombine_self_and_cross(bart_dec):
    _, dec, acts = bart_dec
    for layer in range(dec.n_layers):
        for w_o, b_o, z, out in (
            (*dec.output_projection(layer), acts.z, acts.attn),
            (*dec.cross_output_projection(layer), acts.cross_z, acts.cross_attn),
        ):
            assert_close(torch.einsum("thk,hkd->td", z[layer], w_o) + b_o, out[layer], rtol=1e-4, atol=1e-5)


def test_cross_attention_recomputed_from_canonical_maps(bart_dec):
    """softmax(q(attn_resid_ln) . k(encoder_out) / sqrt(dh)) == the model's cross-attention, and
    cross_z == A v(encoder_out): a cross head's keys/values are the encoder output tokens."""
    _, dec, acts = bart_dec
    for layer in range(dec.n_layers):
        q = dec.cross_projection(layer, "q")(acts.attn_resid_ln[layer])  # (n, H, dh)
        k = dec.cross_projection(layer, "k")(acts.encoder_out)  # (m, H, dh)
        v = dec.cross_projection(layer, "v")(acts.encoder_out)
        A = (torch.einsum("thk,shk->hts", q, k) * dec.cross_scale()).softmax(-1)
        assert_close(A, acts.cross_attentions[layer], rtol=1e-4, atol=1e-5)
        assert_close(
            torch.einsum("hts,shk->thk", acts.cross_attentions[layer], v), acts.cross_z[layer], rtol=1e-4, atol=1e-5
        )


def test_decoder_self_attention_is_causal_and_recomputed(bart_dec):
    _, dec, acts = bart_dec
    n = TGT.shape[0]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    for layer in range(dec.n_layers):
        h = acts.layer_in[layer]
        q, k = dec.projection(layer, "q")(h), dec.projection(layer, "k")(h)
        A = (torch.einsum("thk,shk->hts", q, k) * dec.d_head**-0.5 + mask).softmax(-1)
        assert_close(A, acts.attentions[layer], rtol=1e-4, atol=1e-5)


def test_decoder_norms_chain_the_sites(bart_dec):
    """attn_resid_ln = LN_self(attn_resid); LN_cross(cross_resid) is the FFN's input; the
    layer's output is LN_final(that + FFN(that)) with the model's own FFN modules."""
    model, dec, acts = bart_dec
    for layer in range(dec.n_layers):
        lay = model.get_decoder().layers[layer]
        assert_close(
            dec.attn_resid_norm(layer)(acts.attn_resid[layer]), acts.attn_resid_ln[layer], rtol=1e-4, atol=1e-5
        )
        ln_cross = dec.cross_points(layer).receiver_norm
        assert_close(ln_cross(acts.cross_resid[layer]), acts.cross_received[layer], rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            x = acts.cross_received[layer]
            out = lay.final_layer_norm(x + lay.fc2(lay.activation_fn(lay.fc1(x))))
        assert_close(out, acts.layer_out[layer], rtol=1e-4, atol=1e-5)
        assert_close(
            acts.site("cross_resid")[layer], acts.attn_resid_ln[layer] + acts.cross_attn[layer], rtol=0, atol=0
        )


def test_decoder_spaces_match_its_own_modules(bart):
    """The decoder's encodings are its own embedding stage (shared table, its own position
    table and layernorm_embedding); its value space is its self-attention's v_proj of them."""
    from tokentrail.adapters.bart import BartDecoderAdapter

    model, _ = bart
    dec_mod = model.get_decoder()
    adapter = BartDecoderAdapter(model)
    g = torch.Generator().manual_seed(5)
    for p in (0, 4):
        with torch.no_grad():
            V = dec_mod.embed_tokens.weight.shape[0]
            rows = dec_mod.layernorm_embedding(
                dec_mod.embed_tokens(torch.arange(V)) + dec_mod.embed_positions.weight[p + 2]
            )
            _check_space(build_space(adapter, "encodings"), rows.float()[None], torch.tensor([p]), g, TGT[:4], 1e-4)
            head_rows = (
                dec_mod.layers[-1].self_attn.v_proj(rows).view(V, adapter.n_heads, adapter.d_head).transpose(0, 1)
            )
            _check_space(
                build_space(adapter, "value", adapter.n_layers - 1),
                head_rows.float(),
                torch.tensor([p]),
                g,
                TGT[:4],
                1e-4,
            )


def test_the_decoder_refuses_to_run_unbound_or_bidirectional(bart):
    from tokentrail.adapters.bart import BartDecoderAdapter

    model, _ = bart
    dec = BartDecoderAdapter(model)
    with pytest.raises(RuntimeError, match="bind one first"):
        capture(dec, TGT)
    with pytest.raises(InputError, match="trained causal"):
        capture(dec.bind(IDS), TGT, causal=False)


# ---- Marian: BART's layout with fixed sinusoids, no offset and no embedding norm -----------------
@pytest.fixture(scope="module")
def marian():
    import seq2seq_models as sm
    from tokentrail.adapters.bart import MarianEncoderAdapter

    model, _ = sm.marian()
    return model, MarianEncoderAdapter(model)


def test_marian_encodings_are_its_own_modules(marian):
    """Emb(v, p) = W_E[v] * sqrt(d) + sinusoid[p] from the model's own embedding modules, in
    both stacks (each its own table), and every identity of both stacks and cross-attention."""
    from tokentrail.session.verification import verify_seq2seq

    model, enc = marian
    dec = enc.decoder_stack()
    g = torch.Generator().manual_seed(7)
    src, tgt = torch.tensor([34, 9, 31, 25, 34, 24, 2]), torch.tensor([1, 22, 10, 15, 32, 22, 33])
    for stack, module in ((enc, model.get_encoder()), (dec, model.get_decoder())):
        assert stack.embedding_norm() is None
        V = module.embed_tokens.weight.shape[0]
        for p in (0, 5):
            with torch.no_grad():
                rows = module.embed_tokens(torch.arange(V)) * module.embed_scale + module.embed_positions.weight[p]
            _check_space(build_space(stack, "encodings"), rows.float()[None], torch.tensor([p]), g, src[:4], 1e-4)
    result = verify_seq2seq(enc, src, tgt, sample=8)
    assert result.passed, result.frame().to_string()
    assert "decoder: cross heads recombine" in {r.identity for r in result.rows if r.passed}


def test_marian_without_the_embedding_scale_is_caught(marian):
    from tokentrail.adapters.bart import MarianEncoderAdapter

    model, _ = marian
    broken = MarianEncoderAdapter(model)
    broken._scaled_table = model.get_encoder().embed_tokens.weight.detach()  # forgets sqrt(d)
    result = verify_adapter(broken, torch.tensor([34, 9, 31, 25, 2]), sample=4, layers=[0])
    assert {"embedding", "encodings own rows"} <= {r.identity for r in result.failed}
