"""The page: its components (the controls here, the result tabs in :mod:`.views`), joined
to a :class:`Session` by :mod:`.wiring`.

Every callback returns data for the page, never a stack trace (a
:class:`~tokentrail.spec.errors.TokentrailError` becomes a warning and the status line);
event handlers have stable ``api_name``s so ``gradio_client`` can drive the app
(:mod:`.wiring` says how).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from tokentrail.app import help as texts
from tokentrail.app import security
from tokentrail.app.export import ExportFolder
from tokentrail.app.options import (
    INITIAL_TEXT,
    K_RANGE,
    MAX_CHARS,
    MAX_TOKENS,
    NO_CORRECTION,
    SITES,
    correction_choices,
)
from tokentrail.app.pool import SessionPool
from tokentrail.app.queues import WORKERS
from tokentrail.app.session import ModelMenu, load_model
from tokentrail.app.study_tab import StudyShelf
from tokentrail.app.style import CSS, HEAD, THEME
from tokentrail.app.translator_shelf import NO_TRANSLATOR, TranslatorShelf
from tokentrail.app.views import Page, build_tabs
from tokentrail.app.wiring import Wiring, wire
from tokentrail.spec.options import SIMILARITIES

log = logging.getLogger("tokentrail.app")

STATE_TTL_S = 3600  # a page's session lives this long after its last use (its results: IDLE_S)


class Page_(gr.Blocks):
    """The page's Blocks: it serves its exports from its own private folder (Gradio serves
    only files under its upload folder or ``allowed_paths``; the system temp folder, where
    Gradio's default cache is world-listable, is not used)."""

    tokentrail_folder: ExportFolder
    tokentrail_pool: SessionPool

    def launch(self, *args, **kwargs):
        folder = getattr(self, "tokentrail_folder", None)
        if folder is not None:
            kwargs["allowed_paths"] = [*(kwargs.get("allowed_paths") or []), str(folder.cache)]
        return super().launch(*args, **kwargs)


def build_app(
    models: list[str] | None = None,
    preload: tuple[str, ...] | list[str] = (),
    *,
    max_queue: int = 16,
    pool: SessionPool | None = None,
    studies: str | None = None,
    translators: str | None = None,
) -> Page_:
    """The tokentrail page as a ``gr.Blocks`` (queue bounded to ``max_queue`` waiting events).

    ``models``: extra names the page may offer (hub ids or local folders, named by the
    server's operator; never typed in the page). ``preload``: models to load now.
    ``pool``: the bound on the sessions' cached results (default: ``SessionPool()``).
    ``studies``: the folder whose corpus studies the Study tab may open (none: the tab says how).
    ``translators``: the folder whose fitted translators (``tokentrail fit``) the page offers.
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
    fitted = TranslatorShelf(translators)  # the only way the page reaches a translator
    p = Page()

    with Page_(title="tokentrail", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown(f"# tokentrail\n{texts.INTRO}", elem_id="header")
        # the text and the result first (in the page's order: the first Tab stop, and the
        # top of a phone's screen), the controls in a narrow column beside them on a
        # laptop (1280 x 720: the first result shows without scrolling), below on a phone
        # the controls are made first (the tabs' events read them) and placed after the results
        controls = _build_controls(p, menu, default_model, shelf, fitted)
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=4, min_width=480, elem_id="results"):
                with gr.Row(equal_height=False, elem_id="text-row"):
                    p.text = gr.Textbox(
                        INITIAL_TEXT,
                        label="Text",
                        info=texts.LIMITS.format(chars=MAX_CHARS, tokens=MAX_TOKENS),
                        lines=1,  # one line: Enter submits (Gradio submits multi-line boxes on Shift+Enter)
                        max_lines=5,
                        scale=6,
                        elem_id="text",
                    )
                    p.analyse = gr.Button("Analyse", variant="primary", scale=1, min_width=100, elem_id="analyse")
                p.status = gr.Markdown("Press **Analyse** to trace the text.", elem_id="status")
                p.tokens = gr.Radio([], label="Tokens: click one to follow it (arrow keys move)", elem_id="tokens")
                build_tabs(p, menu, state, shelf)
            with gr.Column(scale=1, min_width=250, elem_id="controls"):
                for control in controls:
                    control.render()

        wire(demo, Wiring(p, state, menu, pool, default_model), folder, shelf, fitted)
    folder.adopt(demo)
    demo.GRADIO_CACHE = str(folder.cache)
    demo.tokentrail_folder = folder  # the private folder lives as long as the page
    demo.tokentrail_pool = pool
    demo.queue(max_size=max_queue, default_concurrency_limit=WORKERS, api_open=False)
    return demo


def _build_controls(p: Page, menu: ModelMenu, default_model: str, shelf: StudyShelf, fitted: TranslatorShelf) -> list:
    """The controls column's components, on ``p``, not yet rendered (in the column's order)."""
    p.model = gr.Dropdown(
        menu.choices(), value=default_model, label="Model", elem_id="model", filterable=False, render=False
    )
    p.site = gr.Radio(list(SITES), value="attn_resid", label="Site", elem_id="site", render=False)
    p.similarity = gr.Radio(list(SIMILARITIES), value="cosine", label="Similarity", elem_id="similarity", render=False)
    p.k = gr.Slider(K_RANGE[0], K_RANGE[1], value=15, step=1, label="Neighbours shown (k)", elem_id="k", render=False)
    p.positional = gr.Checkbox(
        True,
        label="Use positional embeddings",
        info="compare with encodings (else raw embeddings)",
        elem_id="positional",
        render=False,
    )
    p.adjusted = gr.Checkbox(
        False, label="Anisotropy-adjusted", info="similarity minus the layer's mean", elem_id="adjusted", render=False
    )
    p.correct = gr.Dropdown(
        correction_choices(shelf),
        value=NO_CORRECTION,
        label="Correction",
        info=texts.CORRECTION,
        allow_custom_value=True,
        filterable=True,
        elem_id="correct",
        render=False,
    )
    p.causal = gr.Checkbox(
        True,
        label="Causal mask",
        info="decoders only: off = bidirectional",
        visible=False,
        elem_id="causal",
        render=False,
    )
    # a fitted translator the server offers (serve --translators); shown only when it offers some
    p.translator = gr.Dropdown(
        fitted.choices(),
        value=NO_TRANSLATOR,
        label="Translator",
        info=texts.TRANSLATOR,
        filterable=False,
        visible=fitted.root is not None,
        elem_id="translator",
        render=False,
    )
    p.translator_note = gr.Markdown("", elem_id="translator-note", render=False)
    p.layer = gr.Slider(
        0, 1, value=0, step=1, label="Layer (Heads, Attention, Steps, Heatmap)", elem_id="layer", render=False
    )
    p.head = gr.Slider(0, 1, value=0, step=1, label="Head (Steps, Attention)", elem_id="head", render=False)
    return [
        p.model,
        p.site,
        p.similarity,
        p.k,
        p.positional,
        p.adjusted,
        p.correct,
        p.translator,
        p.translator_note,
        p.causal,
        p.layer,
        p.head,
    ]


def launch_options() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch``: the page's look (Gradio 6 takes theme and
    CSS at launch) and the server's hardening (:mod:`tokentrail.app.security`)."""
    return dict(theme=THEME, css=CSS, head=HEAD, app_kwargs=security.app_kwargs())
