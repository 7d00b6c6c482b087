"""A figure as a file: HTML (plotly.js inlined, works offline), PNG or SVG (kaleido, which
drives a Chrome or Chromium it finds). The path and, for images, kaleido and a browser are
checked before any model work; the file is written atomically."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import atomic_write, check_output_path, write_text

FIGURE_FORMATS = ("html", "png", "svg")
IMAGE_SCALE = 2  # PNG pixels per layout pixel (sharp on a high-density screen)


def image_problem() -> str | None:
    """Why PNG/SVG cannot be written here (kaleido missing, or no Chrome/Chromium for it), or None."""
    if importlib.util.find_spec("kaleido") is None:
        return "PNG and SVG need kaleido (pip install 'tokentrail[app]'); write .html instead"
    from choreographer.browsers.chromium import Chromium

    if os.environ.get("BROWSER_PATH") or Chromium.find_browser(skip_local=False):
        return None
    return "PNG and SVG need Chrome or Chromium for kaleido (none found; set BROWSER_PATH to one); write .html instead"


def check_figure_path(path: str | os.PathLike[str], *, force: bool = False, option: str = "--plot") -> Path:
    """The figure's file, checked before any model work: a writable place, a name ending in
    .html, .png or .svg, and for an image, kaleido and a browser to draw it."""
    p, fmt = check_output_path(path, force=force, formats=FIGURE_FORMATS)
    if fmt != "html":
        problem = image_problem()
        if problem is not None:
            raise InputError(f"{option} {p.name}: {problem}")
    return p


def write_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """``fig`` to ``path`` (HTML, PNG or SVG by its suffix), atomically."""
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise InputError(f"unknown figure format {fmt!r} for {str(p)!r}: use one of {', '.join(FIGURE_FORMATS)}")
    if fmt == "html":
        return write_text(p, fig.to_html(include_plotlyjs=True, full_html=True))
    width = fig.layout.width or 900
    height = fig.layout.height or 500
    try:
        data = fig.to_image(format=fmt, width=width, height=height, scale=IMAGE_SCALE if fmt == "png" else 1)
    except Exception as exc:  # kaleido reports a browser that will not start in several ways
        raise InputError(
            f"could not draw {p.name} ({type(exc).__name__}: {str(exc)[:160]}); write .html instead"
        ) from None
    with atomic_write(p) as tmp:
        tmp.write_bytes(data)
    return p


__all__ = ["FIGURE_FORMATS", "check_figure_path", "image_problem", "write_figure"]
