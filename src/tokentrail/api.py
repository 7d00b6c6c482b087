"""The Python API: ``tokentrail.trace(text, model=...)``."""

from __future__ import annotations

import os
from typing import Callable, Sequence

from .analysis import ALL_SITES, ALL_SPACES, Progress, analyse, check_options
from .budget import check_fits, estimate_run
from .checks import DEFAULT_OVERLAP_K, check_count, check_k_in_vocab, check_model_name
from .inputs import check_text, encode
from .metrics import SIMILARITIES
from .models import DEFAULT_MODEL, LoadedModel, load
from .results import Trail


def expand_choice(value: str | Sequence[str], everything: Sequence[str]) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part == "all":
                out += list(everything)
            elif part:
                out.append(part)
    return list(dict.fromkeys(out))


def trace(
    text: str,
    model: str | os.PathLike | LoadedModel = DEFAULT_MODEL,
    *,
    site: str | Sequence[str] = "attn_resid",
    space: str | Sequence[str] = "encodings",
    similarity: str | Sequence[str] = "cosine",
    k: int = 15,
    overlap_k: int | None = None,
    lens: bool = False,
    causal: bool | None = None,
    truncate: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> Trail:
    """Follow every token of ``text`` through ``model``.

    ``overlap_k`` defaults to 100 (or the vocabulary size, if smaller); asking for more
    than the vocabulary has is an error, as is ``k`` above it.
    ``site``, ``space`` and ``similarity`` take one name, a list, a comma-separated string
    or ``"all"``. ``causal=False`` runs a decoder with its causal mask off.
    """
    model = check_model_name(model)
    k = check_count("k", k)
    if overlap_k is not None:
        overlap_k = check_count("overlap_k", overlap_k)
    sites, spaces, sims = expand_choice(site, ALL_SITES), expand_choice(space, ALL_SPACES), expand_choice(similarity, SIMILARITIES)
    todo = check_options(sites, spaces, sims, k, overlap_k or DEFAULT_OVERLAP_K)  # fail fast, before loading anything
    check_text(text)
    loaded = model if isinstance(model, LoadedModel) else load(model, allow_pickle=allow_pickle)
    overlap_k = check_k_in_vocab(k, overlap_k, loaded.adapter.vocab_size)
    enc = encode(loaded, text, truncate=truncate)
    check_fits(estimate_run(loaded.adapter, tokens=len(enc.ids), pairs=todo, similarities=len(sims), k=k, overlap_k=overlap_k, lens=lens))
    trail = analyse(
        loaded.adapter,
        loaded.spaces,
        enc.ids,
        text=text,
        tokens=enc.tokens,
        special=enc.special,
        label=loaded.labels,
        model_name=loaded.name,
        revision=loaded.revision,
        sites=sites,
        space_kinds=spaces,
        similarities=sims,
        k=k,
        overlap_k=overlap_k,
        lens=lens,
        causal=causal,
        progress=progress,
    )
    if enc.truncated_from is not None:
        trail.info.options["truncated_from"] = enc.truncated_from
    return trail
