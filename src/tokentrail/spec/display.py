"""How a result object shows itself in a notebook: small HTML pieces (a summary, a table, a
table whose cells are coloured by value) that every result's ``_repr_html_`` is built from,
each bounded so that a display stays under :data:`HTML_BUDGET` characters whatever the
text's length or the model's depth (the caption says what was left out)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

HTML_BUDGET = 10_000  # characters of a result's _repr_html_ at most (a notebook cell, not a wall)
REPR_BUDGET = 1_000  # characters of a plain repr at most
MAX_ROWS = 12  # rows of a coloured table before rows are sampled (the first and the last kept)
MAX_COLUMNS = 12  # columns likewise
CELL_CHARS = 8  # a cell's text at most


def esc(text: object) -> str:
    return escape(str(text))


def short(text: str, chars: int = CELL_CHARS) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= chars else text[: chars - 1] + "…"


def pick(count: int, most: int) -> list[int]:
    """At most ``most`` indices of ``count``, evenly spread, the first and the last kept."""
    if count <= most:
        return list(range(count))
    step = (count - 1) / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def summary(rows: Sequence[tuple[str, str]], title: str) -> str:
    """A heading and a two-column table of (what, value)."""
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{esc(k)}</th><td style='text-align:left'>{esc(v)}</td></tr>"
        for k, v in rows
    )
    return f"<b>{esc(title)}</b><table class='tokentrail-summary'>{body}</table>"


def _shade(value: float, low: float, high: float, reverse: bool) -> str:
    """A white-to-blue background and a text colour that keeps WCAG AA contrast on it."""
    f = 0.0 if high <= low else min(1.0, max(0.0, (value - low) / (high - low)))
    if reverse:
        f = 1.0 - f
    r, g, b = (round(255 + (to - 255) * f) for to in (8, 69, 148))  # white -> #084594
    ink = "#fff" if f > 0.5 else "#111"
    return f"background:#{r:02x}{g:02x}{b:02x};color:{ink}"


def heat_table(
    values: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    caption: str,
    text: Sequence[Sequence[str]] | None = None,
    low: float | None = None,
    high: float | None = None,
    reverse: bool = False,
    digits: int = 2,
) -> str:
    """A table whose cells are coloured by ``values`` (white = low, blue = high; ``reverse``
    swaps them), showing ``text`` or the rounded value. At most :data:`MAX_ROWS` ×
    :data:`MAX_COLUMNS` cells: larger grids are sampled evenly and the caption says so."""
    ri, ci = pick(len(rows), MAX_ROWS), pick(len(columns), MAX_COLUMNS)
    flat = [v for i in ri for j in ci if (v := values[i][j]) is not None and v == v]
    lo = min(flat, default=0.0) if low is None else low
    hi = max(flat, default=1.0) if high is None else high
    cut = []
    if len(ri) < len(rows):
        cut.append(f"{len(ri)} of {len(rows)} rows")
    if len(ci) < len(columns):
        cut.append(f"{len(ci)} of {len(columns)} columns")
    cap = caption + (f" (showing {', '.join(cut)})" if cut else "")
    head = "<th></th>" + "".join(f"<th>{esc(short(columns[j]))}</th>" for j in ci)
    body = []
    for i in ri:
        cells = []
        for j in ci:
            v = values[i][j]
            if v is None or v != v:
                cells.append("<td></td>")
                continue
            shown = short(text[i][j]) if text is not None else f"{v:.{digits}f}"
            cells.append(f"<td style='{_shade(float(v), lo, hi, reverse)}'>{esc(shown)}</td>")
        body.append(f"<tr><th style='text-align:left'>{esc(short(rows[i], 12))}</th>{''.join(cells)}</tr>")
    return (
        f"<table class='tokentrail-heat' style='font-size:11px'><caption style='caption-side:top;text-align:left'>"
        f"{esc(cap)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, caption: str, most: int = MAX_ROWS) -> str:
    """A plain table of at most ``most`` rows (sampled evenly; the caption says so)."""
    keep = pick(len(rows), most)
    cap = caption + (f" (showing {len(keep)} of {len(rows)} rows)" if len(keep) < len(rows) else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in rows[i]) + "</tr>" for i in keep)
    return (
        f"<table style='font-size:11px'><caption style='caption-side:top;text-align:left'>{esc(cap)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def block(*parts: str) -> str:
    return "<div class='tokentrail'>" + "".join(parts) + "</div>"


__all__ = ["HTML_BUDGET", "REPR_BUDGET", "block", "esc", "heat_table", "pick", "short", "summary", "table"]
