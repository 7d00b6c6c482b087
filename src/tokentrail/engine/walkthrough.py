"""How one attention head computed one token's output, step by step, with live numbers.

For token ``t``, layer ``l`` and head ``h`` this recomputes, from the captured layer input
and the adapter's canonical projections, every step of scaled dot-product attention:

    x      = AttnIn_l(h_l)                       (identity for post-LN models)
    q_t    = W_Q[h] x_t + b_Q[h]                 (RoPE at p_t for rotary models; no b_Q where the model has none)
    k_s    = W_K[g] x_s + b_K[g]                 (g = the KV head of h; RoPE at p_s likewise)
    score  = q_t . k_s,   scaled = score / sqrt(d_head),   masked for s > t if causal
                                                 (T5: unscaled, plus its relative position bias;
                                                 GPT-2: its scale options; Gemma: / sqrt(query_pre_attn_scalar)
                                                 then soft-capped; sliding windows mask s <= t - window too)
    w      = softmax(scaled)                     == the model's attention probabilities
    z      = sum_s w_s v_s                       == the SPEC ``heads`` site vector
    attn   = sum_h z_h W_O[h] + b_O              == the attention sublayer's output
                                                 (Gemma 2/3: then its post-attention RMSNorm)
    resid  = h_l,t + attn                        == the ``attn_resid`` site
    normed = LN(resid)                           (post-LN only) == ``attn_resid_ln``

and reports how far each recomputed quantity is from what the model itself produced, so
the page can show numbers that are the model's, not an approximation of it. This is a
re-derivation for display and checking, not a second forward pass of the product: the
results still come from :func:`tokentrail.engine.capture.capture`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.engine.capture import Activations, head_qkv
from tokentrail.spec import display
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import check_index


class _StepFace:
    """What a notebook and the app show of one head's step (self- or cross-attention):
    the checks' largest error, a tidy frame, a figure, a short repr and an HTML card.
    ``_sources`` names the tokens the head read (the text's, or the encoder's)."""

    checks: dict[str, float]
    tokens: tuple[str, ...]
    layer: int
    head: int
    token: int
    formulas: dict[str, str]
    scores: Tensor
    scaled: Tensor
    weights: Tensor

    def _sources(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def max_error(self) -> float:
        """Largest absolute difference from the model's own numbers, over every check."""
        return max(self.checks.values(), default=0.0)

    def frame(self) -> Any:
        """Tidy: one row per source token (columns source, source_str, score, scaled, weight,
        masked), in the text's order."""
        import pandas as pd

        m = self.weights.shape[0]
        masked = getattr(self, "masked", None)
        return pd.DataFrame(
            {
                "source": range(m),
                "source_str": [_text(self._sources(), s) for s in range(m)],
                "score": self.scores.double().cpu().numpy(),
                "scaled": self.scaled.double().cpu().numpy(),
                "weight": self.weights.double().cpu().numpy(),
                "masked": masked.cpu().numpy() if masked is not None else False,
            }
        )

    def plot(self, **kw: Any) -> Any:
        """The weights this head gave each source token (a bar each), the scaled scores on hover."""
        return _step_figure(self, **kw)

    def __repr__(self) -> str:
        w = self.weights
        top = int(w.argmax())
        return (
            f"<{type(self).__name__} layer {self.layer}, head {self.head}, token {self.token} "
            f"{_text(self.tokens, self.token)!r}: {w.shape[0]} source tokens, most weight {float(w[top]):.3f} on "
            f"{top} {_text(self._sources(), top)!r}; max error vs the model {self.max_error:.1e}>"
        )

    def _repr_html_(self) -> str:
        src = self._sources()
        rows = [
            ("head", f"layer {self.layer}, head {self.head}, token {self.token}: {_text(self.tokens, self.token)}"),
            ("formulas", "; ".join(self.formulas.values()) or "-"),
            (
                "matches the model",
                f"yes (max error {self.max_error:.1e})" if self.max_error <= 1e-4 else f"no ({self.max_error:.1e})",
            ),
        ]
        lines = [
            [
                f"{s}: {display.short(_text(src, s), 12)}",
                f"{float(self.scaled[s]):.3f}",
                f"{float(self.weights[s]):.3f}",
            ]
            for s in range(self.weights.shape[0])
        ]
        table = display.table(
            ["source", "scaled score", "weight"],
            lines,
            caption="each source token's score and weight (.plot() draws them)",
        )
        heat = display.heat_table(
            [self.weights.tolist()],
            ["weight"],
            [f"{s}:{_text(src, s)}" for s in range(self.weights.shape[0])],
            caption="the weights as colour",
            low=0.0,
            high=1.0,
        )
        return display.block(display.summary(rows, type(self).__name__), table, heat)


@dataclass(frozen=True, repr=False)
class AttentionStep(_StepFace):
    """The live numbers of one head's attention for one token (all float32 tensors)."""

    layer: int
    head: int
    token: int
    kv_head: int
    d_head: int
    causal: bool
    query: Tensor  # (d_head,) q_t
    keys: Tensor  # (n, d_head) k_s
    values: Tensor  # (n, d_head) v_s
    scores: Tensor  # (n,) q_t . k_s
    scaled: Tensor  # (n,) scores / sqrt(d_head) (or the model's own scale and soft cap), -inf where masked
    masked: Tensor  # (n,) bool: True where the causal mask (or a sliding window) hid the source token
    weights: Tensor  # (n,) softmax(scaled)
    z: Tensor  # (d_head,) sum_s w_s v_s
    head_out: Tensor  # (d,) z @ W_O[h]: this head's share of the attention output (before any post-norm)
    attn_out: Tensor  # (d,) all heads through W_O, plus b_O (then Gemma 2/3's post-attention norm)
    layer_in: Tensor  # (d,) h_{l,t}, the residual stream entering the layer
    residual: Tensor  # (d,) layer_in + attn_out
    normed: Tensor | None  # (d,) the post-attention LayerNorm's output (post-LN models)
    checks: dict[str, float] = field(default_factory=dict)  # max |recomputed - model's|
    # parallel attention + MLP (GPT-NeoX, Phi): the FFN reads the layer input h_l, not ``residual``
    parallel: bool = False
    # what this model computes, as text: bias terms only where it has them, RoPE where it rotates
    formulas: dict[str, str] = field(default_factory=dict)  # "q", "k", "v" -> e.g. "q = RoPE_{p_t}(W_Q x)"
    tokens: tuple[str, ...] = ()  # the text's tokens, for display (empty when not known)

    def matches_model(self, atol: float = 1e-4) -> bool:
        return self.max_error <= atol

    def _sources(self) -> tuple[str, ...]:
        return self.tokens


def _text(tokens: tuple[str, ...], i: int) -> str:
    return tokens[i] if i < len(tokens) else str(i)


def _step_figure(step: Any, *, height: int = 320) -> Any:
    """A bar per source token: the weight one head gave it (an attention step's picture)."""
    import plotly.graph_objects as go

    src = step._sources()
    m = step.weights.shape[0]
    labels = [f"{s}: {_text(src, s)}".replace("<", "&lt;") for s in range(m)]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=step.weights.double().cpu().numpy(),
            customdata=step.scaled.double().cpu().numpy(),
            marker_color="#1c5aa6",
            hovertemplate="%{x}<br>weight %{y:.3f}<br>scaled score %{customdata:.3f}<extra></extra>",
        )
    )
    who = _text(step.tokens, step.token).replace("<", "&lt;")
    fig.update_layout(
        title=dict(
            text=f"Layer {step.layer}, head {step.head}: where token {step.token} ({who}) looks"
            "<br><sup>bar: the softmax weight on each source token (they sum to 1)</sup>",
            x=0.01,
            xanchor="left",
        ),
        height=height,
        yaxis=dict(range=[0, 1], title_text="weight"),
        xaxis=dict(type="category", tickangle=-45),
        plot_bgcolor="white",
        paper_bgcolor="white",
    )
    return fig


_NORM_NAMES = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}


def projection_formula(adapter: Adapter, layer: int, which: str) -> str:
    """What layer ``layer``'s query/key/value map does, as the model does it: ``"q = W_Q x + b_Q"``
    (bias only where the model has one), ``"q = RoPE_{p_t}(W_Q x)"`` for rotary models, and
    ``"q = RoPE_{p_t}[0:16 of 64](W_Q x + b_Q)"`` when only the first 16 of 64 head dims
    rotate (partial rotary: the rest pass through unrotated); a QK-norm shows as
    ``RMSNorm(W_Q x)`` (``RMSNorm[all heads]`` over all heads at once), RoPE's
    attention scaling as a factor in front (``1.139·RoPE_{p_t}(...)``)."""
    if which not in ("q", "k", "v"):
        raise InputError(f"unknown projection {which!r}: choose q, k or v")
    qkv = cast(Literal["q", "k", "v"], which)  # checked just above
    name = which.upper()
    proj = adapter.projection(layer, qkv)
    affine = f"W_{name} x" + ("" if proj.bias is None else f" + b_{name}")
    if proj.norm is not None:  # QK-norm: per head, or over all heads at once
        kind = _NORM_NAMES[proj.norm.norm.kind]
        affine = f"{kind}{'[all heads]' if proj.norm.joint else ''}({affine})"
    rot = adapter.rotary(layer) if which != "v" else None
    if rot is None:
        return f"{which} = {affine}"
    pos = "p_t" if which == "q" else "p_s"
    dh = adapter.d_head
    rd = getattr(rot, "rotary_dim", dh)
    part = "" if rd >= dh else f"[0:{rd} of {dh}]"
    scale = "" if rot.scale == 1.0 else f"{rot.scale:.4g}·"  # RoPE's attention_scaling (YaRN, LongRoPE)
    return f"{which} = {scale}RoPE_{{{pos}}}{part}({affine})"


def _scaling_formula(adapter: Adapter, layer: int, biased: bool) -> str:
    """How the model turns q·k into the softmax's input: ``"q·k / √64"``, T5's
    ``"q·k + relative position bias"`` (unscaled), GPT-2's ``"q·k × 0.0625"`` (by inverse
    layer index), Gemma 2's ``"50·tanh(q·k / √256 / 50)"`` (soft-capped), and the sliding
    window where one hides keys (``"…, keys s > t - 4096 only"``)."""
    scale = adapter.attention_scale(layer)
    root = scale**-2 if scale > 0 else 0.0
    if abs(scale - adapter.d_head**-0.5) < 1e-12:
        core = f"q·k / √{adapter.d_head}"
    elif scale == 1.0:
        core = "q·k (unscaled)"
    elif abs(root - round(root)) < 1e-6:
        core = f"q·k / √{round(root)}"  # Gemma's query_pre_attn_scalar
    else:
        core = f"q·k × {scale:.4g}"
    cap = adapter.attention_softcap(layer)
    if cap is not None:
        core = f"{cap:g}·tanh({core} / {cap:g})"
    window = adapter.attention_window(layer)
    return (
        core
        + (f" + {adapter.attention_bias_name()}" if biased else "")
        + ("" if window is None else f", keys s > t - {window} only (sliding window)")
    )


def attention_step(
    adapter: Adapter, acts: Activations, layer: int, head: int, token: int, *, causal: bool | None = None
) -> AttentionStep:
    """Recompute head ``head`` of layer ``layer`` for token ``token`` and check it against ``acts``.

    ``acts`` must come from :func:`tokentrail.engine.capture.capture` on the same adapter;
    ``causal`` is the mask that capture ran with (None: the model's default).
    """
    n, L, H = acts.input_ids.shape[0], adapter.n_layers, adapter.n_heads
    layer = check_index(layer, L, "layer", f"the model has {L} layers")
    head = check_index(head, H, "head", f"the model has {H} heads")
    token = check_index(token, n, "token index", f"the text has {n} tokens")
    causal = acts.causal if causal is None else adapter.resolve_causal(causal)
    with torch.no_grad():
        return _step(adapter, acts, layer, head, token, causal)


def _step(adapter: Adapter, acts: Activations, layer: int, head: int, token: int, causal: bool) -> AttentionStep:
    n, dh = acts.input_ids.shape[0], adapter.d_head
    h_in = acts.embedded if layer == 0 else acts.layer_out[layer - 1]  # (n, d): h_l
    q = head_qkv(adapter, acts, layer, "q")  # (n, H, dh); all n only because RoPE rotates by position
    k = head_qkv(adapter, acts, layer, "k")  # (n, G, dh)
    v = head_qkv(adapter, acts, layer, "v")  # (n, G, dh)
    kv_of = adapter.kv_heads().to(q.device)
    k_h, v_h = k[:, kv_of], v[:, kv_of]  # (n, H, dh): each query head's keys/values

    # every head for this token, so that the output projection can be checked whole
    scores = torch.einsum("hd,shd->hs", q[token], k_h)  # (H, n)
    # scaled by 1 / sqrt(d_head) or the model's own (T5: 1; GPT-2 by layer; Gemma: its
    # query_pre_attn_scalar), soft-capped where the model caps
    scaled = adapter.attention_logits(layer, scores)
    bias = adapter.attention_bias(layer, n)  # (H, n, n): T5's relative position bias
    if bias is not None:
        scaled = scaled + bias[:, token]
    # later keys under the causal mask, and those a sliding window leaves out
    masked = adapter.hidden_keys(layer, n, causal, q.device)[token]
    if bias is not None:  # a bias of -inf for every head hides the key (ModernBERT's local window)
        masked = masked | bias[:, token].isneginf().all(0).to(q.device)
    scaled = scaled.masked_fill(masked, float("-inf"))
    weights = scaled.softmax(-1)  # (H, n)
    z = torch.einsum("hs,shd->hd", weights, v_h)  # (H, dh)
    w_o, b_o = adapter.output_projection(layer)  # (H, dh, d), (d,)
    per_head = torch.einsum("hk,hkd->hd", z, w_o)  # (H, d)
    attn_out = per_head.sum(0) + (0 if b_o is None else b_o)
    out_norm = adapter.attn_out_norm(layer)  # OLMo 2 norms the branch before the residual add
    attn_out = attn_out if out_norm is None else out_norm(attn_out[None])[0]
    residual = h_in[token] + attn_out
    ln = adapter.attn_resid_norm(layer)
    normed = None if ln is None else ln(residual)

    def gap(a: Tensor, b: Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    checks = {
        "attention weights": gap(weights, acts.attentions[layer, :, token]),
        "z (per-head output)": gap(z, acts.z[layer, token]),
        "attention output": gap(attn_out, acts.attn[layer, token]),
        "residual (attn_resid)": gap(residual, h_in[token] + acts.attn[layer, token]),
    }
    if normed is not None:
        checks["LayerNorm (attn_resid_ln)"] = gap(normed, acts.attn_resid_ln[layer, token])
    return AttentionStep(
        layer=layer,
        head=head,
        token=token,
        kv_head=int(kv_of[head]),
        d_head=dh,
        causal=causal,
        query=q[token, head].clone(),
        keys=k_h[:, head].clone(),
        values=v_h[:, head].clone(),
        scores=scores[head].clone(),
        scaled=scaled[head].clone(),
        masked=masked,
        weights=weights[head].clone(),
        z=z[head].clone(),
        head_out=per_head[head].clone(),
        attn_out=attn_out,
        layer_in=h_in[token].clone(),
        residual=residual,
        normed=normed,
        checks=checks,
        formulas={
            **{w: projection_formula(adapter, layer, w) for w in "qkv"},
            "scaled": _scaling_formula(adapter, layer, bias is not None),
            # a norm inside the branch (OLMo 2, Gemma 2/3): what the residual add receives
            **({} if out_norm is None else {"out": f"attn = {_NORM_NAMES[out_norm.kind]}(Σ_h z_h W_O[h] + b_O)"}),
        },
        parallel=adapter.norm_placement == "pre" and adapter.hook_points(layer).ffn_input is not None,
    )


@dataclass(frozen=True, repr=False)
class CrossAttentionStep(_StepFace):
    """The live numbers of one cross-attention head for one decoder token: the query comes
    from the decoder, the keys and values from the encoder's output (all float32 tensors)."""

    layer: int
    head: int
    token: int  # the decoder token
    d_head: int
    scale: float  # what the scores are multiplied by (1/sqrt(d_head); T5: 1)
    query_in: (
        Tensor  # (d,) the decoder's attn_resid_ln at the token (the query map's input, before any norm of its own)
    )
    query: Tensor  # (d_head,) q_t
    keys: Tensor  # (m, d_head) k_s of every source token, from the encoder output
    values: Tensor  # (m, d_head) v_s
    scores: Tensor  # (m,) q_t . k_s
    scaled: Tensor  # (m,) scores * scale
    weights: Tensor  # (m,) softmax(scaled): == the model's cross-attention probabilities
    z: Tensor  # (d_head,) sum_s w_s v_s: == the SPEC ``cross_heads`` vector
    head_out: Tensor  # (d,) z @ W_O[h]
    cross_out: Tensor  # (d,) every head through W_O, plus b_O: == the cross-attention output
    residual: Tensor  # (d,) query_in + cross_out: == the ``cross_resid`` site
    checks: dict[str, float] = field(default_factory=dict)  # max |recomputed - model's|
    # what this model computes, as text: its norm before the query map, bias terms only where it has them
    formulas: dict[str, str] = field(default_factory=dict)  # "q", "k", "v" -> e.g. "q = W_Q RMSNorm(x)"
    tokens: tuple[str, ...] = ()  # the decoder's tokens, for display (empty when not known)
    source_tokens: tuple[str, ...] = ()  # the source tokens the head reads

    def _sources(self) -> tuple[str, ...]:
        return self.source_tokens


def cross_attention_step(decoder, acts, layer: int, head: int, token: int) -> CrossAttentionStep:
    """Recompute cross-attention head ``head`` of decoder layer ``layer`` for decoder token
    ``token`` from the captured decoder activations (:func:`tokentrail.engine.capture_cross.capture_cross`)
    and the adapter's canonical cross maps, and check every step against the model's own::

        x      = attn_resid_ln[t]          (the decoder's residual; pre-norm models: its cross norm first)
        q_t    = W_Q[h] x + b_Q[h]                      from the decoder
        k_s    = W_K[h] e_s + b_K[h],  v_s = W_V[h] e_s + b_V[h]   from the encoder output e_s
        w      = softmax(scale * q_t . k_s)             == the model's cross-attention
        z      = sum_s w_s v_s                          == the cross_heads vector
        out    = sum_h z_h W_O[h] + b_O                 == the cross-attention output
        resid  = x + out                                == cross_resid
    """
    n, L, H = acts.input_ids.shape[0], decoder.n_layers, decoder.n_heads
    layer = check_index(layer, L, "layer", f"the decoder has {L} layers")
    head = check_index(head, H, "head", f"the decoder has {H} heads")
    token = check_index(token, n, "token index", f"the decoder input has {n} tokens")
    with torch.no_grad():
        x_in = acts.attn_resid_ln[layer]  # (n, d)
        norm = decoder.cross_query_norm(layer)
        q = decoder.cross_projection(layer, "q")(
            x_in[token : token + 1] if norm is None else norm(x_in[token : token + 1])
        )[0]  # (H, dh)
        k = decoder.cross_projection(layer, "k")(acts.encoder_out)  # (m, H, dh)
        v = decoder.cross_projection(layer, "v")(acts.encoder_out)
        scale = decoder.cross_scale()
        scores = torch.einsum("hd,shd->hs", q, k)  # (H, m)
        weights = (scores * scale).softmax(-1)
        z = torch.einsum("hs,shd->hd", weights, v)  # (H, dh)
        w_o, b_o = decoder.cross_output_projection(layer)
        per_head = torch.einsum("hk,hkd->hd", z, w_o)
        out = per_head.sum(0) + (0 if b_o is None else b_o)
        residual = x_in[token] + out

    def gap(a: Tensor, b: Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    def affine(which: str, arg: str) -> str:
        bias = decoder.cross_projection(layer, which).bias is not None
        return f"W_{which.upper()} {arg}" + (f" + b_{which.upper()}" if bias else "")

    formulas = {
        "q": "q = " + affine("q", "x" if norm is None else f"{'RMSNorm' if norm.kind == 'rmsnorm' else 'LN'}(x)"),
        "k": "k_s = " + affine("k", "e_s"),
        "v": "v_s = " + affine("v", "e_s"),
    }
    checks = {
        "cross-attention weights": gap(weights, acts.cross_attentions[layer, :, token]),
        "z (per-head output)": gap(z, acts.cross_z[layer, token]),
        "cross-attention output": gap(out, acts.cross_attn[layer, token]),
        "residual (cross_resid)": gap(residual, acts.cross_resid[layer, token]),
    }
    return CrossAttentionStep(
        layer=layer,
        head=head,
        token=token,
        d_head=decoder.d_head,
        scale=scale,
        query_in=x_in[token].clone(),
        query=q[head].clone(),
        keys=k[:, head].clone(),
        values=v[:, head].clone(),
        scores=scores[head].clone(),
        scaled=(scores[head] * scale).clone(),
        weights=weights[head].clone(),
        z=z[head].clone(),
        head_out=per_head[head].clone(),
        cross_out=out,
        residual=residual,
        checks=checks,
        formulas=formulas,
    )
