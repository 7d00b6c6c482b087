"""The identities :func:`tokentrail.session.verification.verify` checks, one function each,
and how a check is scored (:class:`Worst`, kept as a :class:`Check`).

Each compares a quantity tokentrail computes from the adapter's canonical layout with what
the framework produced in one forward pass; the table of identities is in
:mod:`tokentrail.session.verification`.

Tolerance, elementwise, each element against its own row (the last dimension: a token's
hidden vector, a head's vector, a query's attention row, a group's dots over ids)::

    |mine - model's| <= rtol * (|model's| + median|row|) + eps32 * max|row|

``rtol * median|row|`` is the absolute part at a typical element's scale; the median, not
the maximum or the RMS, so that one huge dimension (SmolLM2 has 24,602 at layer 15)
does not loosen every other element of its row. ``eps32 * max|row|`` (one fp32 rounding
step of the row's largest element, ``eps32 = 2**-23``) is the floor that rounding
cannot go below, e.g. when the median is 0 (an attention row mostly masked) or a
probability underflows. Non-finite values count as 0 in the median and maximum; equal
infinities (masked scores) agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.engine.capture import Activations
from tokentrail.engine.spaces import HEAD_SPACE_KINDS, build_space
from tokentrail.spec.errors import ModelError


@dataclass(frozen=True)
class Check:
    """One identity's outcome, over every layer (and head, token) it covers."""

    identity: str
    passed: bool | None  # None: not applicable to this model (``note`` says why)
    max_abs: float  # max |mine - model's|
    max_rel: float  # max_abs / max |model's|
    rtol: float
    atol: float  # the tolerance's absolute part, rtol * median|row| + eps32 * max|row|, at the worst element
    where: str = ""  # the layer/kind of the worst element (largest error relative to its tolerance)
    note: str = ""
    ratio: float = 0.0  # the worst element's |mine - model's| / its tolerance: passes when <= 1

    @property
    def status(self) -> str:
        return "n/a" if self.passed is None else ("pass" if self.passed else "FAIL")


EPS32 = float(torch.finfo(torch.float32).eps)


def tolerance(own: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Each element's absolute part ``rtol * median|row| + eps32 * max|row|`` and whole
    tolerance (plus ``rtol * |own|``), rows along the last dimension (see the module doc)."""
    mag = own.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    rows = mag.reshape(1) if mag.dim() == 0 else mag
    atol = rtol * rows.median(-1, keepdim=True).values + EPS32 * rows.amax(-1, keepdim=True)
    atol = atol.expand_as(rows).reshape(mag.shape)
    return atol, atol + rtol * mag


class Worst:
    """Accumulates comparisons for one identity; keeps the worst."""

    def __init__(self, identity: str, rtol: float):
        self.identity, self.rtol = identity, rtol
        self.ok, self.abs, self.rel, self.atol, self.ratio, self.where = True, 0.0, 0.0, 0.0, 0.0, ""

    def compare(self, mine: Tensor, own: Tensor, where: str = "") -> None:
        mine, own = mine.detach().float(), own.detach().float()
        if mine.shape != own.shape:
            self.ok, self.abs, self.rel, self.ratio = False, math.inf, math.inf, math.inf
            self.where = f"{where} (shape {tuple(mine.shape)} vs {tuple(own.shape)})"
            return
        if own.numel() == 0:
            return
        finite = torch.isfinite(own)
        scale = float(own[finite].abs().max()) if finite.any() else 0.0
        # equal infinities (masked scores) agree; any other non-finite value is an error
        diff = torch.where(mine == own, torch.zeros_like(own), (mine - own).abs()).nan_to_num(
            nan=math.inf, posinf=math.inf
        )
        atol, tol = tolerance(own, self.rtol)
        ok = bool((diff <= tol).all())
        ratios = torch.where(diff == 0, torch.zeros_like(diff), diff / tol)  # x / 0 = inf: a non-zero error
        at = int(ratios.argmax())
        ratio = float(ratios.flatten()[at])
        err = float(diff.max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        # report the worst place, a failing one before any passing one (the one kept so far
        # is failing exactly when some comparison has failed)
        if (not ok, ratio) >= (not self.ok, self.ratio):
            self.ratio, self.atol, self.where = ratio, float(atol.flatten()[at]), where
        self.abs, self.rel = max(self.abs, err), max(self.rel, rel)
        self.ok &= ok

    def result(self) -> Check:
        return Check(self.identity, self.ok, self.abs, self.rel, self.rtol, self.atol, self.where, ratio=self.ratio)


def not_applicable(identity: str, rtol: float, why: str) -> Check:
    return Check(identity, None, math.nan, math.nan, rtol, math.nan, note=why, ratio=math.nan)


# ---- the identities ------------------------------------------------------------------------
def embedding(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = Worst("embedding", rtol)
    w.compare(adapter.embed(acts.input_ids, acts.position_ids), acts.hidden_states[0], "hidden state 0")
    return w.result()


def own_rows(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = Worst("encodings own rows", rtol)
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


def attention(adapter: Adapter, acts: Activations, causal: bool, rtol: float) -> list[Check]:
    probs, heads = Worst("attention probabilities", rtol), Worst("heads (z = A v)", rtol)
    n = acts.input_ids.shape[0]
    for layer in range(adapter.n_layers):
        q, k, v = _qkv(adapter, acts, layer)
        # scaled (and soft-capped) scores, then the causal mask and any sliding window
        scores = adapter.attention_logits(layer, torch.einsum("thk,shk->hts", q, k))  # (H, n, n)
        scores = scores.masked_fill(adapter.hidden_keys(layer, n, causal, scores.device), float("-inf"))
        bias = adapter.attention_bias(layer, n)  # T5's relative position bias
        A = (scores if bias is None else scores + bias).softmax(-1)
        probs.compare(A, acts.attentions[layer], f"layer {layer}")
        heads.compare(torch.einsum("hts,shk->thk", acts.attentions[layer], v), acts.z[layer], f"layer {layer}")
    return [probs.result(), heads.result()]


def recombine(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = Worst("heads recombine", rtol)
    for layer in range(adapter.n_layers):
        w_o, b_o = adapter.output_projection(layer)
        got = torch.einsum("thk,hkd->td", acts.z[layer], w_o)
        got = got if b_o is None else got + b_o
        norm = adapter.attn_out_norm(layer)  # OLMo 2: a norm inside the branch, before the residual add
        w.compare(got if norm is None else norm(got), acts.attn[layer], f"layer {layer}")
    return w.result()


def layer_out(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    w = Worst("layer_out", rtol)
    L = adapter.n_layers
    for layer in range(L):
        mine = acts.layer_out[layer]
        norm = adapter.final_norm() if layer == L - 1 else None
        if norm is not None:  # the framework reports the last hidden state after it
            mine = norm(mine.to(adapter.dtype))
        w.compare(mine, acts.hidden_states[layer + 1], f"layer {layer}")
    return w.result()


def ffn_input(adapter: Adapter, acts: Activations, ffn_in: dict[str, Tensor], rtol: float) -> Check:
    w = Worst("attn_resid_ln is the FFN input", rtol)
    if len(ffn_in) != adapter.n_layers:
        return not_applicable(w.identity, rtol, "the adapter names no module that receives it")
    for layer in range(adapter.n_layers):
        hp = adapter.hook_points(layer)
        if adapter.norm_placement == "post":
            # the canonical norm, recomputed, is what capture read at the FFN's first module
            ln = adapter.attn_resid_norm(layer)
            w.compare(ln(acts.attn_resid[layer]), acts.attn_resid_ln[layer], f"layer {layer} (norm of attn_resid)")
        where = "FFN norm input" if hp.ffn_norm is not None else "FFN input"
        w.compare(acts.attn_resid_ln[layer], ffn_in[str(layer)], f"layer {layer} ({where})")
    return w.result()


def decomposition(adapter: Adapter, acts: Activations, mlp_out: dict[str, Tensor], rtol: float) -> Check:
    w = Worst("layer_out = attn_resid + mlp_out", rtol)
    for layer in range(adapter.n_layers):
        w.compare(acts.attn_resid[layer] + mlp_out[str(layer)], acts.layer_out[layer], f"layer {layer}")
    return w.result()


def spaces(adapter: Adapter, acts: Activations, layers: list[int], sample: int, seed: int, rtol: float) -> Check:
    w = Worst("value/key/query spaces", rtol)
    g = torch.Generator().manual_seed(seed)
    V = adapter.vocab_size
    own = torch.unique(acts.input_ids)[:sample]
    extra = torch.randint(0, V, (max(sample - own.shape[0], 0),), generator=g)
    probe = torch.cat([own, extra])
    positions = torch.unique(acts.position_ids)
    positions = positions[torch.linspace(0, len(positions) - 1, min(4, len(positions))).long()]
    refused: list[str] = []  # spaces the adapter says do not factorise (one line each, at build)
    for layer in layers:
        q0, k0, v0 = (None, None, None) if layer != 0 else _qkv_own(adapter, acts)
        for kind in HEAD_SPACE_KINDS:
            try:
                space = build_space(adapter, kind, layer)
            except ModelError:
                refused.append(f"{kind}@{layer}")
                continue
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
    if refused and len(refused) == len(layers) * len(HEAD_SPACE_KINDS):
        return not_applicable(w.identity, rtol, f"{adapter.family}: these spaces do not factorise (trace refuses them)")
    out = w.result()
    return replace(out, note=f"not factorised, refused by trace: {', '.join(refused)}") if refused else out


def _qkv_own(adapter: Adapter, acts: Activations) -> tuple[Tensor, Tensor, Tensor]:
    """Layer 0's q (n, H, dh), k and v (n, G, dh) of the text, from hidden state 0."""
    norm = adapter.attn_input_norm(0)
    x = acts.hidden_states[0] if norm is None else norm(acts.hidden_states[0])
    q, k, v = (adapter.projection(0, w)(x) for w in _QKV)
    rot = adapter.rotary(0)
    if rot is not None:
        q, k = rot(q, acts.position_ids), rot(k, acts.position_ids)
    return q, k, v


def lens(adapter: Adapter, acts: Activations, rtol: float) -> Check:
    identity = "lens = logits"
    head = adapter.lens_head()
    if head is None:
        return not_applicable(identity, rtol, adapter.lens_unavailable_reason())
    w = Worst(identity, rtol)
    with torch.no_grad():
        logits = adapter.model_logits(acts.input_ids, acts.position_ids)
        w.compare(head(acts.layer_out[-1]), logits, f"layer {adapter.n_layers - 1}")
    return w.result()


def cross(encoder: Adapter, dec, enc_acts: Activations, acts, rtol: float) -> list[Check]:
    out_w, probs, heads, recombine, resid, decomp = (
        Worst(name, rtol)
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
        checks.append(not_applicable(decomp.identity, rtol, "post-LN: a norm follows the residual add"))
    return checks
