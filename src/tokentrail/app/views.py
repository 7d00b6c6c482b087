"""The page's main tabs: their components (:func:`build_tabs`) and their rendering from a
:class:`~tokentrail.app.session.Session`'s cached results (:func:`render_views`)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from tokentrail.app import help as texts
from tokentrail.app import render
from tokentrail.app.compare_tab import build_compare_tab
from tokentrail.app.cross_tab import build_cross_tab
from tokentrail.app.export import PLOT_FORMATS, RESULT_FORMATS
from tokentrail.app.map_tab import build_map_tab
from tokentrail.app.session import PATTERNS, ModelMenu, Session
from tokentrail.app.study_tab import StudyShelf, build_study_tab, plain
from tokentrail.plots import LENS_COLOURS, attention_pattern, lens_heatmap
from tokentrail.present import plots
from tokentrail.spec.errors import ModelError, TokentrailError
from tokentrail.spec.options import HEAD_SPACES, LENS_SITES


class Page:
    """Handles of every component the callbacks read or write."""

    if TYPE_CHECKING:  # its attributes are the components, set as the page is built

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# the heatmap is an HTML table; a click on a cell (or a token's row header) sends its
# token and layer back as event data
HEAT_CLICK_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('[data-t]');
  if (!cell) return;
  trigger('click', {token: Number(cell.dataset.t), layer: cell.dataset.l === undefined ? null : Number(cell.dataset.l)});
});
"""
PLOT_CHOICES = {
    "similarity across layers": "self_sim",
    "rank across layers": "rank",
    "overlap across layers": "overlap",
    "attention of the selected token": "attention",
    "heatmap (token × layer)": "grid",
}


def build_tabs(p: Page, menu: ModelMenu, state: gr.State, shelf: StudyShelf) -> None:
    """The result tabs (call inside the page's results column), their components on ``p``.
    Their names are short so that every tab shows in the strip at 1280 px (none folds
    into Gradio's overflow menu); each tab's help panel says what it shows."""
    with gr.Tabs(selected="layers", elem_id="tabs"):
        with gr.Tab("Layers", id="layers", elem_id="tab-layers") as p.tab_layers:
            _build_layers_tab(p)
        with gr.Tab("Heatmap", id="heatmaps", elem_id="tab-heatmaps") as p.tab_heatmaps:
            _build_heatmaps_tab(p)
        with gr.Tab("Heads", id="heads", elem_id="tab-heads") as p.tab_heads:
            _build_heads_tab(p)
        with gr.Tab("Attention", id="attention", elem_id="tab-attention") as p.tab_attention:
            _build_attention_tab(p)
        with gr.Tab("Lens", id="lens", elem_id="tab-lens") as p.tab_lens:
            _build_lens_tab(p)
        with gr.Tab("Steps", id="walkthrough", elem_id="tab-walkthrough") as p.tab_walkthrough:
            _build_walkthrough_tab(p)
        with gr.Tab("Compare", id="compare", elem_id="tab-compare") as p.tab_compare:
            build_compare_tab(p, menu)
        with gr.Tab("Map", id="map", elem_id="tab-map") as p.tab_map:
            build_map_tab(p, state)
        with gr.Tab("Cross-attn", id="cross", elem_id="tab-cross") as p.tab_cross:
            build_cross_tab(p, menu)
        with gr.Tab("Study", id="study", elem_id="tab-study"):
            build_study_tab(p, shelf)
        with gr.Tab("Export", id="export", elem_id="tab-export") as p.tab_export:
            _build_export_tab(p)


def _build_layers_tab(p: Page) -> None:
    """Across layers: the nearest vocabulary tokens per layer and three line plots."""
    texts.panel(texts.ACROSS_LAYERS)
    # a model whose cosine one dimension dominates: one click puts the corrected view
    # beside the raw one (the box shows only then)
    p.fix = gr.Checkbox(False, label="Show the corrected view beside the raw one", visible=False, elem_id="fix")
    with gr.Row(equal_height=False, elem_id="tables"):
        p.table = gr.Dataframe(
            label="Nearest vocabulary tokens, per layer",
            interactive=False,
            wrap=True,
            max_height=520,
            pinned_columns=1,
            elem_id="table",
        )
        p.table_fixed = gr.Dataframe(
            interactive=False, wrap=True, max_height=520, pinned_columns=1, visible=False, elem_id="table-fixed"
        )
        # an identity translator chosen (serve --translators): the translated site beside the raw one
        p.table_translated = gr.Dataframe(
            interactive=False, wrap=True, max_height=520, pinned_columns=1, visible=False, elem_id="table-translated"
        )
    with gr.Row(elem_id="layer-plots"):
        p.plot_sim = gr.Plot(show_label=False, min_width=400, elem_id="plot-sim")
        p.plot_rank = gr.Plot(show_label=False, min_width=400, elem_id="plot-rank")
        p.plot_overlap = gr.Plot(show_label=False, min_width=400, elem_id="plot-overlap")


def _build_heatmaps_tab(p: Page) -> None:
    """Heatmaps: a metric over token × layer, its cells clickable."""
    texts.panel(texts.HEATMAPS)
    p.metric = gr.Radio(
        [(v, k) for k, v in render.HEAT_METRICS.items()], value="rank", label="Metric", elem_id="metric"
    )
    p.heat = gr.HTML("", js_on_load=HEAT_CLICK_JS, apply_default_css=False, elem_id="heat")


def _build_heads_tab(p: Page) -> None:
    """Heads: each head against its own space, and the selected token's attention."""
    texts.panel(texts.HEADS)
    p.head_space = gr.Radio(
        list(HEAD_SPACES), value="value", label="Space: compare each head with its own", elem_id="head-space"
    )
    p.heads = gr.Dataframe(
        label="Each head vs its own space (value: its output z; key/query: the token's key/query)",
        interactive=False,
        max_height=480,
        pinned_columns=1,
        elem_id="heads",
    )
    p.attention = gr.Plot(show_label=False, elem_id="plot-attention")


def _build_attention_tab(p: Page) -> None:
    """Attention: the token x token pattern of the layer's heads (or of one head)."""
    texts.panel(texts.ATTENTION)
    p.pattern_scope = gr.Radio(
        list(PATTERNS), value=PATTERNS[0], label="Show (the Layer and Head sliders choose)", elem_id="pattern-scope"
    )
    p.pattern = gr.Plot(show_label=False, elem_id="plot-pattern")


def _build_lens_tab(p: Page) -> None:
    """Logit lens: the layers x positions picture, and the predictions for the selected token."""
    texts.panel(texts.LENS)
    with gr.Row(equal_height=True):
        p.lens_site = gr.Radio(list(LENS_SITES), value="layer_out", label="Residual read", elem_id="lens-site")
        p.lens_colour = gr.Radio(list(LENS_COLOURS), value="prob", label="Colour cells by", elem_id="lens-colour")
    p.lens_note = gr.Markdown(elem_id="lens-note")
    p.lens_heat = gr.Plot(show_label=False, visible=False, elem_id="lens-heat")  # shown when the model has a lens
    # a prediction translator chosen (serve --translators): its fitted lens below the logit lens
    p.lens_fitted = gr.Plot(show_label=False, visible=False, elem_id="lens-fitted")
    p.lens_table = gr.Dataframe(
        label="Predictions per layer",
        interactive=False,
        wrap=True,
        max_height=520,
        pinned_columns=1,
        visible=False,  # shown with the model's predictions (a model without a head has none)
        elem_id="lens-table",
    )


def _build_walkthrough_tab(p: Page) -> None:
    """How attention computed this: one head's step for the selected token."""
    texts.panel(texts.WALKTHROUGH)
    p.walk = gr.Markdown(elem_id="walk")
    p.walk_sources = gr.Dataframe(label="Per source token", interactive=False, max_height=420, elem_id="walk-sources")
    p.walk_vectors = gr.Dataframe(label="Vectors (first dimensions)", interactive=False, elem_id="walk-vectors")


def _build_export_tab(p: Page) -> None:
    """Export: downloads of the analysis and of a plot."""
    texts.panel(texts.EXPORT)
    with gr.Row():
        p.result_fmt = gr.Radio(list(RESULT_FORMATS), value="CSV", label="Analysis format", elem_id="result-fmt")
        p.export_results = gr.Button("Download analysis", elem_id="export-results")
    with gr.Row():
        p.plot_which = gr.Dropdown(
            list(PLOT_CHOICES), value="similarity across layers", label="Plot", elem_id="plot-which"
        )
        p.plot_fmt = gr.Radio(list(PLOT_FORMATS), value="HTML", label="Plot format", elem_id="plot-fmt")
        p.export_plot = gr.Button("Download plot", elem_id="export-plot")
    p.file = gr.File(label="Download", interactive=False, visible=False, elem_id="file")


# ---- rendering a session into the page ---------------------------------------------------
HEADER = ("status", "tokens", "layer", "head", "translator_note")
TAB_VIEWS = {
    "layers": ("fix", "table", "table_fixed", "table_translated", "plot_sim", "plot_rank", "plot_overlap"),
    "heatmaps": ("heat",),
    "heads": ("heads", "attention"),
    "attention": ("pattern",),
    "walkthrough": ("walk", "walk_sources", "walk_vectors"),
    "lens": ("lens_note", "lens_heat", "lens_fitted", "lens_table"),
    "map": (),  # drawn by its own event (map_tab)
    "export": (),
}
VIEWS = HEADER + tuple(v for views in TAB_VIEWS.values() for v in views)


def _corrected_views(session: Session, token: int) -> tuple:
    """The Layers tab's check box and corrected table: the box offers the correction the
    rogue-dimension line suggests; ticked, that view's table beside the raw one."""
    fixed = session.corrected()
    if fixed is None:
        return gr.Checkbox(False, visible=False), gr.Dataframe(visible=False)
    spec, trail = fixed
    box = gr.Checkbox(
        session.show_corrected, label=f"Show the corrected view ({spec}) beside the raw one", visible=True
    )
    if not session.show_corrected:
        return box, gr.Dataframe(visible=False)
    view = render.residual_view(trail, session.options.sites[0], session.options.similarities[0])
    table = gr.Dataframe(
        render.neighbour_table(trail, view, token),
        label=f"Corrected ({spec}, fitted to the text): nearest vocabulary tokens",
        visible=True,
    )
    return box, table


def _translated_views(session: Session, token: int) -> dict[str, Any]:
    """The chosen translator's note (the controls column) and, on the Layers tab, the
    ``<site>_translated`` table beside the raw one, on the Lens tab the fitted lens below
    the logit lens. A translator of another model is not applied: the note says why."""
    hidden = {
        "translator_note": "",
        "table_translated": gr.Dataframe(visible=False),
        "lens_fitted": gr.Plot(visible=False),
    }
    if session.translator is None:
        return hidden
    name = session.translator[0]
    shown = f"Translator **{plain(name)}**"  # the folder's name is anyone's text: shown, never run as HTML
    try:
        trail = session.translated()
    except TokentrailError as exc:
        return {**hidden, "translator_note": f"{shown} not applied: {plain(exc)}"}
    if trail is None:
        return hidden
    out = dict(hidden)
    site = f"{session.options.sites[0]}_translated"
    if trail.fitted_lens is not None:
        out["translator_note"] = f"{shown}: its fitted lens is on the Lens tab, below the logit lens."
        if session.tab == "lens":
            fig = lens_heatmap(trail.fitted_lens, session.lens_colour)
            fig.update_layout(
                title=f"Fitted lens ({html.escape(name)}): each layer mapped to the last, read by the model's head"
            )
            out["lens_fitted"] = gr.Plot(fig, visible=True)
    elif not any(v.site == site for v in trail.views):
        sites = sorted({v.site.removesuffix("_translated") for v in trail.views if v.site.endswith("_translated")})
        out["translator_note"] = (
            f"{shown} has no `{session.options.sites[0]}` maps "
            f"(it has {', '.join(f'`{s}`' for s in sites) or 'none'}): choose one of those sites"
        )
    else:
        out["translator_note"] = f"{shown}: the `{site}` view is on the Layers tab, beside the raw one."
        if session.tab == "layers":
            view = render.residual_view(trail, site, session.options.similarities[0])
            out["table_translated"] = gr.Dataframe(
                render.neighbour_table(trail, view, token),
                label=f"Translated ({name}): nearest vocabulary tokens of {site}",
                visible=True,
            )
    return out


def render_views(session: Session, menu: ModelMenu, adjusted: bool, metric: str) -> tuple:
    """The header and the visible tab's views, from the session's cached Trail. Hidden
    tabs are skipped (they render when shown): a click pays only for what it shows."""
    trail = session.require_trail()
    t, l, h = session.token, session.layer, session.head
    label = menu.entries[session.model].label if session.model in menu.entries else session.model
    out: dict[str, Any] = {
        "status": render.status(trail, label, t, l, h, session.rogue_note()),
        "tokens": gr.Radio(choices=render.token_choices(trail), value=t),
        "layer": gr.Slider(0, trail.n_layers - 1, value=l, step=1),
        "head": gr.Slider(0, trail.n_heads - 1, value=h, step=1),
    }
    view = render.residual_view(trail, session.options.sites[0], session.options.similarities[0])
    shown = set(HEADER) | set(TAB_VIEWS.get(session.tab, ()))  # hidden tabs' views are left as they are
    out.update({k: v for k, v in _translated_views(session, t).items() if k in shown})
    if session.tab == "layers":
        out["table"] = render.neighbour_table(trail, view, t)
        sim = plots.layer_lines(trail, view, "self_sim", t, adjusted=adjusted)
        if render.rank_is_flat(view, t):
            # its rank plot is a flat line at 0: the similarity plot, which varies, says so
            sim.add_annotation(
                text=render.FLAT_RANK,
                xref="paper",
                yref="paper",
                x=0.99,
                y=0.02,
                showarrow=False,
                xanchor="right",
                yanchor="bottom",
                font=dict(size=12),
            )
        out["plot_sim"] = sim
        out["plot_rank"] = plots.layer_lines(trail, view, "rank", t)
        out["fix"], out["table_fixed"] = _corrected_views(session, t)
        out["plot_overlap"] = plots.layer_lines(trail, view, "overlap", t)
    elif session.tab == "heatmaps":
        out["heat"] = render.heat_html(trail, view, metric, t, l, adjusted=adjusted)
    elif session.tab == "heads":
        heads = session.heads()
        out["heads"] = render.heads_table(trail, heads)
        out["attention"] = plots.attention_row(trail, heads)
    elif session.tab == "lens":
        try:
            lens, emb = session.lens()
        except ModelError as exc:  # no output head: say so in the tab (no empty table), the rest of the page is fine
            out["lens_note"] = render.no_lens(label, exc)
            out["lens_heat"] = gr.Plot(None, visible=False)
            out["lens_table"] = gr.Dataframe(None, visible=False)
        else:
            ids = np.concatenate([lens.top_ids[:, t].reshape(-1), emb.top_ids[:, t].reshape(-1)])
            out["lens_note"] = render.lens_caption(trail, lens, t, label)
            out["lens_heat"] = gr.Plot(lens_heatmap(lens, session.lens_colour), visible=True)
            out["lens_table"] = gr.Dataframe(render.lens_table(trail, lens, emb, t, session.labels(ids)), visible=True)
    elif session.tab == "attention":
        head = None if session.pattern == PATTERNS[0] else h
        out["pattern"] = attention_pattern(trail, l, head)
    elif session.tab == "walkthrough":
        step = session.step()
        out["walk"] = render.step_summary(trail, step)
        out["walk_sources"] = render.step_sources(
            trail, step, trail.attentions[l, h, t] if trail.attentions is not None else None
        )
        out["walk_vectors"] = render.step_vectors(step)
    return tuple(out.get(name, gr.skip()) for name in VIEWS)
