"""Results -> what the page shows: tables (styled DataFrames) and short Markdown.

Pure functions of results (a Trail, a HeadsAt, an AttentionStep); no model, no Gradio.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from tokentrail import AttentionStep, HeadsAt, LensResult, Trail, View
from tokentrail.present.plots import ACCENT, SELECTOR_METRICS, metric_by_layer, token_labels

# colours from the page's CSS variables (app/style.py), so a cell follows the colour scheme
OWN_STYLE = "background-color: var(--tt-own-bg); color: var(--tt-own-fg); font-weight: 700"
SELECTED_CELL = f"outline: 3px solid {ACCENT}; outline-offset: -3px; font-weight: 700"
HEAT_METRICS = SELECTOR_METRICS  # the metric registry, read live: every registered metric is selectable

# a sequential palette (light -> dark blue), interpolated in RGB
_STOPS = [(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]


def _colour(x: float) -> str:
    """Background and text colour for x in [0, 1] (NaN: blank)."""
    if x is None or not np.isfinite(x):
        return "color: var(--tt-muted)"
    x = min(max(float(x), 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(x), len(_STOPS) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_STOPS[i], _STOPS[i + 1]))
    text = "white" if x > 0.55 * (len(_STOPS) - 1) else "#1f2937"
    return f"background-color: rgb({r},{g},{b}); color: {text}"


def residual_view(trail: Trail, site: str, similarity: str) -> View:
    return trail.view(site, None, similarity)


# ---- the page header -----------------------------------------------------------------------
def status(trail: Trail, model_label: str, token: int, layer: int, head: int, note: str | None = None) -> str:
    """The header line: model, options, the selection, and ``note`` (a rogue-dimension
    warning) under it when there is one."""
    info = trail.info
    opts = info.options
    parts = [
        f"**{html.escape(model_label)}** ({info.family}, {trail.n_layers} layers × {trail.n_heads} heads)",
        f"{trail.n_tokens} tokens",
        f"site `{opts.sites[0]}`",
        f"space `{opts.spaces[0]}`",
        opts.similarities[0],
    ]
    if opts.correct is not None:
        parts.append(
            f"corrected **{html.escape(opts.correct)}** (fitted to {'a corpus study' if opts.correct_from else 'the text'})"
        )
    if info.causal is not None:
        parts.append("causal mask **on**" if info.causal else "causal mask **off** (bidirectional)")
    sel = f"Selected: **{html.escape(trail.tokens[token])}** (token {token}) · layer {layer} · head {head}"
    warn = f"  \n⚠ {html.escape(note)}" if note else ""
    return " · ".join(parts) + "  \n" + sel + warn


def error(message: str) -> str:
    return f"**Problem:** {html.escape(message)}"


def token_choices(trail: Trail) -> list[tuple[str, int]]:
    return [(t if t.strip() else repr(t), i) for i, t in enumerate(trail.tokens)]


# ---- across layers ---------------------------------------------------------------------------
def neighbour_table(trail: Trail, view: View, token: int) -> Styler:
    """One column per layer: the top-k vocabulary rows, own token starred, and its rank
    appended as a last row where it falls outside the top-k; first an ``emb`` column, the
    neighbours of the original encoding (where the view has them)."""
    L, k = view.top_ids.shape[0], view.top_ids.shape[-1]
    own = int(trail.ids[token])
    cols: dict[str, list] = {"rank": [str(i) for i in range(k)] + ["own"]}
    own_cells: list[tuple[int, int]] = []
    first = 1  # the column of layer 0
    if view.origin_top_ids is not None:  # "emb": the original encoding's neighbours (the CLI's emb column)
        cells = []
        for place, (i, s) in enumerate(zip(view.origin_top_ids[token][:k], view.origin_top_sims[token][:k])):
            label = trail.labels.get(int(i), str(int(i)))
            cells.append(f"★ {label} {s:.3f}" if int(i) == own else f"{label} {s:.3f}")
            if int(i) == own:
                own_cells.append((place, 1))
        found = own in {int(i) for i in view.origin_top_ids[token][:k]}
        cells.append("in the top-k" if found else f"★ {trail.tokens[token]}: outside the top-{k}")
        cols["emb"] = cells
        first = 2
    for l in range(L):
        ids, sims = view.top_ids[l, token], view.top_sims[l, token]
        cells = []
        for place, (i, s) in enumerate(zip(ids, sims)):
            label = trail.labels.get(int(i), str(int(i)))
            if int(i) == own:
                cells.append(f"★ {label} {s:.3f}")
                own_cells.append((place, l + first))
            else:
                cells.append(f"{label} {s:.3f}")
        r = int(view.rank[l, token])
        if r >= k:
            cells.append(f"★ {trail.tokens[token]}: rank {r} · {view.self_sim[l, token]:.3f}")
            own_cells.append((k, l + first))
        else:
            cells.append(f"rank {r}")
        cols[f"layer {l}"] = cells
    df = pd.DataFrame(cols)

    def style(frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame("", index=frame.index, columns=frame.columns)
        out.iloc[:, 0] = "color: var(--tt-muted)"
        out.iloc[k, :] = "border-top: 2px solid var(--border-color-primary); color: var(--tt-muted)"
        for r, c in own_cells:
            out.iloc[r, c] = OWN_STYLE
        return out

    return df.style.apply(style, axis=None)


# ---- heatmaps ----------------------------------------------------------------------------------
def heat_html(trail: Trail, view: View, metric: str, token: int, layer: int, *, adjusted: bool = False) -> str:
    """Token × layer grid of ``metric`` as an HTML table whose cells carry their token and
    layer (``data-t``, ``data-l``), so a click can select them. Plain HTML rather than a
    styled DataFrame: 256 tokens × 30 layers must stay cheap to render."""
    values = metric_by_layer(view, metric, adjusted).astype(float).T  # (n, L)
    n, L = values.shape
    if metric == "rank":
        # log scale up to the grid's worst rank (at least 100): rank 0 is white, a lost token dark
        scaled = np.log10(values + 1) / np.log10(1 + max(np.nanmax(values), 100.0))
        fmt = "{:.0f}"
    elif metric == "overlap":
        scaled = values / max(view.overlap_k, 1)
        fmt = "{:.0f}"
    else:
        lo, hi = np.nanmin(values), np.nanmax(values)
        scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
        fmt = "{:.2f}"
    name = HEAT_METRICS[metric] + (" − anisotropy" if metric == "self_sim" and adjusted else "")
    labels = token_labels(trail)
    out = [f'<div class="heat-wrap"><table class="heat" data-metric="{metric}"><thead><tr><th>token</th>']
    out += [f'<th class="{"sel" if l == layer else ""}">L{l}</th>' for l in range(L)]
    out.append("</tr></thead><tbody>")
    for t in range(n):
        label = html.escape(labels[t])
        out.append(f'<tr class="{"sel" if t == token else ""}"><th data-t="{t}" title="select {label}">{label}</th>')
        for l in range(L):
            v = values[t, l]
            text = fmt.format(v) if np.isfinite(v) else "–"
            cls = ' class="sel"' if (t == token and l == layer) else ""
            out.append(
                f'<td data-t="{t}" data-l="{l}"{cls} style="{_colour(scaled[t, l])}" '
                f'title="{label}, layer {l}: {name} {text}">{text}</td>'
            )
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


# ---- heads -------------------------------------------------------------------------------------
def heads_table(trail: Trail, heads: HeadsAt) -> Styler:
    """Heads × top-k: each head's nearest vocabulary rows in its own ``heads.space``
    (value, key or query)."""
    H, k = heads.top_ids.shape
    rows = []
    own_cells = []
    for h in range(H):
        row = [f"head {h}", int(heads.rank[h]), round(float(heads.self_sim[h]), 3)]
        for place, (i, s) in enumerate(zip(heads.top_ids[h], heads.top_sims[h])):
            label = heads.labels.get(int(i), str(int(i)))
            if int(i) == heads.own_id:
                row.append(f"★ {label} {s:.3f}")
                own_cells.append((h, place + 3))
            else:
                row.append(f"{label} {s:.3f}")
        rows.append(row)
    df = pd.DataFrame(rows, columns=["head", "own rank", "own sim", *[str(p) for p in range(k)]])

    def style(frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame("", index=frame.index, columns=frame.columns)
        out.iloc[:, 0] = "color: var(--tt-muted); font-weight: 600"
        for r, c in own_cells:
            out.iloc[r, c] = OWN_STYLE
        return out

    return df.style.apply(style, axis=None).format("{:.3f}", subset=["own sim"])


# ---- the logit lens -------------------------------------------------------------------------------
def lens_table(trail: Trail, lens: LensResult, emb: LensResult, token: int, labels: dict[int, str]) -> pd.DataFrame:
    """One row per layer (after an ``emb`` row: the head applied to the original encoding)
    for one token: the top predictions with their probabilities, the rank of the token
    itself and, for decoders, of the next token, and the entropy of the prediction."""
    rows = []
    for name, res, l in [("emb", emb, 0), *((f"L{l}", lens, l) for l in range(lens.n_layers))]:
        top = " · ".join(
            f"{'★ ' if int(i) == int(trail.ids[token]) else ''}{labels.get(int(i), str(int(i)))} {float(p):.2f}"
            for i, p in zip(res.top_ids[l, token], res.top_probs[l, token])
        )
        row = {"layer": name, "top predictions": top, "own rank": int(res.own_rank[l, token])}
        if res.next_rank is not None:
            nr = int(res.next_rank[l, token])
            row["next rank"] = "–" if nr < 0 else nr
        row["entropy (nats)"] = round(float(res.entropy[l, token]), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def no_lens(model_label: str, exc: Exception) -> str:
    """The Lens tab's empty state: why there is no lens, and what to do for one."""
    return (
        f"**No logit lens for {html.escape(model_label)}**: {html.escape(str(exc))}\n\n"
        "To read one, choose a model with an output head in **Model** (a decoder such as smollm2)."
    )


FLAT_RANK = "rank 0 at every layer: its own token stays the nearest"


def rank_is_flat(view: View, token: int) -> bool:
    """Whether ``token``'s rank is 0 at every layer (its rank plot is a flat line)."""
    ranks = metric_by_layer(view, "rank")[:, token]
    return bool(np.all(np.nan_to_num(ranks, nan=0.0) == 0))


def lens_caption(trail: Trail, lens: LensResult, token: int, model_label: str) -> str:
    nxt = ""
    if lens.is_decoder:
        nxt = (
            f" *next rank* is the rank of the following token **{html.escape(trail.tokens[token + 1])}** (what the model is trained to predict there)."
            if token + 1 < trail.n_tokens
            else " The last token has no next token."
        )
    return (
        f"Logit lens of **{html.escape(trail.tokens[token])}** (token {token}) on {html.escape(model_label)}: the model's own output head "
        f"applied to **{lens.site}** at every layer (the `emb` row: to the original encoding). *own rank* 0 = the token itself is the top prediction.{nxt}"
    )


# ---- how attention computed this -----------------------------------------------------------------
def _vec(x, shown: int = 6) -> str:
    vals = ", ".join(f"{float(v):+.3f}" for v in x[:shown])
    more = ", …" if len(x) > shown else ""
    return f"[{vals}{more}]"


def step_summary(trail: Trail, step: AttentionStep) -> str:
    t = step.token
    tok = html.escape(trail.tokens[t])
    w = step.weights.numpy()
    top = np.argsort(-w)[:3]
    attended = ", ".join(f"**{html.escape(trail.tokens[s])}** ({s}) {w[s]:.2f}" for s in top)
    gqa = f" (reads key/value head {step.kv_head})" if step.kv_head != step.head else ""
    mask = "causal: tokens after it are masked out" if step.causal else "no mask: it sees every token"
    hidden_before = int(step.masked[:t].sum())  # a sliding window hides earlier tokens too
    if hidden_before:
        mask += f", and its sliding window hides the {hidden_before} earliest"
    lines = [
        f"#### Layer {step.layer}, head {step.head}{gqa}, token **{tok}** ({t})",
        f"1. **Query** `{step.formulas.get('q', 'q = W_Q x + b_Q')}`{_rope_note(step)}: ‖q‖ = {step.query.norm():.3f}, q = {_vec(step.query)}",
        f"2. **Scores** `q·k_s` with `{step.formulas.get('k', 'k = W_K x + b_K')}`, for each of the {len(w)} tokens (table below), {mask}.",
        (
            f"3. **Scaled**: `{step.formulas['scaled']}`."
            if "scaled" in step.formulas
            else f"3. **Scaled** by √d_k = √{step.d_head} = {math.sqrt(step.d_head):.3f}."
        ),
        f"4. **Softmax** weights sum to {w.sum():.4f}; it attends most to {attended}.",
        f"5. **Weighted sum of values** `z = Σ w_s v_s`: ‖z‖ = {step.z.norm():.3f}, z = {_vec(step.z)}",
        f"6. **Output projection** `z W_O[h]`: this head adds a vector of norm {step.head_out.norm():.3f}; "
        f"all {trail.n_heads} heads plus `b_O` give the attention output"
        + (f", normed inside the branch (`{step.formulas['out']}`)" if "out" in step.formulas else "")
        + f", norm {step.attn_out.norm():.3f}.",
        f"7. **Residual add** `h + attn`: ‖h‖ = {step.layer_in.norm():.3f} → ‖h + attn‖ = {step.residual.norm():.3f} "
        f"(cosine to h: {float(_cos(step.layer_in, step.residual)):.3f}).",
    ]
    if step.normed is not None:
        r = step.residual
        lines.append(
            f"8. **LayerNorm**: mean {r.mean():+.3f}, std {r.std(unbiased=False):.3f} → normalised, scaled and shifted: "
            f"‖LN‖ = {step.normed.norm():.3f} (this is what the feed-forward block reads)."
        )
    elif step.parallel:
        lines.append(
            "8. **Parallel feed-forward**: this model's MLP reads the layer input h (through its own norm), not h + attn; "
            "the layer's output is h + attn + mlp."
        )
    else:
        lines.append(
            "8. **No norm here**: a pre-norm model normalises inside the next sublayer; the residual stream carries on as is."
        )
    ok = step.matches_model()
    checks = "; ".join(f"{name} {gap:.1e}" for name, gap in step.checks.items())
    verdict = "✓ **Matches the model's own numbers**" if ok else "✗ **Differs from the model's own numbers**"
    return "\n".join(lines) + f"\n\n{verdict} (max |Δ|: {checks})."


def _rope_note(step: AttentionStep) -> str:
    q = step.formulas.get("q", "")
    if "RoPE" not in q:
        return ""
    if " of " in q:
        return " (RoPE rotates q and k by their positions, here only the first head dims shown in brackets; the rest pass through)"
    return " (RoPE rotates q and k by their positions)"


def _cos(a, b) -> float:
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def step_sources(trail: Trail, step: AttentionStep, model_weights: np.ndarray | None = None) -> pd.DataFrame:
    """One row per source token: the live numbers of steps 2-5."""
    # float64 before rounding, so the page shows 0.0412, not 0.041200000792741776
    v_norm = step.values.double().norm(dim=-1).numpy()
    w = step.weights.double().numpy()
    scaled = np.where(step.masked.numpy(), np.nan, step.scaled.double().numpy())
    df = pd.DataFrame(
        {
            "s": np.arange(trail.n_tokens),
            "token": list(trail.tokens),
            "q·k": step.scores.double().numpy().round(4),
            "÷√d_k": scaled.round(4),
            "masked": step.masked.numpy(),
            "softmax w": w.round(4),
            "‖v‖": v_norm.round(3),
            "‖w·v‖": (w * v_norm).round(4),
        }
    )
    if model_weights is not None:
        df.insert(6, "model's w", np.asarray(model_weights, dtype=np.float64).round(4))
    return df


def step_vectors(step: AttentionStep, shown: int = 8) -> pd.DataFrame:
    rows = [
        ("q (query)", step.query),
        ("z = Σ w·v", step.z),
        ("z W_O[h] (this head)", step.head_out),
        ("attention output", step.attn_out),
        ("h (layer input)", step.layer_in),
        ("h + attention", step.residual),
    ]
    if step.normed is not None:
        rows.append(("LayerNorm(h + attention)", step.normed))
    data = []
    for name, v in rows:
        v = v.double()
        data.append([name, len(v), round(float(v.norm()), 4), *[round(float(x), 4) for x in v[:shown]]])
    return pd.DataFrame(data, columns=["vector", "dims", "norm", *[f"[{i}]" for i in range(shown)]])
