"""How many progress steps the analysis of a text reports: the one rule, shared by the
analysis (which reports ``done / steps``) and the displays that draw its bar. Pure Python."""

from __future__ import annotations

from collections.abc import Iterable

from tokentrail.spec.options import HEAD_SITE


def analysis_steps(pairs: Iterable[tuple[str, str]], n_layers: int) -> int:
    """The steps for these (site, space) pairs: one per residual space, one per layer per
    head space (at least 1)."""
    pairs = list(pairs)
    residual = {sp for site, sp in pairs if site != HEAD_SITE}
    heads = {sp for site, sp in pairs if site == HEAD_SITE}
    return max(len(residual) + len(heads) * n_layers, 1)
