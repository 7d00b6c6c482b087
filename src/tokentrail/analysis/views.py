"""Every view of one text: its captured activations scored against the reference spaces
an options object asks for (:func:`compute_views`), residual sites space by space
(:mod:`~tokentrail.analysis.residual`) and heads layer by layer
(:mod:`~tokentrail.analysis.heads`).

The rest of a trace lives beside it: the checks before the pass
(:mod:`~tokentrail.analysis.checks`), a long text scored during its pass
(:mod:`~tokentrail.analysis.stream`), several texts at once
(:mod:`~tokentrail.analysis.batch`), the cross-attention heads
(:mod:`~tokentrail.analysis.cross`) and the Trail (:mod:`~tokentrail.analysis.trail`);
:mod:`~tokentrail.analysis.bare` runs them all for a bare adapter.
"""

from __future__ import annotations

from collections.abc import Callable

from tokentrail.adapters import Adapter
from tokentrail.analysis.heads import head_views
from tokentrail.analysis.residual import copied_view, residual_views
from tokentrail.engine.capture import Activations
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import VocabSpace
from tokentrail.results.trail import View
from tokentrail.spec.options import CROSS_HEAD_SITE, CROSS_SITE, HEAD_SITE, TraceOptions
from tokentrail.spec.steps import analysis_steps

Progress = Callable[[float, str], None]


def compute_views(
    adapter: Adapter,
    spaces: SpaceCache,
    acts: Activations,
    options: TraceOptions,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
    text_statistics: bool = True,
) -> list[View]:
    """Every (site, space, similarity) view of ``options`` for one text's activations.

    The cross-attention sites are a decoder stack's: ``cross_resid`` is computed where
    ``acts`` has cross-attention; ``cross_heads`` has its own scoring (:func:`cross_views`).

    ``text_statistics=False``: the residual views' anisotropy is left at 0, for a caller
    that takes it per text itself (:func:`compute_views_batch` over joined texts, where
    the joined mean would cost O(n^2) in all the texts' tokens and be thrown away)."""
    say = progress or (lambda f, m: None)
    has_cross = getattr(acts, "cross_attn", None) is not None
    todo = [(site, sp) for site, sp in options.pairs() if site != CROSS_HEAD_SITE and (site != CROSS_SITE or has_cross)]
    residual = [(site, sp) for site, sp in todo if site != HEAD_SITE]
    heads = [sp for site, sp in todo if site == HEAD_SITE]
    steps = analysis_steps(todo, adapter.n_layers)
    with spaces.scratch() as take:  # every block of this text's matrix products
        return _views(adapter, spaces, acts, options, residual, heads, say, steps, chunk_bytes, text_statistics, take)


def _views(
    adapter, spaces, acts, options, residual, heads, say, steps, chunk_bytes, text_statistics, take
) -> list[View]:
    """:func:`compute_views`' work, its matrix products written into ``take``'s buffers."""
    done = 0
    views: list[View] = []
    sims, k, ok = options.similarities, options.k, options.overlap_k
    scored: list[tuple[VocabSpace, list[View]]] = []
    for sp in dict.fromkeys(sp for _, sp in residual):
        site_names = [site for site, s in residual if s == sp]
        say(done / steps, f"comparing with {sp}")
        space = spaces.get(sp)
        # a space with the same rows as one already scored (embeddings and encodings of a
        # model with neither position embeddings nor an embedding norm) has the same views
        twin = {(v.site, v.similarity): v for s, vs in scored if s.same_rows(space) for v in vs}
        left = [site for site in site_names if any((site, sim) not in twin for sim in sims)]
        mine = (
            {
                (v.site, v.similarity): v
                for v in residual_views(
                    adapter,
                    space,
                    acts,
                    left,
                    sims,
                    k,
                    ok,
                    chunk_bytes,
                    take,
                    options.correct,
                    options.correct_from,
                    text_statistics,
                )
            }
            if left
            else {}
        )
        views += [
            mine.get((site, sim)) or copied_view(twin[(site, sim)], space.name) for sim in sims for site in site_names
        ]
        scored.append((space, [v for v in views if v.space == space.name]))
        done += 1
    for sp in heads:

        def tick(sp=sp):
            nonlocal done
            say(done / steps, f"heads: {sp} spaces")
            done += 1

        views += head_views(adapter, spaces, acts, sp, sims, k, ok, chunk_bytes, take, tick)
    return views
