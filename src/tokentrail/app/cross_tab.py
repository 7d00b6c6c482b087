"""The app's Cross-attention tab: an encoder-decoder's two stacks and its cross-attention.

It reads the page's text, model, site and similarity, adds the decoder's input (a target,
or empty for the model's own greedy output), a stack (the rank grid of the encoder or of
the decoder), a decoder token, a layer and a head, and shows what the library returns:
the stack's token × layer grid, which source tokens that head's output is nearest to
(with its attention weights on them), the head's cross-attention map, and the step by
step computation (query from the decoder, keys and values from the encoder). Public
library only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import gradio as gr
import pandas as pd

from tokentrail.app import help as texts
from tokentrail.app.guard import guarded
from tokentrail.app.options import check_page_text
from tokentrail.app.queues import EVENTS, concurrency_for
from tokentrail.app.session import load_model
from tokentrail.present.plots import grid
from tokentrail.present.plots_cross import cross_attention_map
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions

HOWTO = """**Encoder-decoder models** (BART, Marian, T5): the encoder reads the text above, the
decoder reads the *decoder input*: a target you type, or, left empty, the model's own
greedy output (at most 20 tokens).

*Stack* picks whose rank grid is drawn. For the decoder token, layer and head chosen, the
table lists the **source tokens** that head's output is nearest to: in cross-attention a
head's values are the encoder's output tokens of *this* input, not the vocabulary. The
map shows the head's attention weights (queries from the decoder, keys and values from
the encoder); below, the same computation step by step, checked against the model."""

_RUNS: OrderedDict = OrderedDict()  # (model, text, target) -> Seq2SeqRun: a click re-renders, it does not re-run
_LOCK = threading.Lock()


def build_cross_tab(p, menu) -> None:
    """Components of the tab (call inside ``gr.Tab``) and their event, on ``p``."""
    texts.panel(HOWTO)
    with gr.Row(equal_height=True):
        p.x_target = gr.Textbox(
            "", label="Decoder input (empty: the model's greedy output)", scale=4, elem_id="x-target"
        )
        p.x_stack = gr.Radio(
            ["encoder", "decoder"], value="decoder", label="Stack", scale=2, min_width=180, elem_id="x-stack"
        )
        p.x_token = gr.Textbox("-1", label="Decoder token", scale=1, min_width=110, elem_id="x-token")
        p.x_layer = gr.Number(0, label="Layer", precision=0, scale=1, min_width=80, elem_id="x-layer")
        p.x_head = gr.Number(0, label="Head", precision=0, scale=1, min_width=80, elem_id="x-head")
        p.x_run = gr.Button("Show", variant="primary", scale=1, min_width=100, elem_id="x-run")
    p.x_status = gr.Markdown(
        "For encoder-decoder models (BART, Marian, T5): choose one in **Model** and press **Show**.",
        elem_id="x-status",
    )
    # no empty frames: the views show once there is a run (an encoder-only model has none)
    p.x_grid = gr.Plot(show_label=False, visible=False, elem_id="x-grid")
    with gr.Row():
        p.x_sources = gr.Dataframe(
            label="Decoder token → source tokens (nearest first)",
            interactive=False,
            max_height=420,
            visible=False,
            elem_id="x-sources",
        )
        p.x_map = gr.Plot(show_label=False, visible=False, elem_id="x-map")
    p.x_step = gr.Markdown(elem_id="x-step")
    outputs = [p.x_status, p.x_grid, p.x_sources, p.x_map, p.x_step]
    inputs = [p.text, p.model, p.site, p.similarity, p.x_target, p.x_stack, p.x_token, p.x_layer, p.x_head]

    @guarded(len(outputs), 0)
    def run(text, model, site, similarity, target, stack, token, layer, head):
        status, fig, table, cross_map, step = cross_views(
            menu, text, model, site, similarity, target, stack, token, layer, head
        )
        shown = dict(visible=True)
        return status, gr.Plot(fig, **shown), gr.Dataframe(table, **shown), gr.Plot(cross_map, **shown), step

    gr.on(
        [p.x_run.click, p.x_target.submit, p.x_token.submit], run, inputs, outputs, api_name="cross_attention", **EVENTS
    )


def _run(loaded, text: str, target: str | None):
    key = (loaded.name, text, target)
    with _LOCK:
        if key in _RUNS:
            _RUNS.move_to_end(key)
            return _RUNS[key]
    run = loaded.run(text, target=target)
    with _LOCK:
        _RUNS[key] = run
        while len(_RUNS) > 4:
            _RUNS.popitem(last=False)
    return run


def cross_views(menu, text, model, site, similarity, target, stack, token, layer, head) -> tuple:
    """The tab's five outputs (status, grid, sources table, cross-attention map, walkthrough)."""
    text = check_page_text(text)
    target = (target or "").strip() or None
    if target is not None:
        target = check_page_text(target)
    if stack not in ("encoder", "decoder"):
        raise InputError(f"unknown stack {stack!r}: choose encoder or decoder")
    name = menu.check(model).value
    with concurrency_for(name):  # model work (the passes, the checked step) in this model's queue
        return _views(load_model(name), text, site, similarity, target, stack, token, layer, head)


def _views(loaded, text, site, similarity, target, stack, token, layer, head) -> tuple:
    if not loaded.is_seq2seq:
        raise InputError(
            f"{loaded.name} has one stack: this tab is for encoder-decoder models (BART, Marian, T5); "
            "choose one in Model, then press Show"
        )
    run = _run(loaded, text, target)
    trail = run.trail(TraceOptions.make(site=[site, "cross_resid", "cross_heads"], similarity=similarity, k=10))
    dec = trail.decoder
    token = (token or "").strip() or "-1"
    t = dec.token_index(int(token) if token.lstrip("-").isdigit() else token)
    layer, head = dec.check_layer(_whole(layer)), dec.check_head(_whole(head))
    shown = trail if stack == "encoder" else dec
    fig = grid(shown, "rank", site=site, similarity=similarity)
    fig.update_layout(title=dict(text=f"{stack} stack · rank of own token at {site} (0 = nearest)"))
    sources = dec.sources(t, layer, head, similarity=similarity)
    table = pd.DataFrame(
        {
            "rank": sources["place"],
            "source token": [f"{s}:{tok}" for s, tok in zip(sources["source"], sources["source_token"])],
            "similarity": sources["similarity"].round(3),
            "attention": sources["attention"].round(3),
        }
    )
    step = run.cross_step(layer, head, t)
    status = (
        f"**{loaded.name}** · encoder: {trail.n_tokens} source tokens · decoder: {dec.n_tokens} tokens, its input the "
        f"{dec.info.decoder_input} (`{dec.text}`) · decoder token **{t} `{dec.tokens[t]}`**, layer {layer}, head {head}"
    )
    return status, fig, table, cross_attention_map(trail, layer, head, token=t), _step_text(dec, step)


def _step_text(dec, step) -> str:
    m = len(dec.source_tokens)
    top = int(step.weights.argmax())
    ok = "Matches the model's own numbers" if step.max_error < 1e-4 else "Differs from the model's own numbers"
    return (
        f"**How cross-attention head {step.head} of decoder layer {step.layer} computed `{dec.tokens[step.token]}`**\n\n"
        f"1. **Query from the decoder**: {step.formulas['q']}, where x is the decoder's residual after self-attention "
        f"(`attn_resid_ln`) at this token ({step.d_head} numbers).\n"
        f"2. **Keys and values from the encoder**: {step.formulas['k']} and {step.formulas['v']} for each of the {m} "
        f"source tokens' encoder outputs e_s.\n"
        f"3. **Scores** q·k_s, scaled by {step.scale:.4g}; **softmax** over the source tokens: the largest weight, "
        f"{float(step.weights[top]):.3f}, is on `{dec.source_tokens[top]}` (source token {top}).\n"
        f"4. **z = Σ w_s v_s**: the head's output (the `cross_heads` vector), then all heads through W_O (+ b_O), added "
        f"to x: the `cross_resid` site.\n\n"
        f"{ok} (largest difference {step.max_error:.1e})."
    )


def _whole(value) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"layer and head are whole numbers, not {value!r}") from None
    if f != int(f):
        raise InputError(f"layer and head are whole numbers, not {value!r}")
    return int(f)
