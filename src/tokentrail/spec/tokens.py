"""How a vocabulary token is shown to a reader (pure: no torch, no model).

Tokenizers store tokens in their own alphabets:

- byte-level BPE (GPT-2, RoBERTa, SmolLM2, Qwen) writes every byte as one printable
  character (GPT-2's ``bytes_to_unicode`` table: a space is ``Ġ``, a newline ``Ċ``, the
  bytes of ``る`` are ``ãĤĭ``);
- SentencePiece (Llama 2, XLM-R, T5) writes a leading space as ``▁`` and, with byte
  fallback, a byte it has no piece for as ``<0xE3>``;
- WordPiece (BERT) marks a word's continuation with ``##``.

The display rule: map the token back to its bytes and decode them as UTF-8; a byte that
is a lone fragment of a multi-byte character (a token may hold half a character) is shown
as ``<0xE3>``; a space is shown as ``␣``, a newline as ``↵``, a tab as ``⇥``, a carriage
return as ``␍`` and any other control byte as ``<0x07>``. WordPiece tokens are left as
they are. The tokenizer's kind is read from the tokenizer object (its decoder and
pre-tokenizer), never from the model's name.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import check_index

BYTE_LEVEL = "byte_level"
SENTENCEPIECE = "sentencepiece"
WORDPIECE = "wordpiece"
PLAIN = "plain"

SPACE, NEWLINE, TAB, RETURN = "␣", "↵", "⇥", "␍"
_MARKERS = {" ": SPACE, "\n": NEWLINE, "\t": TAB, "\r": RETURN}
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    0x7F-0xA0, 0xAD) are mapped in order to U+0100 upwards, so space (0x20) is ``Ġ``
    (U+0120) and newline (0x0A) is ``Ċ`` (U+010A).
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


_KINDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tokenizer_kind(tokenizer: Any) -> str:
    """``byte_level``, ``sentencepiece``, ``wordpiece`` or ``plain``, from the tokenizer itself.

    Fast (``tokenizers``-backed) tokenizers are recognised by their decoder and
    pre-tokenizer (``ByteLevel``; ``Metaspace``/``ByteFallback``/a ``▁`` replacement;
    ``WordPiece``); slow ones by their byte table or SentencePiece model. Remembered per
    tokenizer object: the description includes the backend model's ``repr``, which
    lists a WordPiece vocabulary whole (about a millisecond per call, paid per text).
    """
    try:
        return _KINDS[tokenizer]
    except (KeyError, TypeError):
        pass
    kind = _tokenizer_kind(tokenizer)
    with contextlib.suppress(TypeError):  # not weak-referenceable: not remembered
        _KINDS[tokenizer] = kind
    return kind


def _tokenizer_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    parts = []
    if backend is not None:
        for name in ("decoder", "pre_tokenizer", "normalizer", "model"):
            try:
                parts.append(repr(getattr(backend, name, None)))
            except Exception:  # some components refuse repr; they do not decide the kind
                continue
    described = " ".join(parts)
    if "ByteLevel" in described or hasattr(tokenizer, "byte_encoder"):
        return BYTE_LEVEL
    if any(s in described for s in ("Metaspace", "ByteFallback", "▁")) or hasattr(tokenizer, "sp_model"):
        return SENTENCEPIECE
    if "WordPiece" in described or hasattr(tokenizer, "wordpiece_tokenizer"):
        return WORDPIECE
    return PLAIN


def show_bytes(data: bytes) -> str:
    """Bytes as readable text: UTF-8 characters, markers for whitespace, ``<0xNN>`` otherwise."""
    out: list[str] = []
    i = 0
    while i < len(data):
        b = data[i]
        size = 1 if b < 0x80 else 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        chunk = data[i : i + size] if size else b""
        try:
            ch = chunk.decode("utf-8") if size and len(chunk) == size else None
        except UnicodeDecodeError:
            ch = None
        if ch is None:
            out.append(f"<0x{b:02X}>")
            i += 1
            continue
        out.append(_show_char(ch))
        i += size
    return "".join(out)


def _show_char(ch: str) -> str:
    if ch in _MARKERS:
        return _MARKERS[ch]
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"<0x{ord(ch):02X}>"
    return ch


def readable(token: str | None, kind: str) -> str:
    """One vocabulary token as a reader wants it (see the module docstring)."""
    if token is None:
        return ""
    token = str(token)
    if kind == BYTE_LEVEL:
        table = unicode_to_bytes()
        if token and all(c in table for c in token):
            return show_bytes(bytes(table[c] for c in token))
        return _plain(token)  # an added token (e.g. <|im_start|>) is not byte-encoded
    if kind == SENTENCEPIECE:
        m = _SP_BYTE.match(token)
        if m:
            return show_bytes(bytes([int(m.group(1), 16)]))
        return _plain(token.replace("▁", " "))
    if kind == WORDPIECE:
        return token
    return _plain(token)


def _plain(text: str) -> str:
    return "".join(_show_char(c) for c in text)


def readable_tokens(tokens: Iterable[str | None], kind: str) -> list[str]:
    """:func:`readable` for each token of one tokenizer."""
    return [readable(t, kind) for t in tokens]


def bare(token: str) -> str:
    """A shown token without its space/continuation markers, for matching typed text."""
    return token.replace(SPACE, "").replace("##", "").replace("▁", "").strip()


def find_token(tokens: list[str] | tuple[str, ...], query: int | str) -> tuple[int, list[int]]:
    """Resolve a token by index or by text; returns (index, every index with that text).

    ``query`` is an index (negative counts from the end), a token's text (case and the
    ``␣``/``##`` markers ignored; the first occurrence), or ``text:N`` for the N-th
    occurrence counted from 0 (``flies:1`` is the second ``flies``).
    """
    n = len(tokens)
    if isinstance(query, int) or (isinstance(query, str) and query.strip().lstrip("-").isdigit()):
        i = check_index(int(query), n, "token index", f"the text has {n} tokens")
        return i, [i]
    want, nth = str(query).strip().lower(), None
    matches = [i for i, t in enumerate(tokens) if bare(t).lower() == want]
    if not matches and ":" in want:
        head, _, tail = want.rpartition(":")
        if tail.isdigit():
            want, nth = head, int(tail)
            matches = [i for i, t in enumerate(tokens) if bare(t).lower() == want]
    if not matches:
        shown = " ".join(f"{i}:{t}" for i, t in enumerate(tokens))
        raise InputError(f"no token {str(query)!r} in the text; tokens are {shown}")
    if nth is None:
        return matches[0], matches
    if nth >= len(matches):
        raise InputError(
            f"{want!r} occurs {len(matches)} time(s) (at {', '.join(map(str, matches))}); {query!r} asks for occurrence {nth} (counted from 0)"
        )
    return matches[nth], matches
