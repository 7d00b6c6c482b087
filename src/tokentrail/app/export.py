"""Files the page can download: the analysis (CSV/Parquet/JSON) and plots (HTML/SVG/PNG).

Files are written to one private temporary folder per app (0700, unguessable names,
removed at exit) and handed to Gradio, which serves only the files a callback returns:
the server opens no general file access (no ``allowed_paths``). Files older than an hour
are removed on the next export.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path

import plotly.graph_objects as go

from tokentrail import Trail
from tokentrail.spec.errors import InputError

RESULT_FORMATS = ("CSV", "Parquet", "JSON")
PLOT_FORMATS = ("HTML", "SVG", "PNG")
MAX_AGE_S = 3600


class ExportFolder:
    """One private folder per app (mode 0700, removed when the process exits): exports
    in ``exports/`` under unguessable names (128 random bits), and ``gradio/``, the cache
    Gradio copies served files into (see :meth:`adopt`), so no copy lands in the
    world-listable system temp folder."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="tokentrail-app-"))  # mkdtemp: 0700
        self.path = self.root / "exports"
        self.cache = self.root / "gradio"
        for folder in (self.path, self.cache):
            folder.mkdir(mode=0o700)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), ignore_errors=True)  # also at exit

    def adopt(self, demo) -> None:
        """Point every component of ``demo`` at the private cache."""
        for block in demo.blocks.values():
            if hasattr(block, "GRADIO_CACHE"):
                block.GRADIO_CACHE = str(self.cache)

    def remove(self) -> None:
        self._cleanup()

    def new_file(self, stem: str, ext: str) -> Path:
        self._prune()
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")[:60] or "tokentrail"
        return self.path / f"{safe}-{uuid.uuid4().hex}.{ext}"

    def _prune(self) -> None:
        cutoff = time.time() - MAX_AGE_S
        for f in self.path.glob("*"):
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
            except OSError:
                pass


def _stem(trail: Trail, what: str) -> str:
    return f"tokentrail-{Path(trail.info.model).name}-{what}"


def write_results(trail: Trail, fmt: str, folder: ExportFolder) -> Path:
    if fmt not in RESULT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}: choose {', '.join(RESULT_FORMATS)}")
    path = folder.new_file(_stem(trail, "analysis"), fmt.lower())
    return trail.export(path, fmt.lower())


def image_export_available() -> bool:
    return importlib.util.find_spec("kaleido") is not None


def write_plot(fig: go.Figure, fmt: str, stem: str, folder: ExportFolder) -> Path:
    if fmt not in PLOT_FORMATS:
        raise InputError(f"unknown plot format {fmt!r}: choose {', '.join(PLOT_FORMATS)}")
    path = folder.new_file(stem, fmt.lower())
    if fmt == "HTML":
        # plotly.js inlined, so the file works offline
        fig.write_html(str(path), include_plotlyjs=True, full_html=True)
        return path
    if not image_export_available():
        raise InputError(
            f"{fmt} export needs kaleido on the server (pip install kaleido) and Chrome or Chromium; "
            "download HTML instead, or use the camera icon on the plot for a PNG"
        )
    try:
        path.write_bytes(fig.to_image(format=fmt.lower(), scale=2 if fmt == "PNG" else 1))
    except Exception as exc:  # kaleido reports a missing browser in several ways
        raise InputError(
            f"{fmt} export failed on the server ({type(exc).__name__}: {str(exc)[:160]}); "
            "download HTML instead, or use the camera icon on the plot for a PNG"
        ) from None
    return path
