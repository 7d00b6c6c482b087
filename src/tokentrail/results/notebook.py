"""How a Trail shows itself in a notebook: a compact summary and a token table.

``Trail._repr_html_`` calls :func:`trail_html`; :func:`show` gives the same view for a
chosen token (its neighbours at every layer) as an object Jupyter displays.
"""

from __future__ import annotations

from html import escape

from tokentrail.spec.display import pick

MAX_TOKENS = 24  # rows of the token table before it is cut (the caption says so): ~10 kB at most
MAX_LAYERS = 12  # layers of the token table, sampled evenly beyond this (the first and the last kept)


def _summary(trail) -> str:
    info = trail.info
    views = ", ".join("/".join(v.key) for v in trail.views)
    lens = f"logit lens on {trail.lens.site}" if trail.lens is not None else "no logit lens"
    exact = "exact (float32)" if info.exact else f"approximate ({info.dtype})"
    text = trail.text if len(trail.text) <= 120 else trail.text[:119] + "…"
    rows = [
        ("model", f"{info.model} ({info.family}, {info.model_type})"),
        ("text", repr(text)),
        ("shape", f"{trail.n_tokens} tokens × {trail.n_layers} layers × {trail.n_heads} heads"),
        ("views", views),
        ("lens", lens),
        ("numbers", f"{exact} on {info.device}"),
    ]
    return "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{escape(k)}</th><td style='text-align:left'>{escape(v)}</td></tr>"
        for k, v in rows
    )


def _first_residual(trail):
    for v in trail.views:
        if not v.per_head:
            return v
    return None


def _cell(sim, rank) -> str:
    """A token table cell: the self-similarity, and ``·rank`` where the rank is not 0
    (a rank-only table was zeros almost everywhere on MiniLM)."""
    r = int(rank)
    return f"{float(sim):.2f}" + (f"<small>·{r}</small>" if r else "")


def token_table(trail, token: int | str | None = None) -> str:
    """HTML: one row per token with its self-similarity at every layer of the first residual
    view, its rank where not 0 (the CLI grid); ``token`` is marked. Per-head views only: the token list alone."""
    view = _first_residual(trail)
    sel = trail.token_index(token) if token is not None else None
    layers = pick(trail.n_layers, MAX_LAYERS)
    head = "<th>#</th><th>token</th><th>id</th>"
    if view is not None:
        head += "".join(f"<th>L{l}</th>" for l in layers)
    rows = []
    shown = list(range(min(trail.n_tokens, MAX_TOKENS)))
    if sel is not None and sel not in shown:
        shown.append(sel)  # the marked token, wherever it is
    for t in shown:
        style = " style='font-weight:bold;outline:2px solid #d9480f'" if t == sel else ""
        label = escape(trail.tokens[t]) + (" <small>(special)</small>" if trail.special[t] else "")
        cells = f"<td>{t}</td><td style='text-align:left'>{label}</td><td>{int(trail.ids[t])}</td>"
        if view is not None:
            cells += "".join(f"<td>{_cell(view.self_sim[l, t], view.rank[l, t])}</td>" for l in layers)
        rows.append(f"<tr{style}>{cells}</tr>")
    caption = "self-similarity per layer, ·N: the own-token rank where another row is nearer"
    if view is not None:
        caption += f", {'/'.join(view.key)}"
    cut = []
    if trail.n_tokens > MAX_TOKENS:
        cut.append(f"first {MAX_TOKENS} of {trail.n_tokens} tokens")
    if trail.n_layers > MAX_LAYERS:
        cut.append(f"{len(layers)} of {trail.n_layers} layers")
    if cut:
        caption += "; " + ", ".join(cut)
    return (
        f"<table class='tokentrail-tokens'><caption style='caption-side:top;text-align:left'>{escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def neighbours_table(trail, token: int | str) -> str:
    """HTML: the token's nearest vocabulary tokens at every layer (first residual view)."""
    view = _first_residual(trail)
    if view is None:
        return ""
    t = trail.token_index(token)
    k = min(view.top_ids.shape[-1], 8)
    own = int(trail.ids[t])
    rows = []
    for l in pick(trail.n_layers, MAX_LAYERS):
        cells = []
        for i, _s in zip(view.top_ids[l, t, :k], view.top_sims[l, t, :k]):
            word = escape(trail.labels.get(int(i), str(i)))
            cells.append(f"<b>{word}</b>" if int(i) == own else word)
        rows.append(
            f"<tr><td>L{l}</td><td>{int(view.rank[l, t])}</td><td style='text-align:left'>{' · '.join(cells)}</td></tr>"
        )
    caption = f"nearest tokens of {t}: {trail.tokens[t]!r} ({'/'.join(view.key)}; its own token in bold)"
    return (
        f"<table class='tokentrail-neighbours'><caption style='caption-side:top;text-align:left'>{escape(caption)}</caption>"
        f"<thead><tr><th>layer</th><th>rank</th><th>top {k}</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def trail_html(trail, token: int | str | None = None) -> str:
    parts = [
        f"<div class='tokentrail'><table class='tokentrail-summary'>{_summary(trail)}</table>",
        token_table(trail, token),
    ]
    if token is not None:
        parts.append(neighbours_table(trail, token))
    return "".join(parts) + "</div>"


class TrailView:
    """What :func:`show` returns: Jupyter displays it as HTML."""

    def __init__(self, trail, token: int | str | None = None):
        trail.token_index(token) if token is not None else None  # a bad token fails here, clearly
        self.trail, self.token = trail, token

    def _repr_html_(self) -> str:
        return trail_html(self.trail, self.token)

    def __repr__(self) -> str:
        return repr(self.trail)


def show(trail, token: int | str | None = None) -> TrailView:
    """The summary and token table, with ``token`` marked and its neighbours at every layer."""
    return TrailView(trail, token)


__all__ = ["show", "token_table", "neighbours_table", "trail_html", "TrailView"]
