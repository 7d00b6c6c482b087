"""The app's Study tab: open a finished corpus study (``tokentrail study``) and read its
report's figures and run metadata in the page.

The page never names a path. The operator gives one folder (``tokentrail serve
--studies DIR``); the tab offers the studies in it (DIR itself and its direct
subfolders that hold a ``manifest.json``) in a dropdown, and a request for anything
else, or for a study whose real path lies outside DIR (a symlink out), is refused. The
aggregates and figures are the corpus package's own (:meth:`tokentrail.Study.aggregate`,
:func:`tokentrail.study_figures`, :func:`tokentrail.study_metadata`).
"""

from __future__ import annotations

import html
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import pandas as pd

import tokentrail as tt
from tokentrail.app.guard import guarded
from tokentrail.app.help import panel
from tokentrail.app.queues import EVENTS
from tokentrail.spec.errors import InputError

MANIFEST = "manifest.json"
HERE = "."  # the studies folder itself, when it is one study
FIGURES = ("self_sim", "rank_median", "anisotropy", "jumps_0")  # shown, in this order
CACHED = 4  # studies whose aggregates the server keeps
HOWTO = """Studies are written by `tokentrail study` and offered here from the folder the server
was started with (`tokentrail serve --studies DIR`); press *Refresh* after a new one
finishes. The figures are those of `tokentrail report`: per-layer self-similarity and
rank of each word class, the corpus anisotropy baseline, and each class's change from
the layer before. See docs/study.md."""
NO_FOLDER = "No studies folder: start the server with `tokentrail serve --studies DIR` to open the studies in DIR here."


class StudyShelf:
    """The studies under one folder the operator chose; the only way the page reaches them."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root).resolve()
        self._cache: OrderedDict[tuple[str, int], tuple] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The studies on offer, by name relative to the folder (sorted)."""
        if self.root is None or not self.root.is_dir():
            return []
        found = [HERE] if (self.root / MANIFEST).is_file() else []
        found += sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).is_file() and self._inside(p)
        )
        return found

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def path(self, name: str | None) -> Path:
        """The folder of an offered study; anything else is refused."""
        if self.root is None:
            raise InputError(NO_FOLDER)
        if not name:
            raise InputError("choose a study")
        if name not in self.names():
            raise InputError(f"no study {name!r} in the studies folder: choose one from the list")
        path = self.root if name == HERE else self.root / name
        if not self._inside(path):  # checked again: the folder may have changed since listing
            raise InputError(f"no study {name!r} in the studies folder: choose one from the list")
        link = first_link(path)
        if link is not None:  # a link inside (data -> elsewhere) would read files outside the folder
            raise InputError(f"study {name!r} holds a symbolic link ({link.relative_to(path)}): not opened")
        return path

    def open(self, name: str | None):
        """``(manifest, aggregates)`` of an offered study, cached by its manifest's mtime."""
        path = self.path(name)
        key = (str(path), (path / MANIFEST).stat().st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        study = tt.Study(path)
        value = (study.manifest, study.aggregate())
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHED:
                self._cache.popitem(last=False)
        return value


def first_link(folder: Path) -> Path | None:
    """The first symbolic link inside ``folder`` (not followed), or None."""
    for top, dirs, files in os.walk(folder, followlinks=False):
        for entry in (*dirs, *files):
            if (Path(top) / entry).is_symlink():
                return Path(top) / entry
    return None


def show(shelf: StudyShelf, name: str | None) -> tuple:
    """The tab's outputs for one study: status, metadata table, then the figures."""
    manifest, agg = shelf.open(name)
    figs = tt.study_figures(agg)
    meta = pd.DataFrame(list(tt.study_metadata(manifest).items()), columns=["", "value"])
    return (status(name, manifest), meta, *[figs.get(f) for f in FIGURES])


def status(name: str, m: dict) -> str:
    state = "complete" if m.get("complete") else "**incomplete** (resume it with `tokentrail study ... --resume`)"
    # the folder's name and the manifest's model are anyone's text: shown, never run as HTML
    return (
        f"**{plain(name)}**: {plain(m.get('model'))}, {_count(m.get('texts'))} texts, "
        f"{_count(m.get('tokens'))} tokens, {state}."
    )


def plain(value: object) -> str:
    """Text for the status Markdown: HTML escaped, Markdown's own marks made literal."""
    return html.escape(re.sub(r"([\\`*_{}\[\]()#+!|~-])", r"\\\1", str(value)), quote=False)


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else plain(value or 0)


def build_study_tab(p, shelf: StudyShelf) -> None:
    """Components of the tab (call inside ``gr.Tab``) and their events, on ``p``."""
    names = shelf.names()
    panel(HOWTO, "How to open a study")
    with gr.Row(equal_height=True):
        p.study_name = gr.Dropdown(
            names, value=names[0] if names else None, label="Study", scale=4, filterable=False, elem_id="study-name"
        )
        p.study_refresh = gr.Button("Refresh", scale=1, min_width=100, elem_id="study-refresh")
        p.study_open = gr.Button("Open", variant="primary", scale=1, min_width=100, elem_id="study-open")
    first = (
        NO_FOLDER
        if shelf.root is None
        else (
            "Choose a study and press **Open**."
            if names
            else f"No study in the studies folder yet (run `tokentrail study ... --out {shelf.root}/NAME`)."
        )
    )
    p.study_status = gr.Markdown(first, elem_id="study-status")
    # one figure a row: they are the report's, whose titles want the page's width; shown
    # once a study is open (no empty frames before)
    p.study_self_sim = gr.Plot(show_label=False, visible=False, elem_id="study-self-sim")
    p.study_rank = gr.Plot(show_label=False, visible=False, elem_id="study-rank")
    p.study_anisotropy = gr.Plot(show_label=False, visible=False, elem_id="study-anisotropy")
    p.study_jumps = gr.Plot(show_label=False, visible=False, elem_id="study-jumps")
    p.study_meta = gr.Dataframe(
        label="Run", interactive=False, wrap=True, column_widths=["160px"], visible=False, elem_id="study-meta"
    )
    outputs = [p.study_status, p.study_meta, p.study_self_sim, p.study_rank, p.study_anisotropy, p.study_jumps]

    @guarded(6, 0)
    def open_study(name):
        text, meta, *figs = show(shelf, name)
        return (
            text,
            gr.Dataframe(meta, visible=True),
            *[gr.Plot(fig, visible=fig is not None) for fig in figs],
        )

    def refresh(name):
        names = shelf.names()
        return gr.Dropdown(choices=names, value=name if name in names else (names[0] if names else None))

    p.study_open.click(open_study, [p.study_name], outputs, api_name="open_study", **EVENTS)
    p.study_refresh.click(
        refresh, [p.study_name], [p.study_name], api_name="list_studies", show_progress="minimal", **EVENTS
    )
