"""Residual views under a geometry correction (:mod:`tokentrail.engine.geometry`):
each group of queries gets its correction, fitted to its own vectors or read from a
corpus study, and is scored exactly against every corrected row."""

from __future__ import annotations

import torch
from torch import Tensor

from tokentrail.analysis.blocks import chunks
from tokentrail.engine.geometry import CorrectedRows, fit_correction
from tokentrail.engine.scoring import score_block
from tokentrail.store.schema import EMBEDDED
from tokentrail.store.stats import read_stats


def correction_for(correct: str, correct_from: str | None, sites, L: int):
    """group number -> its correction: fitted to the group's own vectors, or (with a study)
    the study's statistics of the same stage (group 0: the encodings; then site by site,
    layer by layer)."""
    if correct_from is None:
        return lambda g, vectors: fit_correction(correct, vectors)
    stats = read_stats(correct_from)
    where = [(EMBEDDED, 0)] + [(site, layer) for site in sites for layer in range(L)]
    return lambda g, vectors: stats.correction(correct, *where[g])


def corrected_scores(space, stats, vecs, pidx, own, n, correct, similarities, K, out, chunk_bytes, fit):
    """Residual queries under a geometry correction (:mod:`tokentrail.engine.geometry`): each group of
    ``n`` queries (the origin encodings, then one site at one layer) gets its correction
    (``fit(group number, its vectors)``), and is scored exactly against every corrected row.
    Returns the corrections."""
    corrections = []
    V = space.vocab_size
    for start in range(0, vecs.shape[0], n):
        group = slice(start, start + n)
        corr = fit(start // n, vecs[group])
        rows = CorrectedRows(space, corr, stats)
        corrections.append(corr)
        for c in chunks(n, V * 8 * 3, chunk_bytes):
            q = torch.arange(start, start + n, device=vecs.device)[c]
            for sim in similarities:
                res = score_block(rows.similarities(vecs[q], pidx[q], sim), own[q], K)
                for buf, val in zip(out[sim], res):
                    buf[q] = val.to(buf.dtype)
    return corrections


def corrected_site(vectors: Tensor, corrections) -> Tensor:
    """(L, n, d) site vectors, each layer through its own correction (for the anisotropy of what was compared)."""
    return torch.stack([corr.apply(v) for corr, v in zip(corrections, vectors)])
