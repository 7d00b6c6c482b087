"""The app's Compare tab: one word in two contexts, two tokens, or two models.

It reads the page's text, model, site, similarity and causal mask, adds a second text,
two tokens and an optional second model, and shows what :func:`tokentrail.compare`
returns: a per-layer table, the cosine curve (or both models' curves on a relative depth
axis) and both sides' heatmaps. Public library only.
"""

from __future__ import annotations

import re

import gradio as gr
import pandas as pd

import tokentrail as tt
from tokentrail.app.guard import guarded
from tokentrail.app.help import panel
from tokentrail.app.options import INITIAL_TEXT, check_page_text
from tokentrail.app.queues import EVENTS, concurrency_for
from tokentrail.app.session import ModelMenu, load_model
from tokentrail.present.plots_compare import (
    compare_heatmaps,
    compare_lines,
    cosine_figure,
)
from tokentrail.spec.errors import InputError

SAME_MODEL = "(same model)"
HOWTO = """**How to compare**

Two occurrences, layer by layer.

- *Second text* empty: two tokens of the text above (`flies:0`, `flies:1`; opening the
  tab suggests the first word the text has twice).
- A second text: the same word in another context (*Token b* empty: the same word).
- A second model: the text above in both models, tokens matched by their characters.

A token is its index, its text, or `text:N` (the N-th occurrence from 0). The table gives
the cosine between the two vectors, each one's self-similarity and rank, how many of
their 100 nearest vocabulary tokens they share, and the nearest tokens only one of them
has: the words that separate the two senses."""


def build_compare_tab(p, menu: ModelMenu) -> None:
    """Components of the tab (call inside ``gr.Tab``) and their event, on ``p``."""
    panel(HOWTO, "How to compare")
    with gr.Row(equal_height=True):
        p.cmp_text_b = gr.Textbox(
            "", label="Second text (empty: two tokens of the text above)", scale=4, elem_id="cmp-text-b"
        )
        a, b = suggest_tokens(INITIAL_TEXT, "", "")
        p.cmp_token_a = gr.Textbox(
            a, label="Token a", placeholder="e.g. bank:0", scale=1, min_width=110, elem_id="cmp-token-a"
        )
        p.cmp_token_b = gr.Textbox(
            b, label="Token b", placeholder="e.g. bank:1", scale=1, min_width=110, elem_id="cmp-token-b"
        )
        p.cmp_model_b = gr.Dropdown(
            [SAME_MODEL, *menu.choices()],
            value=SAME_MODEL,
            label="Second model",
            scale=2,
            min_width=180,
            filterable=False,
            elem_id="cmp-model-b",
        )
        p.cmp_run = gr.Button("Compare", variant="primary", scale=1, min_width=110, elem_id="cmp-run")
    p.cmp_status = gr.Markdown("Choose two tokens and press **Compare**.", elem_id="cmp-status")
    # no empty frames: the table and the figures show once there is a comparison
    p.cmp_table = gr.Dataframe(
        label="Per layer",
        interactive=False,
        visible=False,
        wrap=True,
        max_height=520,
        column_widths=["48px", "72px", "80px", "80px", "56px", "56px", "64px"],
        elem_id="cmp-table",
    )
    with gr.Row():
        p.cmp_plot = gr.Plot(show_label=False, min_width=400, visible=False, elem_id="cmp-plot")
        p.cmp_lines = gr.Plot(show_label=False, min_width=400, visible=False, elem_id="cmp-lines")
    p.cmp_heat = gr.Plot(show_label=False, visible=False, elem_id="cmp-heat")
    outputs = [p.cmp_status, p.cmp_table, p.cmp_plot, p.cmp_lines, p.cmp_heat]
    inputs = [
        p.text,
        p.model,
        p.cmp_text_b,
        p.cmp_token_a,
        p.cmp_token_b,
        p.cmp_model_b,
        p.site,
        p.similarity,
        p.causal,
    ]

    @guarded(len(outputs), 0)
    def run(text, model, text_b, token_a, token_b, model_b, site, similarity, causal):
        return _compare(menu, text, model, text_b, token_a, token_b, model_b, site, similarity, causal)

    gr.on([p.cmp_run.click, p.cmp_token_b.submit], run, inputs, outputs, api_name="compare", **EVENTS)

    def suggest(text, token_a, token_b):
        return suggest_tokens(text, token_a, token_b)

    # the tokens follow the page's text: opening the tab (or a new text) keeps tokens the
    # text has and replaces those it has not (no `flies:0` for a text without "flies")
    gr.on(
        [p.tab_compare.select, p.text.submit],
        suggest,
        [p.text, p.cmp_token_a, p.cmp_token_b],
        [p.cmp_token_a, p.cmp_token_b],
        api_visibility="private",
        show_progress="hidden",
        **EVENTS,
    )


def _word(token: str) -> str:
    """The text part of a token given as ``text`` or ``text:N`` (an index: empty)."""
    word = token.strip().rsplit(":", 1)[0] if ":" in token else token.strip()
    return "" if word.lstrip("-").isdigit() else word.lower()


def suggest_tokens(text: object, token_a: object, token_b: object) -> tuple[str, str]:
    """Tokens a and b for ``text``: the ones given when the text has their words (or they
    are indices), else the first word the text has twice (``w:0``, ``w:1``), else empty
    (the boxes' placeholders say what to type)."""
    words = re.findall(r"\w+", str(text or "").lower())
    given = [str(t or "").strip() for t in (token_a, token_b)]
    if given[0] and all(not t or not _word(t) or _word(t) in words for t in given):
        return given[0], given[1]
    seen: set[str] = set()
    for w in words:
        if w in seen:
            return f"{w}:0", f"{w}:1"
        seen.add(w)
    return "", ""


def _compare(menu, text, model, text_b, token_a, token_b, model_b, site, similarity, causal):
    text = check_page_text(text)
    text_b = (text_b or "").strip() or None
    if text_b is not None:
        text_b = check_page_text(text_b)
    name_a = menu.check(model).value
    name_b = None if model_b in (None, "", SAME_MODEL) else menu.check(model_b).value
    with concurrency_for(*filter(None, (name_a, name_b))):
        ma = load_model(name_a)
        mb = None if name_b is None else load_model(name_b)
        if mb is ma:
            mb = None
        if mb is not None and text_b is not None:
            raise InputError("a second model compares the text above in both models: leave the second text empty")
        token_a, token_b = (token_a or "").strip() or None, (token_b or "").strip() or None
        use_causal = bool(causal) if (ma.is_decoder and (mb is None or mb.is_decoder)) else None
        c = tt.compare(
            text,
            text_b,
            model=ma,
            model_b=mb,
            token=token_a,
            token_b=token_b,
            site=site,
            similarity=similarity,
            k=15,
            causal=use_causal,
        )
    first = cosine_figure(c) if c.same_model else compare_lines(c, "rank")
    return (
        _status(c),
        gr.Dataframe(_table(c), visible=True),
        gr.Plot(first, visible=True),
        gr.Plot(compare_lines(c, "self_sim"), visible=True),
        gr.Plot(compare_heatmaps(c), visible=True),
    )


def _status(c) -> str:
    sides = " · ".join(
        f"**{s.name}**: {s.model}, {'all tokens' if s.token is None else f'token {s.token} `{s.token_str}`'}"
        for s in c.sides
    )
    if c.same_model:
        layer, _ = c.diverge
        return f"{sides} · {c.site}. They diverge most at **layer {layer}** (cosine {c.cosine[layer]:.3f})."
    return f"{sides} · {c.site}, on a relative depth axis (layer + 1) / L."


def _words(frame: pd.DataFrame, n: int = 5) -> str:
    return ", ".join(frame["token"][:n])


def _table(c) -> pd.DataFrame:
    if c.same_model:
        return pd.DataFrame(
            {
                "layer": range(c.a.n_layers),
                "cosine": c.cosine.astype(float).round(4),
                "self_sim a": c.a.self_sim.astype(float).round(3),
                "self_sim b": c.b.self_sim.astype(float).round(3),
                "rank a": c.a.rank,
                "rank b": c.b.rank,
                f"shared/{c.overlap_k}": c.overlap.astype(int),
                "only in a": [_words(c.separating("a", l)) for l in range(c.a.n_layers)],
                "only in b": [_words(c.separating("b", l)) for l in range(c.a.n_layers)],
            }
        )
    rows = []
    for s in c.sides:
        for l in range(s.n_layers):
            near = "" if s.token is None else ", ".join(s.labels.get(int(i), str(int(i))) for i in s.top_ids[l][:5])
            rows.append(
                {
                    "side": s.name,
                    "model": s.model,
                    "layer": l,
                    "depth": round(float(s.depth[l]), 3),
                    "self_sim": round(float(s.self_sim[l]), 3),
                    "rank": float(s.rank[l]),
                    "nearest": near,
                }
            )
    return pd.DataFrame(rows)
