"""How much memory a run needs, estimated before it starts (pure arithmetic, no torch).

A run that would exhaust the machine is refused with the figure and the fix, instead of
being killed (or swapping for minutes) half-way. The estimate counts the arrays a run
keeps, in bytes, with ``n`` tokens, ``L`` layers, ``H`` heads, ``V`` the vocabulary,
``d`` the hidden size, ``S`` residual sites, ``R`` residual spaces (encodings,
embeddings), ``G`` head spaces (value, key, query), ``m`` similarities, ``K = min(max(k,
overlap_k), V)`` and ``k_h = min(k, V)``::

    activations  = 4 (L H n^2 + 6 L n d)                 attention maps + hooked vectors
    residual     = R m [12 (S L + 1) n K + 16 S L n overlap_k]
                   top-K ids (int64) and similarities (float32) for every query vector,
                   plus the sorted neighbour ids the overlap compares
    heads        = G m L H n (12 k_h + 12)                 per-head top-k, own sim and rank
    lens         = L n (12 k_h + 28) + 8 n V               (with --lens) top-k, ranks, one layer's logits
    spaces       = 8 V d R + min(1 GiB, 8 V d G L)         factorised vocabularies (the space cache keeps
                                                           head spaces up to 1 GiB)
    working      = 2 * 192 MiB + 8 n V (R + G H)           scoring chunks and per-position row norms

The total is a planning figure, typically within a factor of two of the measured peak;
model weights are not counted (they are already loaded when the check runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import InputError

CHUNK_BYTES = 192 << 20  # analysis scores the vocabulary in chunks of about this size
SPACE_CACHE_BYTES = 1 << 30  # SpaceCache's default budget for head spaces
HEADROOM = 0.8  # refuse when a run would take more than this share of the available memory


@dataclass(frozen=True)
class Estimate:
    """Estimated bytes of one run, by part."""

    activations: int
    residual: int
    heads: int
    lens: int
    spaces: int
    working: int

    def parts(self) -> dict[str, int]:
        return {"activations": self.activations, "residual": self.residual, "heads": self.heads, "lens": self.lens, "spaces": self.spaces, "working": self.working}

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def largest(self) -> str:
        parts = self.parts()
        return max(parts, key=parts.get)


def estimate(
    *,
    tokens: int,
    layers: int,
    heads: int,
    vocab: int,
    d_model: int,
    residual_sites: int,
    residual_spaces: int,
    head_spaces: int,
    similarities: int,
    k: int,
    overlap_k: int,
    lens: bool,
) -> Estimate:
    """Bytes a run keeps at its peak (the formula is in the module docstring)."""
    n, L, H, V, d = tokens, layers, heads, vocab, d_model
    K = min(max(k, overlap_k), V)
    kh = min(k, V)
    S, R, G, m = residual_sites, residual_spaces if residual_sites else 0, head_spaces, similarities
    return Estimate(
        activations=4 * (L * H * n * n + 6 * L * n * d),
        residual=R * m * (12 * (S * L + 1) * n * K + 16 * S * L * n * min(overlap_k, V)),
        heads=G * m * L * H * n * (12 * kh + 12),
        lens=(L * n * (12 * kh + 28) + 8 * n * V) if lens else 0,
        spaces=8 * V * d * R + min(SPACE_CACHE_BYTES, 8 * V * d * G * L),
        working=2 * CHUNK_BYTES + 8 * n * V * (R + G * H),
    )


def available_bytes() -> int | None:
    """Memory the machine can give now (psutil, else /proc/meminfo); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def human(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


_FIXES = {
    "residual": "fewer tokens, fewer sites/spaces/similarities, or a smaller -k/--overlap-k",
    "heads": "fewer tokens, fewer head spaces, or a smaller -k",
    "activations": "fewer tokens",
    "lens": "fewer tokens, or no --lens",
    "working": "fewer tokens or spaces",
    "spaces": "fewer spaces",
}


def check_fits(est: Estimate, available: int | None = None) -> None:
    """Refuse a run whose estimate exceeds what the machine has, saying why and what to change."""
    if available is None:
        available = limit_bytes()
    if available is None or est.total <= HEADROOM * available:
        return
    part = est.largest()
    raise InputError(
        f"this run would need about {human(est.total)} of memory ({part}: {human(getattr(est, part))}) and "
        f"the machine has {human(available)} available: use {_FIXES[part]}"
    )


def env_limit() -> int | None:
    """``TOKENTRAIL_MAX_MEMORY`` (bytes) caps what a run may use, e.g. on a shared server."""
    raw = os.environ.get("TOKENTRAIL_MAX_MEMORY")
    if not raw:
        return None
    try:
        return int(float(raw))
    except ValueError:
        raise InputError(f"TOKENTRAIL_MAX_MEMORY={raw!r} is not a number of bytes") from None


def limit_bytes() -> int | None:
    """The smaller of the available memory and ``TOKENTRAIL_MAX_MEMORY``; None if neither is known."""
    known = [b for b in (available_bytes(), env_limit()) if b is not None]
    return min(known) if known else None


def estimate_run(model, *, tokens: int, pairs, similarities: int, k: int, overlap_k: int, lens: bool) -> Estimate:
    """:func:`estimate` for a model (anything with ``n_layers``, ``n_heads``, ``vocab_size``,
    ``d_model``, e.g. an adapter) and the (site, space) pairs a run computes."""
    residual = [(site, sp) for site, sp in pairs if site != "heads"]
    return estimate(
        tokens=tokens,
        layers=model.n_layers,
        heads=model.n_heads,
        vocab=model.vocab_size,
        d_model=model.d_model,
        residual_sites=len({site for site, _ in residual}),
        residual_spaces=len({sp for _, sp in residual}),
        head_spaces=len({sp for site, sp in pairs if site == "heads"}),
        similarities=similarities,
        k=k,
        overlap_k=overlap_k,
        lens=lens,
    )


def held_bytes(*objs: object) -> int:
    """Bytes of the arrays and tensors reachable from ``objs`` through dataclass fields,
    mappings, lists, tuples and sets: what keeping these results costs. Each buffer is
    counted once (a tensor's whole storage, a numpy view's base array), so results that
    share arrays are not counted twice. Other objects (a model) are not walked."""
    from collections.abc import Mapping
    from dataclasses import fields, is_dataclass

    buffers: dict[object, int] = {}
    visited: set[int] = set()
    stack = list(objs)
    while stack:
        o = stack.pop()
        if o is None or isinstance(o, (str, bytes, int, float, bool)) or id(o) in visited:
            continue
        visited.add(id(o))
        if hasattr(o, "untyped_storage"):  # a torch tensor (duck-typed: no torch import here)
            storage = o.untyped_storage()
            buffers[("t", storage.data_ptr(), storage.device)] = storage.nbytes()
        elif hasattr(o, "nbytes") and hasattr(o, "dtype"):  # a numpy array or scalar
            base = o
            while getattr(base, "base", None) is not None and hasattr(base.base, "nbytes"):
                base = base.base
            buffers[("a", id(base))] = int(base.nbytes)
        elif is_dataclass(o) and not isinstance(o, type):
            stack.extend(getattr(o, f.name) for f in fields(o))
        elif isinstance(o, Mapping):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
    return sum(buffers.values())
