"""The one place that joins capture + spaces + metrics into a :class:`Trail`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .adapters import Adapter
from .capture import SITES, Activations, capture
from .errors import InputError, ModelError
from .metrics import SIMILARITIES, anisotropy, overlap, similarity_from_dots
from .results import HeadsAt, RunInfo, Trail, View
from .scoring import score_block
from .spaces import HEAD_SPACE_KINDS, SpaceCache, VocabSpace

RESIDUAL_SPACES = ("encodings", "embeddings")
ALL_SITES = (*SITES, "heads")
ALL_SPACES = (*RESIDUAL_SPACES, *HEAD_SPACE_KINDS)
Progress = Callable[[float, str], None]


def check_options(sites: Sequence[str], spaces: Sequence[str], similarities: Sequence[str], k: int, overlap_k: int) -> list[tuple[str, str]]:
    """Validate options before any model work; returns the (site, space) pairs to compute."""
    for s in similarities:
        if s not in SIMILARITIES:
            raise InputError(f"unknown similarity {s!r}: choose from {', '.join(SIMILARITIES)} or all")
    if not similarities:
        raise InputError("choose at least one similarity")
    if k < 1 or overlap_k < 1:
        raise InputError("k and overlap k must be at least 1")
    return pairs(sites, spaces)


def pairs(sites: Sequence[str], spaces: Sequence[str]) -> list[tuple[str, str]]:
    """The (site, space) pairs that make sense among those asked for."""
    for s in sites:
        if s not in ALL_SITES:
            raise InputError(f"unknown site {s!r}: choose from {', '.join(ALL_SITES)} or all")
    for s in spaces:
        if s not in ALL_SPACES:
            raise InputError(f"unknown space {s!r}: choose from {', '.join(ALL_SPACES)} or all")
    out = []
    for site in sites:
        allowed = HEAD_SPACE_KINDS if site == "heads" else RESIDUAL_SPACES
        chosen = [s for s in spaces if s in allowed]
        if not chosen and site == "heads":
            chosen = ["value"]  # the heads site's own space (SPEC)
        out += [(site, s) for s in chosen]
    if not out:
        raise InputError(
            f"no site/space pair to compute: residual sites ({', '.join(SITES)}) pair with "
            f"{' or '.join(RESIDUAL_SPACES)}; the heads site pairs with {', '.join(HEAD_SPACE_KINDS)}"
        )
    return out


def analyse(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Tensor,
    *,
    text: str,
    tokens: Sequence[str],
    special: Sequence[bool],
    label: Callable[[Iterable[int]], dict[int, str]],
    model_name: str,
    revision: str | None = None,
    sites: Sequence[str] = ("attn_resid",),
    space_kinds: Sequence[str] = ("encodings",),
    similarities: Sequence[str] = ("cosine",),
    k: int = 15,
    overlap_k: int = 100,
    lens: bool = False,
    causal: bool | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> Trail:
    """Every metric of SPEC for every token and layer of one text.

    ``causal``: decoders run with their causal mask unless this is False; encoders have
    none, so True is refused for them."""
    todo = check_options(sites, space_kinds, similarities, k, overlap_k)
    if not adapter.is_decoder and causal:
        raise InputError(f"{adapter.family} is an encoder: it has no causal mask to turn on")
    if lens and adapter.lens_head() is None:  # say so before the slow part, not after it
        raise ModelError(adapter.lens_unavailable_reason())
    causal = adapter.is_decoder if causal is None else bool(causal) and adapter.is_decoder
    say = progress or (lambda f, m: None)
    say(0.0, "running the model")
    acts = capture(adapter, input_ids, causal=causal)
    views: list[View] = []
    residual = [(site, sp) for site, sp in todo if site != "heads"]
    heads = [sp for site, sp in todo if site == "heads"]
    steps = len({sp for _, sp in residual}) + len(heads) * adapter.n_layers
    done = 0
    for sp in dict.fromkeys(sp for _, sp in residual):
        site_names = [site for site, s in residual if s == sp]
        say(done / max(steps, 1), f"comparing with {sp}")
        views += _residual_views(adapter, spaces.get(sp), acts, site_names, similarities, k, overlap_k, chunk_bytes)
        done += 1
    for sp in heads:
        views += _head_views(adapter, spaces, acts, sp, similarities, k, overlap_k, chunk_bytes, lambda: say(done / steps, f"heads: {sp} spaces"))
        done += adapter.n_layers
    lens_result = None
    if lens:
        from .lens import logit_lens

        say(0.99, "logit lens")
        lens_result = logit_lens(adapter, acts, k=k)
    ids_used = {int(i) for v in views for i in np.unique(v.top_ids)} | {int(i) for i in input_ids}
    ids_used |= {int(i) for v in views if v.origin_top_ids is not None for i in np.unique(v.origin_top_ids)}
    if lens_result is not None:
        ids_used |= lens_result.ids_used()
    info = RunInfo(
        model=model_name,
        model_type=str(adapter.config.model_type),
        family=adapter.family,
        revision=revision,
        causal=causal if adapter.is_decoder else None,
        tokentrail_version=__version__,
        torch_version=torch.__version__,
        transformers_version=_transformers_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        options={
            "sites": list(dict.fromkeys(s for s, _ in todo)),
            "spaces": list(dict.fromkeys(s for _, s in todo)),
            "similarities": list(similarities),
            "k": k,
            "overlap_k": overlap_k,
            "lens": lens,
            "causal": causal,
        },
    )
    say(1.0, "done")
    return Trail(
        info=info,
        text=text,
        tokens=tuple(tokens),
        ids=input_ids.numpy().copy(),
        positions=acts.position_ids.numpy().copy(),
        special=np.asarray(special, dtype=bool),
        n_layers=adapter.n_layers,
        n_heads=adapter.n_heads,
        views=tuple(views),
        labels=label(sorted(ids_used)),
        attentions=acts.attentions.numpy(),
        kv_groups=adapter.n_heads // adapter.n_kv_heads,
        lens=lens_result,
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _chunks(total: int, per_item_bytes: int, budget: int) -> Iterable[slice]:
    step = max(1, budget // max(per_item_bytes, 1))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _score(space: VocabSpace, r: Tensor, stats, pidx: Tensor, groups: Tensor | None, own: Tensor, sim: str, K: int):
    """Queries r (Q, C, k) against every row -> own similarity, rank, top-K ids and sims, each (Q * C, ...).

    One matrix product into a (Q * C, V) block, then the fused exact scoring
    (:func:`tokentrail.scoring.score_block`) while the block is hot. own: (Q * C,) ids.
    """
    Q, C, _ = r.shape
    if sim == "cosine":
        block, index = space.cosine_rows(r, stats, pidx, groups)
    else:
        g = torch.arange(C) if groups is None else groups
        block = similarity_from_dots(space.dots(r, stats, pidx, g).reshape(Q * C, -1), r.float().pow(2).sum(-1).reshape(-1), stats.sq_norm[pidx][:, g].reshape(Q * C, -1), sim)
        index = torch.arange(Q * C)
    res = score_block(block, own[index], K)
    if torch.equal(index, torch.arange(Q * C)):
        return res
    out = tuple(torch.empty_like(t) for t in res)
    for o, t in zip(out, res):
        o[index] = t
    return out


def _residual_views(adapter, space: VocabSpace, acts: Activations, sites, similarities, k, overlap_k, chunk_bytes):
    n, L, V = acts.input_ids.shape[0], adapter.n_layers, space.vocab_size
    K = min(max(k, overlap_k), V)
    uniq, inv = torch.unique(acts.position_ids, return_inverse=True)
    stats = space.position_stats(uniq)
    # queries: the original encodings (for overlap at layer 0), then every site and layer
    vecs = torch.cat([acts.embedded[None]] + [acts.site(s) for s in sites]).reshape(-1, acts.embedded.shape[1])
    pidx = inv.repeat(len(sites) * L + 1)
    own = acts.input_ids.repeat(len(sites) * L + 1)
    Q = vecs.shape[0]
    out = {sim: [torch.empty(Q), torch.empty(Q, dtype=torch.long), torch.empty(Q, K, dtype=torch.long), torch.empty(Q, K)] for sim in similarities}
    order = torch.argsort(pidx, stable=True)  # queries at one position together: one scaling pass per position
    for c in _chunks(Q, V * 4 * 4, chunk_bytes):
        oc = order[c]
        for sim in similarities:
            for buf, val in zip(out[sim], _score(space, vecs[oc][:, None, :], stats, pidx[oc], None, own[oc], sim, K)):
                buf[oc] = val
    views = []
    for sim in similarities:
        own_s, rank, ids, vals = out[sim]
        origin_ids, origin_vals = ids[:n], vals[:n]
        for i, site in enumerate(sites):
            sl = slice(n + i * L * n, n + (i + 1) * L * n)
            s_ids = ids[sl].view(L, n, K)
            prev = torch.cat([origin_ids[None], s_ids[:-1]])
            ov = overlap(s_ids[..., :overlap_k], prev[..., :overlap_k])
            views.append(
                View(
                    site=site,
                    space=space.name,
                    similarity=sim,
                    self_sim=own_s[sl].view(L, n).numpy(),
                    rank=rank[sl].view(L, n).numpy(),
                    top_ids=s_ids[..., :k].numpy(),
                    top_sims=vals[sl].view(L, n, K)[..., :k].numpy(),
                    overlap=ov.numpy().astype(np.float64),
                    overlap_k=min(overlap_k, K),
                    anisotropy=anisotropy(acts.site(site), sim).numpy(),
                    origin_top_ids=origin_ids[:, :k].numpy(),
                    origin_top_sims=origin_vals[:, :k].numpy(),
                )
            )
    return views


def head_vectors(adapter: Adapter, acts: Activations, kind: str, layer: int) -> Tensor:
    """Per-head vectors compared with a head space: (n, H, d_head).

    value: z, the head's post-attention vector (SPEC ``heads`` site); key/query: the
    token's own key/query vector at this head (RoPE applied at its position), so each is
    compared with the vocabulary projected the same way. Under grouped-query attention a
    query head's key is its KV head's.
    """
    if kind == "value":
        return acts.z[layer]
    norm = adapter.attn_input_norm(layer)
    h = acts.layer_in[layer]
    x = h if norm is None else norm(h)
    which = "k" if kind == "key" else "q"
    vec = adapter.projection(layer, which)(x)  # (n, G, dh)
    rot = adapter.rotary(layer)
    if rot is not None:
        vec = rot(vec, acts.position_ids, inverse=False)
    if which == "k":
        vec = vec[:, [adapter.kv_head_of(h) for h in range(adapter.n_heads)]]
    return vec


def _head_views(adapter, spaces: SpaceCache, acts: Activations, kind, similarities, k, overlap_k, chunk_bytes, tick):
    n, L, H = acts.input_ids.shape[0], adapter.n_layers, adapter.n_heads
    uniq, inv = torch.unique(acts.position_ids, return_inverse=True)
    groups = torch.tensor([adapter.kv_head_of(h) for h in range(H)]) if kind != "query" else torch.arange(H)
    res = {sim: dict(own=torch.empty(L, H, n), rank=torch.empty(L, H, n, dtype=torch.long), ids=None, vals=None) for sim in similarities}
    aniso = {sim: torch.empty(L, H) for sim in similarities}
    for layer in range(L):
        tick()
        space = spaces.get(kind, layer)
        V = space.vocab_size
        kk = min(k, V)
        stats = space.position_stats(uniq)
        z = head_vectors(adapter, acts, kind, layer)  # (n, H, dh)
        for sim in similarities:
            if res[sim]["ids"] is None:
                res[sim]["ids"] = torch.empty(L, H, n, kk, dtype=torch.long)
                res[sim]["vals"] = torch.empty(L, H, n, kk)
            aniso[sim][layer] = anisotropy(z.transpose(0, 1), sim)
        for c in _chunks(n, H * V * 4 * 4, chunk_bytes):
            zc = z[c]
            m = zc.shape[0]
            own = acts.input_ids[c].repeat_interleave(H)
            for sim in similarities:
                own_s, rank, ids, vals = _score(space, zc, stats, inv[c], groups, own, sim, kk)
                r = res[sim]
                r["own"][layer, :, c] = own_s.view(m, H).T
                r["rank"][layer, :, c] = rank.view(m, H).T
                r["ids"][layer, :, c] = ids.view(m, H, kk).transpose(0, 1)
                r["vals"][layer, :, c] = vals.view(m, H, kk).transpose(0, 1)
    return [
        View(
            site="heads",
            space=kind,
            similarity=sim,
            self_sim=r["own"].numpy(),
            rank=r["rank"].numpy(),
            top_ids=r["ids"].numpy(),
            top_sims=r["vals"].numpy(),
            overlap=np.full((L, H, n), np.nan),  # each layer's head space differs: no layer-to-layer overlap
            overlap_k=overlap_k,  # named like the residual views; NaN (see docs/spec.md)
            anisotropy=aniso[sim].numpy(),
        )
        for sim, r in res.items()
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
    if kind not in HEAD_SPACE_KINDS:
        raise InputError(f"unknown head space {kind!r}: choose from {', '.join(HEAD_SPACE_KINDS)}")
    if similarity not in SIMILARITIES:
        raise InputError(f"unknown similarity {similarity!r}: choose from {', '.join(SIMILARITIES)}")
    n, L, H = acts.input_ids.shape[0], adapter.n_layers, adapter.n_heads
    if not 0 <= layer < L:
        raise InputError(f"layer {layer} is out of range: the model has {L} layers (0..{L - 1})")
    if not 0 <= token < n:
        raise InputError(f"token {token} is out of range: the text has {n} tokens (0..{n - 1})")
    if k < 1:
        raise InputError("k must be at least 1")
    space = spaces.get(kind, layer)
    kk = min(k, space.vocab_size)
    groups = torch.tensor([adapter.kv_head_of(h) for h in range(H)]) if kind != "query" else torch.arange(H)
    with torch.no_grad():
        stats = space.position_stats(acts.position_ids[token : token + 1])
        z = head_vectors(adapter, acts, kind, layer)[token : token + 1]  # (1, H, dh)
        own = acts.input_ids[token].repeat(H)
        own_s, rank, ids, vals = _score(space, z, stats, torch.zeros(1, dtype=torch.long), groups, own, similarity, kk)
    used = sorted({int(i) for i in ids.unique()} | {int(acts.input_ids[token])})
    return HeadsAt(
        layer=layer,
        token=token,
        own_id=int(acts.input_ids[token]),
        space=kind,
        similarity=similarity,
        self_sim=own_s.numpy(),
        rank=rank.numpy(),
        top_ids=ids.numpy(),
        top_sims=vals.numpy(),
        attention=acts.attentions[layer, :, token].numpy().copy(),
        labels=label(used) if label is not None else {i: str(i) for i in used},
    )
