"""What every command shares: the consoles, the one-line error, and the checks of the
text argument, the export format and path, and the --model option (all before any model work)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tokentrail.spec.errors import InputError, TokentrailError
from tokentrail.spec.fileio import check_output_path
from tokentrail.spec.text import MAX_CHARS

# piped output (a file, a pager) gets wide lines rather than rich's 80-column fallback
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

FORMATS = ("table", "csv", "json", "parquet")
MAX_STDIN_BYTES = 4 * MAX_CHARS  # what '-' reads at most: the longest text a run takes, in UTF-8


def fail(message: str) -> NoReturn:
    """The command's one error line on stderr; exit status 2. The message is plain text:
    a file name or an install hint in brackets (``tokentrail[maps]``) is shown as written."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Our errors, and the operating system's (a file that cannot be written), as one line."""
    try:
        yield
    except (TokentrailError, OSError) as exc:
        one_line(exc)


def one_line(exc: TokentrailError | OSError) -> NoReturn:
    """Our error, or the operating system's (a file that cannot be written), as the one line."""
    if isinstance(exc, OSError):
        fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else ""))
    fail(str(exc))


def read_text(text: str) -> str:
    """The TEXT argument, or standard input for '-', decoded as UTF-8 whatever the locale."""
    if text != "-":
        return text
    if hasattr(sys.stdin, "buffer"):
        data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)  # never more: stdin may have no end (< /dev/zero)
    else:
        data = sys.stdin.read(MAX_STDIN_BYTES + 1).encode("utf-8", "surrogateescape")
    if len(data) > MAX_STDIN_BYTES:
        raise InputError(
            f"standard input holds more than {MAX_STDIN_BYTES:,} bytes; a text is at most {MAX_CHARS:,} characters "
            "(study a corpus with `tokentrail study FILE`)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"standard input is not UTF-8 text (byte 0x{data[exc.start]:02X} at offset {exc.start}): pass a text file"
        ) from None


def check_output(fmt: str, out_path: Path | None, force: bool) -> tuple[str, Path | None]:
    """The export format and a checked --out path (parent exists and is writable, not a
    folder, not an existing file unless --force), before any model work."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if out_path is None:
        if fmt == "parquet":
            raise InputError("--format parquet needs --out FILE")
        return fmt, None
    path, fmt = check_output_path(out_path, force=force, formats=FORMATS[1:], fmt=None if fmt == "table" else fmt)
    return fmt, path


def check_model_option(model: str, revision: str | None = None) -> str:
    """A non-empty --model; --revision only with a hub id (not a local folder). Whether the
    name is a misspelt short name is checked after the options (``tt.check_model_name``)."""
    if not model.strip():
        raise InputError("--model is empty: give a bundled name (see `tokentrail models`), a hub id or a local folder")
    if revision is not None and Path(model).expanduser().is_dir():
        raise InputError(
            f"--revision applies to hub models; {model} is a local folder (check out the revision you want there)"
        )
    return model
