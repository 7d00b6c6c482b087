"""Parity of the Qwen3, OLMo 2, Phi-3 and OPT adapters with the models' own modules, and
RoPE's attention scaling in the key/query spaces (issue 23, point 2).

Tiny random decoders built from configs, norms and biases perturbed (``_perturb`` of
``test_parity_decoders``), so a missing QK-norm, post-branch norm, position offset or
bias fails. The references run the models' own modules (``q_norm``, ``qkv_proj``,
``embed_positions``, ``rotary_emb`` + ``apply_rotary_pos_emb``, ...); the identities the
older families share are reused from ``test_parity_decoders``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import transformers
from torch.testing import assert_close
from typer.testing import CliRunner

from test_parity_decoders import (
    _check_space,
    _outputs_of,
    _perturb,
    check_causal_toggle,
    check_default_mask_is_the_models_own,
    check_layer_out,
    check_lens,
    check_own_encoding_row,
)
from tokentrail.adapters import adapter_for, decoder_model_types
from tokentrail.analysis.bare import analyse
from tokentrail.analysis.blocks import score_queries
from tokentrail.cli.commands import app
from tokentrail.engine import budget
from tokentrail.engine.capture import capture, capture_batch, head_qkv, head_vectors
from tokentrail.engine.metrics import similarity
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import VocabSpace, build_space
from tokentrail.engine.walkthrough import attention_step, projection_formula
from tokentrail.session.verification import verify_adapter
from tokentrail.spec.errors import ModelError
from tokentrail.spec.options import ALL_SITES, ALL_SPACES, TraceOptions

RTOL, ATOL = 1e-4, 1e-5
NEW = ("qwen3", "olmo2", "phi3", "opt")
IDS = torch.tensor([3, 17, 42, 8, 17, 63, 5, 91, 30])
_IDS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
# GQA 6 -> 2 heads; Qwen3's head_dim (8) is not d / H (48 / 6)
ROPE = dict(
    num_attention_heads=6,
    num_key_value_heads=2,
    num_hidden_layers=2,
    hidden_size=48,
    intermediate_size=64,
    vocab_size=97,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    **_IDS,
)


def tiny_new(family: str, vocab_size: int = 97, **extra) -> torch.nn.Module:
    rope = {**ROPE, "vocab_size": vocab_size}
    if family == "qwen3":  # q/k/v/o biases on, so the QK-norm sees a bias too
        cfg = transformers.Qwen3Config(**{"head_dim": 8, "attention_bias": True, **rope, **extra})
        cls = transformers.Qwen3ForCausalLM
    elif family == "olmo2":
        cfg = transformers.Olmo2Config(**{"attention_bias": True, **rope, **extra})
        cls = transformers.Olmo2ForCausalLM
    elif family == "phi3":  # half the head dims rotate (Phi-4-mini's partial rotary)
        cfg = transformers.Phi3Config(**{"partial_rotary_factor": 0.5, **rope, **extra})
        cls = transformers.Phi3ForCausalLM
    elif family == "opt":
        opt = dict(num_attention_heads=4, num_hidden_layers=2, hidden_size=32, ffn_dim=48, word_embed_proj_dim=32)
        cfg = transformers.OPTConfig(
            **{**opt, "vocab_size": vocab_size, "max_position_embeddings": 64, **_IDS, **extra}
        )
        cls = transformers.OPTForCausalLM
    else:
        raise KeyError(family)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb(cls(cfg), seed=20 + NEW.index(family))


@pytest.fixture(scope="module", params=NEW)
def tiny(request):
    model = tiny_new(request.param)
    return request.param, model, adapter_for(model)


# ---- brute-force references from the model's own modules ----------------------------------
def _layers(model):
    return model.model.decoder.layers if model.config.model_type == "opt" else model.model.layers


def _emb_rows(model, p: int) -> torch.Tensor:
    """Emb(v, p) for every v, from the model's embedding modules: (V, d)."""
    if model.config.model_type == "opt":
        dec = model.model.decoder
        return dec.embed_tokens.weight + dec.embed_positions(None, position_ids=torch.tensor([[p]]))[0, 0]
    return model.model.embed_tokens.weight


def _own_qkv(model, layer: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's q, k, v (1, G, n, dh) of inputs x (n, d) to layer ``layer``, QK-norm applied, before RoPE."""
    mt, lay, n = model.config.model_type, _layers(model)[layer], x.shape[0]
    att = lay.self_attn
    dh = getattr(att, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    split = lambda t: t.view(1, n, -1, dh).transpose(1, 2)  # noqa: E731
    if mt == "opt":
        y = lay.self_attn_layer_norm(x)
        return {w: split(m(y)) for w, m in zip("qkv", (att.q_proj, att.k_proj, att.v_proj))}
    if mt == "olmo2":  # no input norm; the QK-norm spans all heads, before the split
        return {"q": split(att.q_norm(att.q_proj(x))), "k": split(att.k_norm(att.k_proj(x))), "v": split(att.v_proj(x))}
    y = lay.input_layernorm(x)
    if mt == "phi3":
        qkv = att.qkv_proj(y)
        q_size, kv_size = model.config.num_attention_heads * dh, model.config.num_key_value_heads * dh
        q, k, v = qkv[..., :q_size], qkv[..., q_size : q_size + kv_size], qkv[..., q_size + kv_size :]
        return {"q": split(q), "k": split(k), "v": split(v)}
    # qwen3: the norm per head, on the (.., H, dh) view
    shape = (1, n, -1, dh)
    return {
        "q": att.q_norm(att.q_proj(y).view(shape)).transpose(1, 2),
        "k": att.k_norm(att.k_proj(y).view(shape)).transpose(1, 2),
        "v": split(att.v_proj(y)),
    }


def _rope_own(model, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    mt = model.config.model_type
    if mt == "opt":
        return out
    cos, sin = model.model.rotary_emb(out, positions)
    apply_rope = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}").apply_rotary_pos_emb
    rot, _ = apply_rope(out, out, cos, sin)
    return rot


def _brute_head_rows(model, kind: str, layer: int, p: int) -> torch.Tensor:
    """Head ``kind`` rows of every vocab token placed at position p: (G, V, d_head)."""
    x = _emb_rows(model, p)
    out = _own_qkv(model, layer, x)[kind[0]]
    if kind != "value":
        out = _rope_own(model, out, torch.full((1, x.shape[0]), p))
    return out[0]


def _branch_modules(model, layer: int) -> dict[str, torch.nn.Module]:
    """Modules whose output is attn_l / mlp_out, and whose input is z, as the model runs them."""
    lay = _layers(model)[layer]
    mt = model.config.model_type
    o_proj = lay.self_attn.out_proj if mt == "opt" else lay.self_attn.o_proj
    if mt == "olmo2":
        return {"z": o_proj, "attn": lay.post_attention_layernorm, "mlp": lay.post_feedforward_layernorm}
    return {"z": o_proj, "attn": o_proj, "mlp": lay.fc2 if mt == "opt" else lay.mlp}


# ---- the identities --------------------------------------------------------------------------
def test_registered_as_decoders():
    assert set(NEW) <= set(decoder_model_types())


def test_embedding_and_own_row(tiny):
    _, model, adapter = tiny
    acts = capture(adapter, IDS)
    own = torch.stack([_emb_rows(model, int(p))[int(v)] for v, p in zip(IDS, acts.position_ids)]).detach()
    assert_close(acts.embedded, own, rtol=RTOL, atol=ATOL)
    assert_close(adapter.embed(IDS, acts.position_ids), acts.embedded, rtol=RTOL, atol=ATOL)
    check_own_encoding_row(adapter, acts)


def test_sites_are_the_models_own(tiny):
    """z, attn_l, mlp_out, attn_resid and layer_out against the model's own modules; the
    decomposition h_{l+1} = attn_resid + mlp_out; z W_O (+ norm) = attn_l."""
    _, model, adapter = tiny
    L = adapter.n_layers
    mods = {f"{l}.{k}": m for l in range(L) for k, m in _branch_modules(model, l).items() if k != "z"}
    if model.config.model_type == "opt":  # its FFN sees the batch flattened, (n, d): read it whole
        mods = {k: m for k, m in mods.items() if not k.endswith("mlp")}
        flat = {f"{l}.mlp": _layers(model)[l].fc2 for l in range(L)}
    else:
        flat = {}
    whole: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, o, key=k: whole.__setitem__(key, o.detach().float()))
        for k, m in flat.items()
    ]
    with (
        _outputs_of(mods) as out,
        _outputs_of({str(l): _branch_modules(model, l)["z"] for l in range(L)}, inputs=True) as z,
    ):
        acts = capture(adapter, IDS)
    for h in handles:
        h.remove()
    out.update(whole)
    n = IDS.shape[0]
    for l in range(L):
        assert_close(acts.z[l].reshape(n, -1), z[str(l)].view(n, -1), rtol=RTOL, atol=ATOL)
        assert_close(acts.attn[l], out[f"{l}.attn"].view(n, -1), rtol=RTOL, atol=ATOL)
        assert_close(acts.mlp_out[l], out[f"{l}.mlp"].view(n, -1), rtol=RTOL, atol=ATOL)
        assert_close(acts.attn_resid[l], acts.layer_in[l] + acts.attn[l], rtol=0, atol=0)
        assert_close(acts.attn_resid[l] + acts.mlp_out[l], acts.layer_out[l], rtol=RTOL, atol=ATOL)
        w_o, b_o = adapter.output_projection(l)
        got = torch.einsum("thk,hkd->td", acts.z[l], w_o) + (0 if b_o is None else b_o)
        norm = adapter.attn_out_norm(l)
        assert_close(got if norm is None else norm(got), acts.attn[l], rtol=RTOL, atol=ATOL)
    check_layer_out(adapter, acts)


def test_projections_and_qk_norm(tiny):
    """The adapter's q/k/v (QK-norm included, before RoPE) and its RoPE == the model's own."""
    _, model, adapter = tiny
    acts = capture(adapter, IDS)
    for layer in range(adapter.n_layers):
        h = acts.layer_in[layer]
        norm = adapter.attn_input_norm(layer)
        x = h if norm is None else norm(h)
        with torch.no_grad():
            own = _own_qkv(model, layer, h)
        for w in "qkv":
            mine = adapter.projection(layer, w)(x)  # (n, G, dh)
            assert_close(mine, own[w][0].transpose(0, 1), rtol=RTOL, atol=ATOL)
            if w != "v":
                with torch.no_grad():
                    rotated = _rope_own(model, own[w], acts.position_ids[None])[0].transpose(0, 1)
                kind = {"q": "query", "k": "key"}[w]
                assert_close(
                    head_vectors(adapter, acts, kind, layer), _expand(adapter, w, rotated), rtol=RTOL, atol=ATOL
                )


def _expand(adapter, which: str, vec: torch.Tensor) -> torch.Tensor:
    """head_vectors' layout: keys of each query head's KV head."""
    return vec[:, adapter.kv_heads()] if which == "k" else vec


@pytest.mark.parametrize("causal", [True, False])
def test_attention_and_z(tiny, causal):
    """softmax(q_h . k_{kv(h)} / sqrt(dh) [+ causal mask]) == the model's attention
    probabilities (OPT scales q in its module: the same scores), z == A v."""
    _, _, adapter = tiny
    acts = capture(adapter, IDS, causal=causal)
    n = IDS.shape[0]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1) if causal else torch.zeros(n, n)
    for layer in range(adapter.n_layers):
        q = head_vectors(adapter, acts, "query", layer)
        k = head_vectors(adapter, acts, "key", layer)
        A = (torch.einsum("thk,shk->hts", q, k) * adapter.d_head**-0.5 + mask).softmax(-1)
        assert_close(A, acts.attentions[layer], rtol=RTOL, atol=ATOL)
        v = head_qkv(adapter, acts, layer, "v")[:, adapter.kv_heads()]
        assert_close(torch.einsum("hts,shk->thk", acts.attentions[layer], v), acts.z[layer], rtol=RTOL, atol=ATOL)


def test_causal_toggle_and_own_mask(tiny):
    _, model, adapter = tiny
    check_causal_toggle(adapter, IDS)
    check_default_mask_is_the_models_own(model, adapter, IDS)


def test_batches_are_each_texts_own(tiny):
    """A padded batch (left and right) gives each text what it gets alone (OPT's FFN sees the batch flattened)."""
    _, _, adapter = tiny
    short = IDS[:5]
    alone = capture(adapter, short)
    for side in ("left", "right"):
        got = capture_batch(adapter, [IDS, short], padding_side=side)[1]
        for site in ("layer_out", "attn", "mlp_out", "z"):
            assert_close(getattr(got, site), getattr(alone, site), rtol=RTOL, atol=1e-4)


def test_spaces_match_brute_force(tiny):
    _, model, adapter = tiny
    g = torch.Generator().manual_seed(3)
    for p in (0, 5):
        pos = torch.tensor([p])
        with torch.no_grad():
            enc = _emb_rows(model, p).detach().float()[None]
            emb = model.get_input_embeddings().weight.detach().float()[None]
        _check_space(build_space(adapter, "encodings"), enc, pos, g, IDS[:4], 1e-4)
        _check_space(build_space(adapter, "embeddings"), emb, pos, g, IDS[:4], 1e-4)
        for layer in range(adapter.n_layers):
            for kind in ("value", "key", "query"):
                with torch.no_grad():
                    rows = _brute_head_rows(model, kind, layer, p).float()
                _check_space(build_space(adapter, kind, layer), rows, pos, g, IDS[:4], 1e-4)


def _head_scores(adapter, acts, space, kind: str, sim: str):
    """Each head's vector at ``space``'s layer against it: own similarity, rank, top-5 ids and sims."""
    z = head_vectors(adapter, acts, kind, int(space.name.split("@")[1]))
    H, n = adapter.n_heads, acts.input_ids.shape[0]
    groups = torch.arange(H) if kind == "query" else adapter.kv_heads()
    stats = space.position_stats(acts.position_ids)
    return score_queries(space, z, stats, torch.arange(n), groups, acts.input_ids.repeat_interleave(H), sim, 5)


def test_qk_norm_spaces_score_in_vocabulary_chunks(monkeypatch):
    """A QK-normed space's rows are not linear in W_E, so no product through W_E stands in
    for them. Without its whole (G, V, k) table (larger than ``table_bytes``, or given up)
    it makes its rows a vocabulary chunk at a time, never more than TABLE_CHUNK_BYTES of
    them, and scores as with the table: ranks and top-k ids identical, similarities equal
    up to float32 rounding (measured: relative differences under 1e-6; a product over a
    chunk of columns may round differently from one over all of them); a space that gives
    its table up scores bit for bit as one built without it."""
    monkeypatch.setattr(budget, "TABLE_CHUNK_BYTES", 2000)  # 97 rows: chunks of 10 (query) or 31 (key)
    made: list[int] = []
    make = VocabSpace._made_rows

    def counted(self, x, x_sq):
        made.append(x.shape[0])
        return make(self, x, x_sq)

    monkeypatch.setattr(VocabSpace, "_made_rows", counted)
    for family in ("qwen3", "olmo2"):
        adapter = adapter_for(tiny_new(family))
        acts = capture(adapter, IDS)
        value = build_space(adapter, "value", 1)
        assert not value.made and value.drop_table() and value.through_embeddings
        for kind in ("key", "query"):
            whole = build_space(adapter, kind, 1)
            made.clear()
            chunked = build_space(adapter, kind, 1, table_bytes=0)
            assert whole.made and whole.P is not None and chunked.made and chunked.P is None
            assert len(made) > 1 and max(made) * whole.groups * whole.dim * 4 <= 2000
            assert sum(made) == adapter.vocab_size
            assert not chunked.through_embeddings_for(10**6) and chunked.for_queries(10**6) is chunked
            assert torch.equal(whole.P_sq, chunked.P_sq)
            assert_close(chunked.rows(IDS[:4], 5), whole.rows(IDS[:4], 5), rtol=0, atol=1e-6)
            for sim in ("cosine", "euclidean"):
                w_own, w_rank, w_ids, w_vals = _head_scores(adapter, acts, whole, kind, sim)
                c_own, c_rank, c_ids, c_vals = _head_scores(adapter, acts, chunked, kind, sim)
                assert torch.equal(c_rank, w_rank) and torch.equal(c_ids, w_ids)
                assert_close(c_own, w_own, rtol=2e-6, atol=1e-6)  # a few float32 ulps
                assert_close(c_vals, w_vals, rtol=2e-6, atol=1e-6)
            made.clear()
            assert whole.drop_table() and whole.P is None and not whole.through_embeddings
            for got, want in zip(
                _head_scores(adapter, acts, whole, kind, "cosine"), _head_scores(adapter, acts, chunked, kind, "cosine")
            ):
                assert torch.equal(got, want)
            assert made  # its rows were made again, in chunks


def test_the_space_cache_bounds_qk_normed_spaces():
    """The space cache's budget holds for QK-normed spaces: one whose table does not fit the
    room left is built without it (before, such a space always held its table, and the
    cache, evicting whole spaces, stayed over its budget with one space)."""
    adapter = adapter_for(tiny_new("qwen3"))
    alone = build_space(adapter, "query", 0)
    alone.settle()
    assert alone.P is not None
    table = alone.P.untyped_storage().nbytes()
    cache = SpaceCache(adapter, max_bytes=alone.nbytes - table // 2)  # room for a query space's norms, not its table
    for layer in range(adapter.n_layers):
        for kind in ("query", "key"):
            space = cache.get(kind, layer)
            assert cache.nbytes <= cache.max_bytes
            assert kind == "key" or space.P is None


def test_lens(tiny):
    _, model, adapter = tiny
    check_lens(model, adapter, capture(adapter, IDS))


def test_analyse_every_site_space_and_the_lens(tiny):
    """site=all, space=all, --lens on a tiny model; head cells checked by brute force."""
    _, model, adapter = tiny
    n = IDS.shape[0]
    trail = analyse(
        adapter,
        SpaceCache(adapter, max_bytes=1),  # a budget this small makes every space give up what it may
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
    acts = capture(adapter, IDS)
    layer, t = adapter.n_layers - 1, 6
    for kind in ("key", "query", "value"):
        view = trail.view("heads", kind, "cosine")
        vec = head_vectors(adapter, acts, kind, layer)[t]
        with torch.no_grad():
            rows = _brute_head_rows(model, kind, layer, int(acts.position_ids[t])).float()
        for h in range(adapter.n_heads):
            g = h if kind == "query" else int(adapter.kv_heads()[h])
            s = similarity(vec[h][None], rows[g])[0]
            own = int(IDS[t])
            assert abs(view.self_sim[layer, h, t] - float(s[own])) < 1e-4, (kind, h)
            assert abs(int(view.rank[layer, h, t]) - int((s > s[own]).sum())) <= 1, (kind, h)
            assert float(view.self_sim[layer, h].max()) <= 1 + 1e-5
    assert {"attn_resid", "attn_resid_ln", "layer_out", "heads"} <= set(trail.frame().site)


def test_walkthrough(tiny):
    family, _, adapter = tiny
    acts = capture(adapter, IDS)
    for layer in range(adapter.n_layers):
        for head in (0, adapter.n_heads - 1):
            step = attention_step(adapter, acts, layer, head, 4)
            assert step.matches_model(ATOL), (layer, head, step.checks)
    q = projection_formula(adapter, 0, "q")
    want = {
        "qwen3": "q = RoPE_{p_t}(RMSNorm(W_Q x + b_Q))",
        "olmo2": "q = RoPE_{p_t}(RMSNorm[all heads](W_Q x + b_Q))",
        "phi3": "q = RoPE_{p_t}[0:4 of 8](W_Q x)",
        "opt": "q = W_Q x + b_Q",
    }
    assert q == want[family]
    step = attention_step(adapter, acts, 1, 0, 4)
    assert ("out" in step.formulas) == (family == "olmo2")  # its branch norm, shown where the model has it

    from tokentrail.app.render import step_summary

    class _Trail:  # step_summary reads only tokens and n_heads
        tokens = [str(i) for i in IDS.tolist()]
        n_heads = adapter.n_heads

    text = step_summary(_Trail(), step)
    assert ("normed inside the branch (`attn = RMSNorm(Σ_h z_h W_O[h] + b_O)`)" in text) == (family == "olmo2")


# ---- verify: passes, and fails when a module is broken ----------------------------------------
def test_verify_passes(tiny):
    _, _, adapter = tiny
    result = verify_adapter(adapter, IDS, layers=[0, -1], sample=8)
    assert result.passed, result.frame().to_string()
    assert not [r for r in result.rows if r.passed is None]  # every identity applies


def _scaled_output(module: torch.nn.Module, factor: float = 1.01):
    return module.register_forward_hook(lambda mod, args, out: out * factor)


@pytest.mark.parametrize(
    "family, where, fails",
    [
        ("qwen3", "attention output", "heads recombine"),
        ("olmo2", "attention output", "heads recombine"),
        ("phi3", "attention output", "heads recombine"),
        ("opt", "attention output", "heads recombine"),
        ("qwen3", "k_norm", "attention probabilities"),
        ("olmo2", "q_norm", "attention probabilities"),
    ],
)
def test_verify_fails_on_a_broken_module(family, where, fails):
    """A 1.01x scale on the model's attention output or QK-norm (its weights untouched, so
    the adapter reads the same numbers it did) is caught by the identity that covers it."""
    model = tiny_new(family)
    adapter = adapter_for(model)
    att = _layers(model)[1].self_attn
    # OLMo 2's branch output is its post_attention_layernorm's (an RMSNorm would undo a scale on o_proj)
    out = _branch_modules(model, 1)["attn"]
    module = {"attention output": out}.get(where)
    handle = _scaled_output(module if module is not None else getattr(att, where))
    try:
        result = verify_adapter(adapter, IDS, layers=[0, -1], sample=8)
    finally:
        handle.remove()
    assert fails in {r.identity for r in result.failed}, result.frame().to_string()


@pytest.mark.parametrize("family", ["qwen3", "olmo2"])
def test_verify_fails_without_the_qk_norm(family):
    """An adapter that forgot the QK-norm fails on the attention probabilities (its spaces
    agree with its own, wrong, keys: the attention is what reads the model)."""
    adapter = adapter_for(tiny_new(family))
    orig = adapter.projection

    def projection(layer, which):
        p = orig(layer, which)
        return type(p)(p.weight, p.bias)  # the norm left out

    adapter.projection = projection
    failed = {r.identity for r in verify_adapter(adapter, IDS, layers=[0, -1], sample=8).failed}
    assert "attention probabilities" in failed


def test_olmo2_without_its_branch_norm_fails():
    adapter = adapter_for(tiny_new("olmo2"))
    adapter.attn_out_norm = lambda layer: None
    assert "heads recombine" in {r.identity for r in verify_adapter(adapter, IDS, layers=[0], sample=8).failed}


# ---- what is modelled, capped or refused --------------------------------------------------------
def test_a_sliding_window_is_modelled_not_capped():
    """The window masks keys (tests/test_windows_more.py checks it against the model); the
    text length stays the model's own, and Qwen3 without use_sliding_window has no window."""
    phi = adapter_for(tiny_new("phi3", sliding_window=7))
    assert phi.max_tokens == 64 and [phi.attention_window(l) for l in range(2)] == [7, 7]
    qwen = tiny_new("qwen3", use_sliding_window=True, sliding_window=7, max_window_layers=1)
    assert qwen.config.layer_types == ["full_attention", "sliding_attention"]
    adapter = adapter_for(qwen)
    assert adapter.max_tokens == 64 and [adapter.attention_window(l) for l in range(2)] == [None, 7]
    plain = adapter_for(tiny_new("qwen3", sliding_window=7))  # use_sliding_window off: no layer slides
    assert plain.max_tokens == 64 and [plain.attention_window(l) for l in range(2)] == [None, None]


@pytest.mark.parametrize(
    "extra, message",
    [
        (dict(do_layer_norm_before=False), "do_layer_norm_before=False"),
        (dict(word_embed_proj_dim=16), "word_embed_proj_dim=16"),
    ],
)
def test_opt_variants_not_modelled_are_refused(extra, message):
    with pytest.raises(ModelError, match=message):
        adapter_for(tiny_new("opt", **extra))


def test_opt_without_affine_norms():
    """layer_norm_elementwise_affine=False: LayerNorms with no weight or bias."""
    adapter = adapter_for(tiny_new("opt", layer_norm_elementwise_affine=False))
    assert adapter.attn_input_norm(0).bias is None
    assert verify_adapter(adapter, IDS, layers=[0, -1], sample=8).passed


# ---- RoPE scaling (issue 23, point 2) ------------------------------------------------------------
ROPE_TYPES = {
    "default": {},
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 16},
    "longrope": {
        "short_factor": [1.0 + 0.1 * i for i in range(4)],
        "long_factor": [2.0 + 0.5 * i for i in range(4)],
        "original_max_position_embeddings": 16,
    },
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def _rope_model(family: str, rope_type: str) -> torch.nn.Module:
    cfg_cls, cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    params = {"rope_type": rope_type, "rope_theta": 10000.0, **ROPE_TYPES[rope_type]}
    cfg = cfg_cls(rope_parameters=params, **ROPE)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return _perturb(cls(cfg), seed=5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("rope_type", list(ROPE_TYPES))
def test_key_query_spaces_exact_for_every_rope_type(family, rope_type):
    """Row norms, dots and rows against the model's own rotary module; each token's own
    key at its position has cosine 1 (never above: YaRN's 1.139 on the old code); verify passes."""
    model = _rope_model(family, rope_type)
    adapter = adapter_for(model)
    acts = capture(adapter, IDS)
    g = torch.Generator().manual_seed(3)
    for kind in ("key", "query"):
        space = build_space(adapter, kind, 1)
        for p in (0, 7):
            with torch.no_grad():
                y = model.model.layers[1].input_layernorm(model.model.embed_tokens.weight)
                att = model.model.layers[1].self_attn
                lin = att.k_proj if kind == "key" else att.q_proj
                out = lin(y).view(1, y.shape[0], -1, adapter.d_head).transpose(1, 2)
                cos, sin = model.model.rotary_emb(out, torch.full((1, y.shape[0]), p))
                rows, _ = importlib.import_module(
                    f"transformers.models.{family}.modeling_{family}"
                ).apply_rotary_pos_emb(out, out, cos, sin)
            _check_space(space, rows[0].float(), torch.tensor([p]), g, IDS[:4], 1e-4)
        # layer 0: each token's own key/query is its own row at its position, cosine 1
        space = build_space(adapter, kind, 0)
        stats = space.position_stats(acts.position_ids)
        vec = head_vectors(adapter, acts, kind, 0)  # (n, H, dh)
        groups = torch.arange(adapter.n_heads) if kind == "query" else adapter.kv_heads()
        n = IDS.shape[0]
        block, index = space.cosine_rows(vec, stats, torch.arange(n), groups)
        sims = torch.empty_like(block)
        sims[index] = block
        sims = sims.view(n, adapter.n_heads, -1)
        assert float(sims.max()) <= 1 + 1e-5
        own = sims[torch.arange(n), :, IDS]
        assert_close(own, torch.ones_like(own), rtol=0, atol=1e-5)
    result = verify_adapter(adapter, IDS, layers=[0, -1], sample=8)
    assert result.passed, result.frame().to_string()
    scale = model.model.rotary_emb.attention_scaling
    assert (scale > 1.1) == (rope_type in ("yarn", "longrope"))  # the ones with an attention factor
    assert adapter.rotary(0).scale == scale


def test_longrope_caps_the_text_at_its_original_length():
    """Past original_max_position_embeddings LongRoPE switches every position's frequencies
    (the rotation then depends on the text's length): texts are capped there."""
    assert adapter_for(_rope_model("llama", "longrope")).max_tokens == 16
    assert adapter_for(_rope_model("llama", "yarn")).max_tokens == 64


def test_scaled_rope_formula_shows_the_factor():
    adapter = adapter_for(_rope_model("qwen2", "yarn"))
    assert projection_formula(adapter, 0, "k") == "k = 1.139·RoPE_{p_s}(W_K x + b_K)"


# ---- a saved folder through the command line -----------------------------------------------------
runner = CliRunner()


@pytest.mark.parametrize("family", NEW)
def test_cli_verify_and_trace_a_saved_folder(family, tmp_path, tokenizer, save_model):
    folder = save_model(tmp_path / family, tiny_new(family, vocab_size=len(tokenizer)), tokenizer)
    res = runner.invoke(app, ["verify", str(folder), "--text", "time flies like an arrow", "-q"])
    assert res.exit_code == 0, res.output
    assert f"({family})" in res.output and "identities hold" in res.output
    res = runner.invoke(
        app, ["trace", "time flies like an arrow", "-m", str(folder), "--site", "all", "--space", "all", "--lens"]
    )
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
