"""T5 (issue 12's encoder-decoders), proven on tiny random T5 configs, tied and untied
output heads, with perturbed norms: pre-RMSNorm, a relative position bias, no biases and
unscaled attention scores.

Every identity against the framework's own outputs and modules: each stack's layer
outputs are its hidden states (the last one through the stack's final norm); self- and
cross-attention probabilities are recomputed from the canonical maps (with the model's
own relative position bias); self- and cross-attention heads recombine into the modules'
outputs; the spaces' rows are the model's own modules applied to its embedding table;
the logit lens' last layer is the model's logits; and ``verify`` finds each of these."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import seq2seq_models as sm
from test_parity_decoders import _check_space
from tokentrail.adapters.t5 import T5DecoderAdapter, T5EncoderAdapter
from tokentrail.engine.capture import capture
from tokentrail.engine.capture_cross import capture_cross
from tokentrail.engine.spaces import build_space
from tokentrail.session.verification import verify_adapter, verify_seq2seq

SRC = torch.tensor([34, 9, 31, 25, 34, 24, 2])  # "the cat sat on the mat" </s>
TGT = torch.tensor([1, 22, 10, 15, 32, 22, 33])  # start, "le chat est sur le tapis"
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def t5(request):
    model, _ = sm.t5(tied=request.param)
    enc = T5EncoderAdapter(model)
    dec = enc.decoder_stack()
    return model, enc, dec, capture(enc, SRC), capture_cross(dec, SRC, TGT)


def test_every_identity_holds_on_both_stacks_and_cross_attention(t5):
    model, enc, dec, _, _ = t5
    result = verify_seq2seq(enc, SRC, TGT, sample=8)
    assert result.passed, result.frame().to_string()
    na = {r.identity for r in result.rows if r.passed is None}
    assert na == {"encoder: lens = logits", "decoder: layer_out = attn_resid + mlp_out"}


def test_layer_outputs_are_the_frameworks_hidden_states(t5):
    model, enc, dec, ea, da = t5
    with torch.no_grad():
        out = model(input_ids=SRC[None], decoder_input_ids=TGT[None], output_hidden_states=True)
    for stack, acts, hidden in ((enc, ea, out.encoder_hidden_states), (dec, da, out.decoder_hidden_states)):
        assert_close(acts.embedded, hidden[0][0], rtol=0, atol=0)
        L = stack.n_layers
        for layer in range(L - 1):
            assert_close(acts.layer_out[layer], hidden[layer + 1][0], rtol=RTOL, atol=ATOL)
        with torch.no_grad():  # the framework reports the last one after the stack's final norm
            assert_close(stack.stack_module.final_layer_norm(acts.layer_out[L - 1]), hidden[L][0], rtol=RTOL, atol=ATOL)
    assert_close(da.encoder_out, out.encoder_last_hidden_state[0], rtol=0, atol=0)


def test_self_attention_with_the_relative_bias_is_recomputed(t5):
    """softmax(q . k + bias [+ causal mask]) with T5's unscaled scores == the model's weights."""
    _, enc, dec, ea, da = t5
    for stack, acts, causal in ((enc, ea, False), (dec, da, True)):
        n = acts.input_ids.shape[0]
        mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1) if causal else torch.zeros(n, n)
        for layer in range(stack.n_layers):
            x = stack.attn_input_norm(layer)(acts.layer_in[layer])
            q, k, v = (stack.projection(layer, w)(x) for w in "qkv")
            A = (torch.einsum("thk,shk->hts", q, k) + stack.attention_bias(layer, n) + mask).softmax(-1)
            assert_close(A, acts.attentions[layer], rtol=RTOL, atol=ATOL)
            # without the bias the weights are not the model's: the bias is real
            assert (torch.einsum("thk,shk->hts", q, k) + mask).softmax(-1).sub(
                acts.attentions[layer]
            ).abs().max() > 1e-3
            assert_close(torch.einsum("hts,shk->thk", acts.attentions[layer], v), acts.z[layer], rtol=RTOL, atol=ATOL)


def test_self_and_cross_heads_recombine_into_the_modules_outputs(t5):
    _, _, dec, ea, da = t5
    _, enc, _, _, _ = t5
    for stack, acts in ((enc, ea), (dec, da)):
        for layer in range(stack.n_layers):
            w_o, b_o = stack.output_projection(layer)
            assert b_o is None
            assert_close(torch.einsum("thk,hkd->td", acts.z[layer], w_o), acts.attn[layer], rtol=RTOL, atol=ATOL)
    for layer in range(dec.n_layers):
        w_o, _ = dec.cross_output_projection(layer)
        assert_close(torch.einsum("thk,hkd->td", da.cross_z[layer], w_o), da.cross_attn[layer], rtol=RTOL, atol=ATOL)


def test_cross_attention_reads_the_encoder_output(t5):
    """q from RMS(attn_resid), k/v from the encoder output, unscaled, no bias."""
    model, _, dec, _, da = t5
    for layer in range(dec.n_layers):
        q = dec.cross_projection(layer, "q")(dec.cross_query_norm(layer)(da.attn_resid[layer]))
        k, v = dec.cross_projection(layer, "k")(da.encoder_out), dec.cross_projection(layer, "v")(da.encoder_out)
        A = torch.einsum("thk,shk->hts", q, k).softmax(-1)
        assert_close(A, da.cross_attentions[layer], rtol=RTOL, atol=ATOL)
        assert_close(torch.einsum("hts,shk->thk", A, v), da.cross_z[layer], rtol=RTOL, atol=ATOL)
        # cross_resid is what the FFN's own norm reads, and the layer adds the FFN to it
        assert_close(da.cross_resid[layer], da.cross_received[layer], rtol=RTOL, atol=ATOL)
        with torch.no_grad():
            ff = model.get_decoder().block[layer].layer[-1]
            assert_close(
                da.cross_resid[layer] + ff.DenseReluDense(ff.layer_norm(da.cross_resid[layer])),
                da.layer_out[layer],
                rtol=RTOL,
                atol=ATOL,
            )


def test_spaces_are_the_models_own_modules_on_its_table(t5):
    """encodings = W_E (no position table, no scale); value/key/query@l = the layer's own
    q/k/v of its own RMSNorm of every row; position-free (the bias is on the scores)."""
    model, enc, dec, _, _ = t5
    g = torch.Generator().manual_seed(4)
    for stack in (enc, dec):
        table = stack.stack_module.embed_tokens.weight.detach()
        V = table.shape[0]
        for p in (0, 5):
            pos = torch.tensor([p])
            _check_space(build_space(stack, "encodings"), table.float()[None], pos, g, SRC[:4], 1e-4)
            for layer in range(stack.n_layers):
                blk = stack.stack_module.block[layer].layer[0]
                with torch.no_grad():
                    x = blk.layer_norm(table)
                    for kind, lin in (
                        ("query", blk.SelfAttention.q),
                        ("key", blk.SelfAttention.k),
                        ("value", blk.SelfAttention.v),
                    ):
                        rows = lin(x).view(V, stack.n_heads, stack.d_head).transpose(0, 1)
                        _check_space(build_space(stack, kind, layer), rows.float(), pos, g, SRC[:4], 1e-4)


def test_lens_last_layer_is_the_models_logits(t5):
    model, _, dec, _, da = t5
    with torch.no_grad():
        logits = model(input_ids=SRC[None], decoder_input_ids=TGT[None]).logits[0]
    assert_close(dec.lens_head()(da.layer_out[-1]), logits, rtol=RTOL, atol=ATOL)


def test_a_missing_relative_bias_is_caught(t5):
    _, enc, _, _, _ = t5
    broken = T5EncoderAdapter(enc.model)
    broken.attention_bias = lambda layer, n: None
    result = verify_adapter(broken, SRC, sample=4, layers=[0])
    assert "attention probabilities" in {r.identity for r in result.failed}


def test_decoder_is_a_t5_decoder(t5):
    _, _, dec, _, _ = t5
    assert isinstance(dec, T5DecoderAdapter) and dec.d_head == 8 and dec.stack == "decoder"
