"""What the page's controls may send: its limits, the trace options they describe, and
the text they carry, each refused with an :class:`~tokentrail.spec.errors.InputError`
that says what to do instead."""

from __future__ import annotations

from typing import Any, cast

import tokentrail as tt
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import RESIDUAL_SITES, SIMILARITIES, TraceOptions

INITIAL_TEXT = "Time flies like an arrow. Fruit flies like a banana."
MAX_CHARS = 2_000  # characters a page may send
MAX_TOKENS = 256  # tokens analysed at once: beyond this a click is no longer interactive
SITES = RESIDUAL_SITES  # the sites the page offers (heads have their own tab)
K_RANGE = (1, 50)

NO_CORRECTION = "none"
CORRECTION_CHOICES = (NO_CORRECTION, "zscore", "center", "rogue:1", "rogue:2", "rogue:3", "abtt:1", "abtt:2", "abtt:3")
"""The correction selector's menu (any ``rogue:N`` / ``abtt:N`` may be typed)."""


STUDY_FIT = "@"
"""``"zscore@NAME"``: the correction fitted to the operator's study NAME (``serve --studies``)."""
STUDY_FITS = ("zscore", "center", "rogue:2", "abtt:3")  # offered per study (others may be typed)


def correction_choices(studies=None) -> list[tuple[str, str]]:
    """The correction selector's menu as (label, value): fitted to the text, then, for each
    study the server offers (``studies``: the Study tab's shelf), fitted to that study."""
    choices = [(c, c) for c in CORRECTION_CHOICES]
    for name in [] if studies is None else studies.names():
        choices += [(f"{c}, fitted to study {name}", f"{c}{STUDY_FIT}{name}") for c in STUDY_FITS]
    return choices


def page_options(
    site: object,
    positional: object,
    similarity: object,
    k: object,
    causal: object,
    correct: object = NO_CORRECTION,
    studies=None,
) -> TraceOptions:
    """The trace options the page's controls describe ("use positional embeddings" picks
    the ``encodings`` space, else ``embeddings``; ``correct`` the geometry correction,
    ``"none"`` for none, ``"zscore@NAME"`` fitted to the offered study NAME of
    ``studies``, the shelf that is the page's only way to a study), validated with the
    page's limits."""
    if site not in SITES:
        raise InputError(f"unknown site {site!r}: choose from {', '.join(SITES)}")
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
    k = whole_number(k, "k")
    if not K_RANGE[0] <= k <= K_RANGE[1]:
        raise InputError(f"k must be between {K_RANGE[0]} and {K_RANGE[1]}, not {k}")
    space = "encodings" if positional else "embeddings"
    correct = None if correct in (None, "", NO_CORRECTION) else correct
    if correct is not None and not isinstance(correct, str):
        raise InputError(f"unknown correction {correct!r}: choose from {', '.join(CORRECTION_CHOICES)}")
    correct_from = None
    if correct is not None and STUDY_FIT in correct:
        correct, name = (part.strip() for part in correct.split(STUDY_FIT, 1))
        if studies is None or not studies.names():
            raise InputError(
                "this server offers no corpus studies to fit a correction to (tokentrail serve --studies DIR)"
            )
        correct_from = str(studies.path(name))  # an offered study, or refused
    return TraceOptions.make(
        site=site,
        space=space,
        similarity=similarity,
        k=k,
        causal=bool(causal),
        correct=correct,
        correct_from=correct_from,
    )


DEFAULT_OPTIONS = TraceOptions.make(causal=True)  # what page_options gives for the page defaults


def check_page_text(text: object) -> str:
    """The page's text, or an InputError that says what is wrong (and the limits)."""
    if isinstance(text, str) and len(text) > MAX_CHARS:
        raise InputError(
            f"the text is {len(text):,} characters; this app takes at most {MAX_CHARS:,} (and {MAX_TOKENS} tokens)"
        )
    return tt.check_text(text)


def whole_number(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    try:
        f = float(cast(Any, value))  # sliders send floats; anything float() refuses is caught below
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, not {value!r}") from None
    if f != int(f):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    return int(f)
