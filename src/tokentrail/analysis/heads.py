"""The ``heads`` site: each attention head's vector against its own space (value, key or
query at that layer), for every layer of one text (:class:`HeadScorer`) or for one
token at one layer (:func:`heads_at`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.blocks import PositionWindow, chunks, score_queries, to_numpy
from tokentrail.engine.budget import BLOCK_BYTES  # the scoring block (its size is the memory bound's)
from tokentrail.engine.capture import Activations, head_vectors
from tokentrail.engine.metrics import Cells, anisotropy, derive_metrics
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.results.trail import HeadsAt, View
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import HEAD_SPACES, SIMILARITIES, check_index, whole_number


def _stacked_products(
    adapter,
    spaces: SpaceCache,
    acts: Activations,
    kind: str,
    first: int,
    cols: Tensor,
    groups: Tensor,
    pidx: Tensor,
    positions: Tensor,
    ws: Tensor,
) -> dict:
    """The cosine products of a short text's head queries for the run of layers from
    ``first`` whose spaces go through the shared embedding table, made as one matrix
    product into ``ws``: layer -> (its block, the table it was made with).

    Per layer that product has only ``n x C`` rows: one product each would be bound by
    reading the ``V x d`` table, once per layer. Layers are stacked while their blocks fit
    ``ws``; an empty dict when fewer than two layers would share it (each then makes its own)."""
    V, rows, made = spaces.get(kind, first).vocab_size, 0, []
    table = None
    for layer in range(first, adapter.n_layers):
        space = spaces.get(kind, layer)
        if not space.through_embeddings_for(len(pidx) * len(cols)) or (table is not None and space.x is not table):
            break
        table = space.x
        z = head_vectors(adapter, acts, kind, layer)[:, cols]
        u = space.embedding_queries(z, positions[pidx], groups)  # each query's position: no row norms needed
        if (rows + u.shape[0]) * V > ws.numel():
            break
        made.append((layer, rows, u))
        rows += u.shape[0]
    if len(made) < 2:
        return {}
    torch.mm(torch.cat([u for _, _, u in made]), table.T, out=ws[: rows * V].view(rows, V))
    return {layer: (ws[at * V : (at + u.shape[0]) * V], table) for layer, at, u in made}


def head_views(
    adapter, spaces: SpaceCache, acts: Activations, kind, similarities, k, overlap_k, chunk_bytes, take, tick
):
    scorer = HeadScorer(
        adapter, spaces, kind, similarities, k, overlap_k, chunk_bytes, take, acts.input_ids, acts.position_ids
    )
    for layer in range(adapter.n_layers):
        tick()
        scorer.layer(acts, layer)
    return scorer.views()


class HeadScorer:
    """The ``heads`` views of one head-space kind, scored a layer at a time (:meth:`layer`,
    from activations holding that layer) into (L, H, n[, k]) tensors; :meth:`views` makes
    the Views. A short text's layers may share one product (``stack``: needs every layer's
    activations, so not in a streamed pass)."""

    def __init__(
        self,
        adapter,
        spaces: SpaceCache,
        kind,
        similarities,
        k,
        overlap_k,
        chunk_bytes,
        take,
        input_ids: Tensor,
        position_ids: Tensor,
    ):
        self.adapter, self.spaces, self.kind, self.similarities, self.k, self.overlap_k, self.take = (
            adapter,
            spaces,
            kind,
            similarities,
            k,
            overlap_k,
            take,
        )
        n, L, H = input_ids.shape[0], adapter.n_layers, adapter.n_heads
        self.input_ids = input_ids
        self.uniq, self.inv = torch.unique(position_ids, return_inverse=True)
        dev = input_ids.device
        self.groups = _groups(adapter, kind).to(dev)
        cols, expand = _distinct_columns(adapter, kind)
        self.cols, self.expand = cols.to(dev), expand.to(dev)
        self.res = {
            sim: dict(
                own=torch.empty(L, H, n, device=dev),
                rank=torch.empty(L, H, n, dtype=torch.long, device=dev),
                ids=None,
                vals=None,
            )
            for sim in similarities
        }
        self.aniso = {sim: torch.empty(L, H, device=dev) for sim in similarities}
        self.budget = min(chunk_bytes, BLOCK_BYTES)
        self.ws = None
        self.stacked: dict[
            int, tuple[Tensor, Tensor]
        ] = {}  # layer -> (its block, the table) of a product made for several layers at once

    def layer(self, acts: Activations, layer: int, stack: bool = True) -> None:
        adapter, spaces, kind, similarities, budget = (
            self.adapter,
            self.spaces,
            self.kind,
            self.similarities,
            self.budget,
        )
        n, L, H, dev = self.input_ids.shape[0], adapter.n_layers, adapter.n_heads, self.input_ids.device
        uniq, inv, groups, cols, expand, res = self.uniq, self.inv, self.groups, self.cols, self.expand, self.res
        C = len(cols)
        space = spaces.get(kind, layer)
        V = space.vocab_size
        kk = min(self.k, V)
        window = PositionWindow(space, uniq)
        z = head_vectors(adapter, acts, kind, layer)  # (n, H, dh)
        for sim in similarities:
            if res[sim]["ids"] is None:
                res[sim]["ids"] = torch.empty(L, H, n, kk, dtype=torch.long, device=dev)
                res[sim]["vals"] = torch.empty(L, H, n, kk, device=dev)
            self.aniso[sim][layer] = anisotropy(z.transpose(0, 1), sim)
        stack = (
            stack and "cosine" in similarities and 2 * n * C * V * 4 <= budget
        )  # a short text: layers share one product
        if self.ws is None:
            self.ws = self.take((budget // (V * 4) if stack else min(n, max(1, budget // (C * V * 4))) * C) * V)
        ws = self.ws
        zd = z[:, cols]  # the distinct columns: a key head shared by a KV group is scored once
        scorer = space.for_queries(n * C)
        if stack and layer not in self.stacked:
            self.stacked = _stacked_products(adapter, spaces, acts, kind, layer, cols, groups[cols], inv, uniq, ws)
        stacked = self.stacked
        for c in chunks(n, C * V * 4, budget):
            zc = zd[c]
            m = zc.shape[0]
            own = self.input_ids[c].repeat_interleave(C)
            stats, local = window.at(inv[c])
            for sim in similarities:
                ready = (
                    sim == "cosine" and layer in stacked and scorer.through_embeddings and scorer.x is stacked[layer][1]
                )
                out = stacked[layer][0] if ready else ws
                own_s, rank, ids, vals = score_queries(scorer, zc, stats, local, groups[cols], own, sim, kk, out, ready)
                r = res[sim]
                r["own"][layer, :, c] = own_s.view(m, C)[:, expand].T
                r["rank"][layer, :, c] = rank.view(m, C)[:, expand].T
                r["ids"][layer, :, c] = ids.view(m, C, kk)[:, expand].transpose(0, 1)
                r["vals"][layer, :, c] = vals.view(m, C, kk)[:, expand].transpose(0, 1)
            del stats  # the window alone holds it (see score_residual)
        del window, scorer  # this layer's norms and table for the queries, before the next layer's

    def views(self) -> list[View]:
        L, H, n = self.adapter.n_layers, self.adapter.n_heads, self.input_ids.shape[0]
        return [
            View(
                site="heads",
                space=self.kind,
                similarity=sim,
                metrics=derive_metrics(
                    Cells(
                        own_sim=to_numpy(r["own"]),
                        rank=to_numpy(r["rank"]),
                        overlap=np.full(
                            (L, H, n), np.nan
                        ),  # each layer's head space differs: no layer-to-layer overlap
                        anisotropy=to_numpy(self.aniso[sim]),
                        top_sim=to_numpy(r["vals"][..., 0]),
                        overlap_k=self.overlap_k,  # named like the residual views; NaN (see docs/spec.md)
                    )
                ),
                top_ids=to_numpy(r["ids"]),
                top_sims=to_numpy(r["vals"]),
                overlap_k=self.overlap_k,
                anisotropy=to_numpy(self.aniso[sim]),
            )
            for sim, r in self.res.items()
        ]


def heads_at(
    adapter: Adapter,
    spaces: SpaceCache,
    acts: Activations,
    layer: int,
    token: int,
    *,
    label: Callable[[Iterable[int]], dict[int, str]] | None = None,
    kind: str = "value",
    similarity: str = "cosine",
    k: int = 15,
) -> HeadsAt:
    """The ``heads`` site for one token at one layer: each head against its own space.

    The same numbers as ``analyse(..., sites=["heads"])`` at ``[layer, :, token]``, for
    the cost of one layer's space and one query per head (what an interactive view needs
    after a click), plus the token's row of every head's attention pattern.
    """
    if kind not in HEAD_SPACES:
        raise InputError(f"unknown head space {kind!r}: choose from {', '.join(HEAD_SPACES)}")
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
    n, L, H = acts.input_ids.shape[0], adapter.n_layers, adapter.n_heads
    layer = check_index(layer, L, "layer", f"the model has {L} layers")
    token = check_index(token, n, "token index", f"the text has {n} tokens")
    whole_number(k, "k")
    space = spaces.get(kind, layer)
    kk = min(k, space.vocab_size)
    dev = acts.input_ids.device
    groups = _groups(adapter, kind).to(dev)
    with torch.no_grad():
        stats = space.position_stats(acts.position_ids[token : token + 1])
        z = head_vectors(adapter, acts, kind, layer)[token : token + 1]  # (1, H, dh)
        own = acts.input_ids[token].repeat(H)
        own_s, rank, ids, vals = score_queries(
            space, z, stats, torch.zeros(1, dtype=torch.long, device=dev), groups, own, similarity, kk
        )
    used = sorted({int(i) for i in ids.unique()} | {int(acts.input_ids[token])})
    return HeadsAt(
        layer=layer,
        token=token,
        own_id=int(acts.input_ids[token]),
        space=kind,
        similarity=similarity,
        self_sim=to_numpy(own_s),
        rank=to_numpy(rank),
        top_ids=to_numpy(ids),
        top_sims=to_numpy(vals),
        attention=to_numpy(acts.attentions[layer, :, token]).copy(),
        labels=label(used) if label is not None else {i: str(i) for i in used},
    )


def _distinct_columns(adapter: Adapter, kind: str) -> tuple[Tensor, Tensor]:
    """The heads whose vectors are scored, and for each of the H heads its place among them.

    A key head serves the query heads of its KV group (:func:`head_vectors`): their
    vectors, and so their scores, are the same, and only the group's first head is scored."""
    H = adapter.n_heads
    if kind != "key":
        return torch.arange(H), torch.arange(H)
    kv = adapter.kv_heads().cpu()
    groups, expand = torch.unique(kv, return_inverse=True)
    first = torch.stack([(kv == g).nonzero()[0, 0] for g in groups])
    return first, expand


def _groups(adapter: Adapter, kind: str) -> Tensor:
    """(H,) the space group each query head is compared with: its KV head for value/key."""
    return adapter.kv_heads() if kind != "query" else torch.arange(adapter.n_heads)
