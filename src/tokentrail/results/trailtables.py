"""One stack's export tables, one builder per table kind.

:mod:`~tokentrail.results.trailio` documents the tables and their columns, decides which
of them an export carries and writes them; the builders here only lay a Trail's arrays
out as long frames (every number as it is, floats as float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: the neighbours table's columns (an empty table still has them)
NEIGHBOUR_COLUMNS = [
    "token",
    "token_str",
    "position",
    "layer",
    "head",
    "site",
    "space",
    "similarity",
    "place",
    "id",
    "id_str",
    "value",
]


def grid(*sizes: int) -> list[np.ndarray]:
    """Every index combination of ``sizes`` (C order), one flat array per axis."""
    return [g.reshape(-1) for g in np.meshgrid(*(np.arange(s) for s in sizes), indexing="ij")]


def label(trail, ids: np.ndarray) -> pd.Series:
    """The display labels of vocabulary ``ids`` (the id itself where there is none)."""
    return pd.Series(ids, dtype=np.int64).map(lambda i: trail.labels.get(int(i), str(i)))


def tokens_of(trail, t: np.ndarray) -> dict[str, Any]:
    """The ``token``, ``token_str`` and ``position`` columns of token indices ``t``."""
    return {"token": t, "token_str": np.array(trail.tokens, dtype=object)[t], "position": trail.positions[t]}


def tokens_table(trail) -> pd.DataFrame:
    """``tokens``: one row per token; ``value`` 1 for a special token."""
    t = np.arange(trail.n_tokens)
    return pd.DataFrame(
        {**tokens_of(trail, t), "id": trail.ids.astype(np.int64), "value": trail.special.astype(np.float64)}
    )


def _neighbour_blocks(v, n: int) -> list[tuple[np.ndarray, ...]]:
    """(layer, head, token, place, ids, sims) of a view's neighbours: its layers' top-k, then
    (layer -1) the original encoding's top-k where the view has them."""
    L, k = v.top_ids.shape[0], v.top_ids.shape[-1]
    H = v.top_ids.shape[1] if v.per_head else 1
    li, hi, ti, pi = grid(L, H, n, k)
    blocks: list[tuple[np.ndarray, ...]] = [
        (li, hi if v.per_head else np.full(li.size, -1), ti, pi, v.top_ids.reshape(-1), v.top_sims.reshape(-1))
    ]
    if v.origin_top_ids is not None:
        ok = v.origin_top_ids.shape[-1]
        oti, opi = grid(n, ok)
        blocks.append(
            (
                np.full(oti.size, -1),
                np.full(oti.size, -1),
                oti,
                opi,
                v.origin_top_ids.reshape(-1),
                v.origin_top_sims.reshape(-1),
            )
        )
    return blocks


def neighbours_table(trail) -> pd.DataFrame:
    """``neighbours``: every view's nearest vocabulary tokens (:data:`NEIGHBOUR_COLUMNS`)."""
    parts = []
    for v in trail.views:
        for layer, head, tok, place, ids, sims in _neighbour_blocks(v, trail.n_tokens):
            parts.append(
                pd.DataFrame(
                    {
                        **tokens_of(trail, tok),
                        "layer": layer,
                        "head": head,
                        "site": v.site,
                        "space": v.space,
                        "similarity": v.similarity,
                        "place": place,
                        "id": ids.astype(np.int64),
                        "id_str": label(trail, ids),
                        "value": sims.astype(np.float64),
                    }
                )
            )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=NEIGHBOUR_COLUMNS)


def probability_table(probs: np.ndarray) -> pd.DataFrame:
    """``attention`` / ``cross_attention``: layer, head, token (the query), ``source``:
    ``value`` (the probability) of an (L, H, n, m) array."""
    L, H, n, m = probs.shape
    li, hi, ti, si = grid(L, H, n, m)
    return pd.DataFrame(
        {
            "layer": li,
            "head": hi,
            "token": ti,
            "source": si,
            "value": probs.reshape(-1).astype(np.float64),
        }
    )


def lens_tables(trail, lens) -> dict[str, pd.DataFrame]:
    """``lens`` (token, layer, metric: value) and ``lens_top`` (token, layer, place: the
    top tokens and their probabilities) of ``trail``'s logit lens."""
    frame = lens.frame()
    tok = frame["token"].to_numpy()
    values = pd.DataFrame(
        {
            **tokens_of(trail, tok),
            "layer": frame["layer"].to_numpy(),
            "site": lens.site,
            "metric": frame["metric"].to_numpy(),
            "value": frame["value"].to_numpy(np.float64),
        }
    )
    top = lens.top_frame()
    tok = top["token"].to_numpy()
    tops = pd.DataFrame(
        {
            **tokens_of(trail, tok),
            "layer": top["layer"].to_numpy(),
            "site": lens.site,
            "place": top["place"].to_numpy(),
            "id": top["id"].to_numpy(),
            "id_str": label(trail, top["id"].to_numpy()),
            "value": top["prob"].to_numpy(),
        }
    )
    return {"lens": values, "lens_top": tops}


def cross_table(trail) -> pd.DataFrame:
    """``cross``: every cross view's source tokens by rank (``source``, its text, the similarity)."""
    parts = []
    src = np.array(trail.source_tokens, dtype=object)
    for v in trail.cross_views:
        L, H, n_, m = v.source_order.shape
        li, hi, ti, pi = grid(L, H, n_, m)
        order = v.source_order.reshape(-1).astype(np.int64)
        parts.append(
            pd.DataFrame(
                {
                    **tokens_of(trail, ti),
                    "layer": li,
                    "head": hi,
                    "site": v.site,
                    "space": v.space,
                    "similarity": v.similarity,
                    "place": pi,
                    "source": order,
                    "id_str": src[order],
                    "value": v.source_sims.reshape(-1).astype(np.float64),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
