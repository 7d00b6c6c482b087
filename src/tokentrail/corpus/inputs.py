"""Streaming a corpus: plain text, CoNLL-U, CSV or Parquet -> :class:`Record` s.

Nothing is read whole: files are consumed line by line (or row group by row group), so a
study's memory does not grow with its corpus. Records that cannot be studied (empty,
over-long, undecodable, with control characters) are skipped and counted in a
:class:`Skipped` log with a sample of each kind; ``strict`` makes the first one fatal.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokentrail.corpus.wordclass import Word
from tokentrail.session.inputs import MAX_CHARS
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import CORPUS_FILES, check_input_file

FORMATS = ("text", "conllu", "csv", "parquet")
SAMPLES_KEPT = 5  # per reason, in the run's log


@dataclass(frozen=True)
class Record:
    """One text of the corpus. ``index`` counts every record read, skipped ones too, so
    a text keeps its id however many lines around it are bad."""

    index: int
    text: str
    words: tuple[Word, ...] | None = None  # gold words with UPOS (CoNLL-U), else None
    source_id: str | None = None  # the corpus's own id (CoNLL-U sent_id)


@dataclass
class Skipped:
    """Skipped records: a count per reason and the first few of each."""

    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)

    def add(self, index: int, reason: str, text: str = "") -> None:
        where = f"record {index} (0-based)"
        if self.strict:
            raise InputError(f"{where} is {reason}; drop --strict to skip such records")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.counts[reason] <= SAMPLES_KEPT:
            self.samples.append({"record": index, "reason": reason, "text": text[:80]})

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "samples": list(self.samples)}


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r}: choose from {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    return {
        ".conllu": "conllu",
        ".conll": "conllu",
        ".csv": "csv",
        ".tsv": "csv",
        ".parquet": "parquet",
        ".pq": "parquet",
    }.get(suffix, "text")


def check_source(path: str | Path, fmt: str | None = None, column: str | None = None) -> str:
    """Everything that can be checked about an input before any model work; its format."""
    path = check_input_file(path, CORPUS_FILES)
    fmt = detect_format(path, fmt)
    if fmt in ("csv", "parquet"):
        cols = _columns(path, fmt)
        want = column or "text"
        if want not in cols:
            raise InputError(
                f"{path} has no column {want!r}; its columns are {', '.join(cols)} (choose one with --column)"
            )
    elif column:
        raise InputError(f"--column is for CSV and Parquet inputs; {path} is read as {fmt}")
    if fmt in ("csv", "conllu"):  # read through once, streaming: a malformed file is refused now, not mid-run
        for _ in _csv(path, column) if fmt == "csv" else _conllu_blocks(path):
            pass
    return fmt


def _columns(path: Path, fmt: str) -> list[str]:
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0, sep="\t" if path.suffix.lower() == ".tsv" else ",").columns]
    except Exception as exc:  # unreadable headers are a user error: say which file
        raise InputError(f"cannot read {path} as {fmt}: {exc}") from None


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def problem(text: object, max_chars: int = MAX_CHARS) -> str | None:
    """Why a text cannot be studied, or None."""
    if not isinstance(text, str):
        return "not text"
    if not text.strip():
        return "empty"
    if len(text) > max_chars:
        return f"over-long (more than {max_chars:,} characters)"
    for ch in text:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF or (unicodedata.category(ch) == "Cc" and ch not in "\t\r\n"):
            return "invalid (control character or lone surrogate)"
    return None


def records(
    source: str | Path | Sequence[str],
    *,
    fmt: str | None = None,
    column: str | None = None,
    skipped: Skipped,
    limit: int | None = None,
    max_chars: int = MAX_CHARS,
) -> Iterator[Record]:
    """The good records of ``source`` (a file, or texts in memory), at most ``limit``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        fmt = detect_format(path, fmt)
        raw = {"text": _plain, "conllu": _conllu, "csv": _csv, "parquet": _parquet}[fmt](path, column)
    else:
        raw = ((i, t, None, None) for i, t in enumerate(source))
    kept = 0
    for index, text, words, source_id in raw:
        if limit is not None and kept >= limit:
            return
        why = "undecodable (not UTF-8)" if text is _UNDECODABLE else problem(text, max_chars)
        if why:
            skipped.add(index, why, text if isinstance(text, str) else "")
            continue
        kept += 1
        yield Record(index, text, words, source_id)


_UNDECODABLE = object()


def _decode(line: bytes):
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return _UNDECODABLE


def _plain(path: Path, column) -> Iterator[tuple]:
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            yield i, _decode(line), None, None


def _conllu(path: Path, column) -> Iterator[tuple]:
    """Sentences of a CoNLL-U file: ``# text`` and the words' UPOS, spans found in it."""
    for index, block in enumerate(_conllu_blocks(path)):
        yield (index, *_sentence(block))


_WORD_ID = re.compile(r"^(\d+)(?:-(\d+)|\.(\d+))?$")  # 3 (a word), 3-4 (a multiword token), 3.1 (an empty node)


def _conllu_blocks(path: Path) -> Iterator[list]:
    """The lines of each sentence. A sentence ends at a blank line, as the format says,
    and also where the next one plainly starts without one: a comment line (``# sent_id``,
    ``# text``, ...) after word lines, or word IDs starting again at 1. A word line whose
    ID is not a CoNLL-U ID (``3``, ``3-4``, ``3.1``) or that has fewer than four
    tab-separated fields is an :class:`InputError` naming the line: the file is not
    CoNLL-U, and guessing would misalign every word after it."""
    block: list = []
    words = False  # the block has word lines (a sentence's comments are behind it)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            line = _decode(raw)
            if line is _UNDECODABLE:
                block.append(line)  # the sentence is skipped as undecodable
                continue
            if line.strip() == "":
                if block:
                    yield block
                block, words = [], False
                continue
            if line.startswith("#"):
                if words:
                    yield block
                    block, words = [], False
                block.append(line)
                continue
            cols = line.split("\t")
            m = _WORD_ID.match(cols[0])
            if m is None or len(cols) < 4:
                what = f"ID {cols[0][:20]!r} is not a word ID (3, 3-4 or 3.1)" if m is None else "fewer than 4 fields"
                raise InputError(f"{path}, line {number}: {what}; not CoNLL-U ({line[:60]!r})")
            restart = m.group(3) is None and int(m.group(1)) == 1
            if words and restart:
                yield block
                block, words = [], False
            block.append(line)
            words = words or m.group(2) is None and m.group(3) is None
    if block:
        yield block


def _sentence(lines: list) -> tuple:
    if any(line is _UNDECODABLE for line in lines):
        return _UNDECODABLE, None, None
    text, sent_id, rows = None, None, []
    for line in lines:
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "text":
                text = value.strip()
            elif key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        rows.append(line.split("\t"))
    if text is None:  # no '# text' line: rebuild it from the forms and SpaceAfter=No
        text = _rebuild(rows)
    return text, _spans(text, rows), sent_id


def _rebuild(rows: list[list[str]]) -> str:
    out, skip_to = [], 0
    for cols in rows:
        tid = cols[0]
        if "." in tid:
            continue
        if "-" in tid:
            skip_to = int(tid.split("-")[1])
        elif int(tid) <= skip_to:
            continue
        out.append(cols[1] + ("" if len(cols) > 9 and "SpaceAfter=No" in cols[9] else " "))
    return "".join(out).strip()


def _spans(text: str, rows: list[list[str]]) -> tuple[Word, ...]:
    """Each syntactic word's character span in ``text`` and its UPOS.

    A multiword token (``3-4 don't`` over ``do`` + ``n't``) gives each word its own part of
    the surface form when the parts spell it; otherwise the whole surface span goes to
    its first word (``gonna`` -> ``gon`` + ``na`` is spelled; French ``du`` -> ``de le``
    is not). A word whose form is not found in the text gets no span (its tokens then
    count as unknown)."""
    words: list[Word] = []
    cursor = 0
    pending: list[list[str]] = []  # the words of the current multiword token
    surface = None
    for cols in rows:
        tid, form, upos = cols[0], cols[1], cols[3]
        if "." in tid:  # empty node: no surface
            continue
        if "-" in tid:
            lo, hi = (int(x) for x in tid.split("-"))
            surface, pending = (form, hi - lo + 1), []
            continue
        if surface is not None:
            pending.append(cols)
            if len(pending) < surface[1]:
                continue
            form_all, _ = surface
            at = text.find(form_all, cursor)
            if at >= 0:
                forms = [c[1] for c in pending]
                if "".join(forms) == form_all:
                    pos = at
                    for c in pending:
                        words.append(Word(pos, pos + len(c[1]), c[3]))
                        pos += len(c[1])
                else:
                    words.append(Word(at, at + len(form_all), pending[0][3]))
                cursor = at + len(form_all)
            surface, pending = None, []
            continue
        at = text.find(form, cursor)
        if at >= 0:
            words.append(Word(at, at + len(form), upos))
            cursor = at + len(form)
    return tuple(words)


def _csv(path: Path, column) -> Iterator[tuple]:
    import pandas as pd

    column = column or "text"
    i = 0
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        for chunk in pd.read_csv(
            path, usecols=[column], chunksize=1024, dtype={column: object}, keep_default_na=False, sep=sep
        ):
            for value in chunk[column]:
                yield i, value, None, None
                i += 1
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:  # a malformed file, e.g. an open quote
        raise InputError(f"cannot read {path} as csv: {' '.join(str(exc).split())}") from None


def _parquet(path: Path, column) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    column = column or "text"
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield i, value, None, None
            i += 1


def count(source: str | Path | Sequence[str], fmt: str | None = None, limit: int | None = None) -> int | None:
    """How many records ``source`` holds (a cheap pass, for the progress bar's ETA)."""
    if not isinstance(source, (str, Path)):
        n = len(source) if hasattr(source, "__len__") else None
    else:
        path = Path(source)
        fmt = detect_format(path, fmt)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            n = pq.ParquetFile(path).metadata.num_rows
        elif fmt == "conllu":
            n = sum(1 for _ in _conllu_blocks(path))
        elif fmt == "text":
            with open(path, "rb") as f:
                n = sum(1 for _ in f)
        else:
            n = None
    if n is not None and limit is not None:
        n = min(n, limit)
    return n


def iter_batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
