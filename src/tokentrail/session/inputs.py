"""Validating and tokenizing a user's text: every refusal is a clear InputError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokentrail.spec import tokens
from tokentrail.spec.errors import InputError, TooLong
from tokentrail.spec.text import MAX_CHARS as MAX_CHARS  # their home is spec/text
from tokentrail.spec.text import check_decoder_input as check_decoder_input
from tokentrail.spec.text import check_text


def readable_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Token strings as a reader wants them (the rule is in :mod:`tokentrail.spec.tokens`)."""
    return tokens.readable_tokens(tokenizer.convert_ids_to_tokens(list(ids)), tokens.tokenizer_kind(tokenizer))


MAX_TOKENS = 1024
"""Most tokens one trace takes, whatever the model allows: attention maps alone grow as
layers x heads x tokens^2 (an 8k-token text in a 30-layer decoder would need ~70 GB)."""


@dataclass(frozen=True)
class Encoded:
    ids: torch.Tensor  # (n,)
    tokens: list[str]
    special: list[bool]
    truncated_from: int | None  # token count before --truncate, if it cut anything


def encode(model: Any, text: str, *, truncate: bool = False, max_tokens: int | None = None) -> Encoded:
    """Tokenize with the model's own special tokens; refuse (or, if asked, cut) over-long text."""
    check_text(text)
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=True, verbose=False)["input_ids"]  # over-long text is our error to report
    limit = min(model.adapter.max_tokens or MAX_TOKENS, MAX_TOKENS)
    if max_tokens is not None:
        limit = max_tokens if limit is None else min(limit, max_tokens)
    truncated_from = None
    if limit is not None and len(ids) > limit:
        if not truncate:
            raise TooLong(
                f"the text is {len(ids)} tokens; {model.name} takes at most {limit} "
                f"({len(ids) - limit} over). Shorten it, or pass --truncate to keep the first {limit}",
                tokens=len(ids),
                limit=limit,
            )
        truncated_from = len(ids)
        ids = tok(text, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
    if not ids:
        raise InputError("the text produced no tokens")
    special_ids = set(tok.all_special_ids)
    return Encoded(
        ids=torch.tensor(ids, dtype=torch.long),
        tokens=readable_tokens(tok, ids),
        special=[i in special_ids for i in ids],
        truncated_from=truncated_from,
    )
