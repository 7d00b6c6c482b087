"""Parity of the Gemma 2 and Gemma 3 (text) adapters with the models' own modules.

Tiny random models (seeded; norms, QK-norms and biases perturbed so a missing term
fails) with every Gemma 2/3 twist switched on: sandwich norms, ``query_pre_attn_scalar``
!= ``d_head``, attention soft-capping (Gemma 2; Gemma 3 keeps the setting but its
attention never applies it), final-logit soft-capping, alternating sliding/global layers
with a window shorter than the text, grouped-query attention, ``head_dim`` != d / H,
Gemma 3's QK-norm and its two RoPEs (a linear-scaled global one, a default local one).
The references run the model's own modules (``input_layernorm``, ``q_proj``, ``q_norm``,
``rotary_emb`` + ``apply_rotary_pos_emb``, ``post_attention_layernorm``, ...).
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

import pytest
import torch
import transformers
from torch.testing import assert_close

from test_parity_decoders import _check_space, _perturb, check_embedding, check_layer_out, check_lens
from tokentrail.adapters import adapter_for
from tokentrail.adapters.base import HeadNorm, HeadProjection, Norm
from tokentrail.analysis.bare import analyse
from tokentrail.engine.capture import capture, head_vectors
from tokentrail.engine.metrics import similarity
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import build_space
from tokentrail.engine.walkthrough import attention_step
from tokentrail.session.verification import verify_adapter
from tokentrail.spec.options import ALL_SITES, ALL_SPACES, TraceOptions

RTOL, ATOL = 1e-4, 1e-5
FAMILIES = ("gemma2", "gemma3_text")
IDS = torch.tensor([5, 17, 33, 8, 60, 41, 12, 29, 71, 44, 9])  # 11 tokens, longer than the window of 3
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def tiny_model(family: str) -> torch.nn.Module:
    common = dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=48,
        vocab_size=97,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        head_dim=12,  # != 32 / 4
        query_pre_attn_scalar=20,  # scores / sqrt(20), not / sqrt(12)
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        sliding_window=3,
        layer_types=LAYER_TYPES,
        attention_bias=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    if family == "gemma2":
        cfg = transformers.Gemma2Config(**common)
        cls = transformers.Gemma2ForCausalLM
    else:
        rope = {
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
        cfg = transformers.Gemma3TextConfig(**common, rope_parameters=rope)
        cls = transformers.Gemma3ForCausalLM
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb(cls(cfg), seed=21 + FAMILIES.index(family))


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model = tiny_model(request.param)
    return model, adapter_for(model)


# ---- brute-force references from the model's own modules ----------------------------------
def _rope(model, layer: int, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE on (1, G, n, dh) at positions (1, n) as layer ``layer``'s attention applies it."""
    emb = model.model.rotary_emb
    if model.config.model_type == "gemma3_text":
        cos, sin = emb(out, positions, model.config.layer_types[layer])
    else:
        cos, sin = emb(out, positions)
    mt = "gemma3" if model.config.model_type == "gemma3_text" else "gemma2"
    apply = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}").apply_rotary_pos_emb
    return apply(out, out, cos, sin)[0]


def _own_qkv(model, layer: int, x: torch.Tensor, kind: str) -> torch.Tensor:
    """q/k/v of residual rows x (n, d) through the model's modules, before RoPE: (1, G, n, dh)."""
    att = model.model.layers[layer].self_attn
    lin = {"query": att.q_proj, "key": att.k_proj, "value": att.v_proj}[kind]
    y = lin(model.model.layers[layer].input_layernorm(x))
    out = y.view(1, x.shape[0], -1, att.head_dim).transpose(1, 2)  # (1, G, n, dh)
    if model.config.model_type == "gemma3_text" and kind != "value":
        out = (att.q_norm if kind == "query" else att.k_norm)(out)
    return out


def _brute_head_rows(model, kind: str, layer: int, p: int) -> torch.Tensor:
    """Head ``kind`` rows of every vocab token placed at position p: (G, V, dh)."""
    emb = model.get_input_embeddings()
    x = emb(torch.arange(emb.weight.shape[0]))  # Gemma's embedding scales by sqrt(d)
    out = _own_qkv(model, layer, x, kind)
    if kind != "value":
        out = _rope(model, layer, out, torch.full((1, x.shape[0]), p))
    return out[0]


@contextmanager
def _seen(modules: dict[str, torch.nn.Module], *, inputs: bool = False):
    got: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(mod, args, out):
            x = args[0] if inputs else (out[0] if isinstance(out, tuple) else out)
            got[name] = x.detach()[0].float()

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


# ---- the tests --------------------------------------------------------------------------------
def test_registry_reads_each_layers_own_settings(tiny):
    model, adapter = tiny
    assert adapter.family == {"gemma2": "gemma2", "gemma3_text": "gemma3"}[model.config.model_type]
    assert adapter.d_head == 12 and adapter.n_kv_heads == 2
    for layer, lay in enumerate(model.model.layers):
        att = lay.self_attn
        assert adapter.attention_scale(layer) == pytest.approx(att.scaling)
        assert adapter.attention_window(layer) == att.sliding_window
    gemma2 = model.config.model_type == "gemma2"
    # Gemma 3 stores attn_logit_softcapping but its attention never applies it
    assert [adapter.attention_softcap(l) for l in range(3)] == ([2.0] * 3 if gemma2 else [None] * 3)


def test_embedding(tiny):
    model, adapter = tiny
    check_embedding(model, adapter, IDS, capture(adapter, IDS))


def test_sites_are_the_models_own(tiny):
    """attn is the post-attention norm's output (sandwich norm), attn_resid (= attn_resid_ln)
    what the pre-FFN norm receives, mlp_out the post-FFN norm's output, layer_out the layer's."""
    model, adapter = tiny
    lays = model.model.layers
    outs = {f"attn{l}": lay.post_attention_layernorm for l, lay in enumerate(lays)}
    outs |= {f"mlp{l}": lay.post_feedforward_layernorm for l, lay in enumerate(lays)}
    outs |= {f"o{l}": lay.self_attn.o_proj for l, lay in enumerate(lays)}
    ins = {f"ffn{l}": lay.pre_feedforward_layernorm for l, lay in enumerate(lays)}
    with _seen(outs) as got, _seen(ins, inputs=True) as got_in:
        acts = capture(adapter, IDS)
    for l in range(adapter.n_layers):
        assert_close(acts.attn[l], got[f"attn{l}"], rtol=RTOL, atol=ATOL)
        assert_close(acts.attn_resid[l], got_in[f"ffn{l}"], rtol=RTOL, atol=ATOL)
        assert_close(acts.attn_resid_ln[l], acts.attn_resid[l], rtol=0, atol=0)
        assert_close(acts.mlp_out[l], got[f"mlp{l}"], rtol=RTOL, atol=ATOL)
        assert_close(acts.attn_resid[l] + acts.mlp_out[l], acts.layer_out[l], rtol=RTOL, atol=ATOL)
        # the post-attention norm matters: o_proj's own output is not attn_l
        assert (got[f"o{l}"] - acts.attn[l]).abs().max() > 1e-2
        # heads recombine through W_O, then the adapter's canonical post-attention norm
        w_o, b_o = adapter.output_projection(l)
        mixed = torch.einsum("thk,hkd->td", acts.z[l], w_o) + b_o
        assert_close(adapter.attn_out_norm(l)(mixed), acts.attn[l], rtol=RTOL, atol=ATOL)
    check_layer_out(adapter, acts)


def test_projections_qk_norm_and_rope_per_layer_type(tiny):
    """Canonical q/k (QK-normed, rotated by the layer type's RoPE) == the model's modules."""
    model, adapter = tiny
    acts = capture(adapter, IDS)
    n = IDS.shape[0]
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            h = acts.layer_in[layer][None]  # (1, n, d)
            for kind in ("query", "key", "value"):
                own = _own_qkv(model, layer, h[0], kind)
                if kind != "value":
                    own = _rope(model, layer, own, acts.position_ids[None])
                mine = head_vectors(adapter, acts, kind, layer) if kind != "value" else None
                if kind == "key":
                    mine = mine[:, :: adapter.n_heads // adapter.n_kv_heads]  # one query head per KV head
                if kind == "value":
                    x = adapter.attn_input_norm(layer)(acts.layer_in[layer])
                    mine = adapter.projection(layer, "v")(x)
                where = f"{kind}@{layer}"
                assert_close(mine, own[0].transpose(0, 1), rtol=RTOL, atol=ATOL, msg=lambda m, w=where: f"{w}: {m}")
    if model.config.model_type == "gemma3_text":
        # the two layer types rotate differently, and each layer uses its own type's RoPE
        x = torch.randn(n, 2, 12, generator=torch.Generator().manual_seed(1))
        local, glob = adapter.rotary(0)(x, acts.position_ids), adapter.rotary(1)(x, acts.position_ids)
        assert (local - glob).abs().max() > 1e-2
        assert adapter.projection(0, "q").norm is not None and adapter.projection(0, "v").norm is None


def test_attention_is_the_models_own(tiny):
    """softmax(mask(cap(q . k / sqrt(query_pre_attn_scalar)))) == the model's probabilities in
    every layer (window in the sliding ones), and the plain rule would not be."""
    model, adapter = tiny
    acts = capture(adapter, IDS)
    n = IDS.shape[0]
    plain_gap = 0.0
    for layer in range(adapter.n_layers):
        q = head_vectors(adapter, acts, "query", layer)
        k = head_vectors(adapter, acts, "key", layer)
        scores = torch.einsum("thk,shk->hts", q, k)
        logits = adapter.attention_logits(layer, scores)
        A = logits.masked_fill(adapter.hidden_keys(layer, n, True), float("-inf")).softmax(-1)
        assert_close(A, acts.attentions[layer], rtol=RTOL, atol=ATOL)
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        plain = (scores * adapter.d_head**-0.5).masked_fill(causal, float("-inf")).softmax(-1)
        plain_gap = max(plain_gap, float((plain - acts.attentions[layer]).abs().max()))
        if adapter.attention_window(layer) is not None:
            assert (acts.attentions[layer][:, -1, : n - 3] == 0).all()  # the window hides the rest
    assert plain_gap > 0.05


def test_walkthrough_matches_the_model(tiny):
    model, adapter = tiny
    acts = capture(adapter, IDS)
    for layer in range(adapter.n_layers):
        for head in range(adapter.n_heads):
            for token in (0, 4, IDS.shape[0] - 1):
                step = attention_step(adapter, acts, layer, head, token)
                assert step.matches_model(1e-5), (layer, head, token, step.checks)
    step = attention_step(adapter, acts, 0, 0, 10)
    assert "sliding window" in step.formulas["scaled"] and "√20" in step.formulas["scaled"]
    assert ("tanh" in step.formulas["scaled"]) == (model.config.model_type == "gemma2")
    assert step.formulas["out"] == "attn = RMSNorm(Σ_h z_h W_O[h] + b_O)"  # the post-attention norm is said


def test_spaces_match_brute_force(tiny):
    """value/key/query spaces (QK-normed rows for Gemma 3) and the embedding spaces, every
    layer, at positions inside and past the window."""
    model, adapter = tiny
    g = torch.Generator().manual_seed(3)
    probe = torch.tensor([0, 5, 44, 96])
    emb = model.get_input_embeddings()
    for p in (0, 4, 10):
        pos = torch.tensor([p])
        with torch.no_grad():
            rows = emb(torch.arange(emb.weight.shape[0])).float()[None]
        for kind in ("embeddings", "encodings"):
            _check_space(build_space(adapter, kind), rows, pos, g, probe, 1e-4)
        for layer in range(adapter.n_layers):
            for kind in ("value", "key", "query"):
                with torch.no_grad():
                    rows = _brute_head_rows(model, kind, layer, p).float()
                _check_space(build_space(adapter, kind, layer), rows, pos, g, probe, 1e-4)


def test_lens_is_the_models_soft_capped_logits(tiny):
    model, adapter = tiny
    acts = capture(adapter, IDS)
    check_lens(model, adapter, acts)
    with torch.no_grad():
        raw = model.lm_head(model.model.norm(acts.layer_out[-1])).float()
    assert raw.abs().max() > 3.0  # the cap (3.0) is reached: the lens must apply it to agree


def test_analyse_every_site_space_and_the_lens(tiny):
    model, adapter = tiny
    n = IDS.shape[0]
    trail = analyse(
        adapter,
        SpaceCache(adapter),
        IDS,
        text="x",
        tokens=[str(int(i)) for i in IDS],
        special=[False] * n,
        label=lambda used: {int(i): str(int(i)) for i in used},
        model_name="tiny",
        options=TraceOptions(
            sites=ALL_SITES, spaces=ALL_SPACES, similarities=("cosine", "euclidean"), k=5, overlap_k=10, lens=True
        ),
    )
    assert trail.lens is not None
    assert {"attn_resid", "attn_resid_ln", "layer_out", "resid_pre", "mlp_out", "heads"} <= set(trail.frame().site)
    acts = capture(adapter, IDS)
    for layer in (0, 1):  # a sliding and a global layer
        for kind in ("key", "query", "value"):
            view = trail.view("heads", kind, "cosine")
            t = 9
            vec = head_vectors(adapter, acts, kind, layer)[t]
            with torch.no_grad():
                rows = _brute_head_rows(model, kind, layer, int(acts.position_ids[t])).float()
            for h in range(adapter.n_heads):
                grp = h if kind == "query" else int(adapter.kv_heads()[h])
                s = similarity(vec[h][None], rows[grp])[0]
                assert abs(view.self_sim[layer, h, t] - float(s[int(IDS[t])])) < 1e-4, (kind, layer, h)
                assert float(view.self_sim[layer, h, t]) <= 1 + 1e-6


def test_verify_passes(tiny):
    _, adapter = tiny
    result = verify_adapter(adapter, IDS, sample=8)
    assert result.passed, [(r.identity, r.where) for r in result.failed]


def _scaled_norm(norm: Norm, by: float) -> Norm:
    return Norm(norm.kind, norm.weight * by, norm.bias, norm.eps)


def _break(adapter, what: str):
    """One canonical fact of the adapter broken (an instance patch; the model untouched)."""
    if what == "attention output norm":  # 1.01 x the post-attention norm's weight in layer 1
        orig = adapter.attn_out_norm
        adapter.attn_out_norm = lambda layer: _scaled_norm(orig(layer), 1.01 if layer == 1 else 1.0)
    elif what == "query norm":  # 1.01 x the QK-norm weight of the queries in layer 1
        orig_p = adapter.projection

        def projection(layer, which):
            p = orig_p(layer, which)
            if which != "q" or layer != 1:
                return p
            return HeadProjection(p.weight, p.bias, HeadNorm(_scaled_norm(p.norm.norm, 1.01)))

        adapter.projection = projection
    elif what == "soft cap":
        adapter.attention_softcap = lambda layer: 2.02
    elif what == "window":
        orig_w = adapter.attention_window
        adapter.attention_window = lambda layer: None if orig_w(layer) is None else orig_w(layer) + 1
    elif what == "global rope everywhere":
        glob = adapter.rotary(1)
        adapter.rotary = lambda layer: glob
    else:
        raise KeyError(what)
    return adapter


@pytest.mark.parametrize(
    "family, what, fails",
    [
        ("gemma2", "attention output norm", "heads recombine"),
        ("gemma3_text", "attention output norm", "heads recombine"),
        ("gemma3_text", "query norm", "attention probabilities"),
        ("gemma2", "soft cap", "attention probabilities"),
        ("gemma2", "window", "attention probabilities"),
        ("gemma3_text", "global rope everywhere", "attention probabilities"),
    ],
)
def test_verify_fails_on_a_broken_module(family, what, fails):
    result = verify_adapter(_break(adapter_for(tiny_model(family)), what), IDS, sample=8, layers=[0, 1])
    assert fails in {r.identity for r in result.failed}, result.frame().to_string()


def test_verify_fails_when_the_model_is_tampered_with():
    """The other side: the model's post-attention norm output scaled by 1.01 in layer 1 (a
    hook), the adapter's canonical facts untouched."""
    model = tiny_model("gemma2")
    adapter = adapter_for(model)
    handle = model.model.layers[1].post_attention_layernorm.register_forward_hook(lambda m, a, out: out * 1.01)
    try:
        result = verify_adapter(adapter, IDS, sample=8, layers=[1])
    finally:
        handle.remove()
    assert "heads recombine" in {r.identity for r in result.failed}


# ---- through the load and the command line -----------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_traces_everything_and_verifies_a_saved_folder(family, tmp_path, tokenizer, save_model):
    """A saved folder loads through the causal-LM class; trace with every site, space and
    the lens, and verify, both exit 0 on a text longer than the window."""
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    model = tiny_model(family)
    model.resize_token_embeddings(tokenizer.vocab_size)  # the tiny WordPiece vocabulary
    folder = save_model(tmp_path / family, model, tokenizer)
    text = "time flies like an arrow . the cat sat on the mat"
    runner = CliRunner()
    res = runner.invoke(app, ["trace", text, "-m", str(folder), "--site", "all", "--space", "all", "--lens", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["verify", str(folder), "--text", text, "--sample", "8", "-q"])
    assert res.exit_code == 0, res.output


def test_the_app_says_what_gemma_computes(tiny):
    """The walkthrough page names the soft cap / pre-scaling, the window and the norm after W_O."""
    from tokentrail.app.render import step_summary

    model, adapter = tiny

    class _Trail:  # step_summary reads only tokens and n_heads
        tokens = [str(int(i)) for i in IDS]
        n_heads = adapter.n_heads

    acts = capture(adapter, IDS)
    text = step_summary(_Trail(), attention_step(adapter, acts, 0, 1, 10))
    assert "sliding window hides the 8 earliest" in text and "√20" in text
    assert "attn = RMSNorm(Σ_h z_h W_O[h] + b_O)" in text and "Matches the model" in text
    assert "sliding window" not in step_summary(_Trail(), attention_step(adapter, acts, 1, 1, 10))


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_gives_each_text_what_it_gets_alone(tiny, side):
    """Sliding windows count tokens, not padding: each text of a padded batch is itself."""
    from tokentrail.engine.capture import capture_batch

    _, adapter = tiny
    short = IDS[:6]
    got = capture_batch(adapter, [IDS, short], padding_side=side)
    for acts, ids in zip(got, (IDS, short)):
        alone = capture(adapter, ids)
        assert_close(acts.layer_out, alone.layer_out, rtol=RTOL, atol=ATOL)
        assert_close(acts.attentions, alone.attentions, rtol=RTOL, atol=ATOL)
