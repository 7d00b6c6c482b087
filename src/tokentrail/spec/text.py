"""The checks of a user's text that need no model: pure Python, so the CLI and the app
run them before anything heavy is imported (:mod:`tokentrail.session.inputs` tokenizes)."""

from __future__ import annotations

import unicodedata

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import check_new_tokens

MAX_CHARS = 100_000


def check_text(text: object) -> str:
    """The text itself, or an error saying what is wrong with it."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise InputError("the text is empty: type something to trace")
    if len(text) > MAX_CHARS:
        raise InputError(f"the text is {len(text):,} characters; the limit is {MAX_CHARS:,}")
    for i, ch in enumerate(text):
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            raise InputError(f"the text has a lone surrogate U+{o:04X} at character {i}: it is not valid Unicode")
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            raise InputError(f"the text has a control character U+{o:04X} at character {i}: remove it")
    return text


def check_decoder_input(
    target: str | None, max_new_tokens: int | None, names: tuple[str, str] = ("target", "max_new_tokens")
) -> None:
    """An encoder-decoder's decoder input: a target text, or a bound on the model's greedy
    output (:func:`~tokentrail.spec.options.check_new_tokens`), not both. Before any model work.
    ``names``: how the caller spells the two (the CLI's flags)."""
    if target is not None:
        check_text(target)
        if max_new_tokens is not None:
            raise InputError(
                f"{names[1]} bounds the greedy output, which {names[0]} (the decoder's input) replaces: give one of them, not both"
            )
    if max_new_tokens is not None:
        check_new_tokens(max_new_tokens)
