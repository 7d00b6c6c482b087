"""``tokentrail verify``: every SPEC identity, checked on the user's own model and text.

The parity tests prove the adapters on tiny random models of each family; this runs the
same identities on whatever checkpoint a user loads, so they can see that tokentrail's
numbers are their model's (TransformerLens users ask this in issue after issue). Each
identity compares a quantity tokentrail computes from its canonical layout with what the
framework itself produced in one forward pass (``hidden_states``, attention
probabilities, module outputs read by hooks, the model's own logits):

=================================  ===========================================================
identity                           compared
=================================  ===========================================================
``embedding``                      ``Emb(x_t, p_t)`` from canonical parts vs hidden state 0
``encodings own rows``             the ``encodings`` space's row of each token's own id at its
                                   position vs hidden state 0
``attention probabilities``        ``softmax(q.k / sqrt(d_head) + mask)`` from the canonical
                                   q/k maps (RoPE included) vs the model's attention weights
``heads (z = A v)``                the model's weights times the canonical values vs the
                                   vectors entering the output projection (SPEC ``heads``)
``heads recombine``                ``concat_h(z) @ W_O + b_O`` vs the attention sublayer's output
``layer_out``                      ``h_{l+1}`` vs ``hidden_states[l+1]`` (a decoder's last layer
                                   through its final norm, as the framework reports it)
``attn_resid_ln is the FFN input`` ``attn_resid_ln`` vs the input of the module that receives
                                   it (the FFN's norm, sequential pre-LN; the FFN itself,
                                   parallel residual; post-LN: the norm recomputed from
                                   ``attn_resid``)
``layer_out = attn_resid + mlp``   pre-norm models: the residual decomposition with the FFN
                                   sublayer's own output (SPEC ``mlp_out``)
``value/key/query spaces``         factorised dot products and squared norms vs explicit rows
                                   for a sample of ids, at the text's positions; layer 0's row
                                   of each token's own id vs its own q/k/v
``lens = logits``                  the logit lens' last layer vs the model's own logits
=================================  ===========================================================

Encoder-decoders: every identity above on each stack (rows named ``encoder: ...`` and
``decoder: ...``; the decoder runs on the text as its target, its teacher-forcing input,
and its "FFN input" row is cross-attention's query input ``attn_resid_ln``), and the
cross-attention identities:

=======================================  =====================================================
``encoder output``                       the encoder stack's last ``layer_out`` (through its
                                         final norm, T5) vs what the decoder pass's
                                         cross-attention read
``cross-attention probabilities``        ``softmax(scale * q.k)`` from the canonical cross
                                         maps (q from ``attn_resid_ln``, k from the encoder
                                         output) vs the model's cross-attention weights
``cross heads (z = A v)``                the model's weights times the canonical values of
                                         the encoder output vs the vectors entering the cross
                                         output projection (SPEC ``cross_heads``)
``cross heads recombine``                ``concat_h(z) @ W_O + b_O`` vs the cross-attention output
``cross_resid is the FFN input``         (post-LN: ``LN_cross``) ``cross_resid`` vs the input
                                         of the module after cross-attention
``layer_out = cross_resid + mlp_out``    pre-norm decoders: the residual decomposition
=======================================  =====================================================

Tolerance: ``|mine - model's| <= rtol * (|model's| + max|model's|)`` elementwise, i.e. 1e-4
relative to each number and to the tensor's scale (SPEC: 1e-4 relative, fp32); an
element far below the tensor's scale is not held to 1e-4 of its own tiny size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal, cast

import pandas as pd
import torch
from torch import Tensor, nn

from tokentrail.adapters import Adapter, EncoderStack
from tokentrail.engine.capture import Activations, capture, recorded
from tokentrail.engine.capture_cross import capture_cross
from tokentrail.engine.spaces import HEAD_SPACE_KINDS, build_space
from tokentrail.session.inputs import check_text, encode
from tokentrail.session.models import LoadedModel, load
from tokentrail.spec.errors import InputError

DEFAULT_TEXT = "Time flies like an arrow. Fruit flies like a banana."
RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    """One identity's outcome, over every layer (and head, token) it covers."""

    identity: str
    passed: bool | None  # None: not applicable to this model (``note`` says why)
    max_abs: float  # max |mine - model's|
    max_rel: float  # max_abs / max |model's|
    rtol: float
    atol: float  # the tolerance's absolute part: rtol * max |model's| at the worst place
    where: str = ""  # the layer/kind with the largest error
    note: str = ""

    @property
    def status(self) -> str:
        return "n/a" if self.passed is None else ("pass" if self.passed else "FAIL")


@dataclass(frozen=True)
class Verification:
    """All checks of one model on one text."""

    model: str
    family: str
    n_tokens: int
    causal: bool
    rows: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rows)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(r for r in self.rows if r.passed is False)

    def row(self, identity: str) -> Check:
        for r in self.rows:
            if r.identity == identity:
                return r
        raise KeyError(identity)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                dict(
                    identity=r.identity,
                    status=r.status,
                    max_abs=r.max_abs,
                    max_rel=r.max_rel,
                    rtol=r.rtol,
                    atol=r.atol,
                    where=r.where,
                    note=r.note,
                )
                for r in self.rows
            ]
        )


class _Worst:
    """Accumulates comparisons for one identity; keeps the worst."""

    def __init__(self, identity: str, rtol: float):
        self.identity, self.rtol = identity, rtol
        self.ok, self.abs, self.rel, self.atol, self.where = True, 0.0, 0.0, 0.0, ""

    def compare(self, mine: Tensor, own: Tensor, where: str = "") -> None:
        mine, own = mine.detach().float(), own.detach().float()
        if mine.shape != own.shape:
            self.ok, self.abs, self.rel = False, math.inf, math.inf
            self.where = f"{where} (shape {tuple(mine.shape)} vs {tuple(own.shape)})"
            return
        finite = torch.isfinite(own)
        scale = float(own[finite].abs().max()) if finite.any() else 0.0
        # equal infinities (masked scores) agree; any other non-finite value is an error
        diff = torch.where(mine == own, torch.zeros_like(own), (mine - own).abs()).nan_to_num(
            nan=math.inf, posinf=math.inf
        )
        atol = self.rtol * scale
        ok = bool((diff <= atol + self.rtol * own.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)).all())
        err = float(diff.max()) if diff.numel() else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        # report the worst place, a failing one before any passing one (the one kept so far
        # is failing exactly when some comparison has failed)
        if (not ok, rel) >= (not self.ok, self.rel):
            self.abs, self.rel, self.atol, self.where = err, rel, atol, where
        self.ok &= ok

    def result(self) -> Check:
        return Check(self.identity, self.ok, self.abs, self.rel, self.rtol, self.atol, self.where)


def _na(identity: str, rtol: float, why: str) -> Check:
    return Check(identity, None, math.nan, math.nan, rtol, math.nan, note=why)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _reading(modules: dict[str, nn.Module], *, inputs: bool) -> Iterator[dict[str, Tensor]]:
    """The first input (or output) of each named module during one forward pass, batch
    item 0, filled in when the block ends (through :func:`~tokentrail.engine.capture.recorded`)."""
    got: dict[str, Tensor] = {}
    with recorded([(mod, name, inputs) for name, mod in modules.items()], select=lambda t: t[0]) as store:
        yield got
    got.update({name: calls[0] for name, calls in store.items() if calls})


def verify_adapter(
    adapter: Adapter,
    input_ids: Tensor,
    *,
    model_name: str = "",
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Run every identity on ``adapter``'s model for ``input_ids`` (n,).

    ``layers``: the layers whose value/key/query spaces are checked (default: first,
    middle, last; building a space costs a V x d x d_head product); ``sample``: how many
    vocabulary ids (the text's own, then random ones) the space checks compare row by row."""
    say = progress or (lambda m: None)
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol}")
    if sample < 1:
        raise InputError(f"sample must be at least 1, got {sample}")
    L = adapter.n_layers
    if layers is None:
        layers = [0, L // 2, L - 1]
    bad = [l for l in layers if not -L <= l < L]
    if bad:
        raise InputError(
            f"layer {bad[0]} is out of range: the model has {L} layers (0..{L - 1}, or negative from the end)"
        )
    layers = sorted({l % L for l in layers})
    ids = input_ids.long()
    causal = adapter.resolve_causal(None)
    hps = [adapter.hook_points(l) for l in range(L)]
    receivers = {str(l): (hp.ffn_norm if hp.ffn_norm is not None else hp.ffn_input) for l, hp in enumerate(hps)}
    receivers = {k: m for k, m in receivers.items() if m is not None}
    pre_norm = adapter.norm_placement == "pre"
    mlps = {str(l): hp.mlp_out for l, hp in enumerate(hps)} if pre_norm else {}
    say("running the model once")
    with torch.no_grad(), _reading(receivers, inputs=True) as ffn_in, _reading(mlps, inputs=False) as mlp_out:
        acts = capture(adapter, ids)
    rows = [
        _embedding(adapter, acts, rtol),
        _own_rows(adapter, acts, rtol),
        *_attention(adapter, acts, causal, rtol),
        _recombine(adapter, acts, rtol),
        _layer_out(adapter, acts, rtol),
        _ffn_input(adapter, acts, ffn_in, rtol),
        _decomposition(adapter, acts, mlp_out, rtol)
        if pre_norm and adapter.stack != "decoder"
        else _na(
            "layer_out = attn_resid + mlp_out",
            rtol,
            "cross-attention adds in between: see layer_out = cross_resid + mlp_out"
            if pre_norm
            else "post-LN: a norm follows the residual add",
        ),
    ]
    say(f"checking value/key/query spaces at layers {', '.join(map(str, layers))}")
    rows.append(_spaces(adapter, acts, layers, sample, seed, rtol))
    say("checking the logit lens against the model's logits")
    rows.append(_lens(adapter, acts, rtol))
    return Verification(model_name or adapter.family, adapter.family, int(ids.shape[0]), causal, tuple(rows))


# ---- the identities ------------------------------------------------------------------------
def _embedding(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = _Worst("embedding", rtol)
    w.compare(adapter.embed(acts.input_ids, acts.position_ids), acts.hidden_states[0], "hidden state 0")
    return w.result()


def _own_rows(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = _Worst("encodings own rows", rtol)
    space = build_space(adapter, "encodings")
    rows = torch.stack([space.rows(v[None], int(p))[0, 0] for v, p in zip(acts.input_ids, acts.position_ids)])
    w.compare(rows, acts.hidden_states[0], "hidden state 0")
    return w.result()


_QKV: tuple[Literal["q", "k", "v"], ...] = ("q", "k", "v")


def _qkv(adapter: Adapter, acts: Activations, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """The layer's canonical q (n, H, dh), and k, v (n, H, dh) of each query head's KV head; RoPE applied."""
    norm = adapter.attn_input_norm(layer)
    h = acts.layer_input(layer)
    x = h if norm is None else norm(h)
    q, k, v = (adapter.projection(layer, w)(x) for w in _QKV)
    rot = adapter.rotary(layer)
    if rot is not None:
        q, k = rot(q, acts.position_ids), rot(k, acts.position_ids)
    kv = adapter.kv_heads()
    return q, k[:, kv], v[:, kv]


def _attention(adapter: Adapter, acts: Activations, causal: bool, rtol: float) -> list[Check]:
    probs, heads = _Worst("attention probabilities", rtol), _Worst("heads (z = A v)", rtol)
    n = acts.input_ids.shape[0]
    mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1) if causal else torch.zeros(n, n)
    for layer in range(adapter.n_layers):
        q, k, v = _qkv(adapter, acts, layer)
        scores = torch.einsum("thk,shk->hts", q, k) * adapter.attention_scale() + mask  # (H, n, n)
        bias = adapter.attention_bias(layer, n)  # T5's relative position bias
        A = (scores if bias is None else scores + bias).softmax(-1)
        probs.compare(A, acts.attentions[layer], f"layer {layer}")
        heads.compare(torch.einsum("hts,shk->thk", acts.attentions[layer], v), acts.z[layer], f"layer {layer}")
    return [probs.result(), heads.result()]


def _recombine(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = _Worst("heads recombine", rtol)
    for layer in range(adapter.n_layers):
        w_o, b_o = adapter.output_projection(layer)
        got = torch.einsum("thk,hkd->td", acts.z[layer], w_o)
        w.compare(got if b_o is None else got + b_o, acts.attn[layer], f"layer {layer}")
    return w.result()


def _layer_out(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = _Worst("layer_out", rtol)
    L = adapter.n_layers
    for layer in range(L):
        mine = acts.layer_out[layer]
        norm = adapter.final_norm() if layer == L - 1 else None
        if norm is not None:  # the framework reports the last hidden state after it
            mine = norm(mine.to(next(norm.parameters()).dtype))
        w.compare(mine, acts.hidden_states[layer + 1], f"layer {layer}")
    return w.result()


def _ffn_input(adapter: Adapter, acts: Activations, ffn_in: dict[str, Tensor], rtol: float) -> Check:
    w = _Worst("attn_resid_ln is the FFN input", rtol)
    if len(ffn_in) != adapter.n_layers:
        return _na(w.identity, rtol, "the adapter names no module that receives it")
    for layer in range(adapter.n_layers):
        hp = adapter.hook_points(layer)
        if adapter.norm_placement == "post":
            # the canonical norm, recomputed, is what capture read at the FFN's first module
            ln = adapter.attn_resid_norm(layer)
            w.compare(ln(acts.attn_resid[layer]), acts.attn_resid_ln[layer], f"layer {layer} (norm of attn_resid)")
        where = "FFN norm input" if hp.ffn_norm is not None else "FFN input"
        w.compare(acts.attn_resid_ln[layer], ffn_in[str(layer)], f"layer {layer} ({where})")
    return w.result()


def _decomposition(adapter: Adapter, acts: Activations, mlp_out: dict[str, Tensor], rtol: float) -> Check:
    w = _Worst("layer_out = attn_resid + mlp_out", rtol)
    for layer in range(adapter.n_layers):
        w.compare(acts.attn_resid[layer] + mlp_out[str(layer)], acts.layer_out[layer], f"layer {layer}")
    return w.result()


def _spaces(adapter: Adapter, acts: Activations, layers: list[int], sample: int, seed: int, rtol: float) -> Check:
    w = _Worst("value/key/query spaces", rtol)
    g = torch.Generator().manual_seed(seed)
    V = adapter.vocab_size
    own = torch.unique(acts.input_ids)[:sample]
    extra = torch.randint(0, V, (max(sample - own.shape[0], 0),), generator=g)
    probe = torch.cat([own, extra])
    positions = torch.unique(acts.position_ids)
    positions = positions[torch.linspace(0, len(positions) - 1, min(4, len(positions))).long()]
    for layer in layers:
        q0, k0, v0 = (None, None, None) if layer != 0 else _qkv_own(adapter, acts)
        for kind in HEAD_SPACE_KINDS:
            space = build_space(adapter, kind, layer)
            stats = space.position_stats(positions)
            r = torch.randn(len(positions), space.groups, space.dim, generator=g)
            dots = space.dots(r, stats, torch.arange(len(positions)))  # (P, G, V)
            for i, p in enumerate(positions.tolist()):
                rows = space.rows(probe, p)  # (m, G, k)
                w.compare(
                    dots[i][:, probe], torch.einsum("gk,mgk->gm", r[i], rows), f"{kind}@{layer} dots, position {p}"
                )
                w.compare(stats.sq_norm[i][:, probe], rows.pow(2).sum(-1).T, f"{kind}@{layer} norms, position {p}")
            if layer == 0:
                # the row of each token's own id at its position is its own q/k/v in layer 0
                mine = torch.stack([space.rows(v[None], int(p))[0] for v, p in zip(acts.input_ids, acts.position_ids)])
                w.compare(mine, {"query": q0, "key": k0, "value": v0}[kind], f"{kind}@0 own rows")
    return w.result()


def _qkv_own(adapter: Adapter, acts: Activations) -> tuple[Tensor, Tensor, Tensor]:
    """Layer 0's q (n, H, dh), k and v (n, G, dh) of the text, from hidden state 0."""
    norm = adapter.attn_input_norm(0)
    x = acts.hidden_states[0] if norm is None else norm(acts.hidden_states[0])
    q, k, v = (adapter.projection(0, w)(x) for w in _QKV)
    rot = adapter.rotary(0)
    if rot is not None:
        q, k = rot(q, acts.position_ids), rot(k, acts.position_ids)
    return q, k, v


def _lens(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    identity = "lens = logits"
    head = adapter.lens_head()
    if head is None:
        return _na(identity, rtol, adapter.lens_unavailable_reason())
    w = _Worst(identity, rtol)
    with torch.no_grad():
        logits = adapter.model_logits(acts.input_ids, acts.position_ids)
        w.compare(head(acts.layer_out[-1]), logits, f"layer {adapter.n_layers - 1}")
    return w.result()


# ---- the user's model and text -----------------------------------------------------------------
def verify(
    model="minilm",
    text: str = DEFAULT_TEXT,
    *,
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    allow_pickle: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Check every SPEC identity on ``model`` (a name, folder, hub id or loaded model) and ``text``.

    Returns a :class:`Verification`; ``.passed`` is False when any identity fails."""
    check_text(text)
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol}")
    loaded = model if isinstance(model, LoadedModel) else load(model, allow_pickle=allow_pickle, progress=progress)
    enc = encode(loaded, text)
    if loaded.adapter.is_seq2seq:
        with loaded.lock:
            labels = torch.tensor(loaded.tokenizer(text_target=text)["input_ids"], dtype=torch.long)
        encoder = cast(EncoderStack, loaded.adapter)  # an encoder-decoder's adapter is its encoder stack
        decoder_ids = encoder.decoder_input(labels)
        return verify_seq2seq(
            encoder,
            enc.ids,
            decoder_ids,
            model_name=loaded.name,
            rtol=rtol,
            layers=layers,
            sample=sample,
            progress=progress,
        )
    return verify_adapter(
        loaded.adapter, enc.ids, model_name=loaded.name, rtol=rtol, layers=layers, sample=sample, progress=progress
    )


def verify_seq2seq(
    adapter: EncoderStack,
    source_ids: Tensor,
    decoder_ids: Tensor,
    *,
    model_name: str = "",
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Every identity on both stacks of an encoder-decoder (``adapter``: its encoder stack)
    for ``source_ids`` (m,) and ``decoder_ids`` (n,), and the cross-attention identities."""
    say = progress or (lambda m: None)
    dec = adapter.decoder_stack()
    say("encoder stack")
    enc_v = verify_adapter(
        adapter,
        source_ids,
        model_name=model_name,
        rtol=rtol,
        layers=layers,
        sample=sample,
        seed=seed,
        progress=progress,
    )
    say("decoder stack")
    dec_v = verify_adapter(
        dec.bind(source_ids),
        decoder_ids,
        model_name=model_name,
        rtol=rtol,
        layers=layers,
        sample=sample,
        seed=seed,
        progress=progress,
    )
    say("cross-attention")
    with torch.no_grad():
        enc_acts = capture(adapter, source_ids.long())
        acts = capture_cross(dec, source_ids, decoder_ids)
    rows = [replace(r, identity=f"encoder: {r.identity}") for r in enc_v.rows]
    rows += [replace(r, identity=f"decoder: {r.identity}") for r in dec_v.rows]
    rows += [replace(r, identity=f"decoder: {r.identity}") for r in _cross(adapter, dec, enc_acts, acts, rtol)]
    return Verification(
        model_name or adapter.family,
        adapter.family,
        int(source_ids.shape[0]) + int(decoder_ids.shape[0]),
        True,
        tuple(rows),
    )


def _cross(encoder: Adapter, dec, enc_acts: Activations, acts, rtol: float) -> list[Check]:
    out_w, probs, heads, recombine, resid, decomp = (
        _Worst(name, rtol)
        for name in (
            "encoder output",
            "cross-attention probabilities",
            "cross heads (z = A v)",
            "cross heads recombine",
            "cross_resid is the FFN input",
            "layer_out = cross_resid + mlp_out",
        )
    )
    last = enc_acts.layer_out[-1]
    norm = encoder.final_norm()
    if norm is not None:
        last = norm(last.to(next(norm.parameters()).dtype)).float()
    out_w.compare(last, acts.encoder_out, "last encoder layer")
    for layer in range(dec.n_layers):
        qnorm = dec.cross_query_norm(layer)
        x = acts.attn_resid_ln[layer]
        q = dec.cross_projection(layer, "q")(x if qnorm is None else qnorm(x))  # (n, H, dh)
        k = dec.cross_projection(layer, "k")(acts.encoder_out)  # (m, H, dh)
        v = dec.cross_projection(layer, "v")(acts.encoder_out)
        A = (torch.einsum("thk,shk->hts", q, k) * dec.cross_scale()).softmax(-1)
        probs.compare(A, acts.cross_attentions[layer], f"layer {layer}")
        heads.compare(
            torch.einsum("hts,shk->thk", acts.cross_attentions[layer], v), acts.cross_z[layer], f"layer {layer}"
        )
        w_o, b_o = dec.cross_output_projection(layer)
        got = torch.einsum("thk,hkd->td", acts.cross_z[layer], w_o)
        recombine.compare(got if b_o is None else got + b_o, acts.cross_attn[layer], f"layer {layer}")
        rn = dec.cross_points(layer).receiver_norm
        c = acts.cross_resid[layer]
        resid.compare(c if rn is None else rn(c), acts.cross_received[layer], f"layer {layer}")
        decomp.compare(c + acts.mlp_out[layer], acts.layer_out[layer], f"layer {layer}")
    checks = [w.result() for w in (out_w, probs, heads, recombine, resid)]
    if dec.norm_placement == "pre":
        checks.append(decomp.result())
    else:
        checks.append(_na(decomp.identity, rtol, "post-LN: a norm follows the residual add"))
    return checks
