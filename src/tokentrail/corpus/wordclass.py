"""Word classes, and words aligned onto a tokenizer's subword tokens.

Classes (``WORD_CLASSES``): gold UPOS tags map onto ``function`` (ADP AUX CCONJ DET PART
PRON SCONJ), ``content`` (NOUN PROPN VERB ADJ ADV NUM), ``punctuation`` (PUNCT SYM) and
``other`` (INTJ X); a model's special tokens are ``special``. Without tags, a word is
``function`` when it is in :data:`ENGLISH_FUNCTION_WORDS` (a closed-class list for English),
``punctuation`` when it has no letter or digit, and ``unknown`` otherwise: untagged text
never claims a content word it cannot know. A token that covers no word (a lone space or
newline token) is ``other``.

Alignment uses the tokenizer's own character offsets (``return_offsets_mapping``): a
token belongs to the word its first non-space character falls in; the first token of a
word is its first subword (a special token is its own first subword; a token that covers
no word is none). This works the same for WordPiece (``##``), byte-level BPE
(GPT-2/SmolLM2 ``Ġ``, whose offsets may include the leading space) and RoBERTa.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

WORD_CLASSES = ("function", "content", "punctuation", "special", "other", "unknown")

UPOS_CLASS = {
    **dict.fromkeys(("ADP", "AUX", "CCONJ", "DET", "PART", "PRON", "SCONJ"), "function"),
    **dict.fromkeys(("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM"), "content"),
    **dict.fromkeys(("PUNCT", "SYM"), "punctuation"),
    **dict.fromkeys(("INTJ", "X"), "other"),
}

ENGLISH_FUNCTION_WORDS = frozenset(
    """
    a an the this that these those my your his her its our their whose which what whatever
    i me you he him she it we us they them myself yourself himself herself itself ourselves
    yourselves themselves mine yours hers ours theirs who whom someone somebody something
    anyone anybody anything everyone everybody everything nobody nothing one none
    am is are was were be been being do does did done doing have has had having
    will would shall should can could may might must ought
    about above across after against along among around as at before behind below beneath
    beside besides between beyond but by despite down during except for from in inside into
    like near of off on onto out outside over past since through throughout till to toward
    towards under underneath until unlike up upon via with within without
    and or nor so yet both either neither
    although because if once than though unless whereas whether while whilst
    not n't 's 'm 're 've 'd 'll no there here all any each every some few many much more most
    other another such own same
    """.split()
)
"""Closed-class English words (determiners, pronouns, auxiliaries and modals,
prepositions, conjunctions, particles), lower case. Used only for untagged text."""

_WORD = re.compile(r"\w+(?:'\w+)?|n't|'\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Word:
    """A word of the text: its character span and gold UPOS tag (None when untagged)."""

    start: int
    end: int
    upos: str | None = None


@dataclass(frozen=True)
class TokenClass:
    """What one token of a text is, as a word."""

    word_class: str
    upos: str | None
    first_subword: bool
    word: int  # index of its word, -1 for none


def class_of_upos(upos: str) -> str:
    return UPOS_CLASS.get(upos, "other")


def class_of_untagged(form: str) -> str:
    """A word's class from its form alone (English closed-class list; else unknown)."""
    if not any(ch.isalnum() for ch in form):
        return "punctuation"
    return "function" if form.lower().replace("’", "'") in ENGLISH_FUNCTION_WORDS else "unknown"


def split_words(text: str) -> list[Word]:
    """Untagged words: runs of letters/digits (with an apostrophe clitic), or single
    punctuation characters."""
    return [Word(m.start(), m.end()) for m in _WORD.finditer(text)]


def align(
    text: str, offsets: Sequence[tuple[int, int]], special: Sequence[bool], words: Sequence[Word] | None
) -> list[TokenClass]:
    """Classify every token of ``text``.

    offsets: each token's (start, end) character span in ``text``, as the tokenizer gives
    it; special: whether each token is one of the model's special tokens; words: gold
    words with UPOS, or None to split and classify the text without tags.
    """
    tagged = words is not None
    if words is None:
        words = split_words(text)
    owner = [-1] * (len(text) + 1)  # character -> word index
    for w, word in enumerate(words):
        for c in range(word.start, min(word.end, len(text))):
            owner[c] = w
    out: list[TokenClass] = []
    seen: set[int] = set()
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            out.append(TokenClass("special", None, True, -1))
            continue
        w = -1
        for c in range(max(start, 0), min(end, len(text))):
            if owner[c] >= 0:  # first character that belongs to a word (skips a leading space)
                w = owner[c]
                break
        if w < 0:  # a lone space/newline token starts no word
            out.append(TokenClass("other", None, False, -1))
            continue
        word = words[w]
        if tagged:
            cls = class_of_upos(word.upos) if word.upos else "unknown"
        else:
            cls = class_of_untagged(text[word.start : word.end])
        out.append(TokenClass(cls, word.upos, w not in seen, w))
        seen.add(w)
    return out
