"""The page's events: the callbacks that join its components to a :class:`Session`.

Every callback returns data for the page, never a stack trace: a
:class:`~tokentrail.spec.errors.TokentrailError` becomes a warning and the status line, any
other exception a short "internal error" line (the details go to the server log).
Event handlers have stable ``api_name``s so ``gradio_client`` can drive the app.
:mod:`tokentrail.app.layout` builds the components and calls :func:`wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from tokentrail.app import render
from tokentrail.app.export import ExportFolder, write_plot, write_results
from tokentrail.app.guard import failed, guarded
from tokentrail.app.options import page_options
from tokentrail.app.pool import SessionPool
from tokentrail.app.queues import EVENTS, concurrency_for
from tokentrail.app.session import ModelMenu, Session, load_model
from tokentrail.app.study_tab import StudyShelf
from tokentrail.app.translator_shelf import NO_TRANSLATOR, TranslatorShelf
from tokentrail.app.views import PLOT_CHOICES, TAB_VIEWS, VIEWS, Page, render_views
from tokentrail.present import plots
from tokentrail.present.progress import CallbackProgress
from tokentrail.spec.errors import InputError, TokentrailError


def page_progress(progress: gr.Progress) -> CallbackProgress:
    """The library's progress (:mod:`tokentrail.present.progress`) on the page's progress bar:
    loading and conversion as a message with the elapsed time, the analysis as
    *done/total* steps."""

    def show(message: str, done: int | None, total: int | None) -> None:
        progress(None if total is None else (done, total), desc=message, unit="steps")

    return CallbackProgress(show)


@dataclass
class Wiring:
    """What every event reads: the page's components, its state, the model menu and the
    sessions' pool."""

    p: Page
    state: gr.State
    menu: ModelMenu
    pool: SessionPool
    default_model: str

    @property
    def views(self) -> list:
        """The components :func:`~tokentrail.app.views.render_views` fills, in ``VIEWS`` order."""
        return [getattr(self.p, name) for name in VIEWS]

    @property
    def options(self) -> list:
        """The controls :func:`~tokentrail.app.options.page_options` reads."""
        p = self.p
        return [p.positional, p.site, p.similarity, p.k, p.causal, p.correct]

    @property
    def display(self) -> list:
        """The controls that change only how the cached results are shown."""
        return [self.p.adjusted, self.p.metric]

    def session_for(self, session: Session | None) -> Session:
        session = self.pool.use(session if isinstance(session, Session) else Session(model=self.default_model))
        self.pool.settle(session, cap=False)  # idle pages lose their results (the cap: after analyses)
        return session


def wire(
    demo: gr.Blocks, w: Wiring, folder: ExportFolder, shelf: StudyShelf, fitted: TranslatorShelf | None = None
) -> None:
    """Every event of the page, in a fixed order (the order of the page's dependencies)."""
    fitted = fitted or TranslatorShelf(None)
    analysed = _wire_analyse(demo, w, shelf)
    _wire_selection(w)
    _wire_display(w)
    _wire_translator(w, fitted)
    _wire_cell_click(w)
    _wire_tabs(w)
    analysed.append(_wire_switch_model(w, shelf))
    _wire_export(w, folder)
    _wire_translator_menu(w, fitted, analysed)


def _wire_analyse(demo: gr.Blocks, w: Wiring, shelf: StudyShelf) -> list:
    """Analyse a text: Enter, the button, an option changed, the page's first load (their
    events returned, for what follows an analysis)."""
    p, state, menu, pool = w.p, w.state, w.menu, w.pool
    views, options, display = w.views, w.options, w.display
    status_at = 1 + VIEWS.index("status")  # after the state output
    common = EVENTS

    @guarded(1 + len(views), status_at)
    def analyse(
        session, text, model, positional, site, similarity, k, causal, correct, adjusted, metric, progress=gr.Progress()
    ):
        session = w.session_for(session)
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
        return (session, *render_views(session, menu, adjusted, metric))

    typed = gr.on(
        [p.text.submit, p.analyse.click],
        analyse,
        [state, p.text, p.model, *options, *display],
        [state, *views],
        api_name="tokenize",
        **common,
    )
    changed = gr.on(
        [p.positional.input, p.site.input, p.similarity.input, p.k.release, p.causal.input, p.correct.input],
        analyse,
        [state, p.text, p.model, *options, *display],
        [state, *views],
        api_name="analyse",
        trigger_mode="always_last",
        **common,
    )
    loaded = demo.load(
        analyse, [state, p.text, p.model, *options, *display], [state, *views], api_visibility="private", **common
    )
    return [typed, changed, loaded]


def _wire_selection(w: Wiring) -> None:
    """Selection (a token, a layer or head; a heatmap cell: :func:`_wire_cell_click`) and
    display choices (:func:`_wire_display`): re-render from the cached Trail."""
    p, state, menu = w.p, w.state, w.menu
    views, display = w.views, w.display
    quick = dict(EVENTS, show_progress="minimal")  # clicks: no full-page progress flash

    @guarded(len(views), VIEWS.index("status"))
    def select_token(session, token, adjusted, metric):
        session = w.session_for(session)
        if token is None:
            raise InputError("choose a token to follow")
        session.select(token=token)
        return render_views(session, menu, adjusted, metric)

    p.tokens.input(
        select_token, [state, p.tokens, *display], views, api_name="select_token", trigger_mode="always_last", **quick
    )

    @guarded(len(views), VIEWS.index("status"))
    def select_layer(session, layer, head, adjusted, metric):
        session = w.session_for(session)
        session.select(layer=layer, head=head)
        return render_views(session, menu, adjusted, metric)

    gr.on(
        [p.layer.input, p.head.input],
        select_layer,
        [state, p.layer, p.head, *display],
        views,
        api_name="select_layer",
        trigger_mode="always_last",
        **quick,
    )


def _wire_display(w: Wiring) -> None:
    """Display choices (adjusted, metric, a head's space, the lens's site): re-render from
    the cached Trail."""
    p, state, menu = w.p, w.state, w.menu
    views, display = w.views, w.display
    quick = dict(EVENTS, show_progress="minimal")  # clicks: no full-page progress flash

    @guarded(len(views), VIEWS.index("status"))
    def redisplay(session, adjusted, metric):
        session = w.session_for(session)
        return render_views(session, menu, adjusted, metric)

    gr.on([p.adjusted.input, p.metric.input], redisplay, [state, *display], views, api_name="display", **quick)

    def chooser(field: str) -> Callable:
        @guarded(len(views), VIEWS.index("status"))
        def choose(session, value, adjusted, metric):
            session = w.session_for(session)
            session.choose(**{field: value})
            return render_views(session, menu, adjusted, metric)

        choose.__name__ = f"choose_{field}"
        return choose

    # a choice that only redraws the cached analysis: the session's field, its control, its API name
    for field, control, api in (
        ("head_space", p.head_space, "head_space"),
        ("lens_site", p.lens_site, "lens_site"),
        ("lens_colour", p.lens_colour, "lens_colour"),
        ("pattern", p.pattern_scope, "pattern"),
    ):
        control.input(chooser(field), [state, control, *display], views, api_name=api, **quick)

    @guarded(len(views), VIEWS.index("status"))
    def show_corrected(session, show, adjusted, metric):
        session = w.session_for(session)
        session.require_trail()
        session.show_corrected = bool(show)
        return render_views(session, menu, adjusted, metric)

    p.fix.input(show_corrected, [state, p.fix, *display], views, api_name="show_corrected", **quick)


def _wire_translator(w: Wiring, fitted: TranslatorShelf) -> None:
    """Choosing a fitted translator the server offers (``serve --translators``): applied to
    the cached analysis (no new forward pass); another model's is refused in one line."""
    p, state, menu = w.p, w.state, w.menu
    views, display = w.views, w.display

    @guarded(len(views), VIEWS.index("status"))
    def choose_translator(session, name, adjusted, metric):
        session = w.session_for(session)
        if name in (None, "", NO_TRANSLATOR):
            session.translator = None
        else:
            folder = fitted.path(name)  # an offered translator, or refused
            session.require_trail()
            old, session.translator = session.translator, (str(name), folder)
            try:
                session.translated()
            except TokentrailError:
                session.translator = old  # not applied
                raise
        return render_views(session, menu, adjusted, metric)

    p.translator.input(
        choose_translator, [state, p.translator, *display], views, api_name="choose_translator", **EVENTS
    )


def _wire_translator_menu(w: Wiring, fitted: TranslatorShelf, analysed: list) -> None:
    """After an analysis (a text, an option, a model): the Translator choice marks the
    translators fitted on another model than the page's."""
    if fitted.root is None:
        return

    def translator_menu(session, name):
        if not isinstance(session, Session) or session.trail is None:
            return gr.skip()
        return gr.Dropdown(choices=fitted.choices(session.trail.info.model), value=name)

    for event in analysed:
        event.then(translator_menu, [w.state, w.p.translator], [w.p.translator], api_visibility="private", **EVENTS)


def _wire_cell_click(w: Wiring) -> None:
    """A click on a heatmap cell or a map point selects its token and layer."""
    p, state, menu = w.p, w.state, w.menu
    views, display = w.views, w.display
    quick = dict(EVENTS, show_progress="minimal")  # clicks: no full-page progress flash

    @guarded(len(views), VIEWS.index("status"))
    def select_cell(session, adjusted, metric, evt: gr.EventData):
        session = w.session_for(session)
        data = evt._data if isinstance(getattr(evt, "_data", None), dict) else {}
        session.select(token=data.get("token"), layer=data.get("layer"))
        return render_views(session, menu, adjusted, metric)

    gr.on([p.heat.click, p.map_pick.click], select_cell, [state, *display], views, api_visibility="private", **quick)

    @guarded(len(views), VIEWS.index("status"))
    def select_point_row(session, adjusted, metric, evt: gr.SelectData):
        session = w.session_for(session)
        row = evt.row_value if isinstance(evt.row_value, list) else []
        if len(row) < 3:
            raise InputError("choose a point of the table")
        layer = row[2] if isinstance(row[2], int | float) and not isinstance(row[2], bool) else None
        session.select(token=row[1], layer=layer)
        return render_views(session, menu, adjusted, metric)

    p.map_points.select(select_point_row, [state, *display], views, api_visibility="private", **quick)


def _wire_tabs(w: Wiring) -> None:
    """Showing a tab renders it (hidden tabs are not rendered on a click)."""
    p, state, menu = w.p, w.state, w.menu
    views, display = w.views, w.display
    status_at = 1 + VIEWS.index("status")  # after the state output
    quick = dict(EVENTS, show_progress="minimal")  # clicks: no full-page progress flash

    for name in TAB_VIEWS:

        def show(session, adjusted, metric, _tab=name):
            session = w.session_for(session)
            session.tab = _tab
            if session.trail is None:  # nothing analysed yet: nothing to draw
                return (session, *[gr.skip() for _ in VIEWS])
            return (session, *render_views(session, menu, adjusted, metric))

        show.__name__ = f"show_{name}"
        getattr(p, f"tab_{name}").select(
            guarded(1 + len(views), status_at)(show),
            [state, *display],
            [state, *views],
            api_name=f"show_{name}",
            **quick,
        )


def _wire_switch_model(w: Wiring, shelf: StudyShelf):
    """Switching model: load it (or say why not), then analyse the page's text with it."""
    p, state, menu, pool = w.p, w.state, w.menu, w.pool
    views, options, display = w.views, w.options, w.display
    common = EVENTS

    switch_outputs = [state, p.model, p.causal, *views]

    @guarded(len(switch_outputs), 3 + VIEWS.index("status"))
    def switch_model(
        session, model, text, positional, site, similarity, k, causal, correct, adjusted, metric, progress=gr.Progress()
    ):
        session = w.session_for(session)
        entry = menu.check(model)
        bar = page_progress(progress)
        bar.loading(f"loading {entry.label}")
        try:
            with concurrency_for(entry.value):
                loaded = load_model(entry.value, bar.loading)
        except TokentrailError as exc:
            # shown once, in the status line: a toast as well covered the model menu
            msg = f"{entry.label} cannot be used here: {exc}. Still using {menu.entries[session.model].label}."
            return (
                session,
                gr.Dropdown(value=session.model),
                gr.skip(),
                *failed(msg, len(views), VIEWS.index("status")),
            )
        causal_box = gr.Checkbox(visible=loaded.is_decoder)
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
        return (session, gr.skip(), causal_box, *render_views(session, menu, adjusted, metric))

    return p.model.input(
        switch_model, [state, p.model, p.text, *options, *display], switch_outputs, api_name="switch_model", **common
    )


def _wire_export(w: Wiring, folder: ExportFolder) -> None:
    """Downloads of the analysis and of a plot, written to the page's private folder."""
    p, state = w.p, w.state
    display = w.display
    common = EVENTS

    @guarded(2, 1)
    def export_results(session, fmt):
        session = w.session_for(session)
        trail = session.require_trail()
        path = write_results(trail, fmt, folder)
        return gr.File(str(path), visible=True), f"Exported the analysis as {fmt}: {path.name}"

    p.export_results.click(
        export_results, [state, p.result_fmt], [p.file, p.status], api_name="export_results", **common
    )

    @guarded(2, 1)
    def export_plot(session, which, fmt, adjusted, metric):
        session = w.session_for(session)
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
        return gr.File(str(path), visible=True), f"Exported the {which} plot as {fmt}: {path.name}"

    p.export_plot.click(
        export_plot, [state, p.plot_which, p.plot_fmt, *display], [p.file, p.status], api_name="export_plot", **common
    )
