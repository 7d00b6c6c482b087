"""Token frequencies for a study's ``freq_rank``: from a file the user gives, or else
counted in the study's own corpus.

The file (``--frequencies FILE``) is UTF-8 text, one token per line::

    TOKEN<TAB>COUNT

``TOKEN`` is an entry of the model's vocabulary exactly as its tokenizer spells it
(``convert_ids_to_tokens``: ``##ing`` for WordPiece, ``Ġthe`` for byte-level BPE), or
``#ID`` with the token id in decimal (``#1996``); ``COUNT`` is a whole number >= 0. Blank
lines are skipped; a token given twice, a line without one tab, or a count that is not a
whole number is refused with its line number. Tokens the vocabulary does not have are
counted in the manifest and otherwise ignored; a file none of whose tokens the model
has is refused.

The rank itself is computed in one place, :func:`tokentrail.store.aggregate.connect`:
``freq_rank`` = 1 + the number of token ids with a larger count (ties share a rank; 1 is
the most frequent). Ids the file does not list have no rank (NULL).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from tokentrail.spec.errors import InputError

FILE_NAME = "frequencies.parquet"  # in the study folder, when a file was given
SCHEMA = pa.schema([("token_id", pa.int64()), ("token", pa.string()), ("count", pa.int64())])
MAX_FILE_BYTES = 256 * 2**20  # a frequency list of any tokenizer's vocabulary is a few MB; past this, refused
CORPUS_NOTE = "rank by count in this corpus (occurrences of each token id among the studied texts; 1 = most frequent, ties share a rank)"
FILE_NOTE = "rank by count in {name} (1 = most frequent, ties share a rank; ids the file does not list have none)"


def read_frequencies(path: str | Path) -> dict[str, int]:
    """The file's ``token -> count`` (the format is in the module docstring); every format
    error is an :class:`InputError` naming the line. Needs no model."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--frequencies {path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:  # it is read whole: refused before it could fill the memory
        raise InputError(
            f"--frequencies {path} is {size / 2**20:,.0f} MiB; a frequency list is one line per vocabulary token "
            f"(a few MiB), at most {MAX_FILE_BYTES // 2**20} MiB: keep the model's vocabulary's lines only"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--frequencies {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise InputError(f"--frequencies {path}, line {number}: expected TOKEN<TAB>COUNT, got {line[:60]!r}")
        token, raw = parts
        try:
            count = int(raw.strip())
        except ValueError:
            count = -1
        if count < 0:
            raise InputError(
                f"--frequencies {path}, line {number}: the count {raw.strip()[:30]!r} is not a whole number >= 0"
            )
        if token in counts:
            raise InputError(f"--frequencies {path}, line {number}: {token!r} is listed twice")
        counts[token] = count
    if not counts:
        raise InputError(f"--frequencies {path} lists no tokens")
    return counts


def file_identity(path: str | Path) -> dict[str, str]:
    """What a resumed study must share: the file's name and SHA-256."""
    path = Path(path)
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def match_vocabulary(counts: dict[str, int], vocab: dict[str, int], name: str) -> tuple[pa.Table, dict[str, int]]:
    """The file's tokens as ids of the model's vocabulary (``token -> id``): a table for
    :data:`FILE_NAME` and the numbers matched / not in the vocabulary."""
    size = max(vocab.values(), default=-1) + 1
    ids, tokens, values = [], [], []
    by_id: dict[int, str] = {}
    for token, count in counts.items():
        if token.startswith("#") and token[1:].isdigit() and token not in vocab:
            i = int(token[1:])
            i = i if i < size else None
        else:
            i = vocab.get(token)
        if i is None:
            continue
        if i in by_id:
            raise InputError(f"--frequencies {name}: {token!r} and {by_id[i]!r} are the same token (id {i})")
        by_id[i] = token
        ids.append(i)
        tokens.append(token)
        values.append(count)
    if not ids:
        sample = ", ".join(repr(t) for t in list(counts)[:3])
        raise InputError(
            f"--frequencies {name}: none of its {len(counts):,} tokens is in the model's vocabulary (e.g. {sample}); "
            "write tokens as the tokenizer spells them (`##ing`, `Ġthe`) or as #ID"
        )
    table = pa.Table.from_pydict({"token_id": ids, "token": tokens, "count": values}, schema=SCHEMA)
    return table, {"matched": len(ids), "not_in_vocabulary": len(counts) - len(ids)}
