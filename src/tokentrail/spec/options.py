"""What a trace computes: one frozen, validated options object for the API, CLI and app.

Pure Python (no torch): the CLI validates a command line with it before importing
anything heavy, the app builds one from its controls, and every result records the one
it was made with (``RunInfo.options``), so exports carry it typed and it reads back.

The names a user may choose from live here and nowhere else: sites, spaces,
similarities and lens sites.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tokentrail.spec.errors import InputError

RESIDUAL_SITES: tuple[str, ...] = ("resid_pre", "attn_resid", "attn_resid_ln", "layer_out", "mlp_out")
"""Residual-stream sites (d-dimensional vectors), in the order a layer computes them."""
HEAD_SITE = "heads"
CROSS_SITE = "cross_resid"
"""Encoder-decoder decoders: the residual after cross-attention (d-dimensional)."""
CROSS_HEAD_SITE = "cross_heads"
"""Encoder-decoder decoders: per-head cross-attention vectors, compared with the source tokens."""
CROSS_SITES: tuple[str, ...] = (CROSS_SITE, CROSS_HEAD_SITE)
ALL_SITES: tuple[str, ...] = (*RESIDUAL_SITES, HEAD_SITE, *CROSS_SITES)
"""Every site; a model without cross-attention computes all but :data:`CROSS_SITES`."""
RESIDUAL_SPACES: tuple[str, ...] = ("encodings", "embeddings")
HEAD_SPACES: tuple[str, ...] = ("value", "key", "query")
CROSS_HEAD_SPACES: tuple[str, ...] = ("value", "key")
"""A cross-attention head's spaces: the source tokens' values (its ``z``) or keys (its query)."""
ALL_SPACES: tuple[str, ...] = (*RESIDUAL_SPACES, *HEAD_SPACES)
SIMILARITIES: tuple[str, ...] = ("cosine", "euclidean")
LENS_SITES: tuple[str, ...] = ("layer_out", "attn_resid")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Model dtypes a user may ask for; float32 is the exact reference (SPEC "Exactness")."""
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
CORRECTIONS: tuple[str, ...] = ("center", "zscore", "rogue", "abtt")
"""Geometry corrections (SPEC "Corrections (geometry)"); rogue and abtt take a count: ``rogue:2``, ``abtt:3``."""
DEFAULT_NEW_TOKENS = 20  # encoder-decoders without a target: the greedy output's length bound
MAX_NEW_TOKENS = 512  # the most greedy tokens asked for (each step re-runs the decoder on all before it)
DEFAULT_OVERLAP_K = 100  # SPEC; a smaller vocabulary caps the default (an explicit larger one is refused)
HEADS_ACROSS_MODELS = "the heads site compares the same head in two contexts of one model; two models have different heads: choose a residual site"


def expand_choice(value: str | Sequence[str] | None, everything: Sequence[str]) -> tuple[str, ...]:
    """One name, a list, a comma-separated string or ``"all"`` -> the names, in order, once each."""
    if value is None:
        return ()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"expected a name, got {type(item).__name__} {item!r}")
        for part in item.split(","):
            part = part.strip()
            if part == "all":
                out += list(everything)
            elif part:
                out.append(part)
    return tuple(dict.fromkeys(out))


def parse_correction(value: object) -> tuple[str, int | None]:
    """``"zscore"`` -> ("zscore", None); ``"rogue:2"`` -> ("rogue", 2); anything else: one clear InputError."""
    if not isinstance(value, str):
        raise InputError(f"a correction is a name such as zscore, center, rogue:2 or abtt:3, not {value!r}")
    name, sep, count = value.strip().partition(":")
    if name not in CORRECTIONS:
        raise InputError(
            f"unknown correction {value!r}: choose from center, zscore, rogue:D, abtt:D (D a whole number)"
        )
    if name in ("center", "zscore"):
        if sep:
            raise InputError(f"{name} takes no count: use --correct {name}")
        return name, None
    if not count.strip().isdigit() or int(count) < 1:
        raise InputError(f"{name} needs a count of dimensions to remove, e.g. {name}:2 (got {value!r})")
    return name, int(count)


def whole_number(value: object, what: str, low: int = 1) -> int:
    """``value`` as an int >= ``low``, or an InputError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            raise InputError(f"{what} must be a whole number, not the string {value!r}")
        raise InputError(f"{what} must be a whole number, not {value!r}")
    if value < low:
        raise InputError(f"{what} must be at least {low}, not {value}")
    return int(value)


def check_new_tokens(value: object) -> int:
    """An encoder-decoder's greedy output bound: a whole number in 1..MAX_NEW_TOKENS."""
    n = whole_number(value, "max new tokens")
    if n > MAX_NEW_TOKENS:
        raise InputError(
            f"max new tokens must be at most {MAX_NEW_TOKENS}, not {n} (each greedy step re-runs the decoder on every token before it): give the decoder input with a target instead"
        )
    return n


def check_index(value: object, count: int, what: str, owner: str) -> int:
    """The one index checker: ``value`` in ``-count..count-1`` -> ``0..count-1``.

    ``what`` names the index ("layer"); ``owner`` says what is counted, e.g. "the model
    has 6 layers"."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np  # indices often come out of numpy arrays

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be a whole number, not {value!r}")
    if not -count <= value < count:
        raise InputError(f"{what} {value} is out of range: {owner} ({0}..{count - 1})")
    return value % count


def spaces_of(site: str) -> tuple[str, ...]:
    """The spaces ``site`` is compared in (the one home of the site/space pairing rule);
    the first is its default: encodings for residual sites, value for the heads sites."""
    if site == HEAD_SITE:
        return HEAD_SPACES
    return CROSS_HEAD_SPACES if site == CROSS_HEAD_SITE else RESIDUAL_SPACES


def site_spaces(sites: Sequence[str], space: str | None) -> tuple[list[str], str | None]:
    """The spaces to compute for a command line's ``--site``/``--space``, and a note to show.

    Residual sites default to encodings and the heads sites to value; an explicit space
    the heads site cannot use is an error when only heads are asked for, else the heads
    site uses its value space and the note says so."""
    if space is None:
        return ["encodings"] + (["value"] if HEAD_SITE in sites or CROSS_HEAD_SITE in sites else []), None
    spaces = list(expand_choice(space, ALL_SPACES))
    if HEAD_SITE in sites and not any(s in HEAD_SPACES for s in spaces if s in ALL_SPACES):
        if all(s == HEAD_SITE for s in sites):
            raise InputError(
                f"--site heads compares each head with its {', '.join(HEAD_SPACES)} space; "
                f"--space {space} is for residual sites: use --space value (or key, query)"
            )
        return [*spaces, "value"], f"--space {space} applies to the residual sites; the heads site uses its value space"
    return spaces, None


def check_compare_options(site: str, space: str | None, similarity: str, k: int, overlap_k: int | None) -> str:
    """A comparison's options that need no model; returns the space (default: encodings, or value for heads)."""
    sites = [s for s in ALL_SITES if s not in CROSS_SITES]  # one stack's sites: an encoder-decoder compares its encoder
    if not isinstance(site, str) or site not in sites:
        raise InputError(f"compare takes one site: choose from {', '.join(sites)}, not {site!r}")
    allowed = spaces_of(site)
    space = space or allowed[0]
    if space not in allowed:
        raise InputError(f"the {site} site compares with {' or '.join(allowed)}, not {space!r}")
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
    whole_number(k, "k")
    if overlap_k is not None:
        whole_number(overlap_k, "overlap k")
    return space


@dataclass(frozen=True)
class TraceOptions:
    """Everything that changes the numbers of a trace: the one options object the API,
    the CLI and the app build (:meth:`make` from user-facing values). Validated once, when
    built; being frozen, it stays valid, and a changed copy (:meth:`with_`) is a new build."""

    sites: tuple[str, ...] = ("attn_resid",)
    spaces: tuple[str, ...] = ("encodings",)
    similarities: tuple[str, ...] = ("cosine",)
    k: int = 15  # neighbours kept per cell
    overlap_k: int | None = None  # set size of the layer-to-layer overlap; None: 100, or the vocabulary if smaller
    lens: bool = False
    lens_site: str = "layer_out"
    causal: bool | None = None  # decoders: None = the model's own (causal) mask
    truncate: bool = False  # cut an over-long text instead of refusing it
    correct: str | None = None  # geometry correction of residual sites: center, zscore, rogue:D, abtt:D
    correct_from: str | None = None  # a corpus study's folder to fit the correction to (else the text)

    @classmethod
    def make(
        cls,
        *,
        site: str | Sequence[str] = "attn_resid",
        space: str | Sequence[str] = "encodings",
        similarity: str | Sequence[str] = "cosine",
        k: int = 15,
        overlap_k: int | None = None,
        lens: bool = False,
        lens_site: str = "layer_out",
        causal: bool | None = None,
        truncate: bool = False,
        correct: str | None = None,
        correct_from: Any = None,
    ) -> TraceOptions:
        """Validated options from user-facing values (names, lists, "a,b" or "all")."""
        opts = cls(
            sites=expand_choice(site, ALL_SITES),
            spaces=expand_choice(space, ALL_SPACES),
            similarities=expand_choice(similarity, SIMILARITIES),
            k=k,
            overlap_k=overlap_k,
            lens=lens,
            lens_site=lens_site,
            causal=causal,
            truncate=truncate,
            correct=None if correct is None else str(correct).strip().replace(" ", ""),
            correct_from=None if correct_from is None else str(correct_from),
        )
        return opts

    def __post_init__(self) -> None:
        self._check()

    def validate(self) -> TraceOptions:
        """The options themselves: they were checked when built."""
        return self

    def _check(self) -> None:
        for s in self.sites:
            if s not in ALL_SITES:
                raise InputError(f"unknown site {s!r}: choose from {', '.join(ALL_SITES)} or all")
        for s in self.spaces:
            if s not in ALL_SPACES:
                raise InputError(f"unknown space {s!r}: choose from {', '.join(ALL_SPACES)} or all")
        for s in self.similarities:
            if s not in SIMILARITIES:
                raise InputError(f"unknown similarity {s!r}: choose from {', '.join(SIMILARITIES)} or all")
        if not self.similarities:
            raise InputError("choose at least one similarity")
        whole_number(self.k, "k")
        if self.overlap_k is not None:
            whole_number(self.overlap_k, "overlap k")
        for flag in ("lens", "truncate"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{flag} must be True or False, not {getattr(self, flag)!r}")
        if self.causal is not None and not isinstance(self.causal, bool):
            raise InputError(f"causal must be True, False or None, not {self.causal!r}")
        if self.lens_site not in LENS_SITES:
            raise InputError(f"the logit lens reads {' or '.join(LENS_SITES)}, not {self.lens_site!r}")
        if self.correct is not None:
            parse_correction(self.correct)
        if self.correct_from is not None:
            if not isinstance(self.correct_from, str) or not self.correct_from.strip():
                raise InputError(f"correct_from is a corpus study's folder, not {self.correct_from!r}")
            if self.correct is None:
                raise InputError(
                    "--correct-from says where a correction is fitted: add --correct zscore|center|rogue:D|abtt:D"
                )
        self.pairs()

    def pairs(self) -> list[tuple[str, str]]:
        """The (site, space) pairs to compute among those asked for."""
        out = []
        for site in self.sites:
            allowed = spaces_of(site)
            chosen = [s for s in self.spaces if s in allowed]
            if not chosen and site in (HEAD_SITE, CROSS_HEAD_SITE):
                chosen = ["value"]  # the heads sites' own space (SPEC)
            out += [(site, s) for s in chosen]
        if not out:
            raise InputError(
                f"no site/space pair to compute: residual sites ({', '.join(RESIDUAL_SITES)}) pair with "
                f"{' or '.join(RESIDUAL_SPACES)}; the heads site pairs with {', '.join(HEAD_SPACES)}"
            )
        return out

    def with_(self, **changes: Any) -> TraceOptions:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def settled(self, **facts: Any) -> TraceOptions:
        """A copy with values the model decides filled in (``overlap_k`` from its
        vocabulary, the sites it has): not the user's values, so not checked again; the
        user's were checked once, when this object was built."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        for name, value in facts.items():
            if name not in self.__dataclass_fields__:
                raise TypeError(f"TraceOptions has no field {name!r}")
            object.__setattr__(copy, name, value)
        return copy

    # ---- metadata round trip ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("sites", "spaces", "similarities"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TraceOptions:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown trace options {sorted(unknown)}: known are {sorted(names)}")
        kw = dict(d)
        for key in ("sites", "spaces", "similarities"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


LENS_COLOURS = {
    "prob": "probability of the top token",
    "entropy": "entropy of the prediction (nats)",
    "kl": "KL(final layer ‖ this layer) (nats)",
    "rank": "rank of the actual next token",  # encoders: of the token itself (the masked-LM reading)
}
"""What the lens picture (``tt.plots.lens_heatmap``) can colour cells by, name -> what the colour is."""
