"""Writing files safely: checked paths, atomic replacement, spreadsheet-safe CSV.

Every export (the CLI, ``Trail.export``, the app's downloads) goes through here, so that

- a bad output path is refused before any model work (:func:`check_output_path`);
- a failed write (disk full, a file-size limit, a crash) never leaves a truncated file
  and never destroys the file that was there: data goes to a temporary file in the same
  folder and is renamed into place only once complete (:func:`atomic_write`);
- CSV text cells read back as the same strings with a plain ``pandas.read_csv`` and
  cannot run as spreadsheet formulas (:func:`csv_safe`).

CSV escaping rule: a text cell gets one leading apostrophe ``'`` when it

1. starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a spreadsheet would
   run it as a formula: the OWASP "CSV injection" advice), or
2. is a string pandas reads as missing (``nan``, ``NA``, ``null``, ``None``, ``""`` ...), or
3. is ``'`` repeated before a cell that matches 1 or 2 (so the rule can be undone).

:func:`csv_unescape` (or :func:`read_csv`) undoes it exactly.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tokentrail.spec.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# pandas' default missing-value strings (pandas._libs.parsers.STR_NA_VALUES), fixed here so
# the rule does not depend on the pandas version
NA_STRINGS = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)


def check_output_path(
    path: str | os.PathLike[str], *, force: bool = False, formats: Iterable[str] | None = None, fmt: str | None = None
) -> tuple[Path, str]:
    """The output file and its format, or an InputError saying what is wrong with it.

    Checked before any work: the parent folder exists, is a folder and is writable; the
    path is not a folder; an existing file is only replaced with ``force``; the format
    (``fmt``, else the file's suffix) is one of ``formats``.
    """
    p = Path(path).expanduser()
    fmt = (fmt or p.suffix.lstrip(".")).lower()
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name (e.g. {p / ('trail.' + (fmt or 'csv'))})")
    if formats is not None and fmt not in tuple(formats):
        raise InputError(
            f"cannot tell the format of {str(p)!r}: use a name ending in "
            + ", ".join(f".{f}" for f in formats)
            + " (or --format)"
            if not fmt
            else f"unknown output format {fmt!r} for {str(p)!r}: use one of {', '.join(formats)}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"the folder {parent} does not exist: create it first, or write somewhere else")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a folder, so {p.name} cannot be written inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {parent}: permission denied")
    if p.exists() and not force:
        raise InputError(f"{p} already exists: pass --force (Python: force=True) to replace it")
    return p, fmt


TEMPORARY_SUFFIX = ".part"
"""The suffix of :func:`atomic_write`'s temporary files (``.NAME.XXXXXXXX.part``): what a
folder's owner may sweep after a SIGKILL (a study's ``prepare``)."""


CORPUS_FILES = "a text, CoNLL-U, CSV or Parquet file"
"""What a corpus study reads (``tokentrail study SOURCE``)."""


def check_input_file(path: str | os.PathLike[str], kinds: str) -> Path:
    """An input file that exists and is a regular file (``kinds`` says what files are
    read), before any work. A device (``/dev/zero``), a named pipe or a socket is refused:
    it has no end to hash, or blocks until a writer comes."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"no input file at {p}") from None
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{p} is a folder; give {kinds}")
    if not stat.S_ISREG(mode):
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise InputError(f"{p} is {kind}, not a regular file; give {kinds} (save a stream to a file first)")
    return p


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is left as it
    was; an OSError becomes an InputError with one clear line. The one atomic writer:
    exports, study parts and manifests, reports.
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent if str(path.parent) else "."
        )
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _keep_mode(tmp, path)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _keep_mode(tmp: Path, path: Path) -> None:
    """mkstemp makes 0600 files; give the result the mode a plain open() would have."""
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
        return
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ---- CSV ------------------------------------------------------------------------------
def write_parquet(frame: pd.DataFrame, path: str | os.PathLike[str], meta: dict) -> Path:
    """``frame`` as Parquet with ``meta`` (JSON) under the schema key ``tokentrail``, atomically."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"tokentrail": json.dumps(meta).encode()})
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _needs_mark(cell: str) -> bool:
    bare = cell.lstrip("'")
    return bare in NA_STRINGS or bare.startswith(FORMULA_STARTS)


def csv_escape(cell: str) -> str:
    """One text cell, made safe for spreadsheets and for ``pandas.read_csv`` (see module doc)."""
    return "'" + cell if _needs_mark(cell) else cell


def csv_unescape(cell: str) -> str:
    """Undo :func:`csv_escape`."""
    return cell[1:] if cell.startswith("'") and _needs_mark(cell) else cell


def _text_columns(frame: pd.DataFrame) -> list:
    import pandas as pd

    return [
        c for c in frame.columns if pd.api.types.is_object_dtype(frame[c]) or pd.api.types.is_string_dtype(frame[c])
    ]


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text columns are escaped with :func:`csv_escape`."""
    out = frame.copy()
    for col in _text_columns(out):
        out[col] = [csv_escape(v) if isinstance(v, str) else v for v in out[col]]
    return out


def write_csv(frame: pd.DataFrame, target) -> None:
    """Write ``frame`` as CSV to a path (atomically) or an open text stream."""
    safe = csv_safe(frame)
    if hasattr(target, "write"):
        safe.to_csv(target, index=False)
        return
    with atomic_write(target) as tmp:
        safe.to_csv(tmp, index=False)


def read_csv(path, **kwargs) -> pd.DataFrame:
    """Read a CSV written by :func:`write_csv`, undoing the escaping of text cells."""
    import pandas as pd

    frame = pd.read_csv(path, **kwargs)
    for col in _text_columns(frame):
        frame[col] = [csv_unescape(v) if isinstance(v, str) else v for v in frame[col]]
    return frame
