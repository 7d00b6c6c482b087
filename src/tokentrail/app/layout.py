"""The page: components, and the callbacks that join them to a :class:`Session`.

Every callback returns data for the page, never a stack trace: a
:class:`~tokentrail.spec.errors.TokentrailError` becomes a warning and the status line, any
other exception a short "internal error" line (the details go to the server log).
Event handlers have stable ``api_name``s so ``gradio_client`` can drive the app.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import numpy as np

from tokentrail.present import plots
from tokentrail.spec.errors import InputError, ModelError, TokentrailError
from tokentrail.spec.options import SIMILARITIES
from tokentrail.present.progress import CallbackProgress
from tokentrail.app import help as texts
from tokentrail.app import render, security
from tokentrail.app.compare_tab import build_compare_tab
from tokentrail.app.study_tab import StudyShelf, build_study_tab
from tokentrail.app.cross_tab import build_cross_tab
from tokentrail.app.map_tab import build_map_tab
from tokentrail.app.guard import failed, guarded
from tokentrail.app.export import PLOT_FORMATS, RESULT_FORMATS, ExportFolder, write_plot, write_results
from tokentrail.spec.options import LENS_SITES
from tokentrail.app.queues import EVENTS, WORKERS, concurrency_for
from tokentrail.app.session import HEAD_SPACES, INITIAL_TEXT, K_RANGE, MAX_CHARS, MAX_TOKENS, NO_CORRECTION, SITES, ModelMenu, Session, SessionPool, correction_choices, load_model, page_options
from tokentrail.app.style import CSS, HEAD, THEME

log = logging.getLogger("tokentrail.app")

STATE_TTL_S = 3600  # a page's session lives this long after its last use (its results: IDLE_S)
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


class Page:
    """Handles of every component the callbacks read or write."""


def page_progress(progress: gr.Progress) -> CallbackProgress:
    """The library's progress (:mod:`tokentrail.present.progress`) on the page's progress bar:
    loading and conversion as a message with the elapsed time, the analysis as
    *done/total* steps."""

    def show(message: str, done: int | None, total: int | None) -> None:
        progress(None if total is None else (done, total), desc=message, unit="steps")

    return CallbackProgress(show)


class Page_(gr.Blocks):
    """The page's Blocks: it serves its exports from its own private folder (Gradio serves
    only files under its upload folder or ``allowed_paths``; the system temp folder, where
    Gradio's default cache is world-listable, is not used)."""

    tokentrail_folder: ExportFolder

    def launch(self, *args, **kwargs):
        folder = getattr(self, "tokentrail_folder", None)
        if folder is not None:
            kwargs["allowed_paths"] = [*(kwargs.get("allowed_paths") or []), str(folder.cache)]
        return super().launch(*args, **kwargs)


def build_app(models: list[str] | None = None, preload: tuple[str, ...] | list[str] = (), *, max_queue: int = 16, pool: SessionPool | None = None, studies: str | None = None) -> gr.Blocks:
    """The tokentrail page as a ``gr.Blocks`` (queue bounded to ``max_queue`` waiting events).

    ``models``: extra names the page may offer (hub ids or local folders, named by the
    server's operator; never typed in the page). ``preload``: models to load now.
    ``pool``: the bound on the sessions' cached results (default: ``SessionPool()``).
    ``studies``: the folder whose corpus studies the Study tab may open (none: the tab says how).
    Launch it with :func:`tokentrail.app.launch`, or ``demo.launch(**launch_options())``.
    """
    menu = ModelMenu([*(models or []), *preload])
    for name in preload:
        load_model(menu.add(name).value)
    default_model = menu.add(preload[0]).value if preload else menu.default
    folder = ExportFolder()
    pool = pool or SessionPool()
    pool.sweep_every(min(60.0, pool.idle_s / 4))  # idle pages lose their results on a quiet server too
    shelf = StudyShelf(studies)  # the only way the page reaches a study (Study tab, corrections fitted to one)
    p = Page()

    with Page_(title="tokentrail", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown(f"# tokentrail\n{texts.INTRO}", elem_id="header")
        # controls in a narrow column beside the results, help folded: on a laptop screen
        # (1280 x 720) the first result shows without scrolling
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=1, min_width=250, elem_id="controls"):
                p.model = gr.Dropdown(menu.choices(), value=default_model, label="Model", elem_id="model", filterable=False)
                p.analyse = gr.Button("Analyse", variant="primary", elem_id="analyse")
                p.site = gr.Radio(list(SITES), value="attn_resid", label="Site", elem_id="site")
                p.similarity = gr.Radio(list(SIMILARITIES), value="cosine", label="Similarity", elem_id="similarity")
                p.k = gr.Slider(K_RANGE[0], K_RANGE[1], value=15, step=1, label="Neighbours shown (k)", elem_id="k")
                p.positional = gr.Checkbox(True, label="Use positional embeddings", info="compare with encodings (else raw embeddings)", elem_id="positional")
                p.adjusted = gr.Checkbox(False, label="Anisotropy-adjusted", info="similarity minus the layer's mean", elem_id="adjusted")
                p.correct = gr.Dropdown(correction_choices(shelf), value=NO_CORRECTION, label="Correction", info=texts.CORRECTION, allow_custom_value=True, filterable=True, elem_id="correct")
                p.causal = gr.Checkbox(True, label="Causal mask", info="decoders only: off = bidirectional", visible=False, elem_id="causal")
                p.layer = gr.Slider(0, 1, value=0, step=1, label="Layer (heads, walkthrough, heatmap)", elem_id="layer")
                p.head = gr.Slider(0, 1, value=0, step=1, label="Head (walkthrough)", elem_id="head")
            with gr.Column(scale=4, min_width=480, elem_id="results"):
                p.text = gr.Textbox(
                    INITIAL_TEXT,
                    label="Text",
                    info=texts.LIMITS.format(chars=MAX_CHARS, tokens=MAX_TOKENS),
                    lines=1,  # one line: Enter submits (Gradio submits multi-line boxes on Shift+Enter)
                    max_lines=5,
                    elem_id="text",
                )
                p.status = gr.Markdown("Press **Analyse** to trace the text.", elem_id="status")
                p.tokens = gr.Radio([], label="Tokens: click one to follow it", elem_id="tokens")
                _tabs(p, menu, state, shelf)

        _wire(demo, p, state, menu, folder, default_model, pool, shelf)
    folder.adopt(demo)
    demo.GRADIO_CACHE = str(folder.cache)
    demo.tokentrail_folder = folder  # the private folder lives as long as the page
    demo.tokentrail_pool = pool
    demo.queue(max_size=max_queue, default_concurrency_limit=WORKERS, api_open=False)
    return demo


def _tabs(p: Page, menu: ModelMenu, state: gr.State, shelf: StudyShelf) -> None:
    with gr.Tabs(selected="layers", elem_id="tabs"):
        with gr.Tab("Across layers", id="layers", elem_id="tab-layers") as p.tab_layers:
            texts.panel(texts.ACROSS_LAYERS)
            p.table = gr.Dataframe(label="Nearest vocabulary tokens, per layer", interactive=False, wrap=True, max_height=520, pinned_columns=1, elem_id="table")
            with gr.Row(elem_id="layer-plots"):
                p.plot_sim = gr.Plot(show_label=False, min_width=400, elem_id="plot-sim")
                p.plot_rank = gr.Plot(show_label=False, min_width=400, elem_id="plot-rank")
                p.plot_overlap = gr.Plot(show_label=False, min_width=400, elem_id="plot-overlap")
        with gr.Tab("Heatmaps", id="heatmaps", elem_id="tab-heatmaps") as p.tab_heatmaps:
            texts.panel(texts.HEATMAPS)
            p.metric = gr.Radio([(v, k) for k, v in render.HEAT_METRICS.items()], value="rank", label="Metric", elem_id="metric")
            p.heat = gr.HTML("", js_on_load=HEAT_CLICK_JS, apply_default_css=False, elem_id="heat")
        with gr.Tab("Heads", id="heads", elem_id="tab-heads") as p.tab_heads:
            texts.panel(texts.HEADS)
            p.head_space = gr.Radio(list(HEAD_SPACES), value="value", label="Space: compare each head with its own", elem_id="head-space")
            p.heads = gr.Dataframe(label="Each head vs its own space (value: its output z; key/query: the token's key/query)", interactive=False, max_height=480, pinned_columns=1, elem_id="heads")
            p.attention = gr.Plot(show_label=False, elem_id="plot-attention")
        with gr.Tab("Logit lens", id="lens", elem_id="tab-lens") as p.tab_lens:
            texts.panel(texts.LENS)
            p.lens_site = gr.Radio(list(LENS_SITES), value="layer_out", label="Residual read", elem_id="lens-site")
            p.lens_note = gr.Markdown(elem_id="lens-note")
            p.lens_table = gr.Dataframe(label="Predictions per layer", interactive=False, wrap=True, max_height=520, pinned_columns=1, elem_id="lens-table")
        with gr.Tab("How attention computed this", id="walkthrough", elem_id="tab-walkthrough") as p.tab_walkthrough:
            texts.panel(texts.WALKTHROUGH)
            p.walk = gr.Markdown(elem_id="walk")
            p.walk_sources = gr.Dataframe(label="Per source token", interactive=False, max_height=420, elem_id="walk-sources")
            p.walk_vectors = gr.Dataframe(label="Vectors (first dimensions)", interactive=False, elem_id="walk-vectors")
        with gr.Tab("Compare", id="compare", elem_id="tab-compare") as p.tab_compare:
            build_compare_tab(p, menu)
        with gr.Tab("Map", id="map", elem_id="tab-map") as p.tab_map:
            build_map_tab(p, state)
        with gr.Tab("Cross-attention", id="cross", elem_id="tab-cross") as p.tab_cross:
            build_cross_tab(p, menu)
        with gr.Tab("Study", id="study", elem_id="tab-study"):
            build_study_tab(p, shelf)
        with gr.Tab("Export", id="export", elem_id="tab-export") as p.tab_export:
            texts.panel(texts.EXPORT)
            with gr.Row():
                p.result_fmt = gr.Radio(list(RESULT_FORMATS), value="CSV", label="Analysis format", elem_id="result-fmt")
                p.export_results = gr.Button("Download analysis", elem_id="export-results")
            with gr.Row():
                p.plot_which = gr.Dropdown(list(PLOT_CHOICES), value="similarity across layers", label="Plot", elem_id="plot-which")
                p.plot_fmt = gr.Radio(list(PLOT_FORMATS), value="HTML", label="Plot format", elem_id="plot-fmt")
                p.export_plot = gr.Button("Download plot", elem_id="export-plot")
            p.file = gr.File(label="Download", interactive=False, elem_id="file")


# ---- rendering a session into the page ---------------------------------------------------
HEADER = ("status", "tokens", "layer", "head")
TAB_VIEWS = {
    "layers": ("table", "plot_sim", "plot_rank", "plot_overlap"),
    "heatmaps": ("heat",),
    "heads": ("heads", "attention"),
    "walkthrough": ("walk", "walk_sources", "walk_vectors"),
    "lens": ("lens_note", "lens_table"),
    "map": (),  # drawn by its own event (map_tab)
    "export": (),
}
VIEWS = HEADER + tuple(v for views in TAB_VIEWS.values() for v in views)


def _views(session: Session, menu: ModelMenu, adjusted: bool, metric: str) -> tuple:
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
    if session.tab == "layers":
        out["table"] = render.neighbour_table(trail, view, t)
        out["plot_sim"] = plots.layer_lines(trail, view, "self_sim", t, adjusted=adjusted)
        out["plot_rank"] = plots.layer_lines(trail, view, "rank", t)
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
        except ModelError as exc:  # no output head: say so in the tab, the rest of the page is fine
            out["lens_note"] = f"No logit lens for {label}: {exc}"
            out["lens_table"] = None
        else:
            ids = np.concatenate([lens.top_ids[:, t].reshape(-1), emb.top_ids[:, t].reshape(-1)])
            out["lens_note"] = render.lens_caption(trail, lens, t, label)
            out["lens_table"] = render.lens_table(trail, lens, emb, t, session.labels(ids))
    elif session.tab == "walkthrough":
        step = session.step()
        out["walk"] = render.step_summary(trail, step)
        out["walk_sources"] = render.step_sources(trail, step, trail.attentions[l, h, t] if trail.attentions is not None else None)
        out["walk_vectors"] = render.step_vectors(step)
    return tuple(out.get(name, gr.skip()) for name in VIEWS)


def _wire(demo: gr.Blocks, p: Page, state: gr.State, menu: ModelMenu, folder: ExportFolder, default_model: str, pool: SessionPool, shelf: StudyShelf) -> None:
    views = [getattr(p, name) for name in VIEWS]
    options = [p.positional, p.site, p.similarity, p.k, p.causal, p.correct]
    display = [p.adjusted, p.metric]
    status_at = 1 + VIEWS.index("status")  # after the state output
    common = EVENTS
    quick = dict(common, show_progress="minimal")  # clicks: no full-page progress flash

    def session_for(session: Session | None) -> Session:
        session = pool.use(session if isinstance(session, Session) else Session(model=default_model))
        pool.settle(session, cap=False)  # idle pages lose their results (the cap: after analyses)
        return session

    # -- analyse a text (Enter / the button / an option changed) ------------------------
    @guarded(1 + len(views), status_at)
    def analyse(session, text, model, positional, site, similarity, k, causal, correct, adjusted, metric, progress=gr.Progress()):
        session = session_for(session)
        entry = menu.check(model)
        opts = page_options(site, positional, similarity, k, causal, correct, shelf)
        old = session.model
        session.switch(entry.value)
        try:
            session.analyse(text, opts, page_progress(progress))
        except Exception:
            session.switch(old)
            raise
        pool.settle(session)
        return (session, *_views(session, menu, adjusted, metric))

    gr.on([p.text.submit, p.analyse.click], analyse, [state, p.text, p.model, *options, *display], [state, *views], api_name="tokenize", **common)
    gr.on(
        [p.positional.input, p.site.input, p.similarity.input, p.k.release, p.causal.input, p.correct.input],
        analyse,
        [state, p.text, p.model, *options, *display],
        [state, *views],
        api_name="analyse",
        trigger_mode="always_last",
        **common,
    )
    demo.load(analyse, [state, p.text, p.model, *options, *display], [state, *views], api_visibility="private", **common)

    # -- selection: re-render from the cached Trail ------------------------------------
    @guarded(len(views), VIEWS.index("status"))
    def select_token(session, token, adjusted, metric):
        session = session_for(session)
        if token is None:
            raise InputError("choose a token to follow")
        session.select(token=token)
        return _views(session, menu, adjusted, metric)

    p.tokens.input(select_token, [state, p.tokens, *display], views, api_name="select_token", trigger_mode="always_last", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def select_layer(session, layer, head, adjusted, metric):
        session = session_for(session)
        session.select(layer=layer, head=head)
        return _views(session, menu, adjusted, metric)

    gr.on([p.layer.input, p.head.input], select_layer, [state, p.layer, p.head, *display], views, api_name="select_layer", trigger_mode="always_last", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def redisplay(session, adjusted, metric):
        session = session_for(session)
        return _views(session, menu, adjusted, metric)

    gr.on([p.adjusted.input, p.metric.input], redisplay, [state, *display], views, api_name="display", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def choose_head_space(session, space, adjusted, metric):
        session = session_for(session)
        session.choose(head_space=space)
        return _views(session, menu, adjusted, metric)

    p.head_space.input(choose_head_space, [state, p.head_space, *display], views, api_name="head_space", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def choose_lens_site(session, site, adjusted, metric):
        session = session_for(session)
        session.choose(lens_site=site)
        return _views(session, menu, adjusted, metric)

    p.lens_site.input(choose_lens_site, [state, p.lens_site, *display], views, api_name="lens_site", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def select_cell(session, adjusted, metric, evt: gr.EventData):
        session = session_for(session)
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        session.select(token=data.get("token"), layer=data.get("layer"))
        return _views(session, menu, adjusted, metric)

    gr.on([p.heat.click, p.map_pick.click], select_cell, [state, *display], views, api_visibility="private", **quick)

    # -- tabs: render the one being shown ------------------------------------------------
    for name in TAB_VIEWS:

        def show(session, adjusted, metric, _tab=name):
            session = session_for(session)
            session.tab = _tab
            if session.trail is None:  # nothing analysed yet: nothing to draw
                return (session, *[gr.skip() for _ in VIEWS])
            return (session, *_views(session, menu, adjusted, metric))

        show.__name__ = f"show_{name}"
        getattr(p, f"tab_{name}").select(
            guarded(1 + len(views), status_at)(show), [state, *display], [state, *views], api_name=f"show_{name}", **quick
        )

    # -- switching model ----------------------------------------------------------------
    switch_outputs = [state, p.model, p.causal, *views]

    @guarded(len(switch_outputs), 3 + VIEWS.index("status"))
    def switch_model(session, model, text, positional, site, similarity, k, causal, correct, adjusted, metric, progress=gr.Progress()):
        session = session_for(session)
        entry = menu.check(model)
        bar = page_progress(progress)
        bar.loading(f"loading {entry.label}")
        try:
            with concurrency_for(entry.value):
                loaded = load_model(entry.value, bar.loading)
        except TokentrailError as exc:
            # shown once, in the status line: a toast as well covered the model menu
            msg = f"{entry.label} cannot be used here: {exc}. Still using {menu.entries[session.model].label}."
            return (session, gr.Dropdown(value=session.model), gr.skip(), *failed(msg, len(views), VIEWS.index("status")))
        causal_box = gr.Checkbox(visible=loaded.adapter.is_decoder)
        old = session.model
        session.switch(entry.value)
        if session.text is None and not (isinstance(text, str) and text.strip()):
            msg = f"Loaded **{entry.label}**. Enter a text and press Analyse."
            return (session, gr.skip(), causal_box, msg, *[gr.skip()] * (len(views) - 1))
        opts = page_options(site, positional, similarity, k, causal, correct, shelf)
        try:
            session.analyse(text if isinstance(text, str) and text.strip() else session.text, opts, bar)
        except Exception:
            session.switch(old)
            raise
        pool.settle(session)
        return (session, gr.skip(), causal_box, *_views(session, menu, adjusted, metric))

    p.model.input(switch_model, [state, p.model, p.text, *options, *display], switch_outputs, api_name="switch_model", **common)

    # -- export ---------------------------------------------------------------------------
    @guarded(2, 1)
    def export_results(session, fmt):
        session = session_for(session)
        trail = session.require_trail()
        path = write_results(trail, fmt, folder)
        return str(path), f"Exported the analysis as {fmt}: {path.name}"

    p.export_results.click(export_results, [state, p.result_fmt], [p.file, p.status], api_name="export_results", **common)

    @guarded(2, 1)
    def export_plot(session, which, fmt, adjusted, metric):
        session = session_for(session)
        trail = session.require_trail()
        kind = PLOT_CHOICES.get(which)
        if kind is None:
            raise InputError(f"unknown plot {which!r}: choose {', '.join(PLOT_CHOICES)}")
        view = render.residual_view(trail, session.options.sites[0], session.options.similarities[0])
        if kind == "attention":
            fig = plots.attention_row(trail, session.heads())
        elif kind == "grid":
            fig = plots.layer_grid(trail, view, metric, adjusted=adjusted, selected=(session.token, session.layer))
        else:
            fig = plots.layer_lines(trail, view, kind, session.token, adjusted=adjusted, height=420)
        path = write_plot(fig, fmt, f"tokentrail-{kind}", folder)
        return str(path), f"Exported the {which} plot as {fmt}: {path.name}"

    p.export_plot.click(export_plot, [state, p.plot_which, p.plot_fmt, *display], [p.file, p.status], api_name="export_plot", **common)



def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: the page's look (Gradio 6 takes theme and
    CSS at launch) and the server's hardening (:mod:`tokentrail.app.security`)."""
    return dict(theme=THEME, css=CSS, head=HEAD, app_kwargs=security.app_kwargs())
