"""How much memory a run needs, estimated before it starts (pure arithmetic, no torch).

A run that would exhaust the machine is refused with the figure and the fix, instead of
being killed (or swapping for minutes) half-way. The estimate counts the arrays a run
keeps, in bytes, with ``n`` tokens, ``L`` layers, ``H`` heads, ``V`` the vocabulary,
``d`` the hidden size, ``S`` residual sites, ``R`` residual spaces (encodings,
embeddings), ``G`` head spaces (value, key, query), ``m`` similarities, ``K = min(max(k,
overlap_k), V)`` and ``k_h = min(k, V)``::

    activations  = 4 (L H n^2 + 6 L n d)                 attention maps + hooked vectors (a streamed
                                                        trace holds one layer's: 6 n d)
    residual     = R m [12 (S L + 1) n K + 16 S L n overlap_k]
                   top-K ids (int64) and similarities (float32) for every query vector,
                   plus the sorted neighbour ids the overlap compares
    heads        = G m L H n (12 k_h + 12)                 per-head top-k, own sim and rank
    lens         = L n (12 k_h + 28)                       (with --lens) top-k, ranks, probabilities
    spaces       = 8 V d R + min(1 GiB, 8 V d G L)         factorised vocabularies (the space cache keeps
                   + R * POSITION_MEMO_BYTES               head spaces up to 1 GiB; a residual space whose
                                                           rows move keeps per-position norms up to a bound)
    working      = SCRATCH * max(BLOCK_BYTES + STATS_BYTES one similarity block, one window of per-position
                                 + TABLE_CHUNK_BYTES,   row norms and one chunk of a QK-normed space's rows,
                                 LENS_CHUNK_BYTES)      or the logit lens' chunk of logits, with the passes
                                                        over them

An encoder-decoder's run (:func:`estimate_seq2seq`) is both stacks' estimates added part by
part (the encoder over ``m`` source tokens without the lens, the decoder over its ``n``
input tokens with it), the working memory once (the stacks are scored one after the other),
and what cross-attention adds, with ``L``, ``H``, ``d`` the decoder's and ``c`` the
``cross_heads`` (space, similarity) pairs::

    activations += 4 (L H n m + 3 L n d + m d)          cross-attention maps, the cross z, output
                                                        and what reads it; the encoder output
    cross        = 12 c L H n m                         each cross head's order of the source tokens
                                                        (int64) and their similarities

None of the vocabulary work grows with ``n`` beyond the results it keeps: queries are
scored a block at a time, row norms are made a window of positions at a time, and the
lens reads its logits a chunk of cells at a time (``working`` is 640 MiB whatever ``n``).

The total is a planning figure, typically within a factor of two of the measured peak;
model weights are not counted (they are already loaded when the check runs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from tokentrail.spec.errors import InputError
from tokentrail.spec.options import CROSS_HEAD_SITE, CROSS_SITES

BLOCK_BYTES = 128 << 20
"""The similarity block one chunk of queries is scored in (``chunk_bytes`` can only lower
it). Each chunk streams the whole ``V x d`` table through the matrix product again (MKL
packs it per call), so fewer, larger chunks cost less: on the 2-CPU machine of
docs/benchmarks.md a SmolLM2 100-token residual trace took 5.9-6.0 s with 48 MiB blocks
(244 queries) and 5.5-5.7 s with 128 or 192 MiB (one thread, same process); 16 MiB
blocks made the product 35 % slower than one product of every query. The passes after
the product run out of cache at any of these sizes."""
STATS_BYTES = 64 << 20
"""About the bytes of per-position row norms (and cosine factors) made at a time for a space
whose rows move with position (position embeddings): a window of positions, not all of the
text's, so that this memory does not grow with the number of tokens."""
LENS_CHUNK_BYTES = 256 << 20
"""The logits (and their log-probabilities and probabilities) of one chunk of (layer, token)
cells: what the logit lens holds at a time, whatever the number of tokens."""
POSITION_MEMO_BYTES = 64 << 20
"""Per residual space whose rows move with position (post-LN encoders' ``encodings``): the
per-position norms and cosine factors kept between calls (up to four V-vectors a position:
about 80 roberta positions, 130 MiniLM ones), so warm traces skip their ``O(P V d)``
products for positions seen before."""
TABLE_CHUNK_BYTES = 32 << 20
"""About the bytes of rows a made (QK-normed) key/query space makes at a time when it holds
no whole ``(G, V, d_head)`` table (a real Qwen3's query table is 1.2 GB a layer): a
vocabulary chunk of rows, whose products are written into the similarity block."""
WORKING_BYTES = max(BLOCK_BYTES + STATS_BYTES + TABLE_CHUNK_BYTES, LENS_CHUNK_BYTES)
"""The largest fixed chunk a trace holds at once: a similarity block, a window of row
norms and a chunk of made rows while scoring, or the lens' logits (the two never overlap)."""
SCRATCH = 2.5
"""Working memory per byte of :data:`WORKING_BYTES`: the passes over a chunk (rank masks,
top-k candidates, log-probabilities) and the allocator's slack come on top of the chunk
itself. Measured working memory (peak minus results, space cache and activations):
527 MiB for the SmolLM2 everything-trace at 1,024 tokens and 531 MiB for a tiny GPT-2
with a 60,000-token vocabulary at 900 tokens (tests/test_memory.py), against 640 MiB here."""
STREAM_BYTES = 64 << 20
"""A trace whose captured activations (:func:`captured_bytes`) would pass this is computed
layer by layer during the forward pass (``analysis.stream_views``), holding one layer's
activations at a time: the working memory then does not grow with the number of layers
times tokens. Below it, the whole capture is kept (a short text's layers share products)."""


def captured_bytes(layers: int, tokens: int, d_model: int) -> int:
    """The hooked vectors of one text's capture (the ``6 L n d`` float32 of the estimate)."""
    return 4 * 6 * layers * tokens * d_model


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
    cross: int = 0  # an encoder-decoder's cross_heads views (estimate_seq2seq)

    def parts(self) -> dict[str, int]:
        return {
            "activations": self.activations,
            "residual": self.residual,
            "heads": self.heads,
            "lens": self.lens,
            "spaces": self.spaces,
            "working": self.working,
            "cross": self.cross,
        }

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
    streamed: bool = False,
) -> Estimate:
    """Bytes a run keeps at its peak (the formula is in the module docstring). ``streamed``:
    the trace scores each layer during the forward pass (``analysis.streams``)."""
    n, L, H, V, d = tokens, layers, heads, vocab, d_model
    K = min(max(k, overlap_k), V)
    kh = min(k, V)
    S, R, G, m = residual_sites, residual_spaces if residual_sites else 0, head_spaces, similarities
    return Estimate(
        activations=4 * L * H * n * n + captured_bytes(1 if streamed else L, n, d),
        residual=R * m * (12 * (S * L + 1) * n * K + 16 * S * L * n * min(overlap_k, V)),
        heads=G * m * L * H * n * (12 * kh + 12),
        lens=L * n * (12 * kh + 28) if lens else 0,
        spaces=8 * V * d * R + min(SPACE_CACHE_BYTES, 8 * V * d * G * L) + R * POSITION_MEMO_BYTES,
        working=int(SCRATCH * WORKING_BYTES),
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
    "working": "a machine with more memory (this part does not depend on the text)",
    "spaces": "fewer spaces",
    "cross": "a shorter source or decoder input, or no cross_heads site",
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
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise InputError(f"TOKENTRAIL_MAX_MEMORY={raw!r} is not a number of bytes (above 0)")
    return int(value)


def limit_bytes() -> int | None:
    """The smaller of the available memory and ``TOKENTRAIL_MAX_MEMORY``; None if neither is known."""
    known = [b for b in (available_bytes(), env_limit()) if b is not None]
    return min(known) if known else None


def estimate_capture(*, tokens: int, layers: int, heads: int, d_model: int) -> Estimate:
    """What capturing one text's activations holds (every layer's hooked vectors and
    attention maps, nothing scored): :func:`estimate` with no site, space or lens."""
    return estimate(
        tokens=tokens,
        layers=layers,
        heads=heads,
        vocab=1,
        d_model=d_model,
        residual_sites=0,
        residual_spaces=0,
        head_spaces=0,
        similarities=0,
        k=1,
        overlap_k=1,
        lens=False,
    )


def estimate_run(
    model, *, tokens: int, pairs, similarities: int, k: int, overlap_k: int, lens: bool, streamed: bool = False
) -> Estimate:
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
        streamed=streamed,
    )


def estimate_seq2seq(
    encoder,
    decoder,
    *,
    source_tokens: int,
    decoder_tokens: int | None,
    pairs,
    similarities: int,
    k: int,
    overlap_k: int,
    lens: bool,
) -> Estimate:
    """:func:`estimate_run` for an encoder-decoder's run: the encoder stack over
    ``source_tokens``, the decoder stack over ``decoder_tokens`` with its cross-attention
    (the formula is in the module docstring); with ``decoder_tokens`` None (the decoder
    input is not known yet), the encoder stack's part alone. ``pairs``: the run's (site,
    space) pairs; the encoder has no cross site and no lens (an encoder-decoder's lens
    reads its decoder)."""
    enc = estimate_run(
        encoder,
        tokens=source_tokens,
        pairs=[p for p in pairs if p[0] not in CROSS_SITES],
        similarities=similarities,
        k=k,
        overlap_k=overlap_k,
        lens=False,
    )
    if decoder_tokens is None:
        return enc
    dec = estimate_run(
        decoder,
        tokens=decoder_tokens,
        pairs=[p for p in pairs if p[0] != CROSS_HEAD_SITE],
        similarities=similarities,
        k=k,
        overlap_k=overlap_k,
        lens=lens,
    )
    n, m, L, H, d = decoder_tokens, source_tokens, decoder.n_layers, decoder.n_heads, decoder.d_model
    cross_pairs = sum(1 for site, _ in pairs if site == CROSS_HEAD_SITE) * similarities
    return Estimate(
        activations=enc.activations + dec.activations + 4 * (L * H * n * m + 3 * L * n * d + m * d),
        residual=enc.residual + dec.residual,
        heads=enc.heads + dec.heads,
        lens=dec.lens,
        spaces=enc.spaces + dec.spaces,
        working=max(enc.working, dec.working),
        cross=12 * cross_pairs * L * H * n * m,
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
            base: Any = o  # duck-typed: a numpy array, possibly a view of another
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


def fit_bytes(sites: int, layers: int, d_model: int, held_out: bool = False) -> int:
    """Bytes a fitted translator's running sums hold (issue 26): per site and layer
    ``Σ h hᵀ`` and ``Σ h tᵀ`` (``2 d²`` float64, so ``2 L d²`` per site) and four d-vectors
    (``Σh``, ``Σt``, ``Σ t∘t`` and the count's row); twice with a held-out split. A batch's
    own sums and the solve's working copy come on top (:func:`check_fit`)."""
    per = (2 * d_model * d_model + 4 * d_model) * 8
    return per * sites * layers * (2 if held_out else 1)


def check_fit(sites: int, layers: int, d_model: int, held_out: bool, available: int | None = None) -> int:
    """The memory a fit needs (its running sums twice: the total and one batch's), refused
    in one line with the figure when it does not fit; returns the figure."""
    need = 2 * fit_bytes(sites, layers, d_model, held_out)
    if available is None:
        available = limit_bytes()
    if available is not None and need > HEADROOM * available:
        raise InputError(
            f"this fit would hold about {human(need)} of float64 sums ({sites} site(s) x {layers} layer(s) x 2 d² "
            f"with d = {d_model}{', twice for the held-out split' if held_out else ''}) and the machine has "
            f"{human(available)} available: fit fewer --layers or sites"
        )
    return need
