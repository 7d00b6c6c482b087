"""The one place that joins capture + spaces + metrics into results.

:func:`compute_views` scores one text's activations against the reference spaces an
options object asks for; :func:`make_trail` wraps views, lens and run metadata into a
:class:`~tokentrail.results.trail.Trail`. :class:`tokentrail.session.runner.Run` calls both;
:func:`analyse` is the same path for a bare adapter (tests, tiny models).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from tokentrail.spec.version import __version__
from tokentrail.adapters import Adapter
from tokentrail.engine.budget import BLOCK_BYTES, STATS_BYTES  # the scoring block and the window of row norms (their sizes are the memory bound's)
from tokentrail.engine.capture import Activations, Passed, capture, head_vectors
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.engine.metrics import Cells, anisotropy, derive_metrics, overlap, similarity_from_dots
from tokentrail.spec.options import ALL_SITES, ALL_SPACES, CROSS_HEAD_SITE, CROSS_SITE, CROSS_SITES, DEFAULT_OVERLAP_K, HEAD_SITE, HEAD_SPACES, SIMILARITIES, TraceOptions, check_index, whole_number  # fmt: skip
from tokentrail.spec.steps import analysis_steps
from tokentrail.results.trail import CrossView, HeadsAt, LensResult, RunInfo, Trail, View
from tokentrail.engine.scoring import score_block
from tokentrail.engine.spaces import SpaceCache, VocabSpace

Progress = Callable[[float, str], None]
Labeller = Callable[[Iterable[int]], dict[int, str]]

__all__ = ["ALL_SITES", "ALL_SPACES", "Progress", "analyse", "analyse_batch", "compute_views", "compute_views_batch", "cross_views", "heads_at", "head_vectors", "make_trail"]


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


def _views(adapter, spaces, acts, options, residual, heads, say, steps, chunk_bytes, text_statistics, take) -> list[View]:
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
        mine = {(v.site, v.similarity): v for v in _residual_views(adapter, space, acts, left, sims, k, ok, chunk_bytes, take, options.correct, options.correct_from, text_statistics)} if left else {}
        views += [mine.get((site, sim)) or _copied(twin[(site, sim)], space.name) for sim in sims for site in site_names]
        scored.append((space, [v for v in views if v.space == space.name]))
        done += 1
    for sp in heads:
        def tick(sp=sp):
            nonlocal done
            say(done / steps, f"heads: {sp} spaces")
            done += 1

        views += _head_views(adapter, spaces, acts, sp, sims, k, ok, chunk_bytes, take, tick)
    return views


def _copied(view: View, space: str) -> View:
    """``view`` under another space's name, with arrays of its own."""
    own = lambda a: None if a is None else a.copy()  # noqa: E731
    return replace(
        view, space=space, metrics={name: a.copy() for name, a in view.metrics.items()}, top_ids=own(view.top_ids),
        top_sims=own(view.top_sims), anisotropy=own(view.anisotropy), origin_top_ids=own(view.origin_top_ids),
        origin_top_sims=own(view.origin_top_sims),
    )  # fmt: skip


def streams(adapter: Adapter, options: TraceOptions, tokens: int) -> bool:
    """Whether a trace of one text of ``tokens`` tokens is computed layer by layer during
    the forward pass (:func:`stream_views`): when its captured activations would pass
    :data:`~tokentrail.engine.budget.STREAM_BYTES` and it can stream (:func:`_unstreamable`)."""
    from tokentrail.engine.budget import STREAM_BYTES, captured_bytes

    return _unstreamable(adapter, options) is None and captured_bytes(adapter.n_layers, tokens, adapter.d_model) > STREAM_BYTES


def _unstreamable(adapter: Adapter, options: TraceOptions) -> str | None:
    """Why a trace cannot stream, or None: an encoder-decoder's two stacks, or a geometry
    correction (fitted to, or read for, every layer's vectors before scoring)."""
    if adapter.is_seq2seq:
        return f"this {adapter.family} model is an encoder-decoder: its trace is not streamed"
    if options.correct is not None:
        return f"--correct {options.correct} needs every layer's vectors before scoring: a corrected trace is not streamed"
    return None


def stream_views(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Tensor,
    options: TraceOptions,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> tuple[list[View], LensResult | None, Passed]:
    """:func:`compute_views` and (with ``options.lens``) the logit lens of one text, scored a
    layer at a time inside its forward pass (:func:`tokentrail.engine.capture.stream`), so that one
    layer's activations are held at a time instead of every layer's. The same views, in the
    same order; a one-stack model, without a geometry correction (:func:`streams`). Returns
    them, the lens and what the pass keeps for the Trail."""
    from tokentrail.engine.capture import stream
    from tokentrail.analysis.lens import logit_lens

    why = _unstreamable(adapter, options)
    if why is not None:
        raise InputError(why)
    say = progress or (lambda f, m: None)
    input_ids = input_ids.to(adapter.device).long()
    L = adapter.n_layers
    sims, k, ok = options.similarities, options.k, options.overlap_k
    todo = [(site, sp) for site, sp in options.pairs() if site not in CROSS_SITES]
    residual = [(site, sp) for site, sp in todo if site != HEAD_SITE]
    lenses: list[LensResult] = []
    positions = adapter.position_ids(input_ids[None], torch.ones_like(input_ids)[None])[0]  # the pass's own (capture.stream)
    with spaces.scratch() as take:
        scorers: list[tuple[VocabSpace, list[str], _ResidualStream | None]] = []
        for sp in dict.fromkeys(sp for _, sp in residual):
            space = spaces.get(sp)
            site_names = [site for site, s in residual if s == sp]
            # a space with the same rows as one scored (see _views) takes its views
            twins = [r for s, _, r in scorers if r is not None and s.same_rows(space)]
            left = [site for site in site_names if not any(site in r.sites for r in twins)]
            scorers.append((space, site_names, _ResidualStream(adapter, space, left, sims, k, ok, chunk_bytes, take, input_ids, positions) if left else None))
        heads = {sp: _HeadScorer(adapter, spaces, sp, sims, k, ok, chunk_bytes, take, input_ids, positions) for site, sp in todo if site == HEAD_SITE}

        def on_layer(acts: Activations) -> None:
            layer = acts.first_layer
            say(layer / L, f"layer {layer + 1} of {L}")
            for _, _, scorer in scorers:
                if scorer is not None:
                    scorer.layer(acts, layer)
            for scorer in heads.values():
                scorer.layer(acts, layer, stack=False)  # stacking layers needs every layer's activations
            if options.lens:
                lenses.append(logit_lens(adapter, acts, k=k, site=options.lens_site, beside_scratch=True))

        passed = stream(adapter, input_ids, on_layer, causal=options.causal)
    views: list[View] = []
    made: list[tuple[VocabSpace, dict]] = []  # each space and its views by (site, similarity)
    for space, site_names, scorer in scorers:
        mine = {(v.site, v.similarity): v for v in scorer.views()} if scorer is not None else {}
        twin = {key: v for s, vs in made if s.same_rows(space) for key, v in vs.items()}
        views += [mine.get((site, sim)) or _copied(twin[(site, sim)], space.name) for sim in sims for site in site_names]
        made.append((space, {**twin, **mine}))
    for scorer in heads.values():
        views += scorer.views()
    return views, (_joined_lens(lenses) if lenses else None), passed


def _joined_lens(parts: Sequence[LensResult]) -> LensResult:
    """Layer-by-layer lens results as one (their (1, n, ...) arrays stacked)."""
    layered = ("top_ids", "top_probs", "own_rank", "own_prob", "next_rank", "next_prob", "entropy")
    return replace(parts[0], **{f: np.concatenate([getattr(p, f) for p in parts]) for f in layered if getattr(parts[0], f) is not None})


class _ResidualStream:
    """The residual views of one space, scored during a streamed pass (:func:`stream_views`).

    Each layer's sites (and, at layer 0, the original encodings) are kept until they fill
    one scoring block (a copy of a few layers' vectors, at most a block's bytes: the matrix
    products keep the captured path's sizes), then scored; each layer's overlap is taken
    with the previous layer's top-K lists, kept meanwhile."""

    def __init__(self, adapter, space: VocabSpace, sites, similarities, k, overlap_k, chunk_bytes, take, input_ids: Tensor, positions: Tensor):
        n, L, V, dev = input_ids.shape[0], adapter.n_layers, space.vocab_size, input_ids.device
        self.space, self.sites, self.similarities, self.k, self.overlap_k = space, list(sites), similarities, k, overlap_k
        self.input_ids, self.K, self.n_layers = input_ids, min(max(k, overlap_k), V), L
        self.uniq, self.inv = torch.unique(positions, return_inverse=True)
        self.budget = min(chunk_bytes, BLOCK_BYTES)
        self.ws = take(min(len(self.sites) * L * n + n, max(1, self.budget // (V * 4))) * V)
        # queries kept before scoring: a block's, and no more than a block's bytes with their
        # copy, their similarities and their top-K lists (a vocabulary smaller than d)
        self.rows = max(1, self.budget // (4 * (V + 2 * space.d) + 12 * self.K * len(similarities)))
        self.window = _PositionWindow(space, self.uniq)
        kk = min(k, self.K)
        self.out = {
            (site, sim): dict(
                own=torch.empty(L, n, device=dev), rank=torch.empty(L, n, dtype=torch.long, device=dev), ids=torch.empty(L, n, kk, dtype=torch.long, device=dev),
                vals=torch.empty(L, n, kk, device=dev), ov=torch.empty(L, n, dtype=torch.long, device=dev), aniso=torch.empty(L, device=dev),
            )  # fmt: skip
            for site in self.sites for sim in similarities
        }
        self.origin: dict[str, tuple[Tensor, Tensor]] = {}
        self.prev: dict[tuple[str, str], Tensor] = {}  # the previous layer's top overlap_k ids
        self.pending: list[tuple[int, Tensor]] = []  # (layer, its queries) not scored yet

    def layer(self, acts: Activations, layer: int) -> None:
        d = acts.embedded.shape[1]
        vectors = {s: acts.site(s) for s in self.sites}  # (1, n, d) each; some are made on reading
        parts = ([acts.embedded[None]] if layer == 0 else []) + list(vectors.values())
        self.pending.append((layer, torch.cat(parts).reshape(-1, d)))  # a copy: the layer's activations go after this call
        for site, v in vectors.items():
            for sim in self.similarities:
                self.out[(site, sim)]["aniso"][layer] = anisotropy(v, sim)[0]
        if sum(len(v) for _, v in self.pending) >= self.rows or layer == self.n_layers - 1:
            self._score_pending()

    def _score_pending(self) -> None:
        n, kk = self.input_ids.shape[0], min(self.k, self.K)
        vecs = torch.cat([v for _, v in self.pending]) if len(self.pending) > 1 else self.pending[0][1]
        m = vecs.shape[0] // n
        res = _scored(self.space, self.window, vecs, self.inv.repeat(m), self.input_ids.repeat(m), self.similarities, self.K, self.budget, self.ws)
        at = 0
        for layer, _ in self.pending:
            if layer == 0:
                for sim in self.similarities:
                    ids, vals = res[sim][2][:n], res[sim][3][:n]
                    self.origin[sim] = (ids[:, :kk].clone(), vals[:, :kk].clone())
                    for site in self.sites:
                        self.prev[(site, sim)] = ids[:, : self.overlap_k].clone()
                at = n
            for site in self.sites:
                sl = slice(at, at + n)
                at += n
                for sim in self.similarities:
                    own_s, rank, ids, vals = (t[sl] for t in res[sim])
                    o = self.out[(site, sim)]
                    o["own"][layer], o["rank"][layer], o["ids"][layer], o["vals"][layer] = own_s, rank, ids[:, :kk], vals[:, :kk]
                    top = ids[:, : self.overlap_k]
                    o["ov"][layer] = overlap(top, self.prev[(site, sim)])
                    self.prev[(site, sim)] = top.clone()
        self.pending = []

    def views(self) -> list[View]:
        overlap_k = min(self.overlap_k, self.K)
        return [
            _residual_view(site, self.space.name, sim, o["own"], o["rank"], o["ids"], o["vals"], o["ov"], o["aniso"], *self.origin[sim], overlap_k)
            for (site, sim), o in self.out.items()
        ]


def compute_views_batch(
    adapter: Adapter,
    spaces: SpaceCache,
    acts: Sequence[Activations],
    options: TraceOptions,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> list[list[View]]:
    """:func:`compute_views` for several texts at once: per text, the views it gets alone.

    The vocabulary work is shared: the texts' tokens are scored side by side in one
    chunked loop (one set of per-position statistics per space for every position any
    text uses); what is a statistic of one text (anisotropy, and the metrics derived from
    it) is then taken per text. A geometry correction is fitted to each text's own
    vectors (or comes from a corpus study), so with one the texts are scored one by one."""
    if options.correct is not None:
        return [compute_views(adapter, spaces, a, options, progress, chunk_bytes) for a in acts]
    views = compute_views(adapter, spaces, _joined(acts), options, progress, chunk_bytes, text_statistics=False)
    out, start = [], 0
    for a in acts:
        n = a.input_ids.shape[0]
        out.append([_text_view(adapter, v, a, slice(start, start + n)) for v in views])
        start += n
    return out


def _joined(acts: Sequence[Activations]) -> Activations:
    """The texts' tokens side by side as one Activations, for per-token work only (the
    scoring loops): attention between different texts does not exist, so ``attentions``
    is empty, and per-text statistics are taken per text (:func:`_text_view`)."""
    if len(acts) == 1:
        return acts[0]
    first = acts[0]

    def cat(name: str, dim: int) -> Tensor:
        return torch.cat([getattr(a, name) for a in acts], dim)

    return Activations(
        input_ids=cat("input_ids", 0),
        position_ids=cat("position_ids", 0),
        embedded=cat("embedded", 0),
        layer_out=cat("layer_out", 1),
        attn=cat("attn", 1),
        z=cat("z", 1),
        attn_resid_ln=cat("attn_resid_ln", 1),
        mlp_out=cat("mlp_out", 1),
        attentions=first.attentions.new_empty((*first.attentions.shape[:2], 0, 0)),
        hidden_states=tuple(torch.cat(hs) for hs in zip(*(a.hidden_states for a in acts))),
        causal=first.causal,
    )


def _text_view(adapter: Adapter, view: View, acts: Activations, tokens: slice) -> View:
    """One text's part of a view computed over joined texts; its anisotropy from its own vectors."""
    cut = (slice(None), slice(None), tokens) if view.per_head else (slice(None), tokens)

    def part(a: np.ndarray, where) -> np.ndarray:
        return a[where].copy()  # a copy: a text's Trail must not keep the batch's arrays alive

    if view.site == HEAD_SITE:
        per_layer = [head_vectors(adapter, acts, view.space, layer).transpose(0, 1) for layer in range(adapter.n_layers)]
        aniso = _np(torch.stack([anisotropy(z, view.similarity) for z in per_layer]))
    else:
        aniso = _np(anisotropy(acts.site(view.site), view.similarity))
    cells = Cells(
        own_sim=part(view.self_sim, cut), rank=part(view.rank, cut), overlap=part(view.overlap, cut),
        anisotropy=aniso, overlap_k=view.overlap_k, top_sim=part(view.top_sims[..., 0], cut),
    )  # fmt: skip
    return replace(
        view,
        metrics=derive_metrics(cells),
        top_ids=part(view.top_ids, cut),
        top_sims=part(view.top_sims, cut),
        anisotropy=aniso,
        origin_top_ids=None if view.origin_top_ids is None else part(view.origin_top_ids, tokens),
        origin_top_sims=None if view.origin_top_sims is None else part(view.origin_top_sims, tokens),
    )


def make_trail(
    adapter: Adapter,
    acts: Activations,
    views: Sequence[View],
    lens: LensResult | None,
    *,
    options: TraceOptions,
    text: str,
    tokens: Sequence[str],
    special: Sequence[bool],
    label: Labeller,
    model_name: str,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    truncated_from: int | None = None,
    cross: Sequence[CrossView] = (),
    source_tokens: Sequence[str] | None = None,
    decoder: Trail | None = None,
    decoder_input: str | None = None,
) -> Trail:
    """Wrap computed views (and lens) of one text with its metadata.

    Encoder-decoders: each stack's Trail says which it is (``stack``); the encoder's carries
    the decoder's (``decoder``), which carries the cross-attention views and probabilities
    and the source tokens they point at; ``decoder_input`` says where the decoder's input
    came from (the user's target, or the model's own greedy output)."""
    input_ids = acts.input_ids
    ids_used = {int(i) for v in views for i in np.unique(v.top_ids)} | {int(i) for i in input_ids}
    ids_used |= {int(i) for v in views if v.origin_top_ids is not None for i in np.unique(v.origin_top_ids)}
    if lens is not None:
        ids_used |= lens.ids_used()
    causal = acts.causal
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
        options=options,
        device=device,
        dtype=dtype,
        exact=dtype == "float32",
        truncated_from=truncated_from,
        decoder_input=decoder_input,
    )
    cross_att = getattr(acts, "cross_attentions", None)
    return Trail(
        info=info,
        text=text,
        tokens=tuple(tokens),
        ids=input_ids.cpu().numpy().copy(),
        positions=acts.position_ids.cpu().numpy().copy(),
        special=np.asarray(special, dtype=bool),
        n_layers=adapter.n_layers,
        n_heads=adapter.n_heads,
        views=tuple(views),
        labels=label(sorted(ids_used)),
        attentions=acts.attentions.cpu().numpy(),
        kv_groups=adapter.n_heads // adapter.n_kv_heads,
        lens=lens,
        stack=adapter.stack,
        decoder=decoder,
        cross_views=tuple(cross),
        cross_attentions=None if cross_att is None else cross_att.cpu().numpy(),
        source_tokens=None if source_tokens is None else tuple(source_tokens),
    )


def cross_views(decoder, acts, options: TraceOptions) -> list[CrossView]:
    """The ``cross_heads`` site of a decoder stack: each head's vector against the source
    tokens of this input in its space (``value``: cross ``z`` vs the source values;
    ``key``: the cross query vs the source keys), for every similarity asked for.

    Per (layer, head, decoder token) the source tokens in order of similarity (ties: the
    lower index first); a source token's place in that order is its rank."""
    from tokentrail.engine.capture_cross import cross_vectors

    out = []
    for site, kind in options.pairs():
        if site != CROSS_HEAD_SITE:
            continue
        for sim in options.similarities:
            orders, sims = [], []
            for layer in range(decoder.n_layers):
                vec, rows = cross_vectors(decoder, acts, kind, layer)  # (n, H, dh), (m, H, dh)
                q, r = vec.transpose(0, 1), rows.transpose(0, 1)  # (H, n, dh), (H, m, dh)
                s = similarity_from_dots(torch.einsum("hnk,hmk->hnm", q, r), q.pow(2).sum(-1), r.pow(2).sum(-1)[:, None, :], sim)
                vals, order = torch.sort(s, dim=-1, descending=True, stable=True)
                orders.append(order)
                sims.append(vals)
            out.append(CrossView(site=CROSS_HEAD_SITE, space=kind, similarity=sim, source_order=_np(torch.stack(orders)), source_sims=_np(torch.stack(sims))))
    return out


def check_against(adapter: Adapter, options: TraceOptions, tokens: int | None = None, decoder_tokens: int | None = None, streamed: bool | None = None) -> TraceOptions:
    """What only the model can tell about options, checked before the forward pass;
    returns them with the overlap set size settled (default: 100, or the vocabulary if
    smaller). With ``tokens``, also refuses a run whose estimated peak memory exceeds
    what the machine has, with the figure and the fix. An encoder-decoder's ``tokens`` are
    its source's; with ``decoder_tokens`` (its decoder input's length, or the most it may
    have) the estimate is both stacks' and their cross-attention's, without it the
    encoder stack's alone. ``streamed``: whether the trace streams (None: one text, as
    :func:`streams` decides; a batch of texts is captured whole, False)."""
    adapter.resolve_causal(options.causal)
    options = _settle_cross_sites(adapter, options)
    lens_reader = adapter.decoder_stack() if adapter.is_seq2seq else adapter  # an encoder-decoder's lens reads its decoder
    if adapter.is_seq2seq:
        lens_reader.resolve_causal(options.causal)
    if options.lens and lens_reader.lens_head() is None:
        raise ModelError(lens_reader.lens_unavailable_reason())
    vocab = adapter.vocab_size
    for name, value in (("k", options.k), ("overlap k", options.overlap_k)):
        if value is not None and value > vocab:
            raise InputError(f"{name} = {value:,} is more than the model's vocabulary of {vocab:,} tokens: use at most {vocab:,}")
    if options.overlap_k is None:
        options = replace(options, overlap_k=min(DEFAULT_OVERLAP_K, vocab))
    if options.correct_from is not None:
        _check_study(adapter, options)
    if options.correct is not None and options.correct_from is None and tokens is not None:
        from tokentrail.spec.options import parse_correction

        name, count = parse_correction(options.correct)
        if name in ("rogue", "abtt") and tokens < max(2, (count or 0) + 1 if name == "abtt" else 2):
            raise InputError(f"--correct {options.correct} is fitted to the text's own tokens and needs more of them than {tokens}: use a longer text or a smaller D")
    if tokens is not None:
        from tokentrail.engine.budget import check_fits, estimate_run, estimate_seq2seq

        sizes = dict(pairs=options.pairs(), similarities=len(options.similarities), k=options.k, overlap_k=options.overlap_k)
        if adapter.is_seq2seq:
            check_fits(estimate_seq2seq(adapter, lens_reader, source_tokens=tokens, decoder_tokens=decoder_tokens, lens=options.lens, **sizes))
        else:
            streamed = streams(adapter, options, tokens) if streamed is None else streamed
            check_fits(estimate_run(adapter, tokens=tokens, lens=options.lens, streamed=streamed, **sizes))
    return options


def _settle_cross_sites(adapter: Adapter, options: TraceOptions) -> TraceOptions:
    """The cross-attention sites exist only in encoder-decoders: ``all`` on another model
    means every site it has; naming one there is an error."""
    asked = [s for s in options.sites if s in CROSS_SITES]
    if adapter.is_seq2seq or not asked:
        return options
    rest = tuple(s for s in options.sites if s not in CROSS_SITES)
    if set(rest) != set(ALL_SITES) - set(CROSS_SITES):
        raise InputError(
            f"{asked[0]} is a site of encoder-decoder models (the decoder's cross-attention); "
            f"this {adapter.family} model has no cross-attention"
        )
    return replace(options, sites=rest)


def analyse(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Tensor,
    *,
    text: str,
    tokens: Sequence[str],
    special: Sequence[bool],
    label: Labeller,
    model_name: str,
    options: TraceOptions = TraceOptions(),
    revision: str | None = None,
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
    stream: bool | None = None,
) -> Trail:
    """Every metric of SPEC for every token and layer of one text, for a bare adapter.

    The same path as :meth:`tokentrail.session.runner.Run.trail` (one forward pass, then
    :func:`compute_views` and :func:`make_trail`), for callers without a loaded model.
    ``stream``: score the layers during the forward pass (:func:`stream_views`); None
    (default) does so where :func:`streams` says, for long texts."""
    options = options.validate()
    if stream is None:
        stream = streams(adapter, options, len(input_ids))
    options = check_against(adapter, options, tokens=len(input_ids), streamed=stream)
    say = progress or (lambda f, m: None)
    say(0.0, "running the model")
    lens = None
    if stream:
        views, lens, acts = stream_views(adapter, spaces, input_ids, options, say, chunk_bytes)
    else:
        acts = capture(adapter, input_ids, causal=options.causal)
        views = compute_views(adapter, spaces, acts, options, say, chunk_bytes)
        if options.lens:
            from tokentrail.analysis.lens import logit_lens

            say(0.99, "logit lens")
            lens = logit_lens(adapter, acts, k=options.k, site=options.lens_site)
    say(1.0, "done")
    return make_trail(
        adapter, acts, views, lens, options=options, text=text, tokens=tokens, special=special,
        label=label, model_name=model_name, revision=revision,
    )  # fmt: skip


def analyse_batch(
    adapter: Adapter,
    spaces: SpaceCache,
    input_ids: Sequence[Tensor],
    *,
    texts: Sequence[str],
    tokens: Sequence[Sequence[str]],
    special: Sequence[Sequence[bool]],
    label: Labeller,
    model_name: str,
    options: TraceOptions = TraceOptions(),
    revision: str | None = None,
    padding_side: str = "right",
    progress: Progress | None = None,
    chunk_bytes: int = 192 << 20,
) -> list[Trail]:
    """:func:`analyse` for several texts at once: one padded forward pass
    (:func:`~tokentrail.engine.capture.capture_batch`) and :func:`compute_views_batch`; per
    text, the Trail it gets alone."""
    if not (len(input_ids) == len(texts) == len(tokens) == len(special)):
        raise InputError("a batch needs as many texts, token lists and special flags as id tensors")
    options = check_against(adapter, options.validate(), tokens=sum(len(t) for t in input_ids), streamed=False)
    from tokentrail.engine.capture import capture_batch

    say = progress or (lambda f, m: None)
    say(0.0, f"running the model on {len(input_ids)} texts")
    acts = capture_batch(adapter, input_ids, causal=options.causal, padding_side=padding_side)
    per_text = compute_views_batch(adapter, spaces, acts, options, say, chunk_bytes)
    trails = []
    for i, (a, views) in enumerate(zip(acts, per_text)):
        lens = None
        if options.lens:
            from tokentrail.analysis.lens import logit_lens

            lens = logit_lens(adapter, a, k=options.k, site=options.lens_site)
        trails.append(make_trail(
            adapter, a, views, lens, options=options, text=texts[i], tokens=tokens[i], special=special[i],
            label=label, model_name=model_name, revision=revision,
        ))  # fmt: skip
    say(1.0, "done")
    return trails


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


MIN_WINDOW = 16
"""The fewest positions a window holds (when the text has more). A matrix product of very
few rows can take another kernel and round differently (1-7 rows did, on MKL); windows of
8 rows and more gave the norms of all positions at once bit for bit on MiniLM, but a tiny
BERT (d = 32) showed last-bit differences in a few similarities (docs/benchmarks.md,
"Memory: working set bounded"): equal up to fp32 rounding, not guaranteed bit for bit."""


class _PositionWindow:
    """Position statistics of ``space`` for the sorted ``positions`` (P,), a window at a time.

    ``at(pidx)`` gives statistics covering the positions ``pidx`` (indices into ``positions``)
    and the indices into them; callers ask in increasing order of position (scoring sorts
    queries by it), so each window is made about once. Rows that never move have one set of
    norms for every position: all of them at once, as before."""

    def __init__(self, space: VocabSpace, positions: Tensor):
        self.space, self.positions = space, positions
        self.lo = self.hi = 0
        self.stats = None
        if not space.moves:
            self.stats, self.lo, self.hi = space.position_stats(positions), 0, len(positions)
        groups = space.groups
        per_position = space.vocab_size * 4 * (1 + 3 * groups)  # sigma, squared norms, two cosine factors
        self.width = max(MIN_WINDOW, STATS_BYTES // per_position)

    def at(self, pidx: Tensor) -> tuple:
        lo, hi = int(pidx.min()), int(pidx.max()) + 1
        if not (self.lo <= lo and hi <= self.hi):
            P = len(self.positions)
            stop = min(P, max(hi, lo + self.width))
            start = max(0, min(lo, stop - self.width))
            self.stats = None  # the old window goes before the new one is made
            self.stats, self.lo, self.hi = self.space.position_stats(self.positions[start:stop]), start, stop
        return self.stats, pidx - self.lo


def _chunks(total: int, per_item_bytes: int, budget: int) -> Iterable[slice]:
    step = max(1, budget // max(per_item_bytes, 1))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def _score(space: VocabSpace, r: Tensor, stats, pidx: Tensor, groups: Tensor | None, own: Tensor, sim: str, K: int, out: Tensor | None = None, ready: bool = False):
    """Queries r (Q, C, k) against every row -> own similarity, rank, top-K ids and sims, each (Q * C, ...).

    One matrix product into a (Q * C, V) block, then the fused exact scoring
    (:func:`tokentrail.engine.scoring.score_block`) while the block is hot. own: (Q * C,) ids;
    out: an optional flat buffer for the block (cosine); ``ready``: it already holds the
    product (:func:`_stacked_products`).
    """
    Q, C, _ = r.shape
    if sim == "cosine":
        block, index = space.cosine_rows(r, stats, pidx, groups, out=out, ready=ready)
    else:
        g = torch.arange(C, device=r.device) if groups is None else groups
        block = similarity_from_dots(space.dots(r, stats, pidx, g).reshape(Q * C, -1), r.float().pow(2).sum(-1).reshape(-1), stats.sq_norm[pidx][:, g].reshape(Q * C, -1), sim)
        index = torch.arange(Q * C, device=r.device)
    res = score_block(block, own[index], K)
    if torch.equal(index, torch.arange(Q * C, device=index.device)):
        return res
    out = tuple(torch.empty_like(t) for t in res)
    for o, t in zip(out, res):
        o[index] = t
    return out


def _check_study(adapter: Adapter, options: TraceOptions) -> None:
    """A corpus-fitted correction: the study must be of this model, mask and sites."""
    from tokentrail.store.stats import read_stats
    from tokentrail.spec.options import RESIDUAL_SITES

    stats = read_stats(options.correct_from)
    stats.check_model({"model_type": str(adapter.config.model_type), "n_layers": adapter.n_layers, "d_model": adapter.d_model, "vocab_size": adapter.vocab_size})
    mask = adapter.resolve_causal(options.causal)
    if mask != adapter.resolve_causal(stats.causal):
        raise InputError(f"the study at {options.correct_from} ran {'with' if not mask else 'without'} the causal mask, this trace {'with' if mask else 'without'}: correct from a study with the same mask")
    for site in options.sites:
        if site in RESIDUAL_SITES:
            stats.get(site, 0)


def _residual_views(adapter, space: VocabSpace, acts: Activations, sites, similarities, k, overlap_k, chunk_bytes, take, correct: str | None = None, correct_from: str | None = None, text_statistics: bool = True):
    n, L, V = acts.input_ids.shape[0], adapter.n_layers, space.vocab_size
    K = min(max(k, overlap_k), V)
    uniq, inv = torch.unique(acts.position_ids, return_inverse=True)
    # queries: the original encodings (for overlap at layer 0), then every site and layer
    if correct is None:
        # the original encodings, then each site's L x n vectors, scored a few sites at a time:
        # as many as fit in one block (so short texts keep whole blocks), or one site, so
        # memory holds one site's queries and top-K lists whatever the number of sites
        budget = min(chunk_bytes, BLOCK_BYTES)
        rows = max(1, budget // (V * 4))
        ws = take(min(len(sites) * L * n + n, rows) * V)  # one block, reused by every chunk
        window = _PositionWindow(space, uniq)  # and one window of row norms, for every batch
        batches: list[list[str | None]] = [[None]]  # None: the original encodings
        for site in sites:
            if sum(n if s is None else L * n for s in batches[-1]) + L * n > rows:
                batches.append([])
            batches[-1].append(site)

        def each():  # lazily: a batch of sites is scored when their views are made
            for batch in batches:
                parts = [acts.embedded[None] if s is None else acts.site(s) for s in batch]
                sizes = [part.shape[0] * n for part in parts]
                # one site: its own (L, n, d) tensor, not a copy of it
                vecs = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(-1, acts.embedded.shape[1])
                del parts  # a site made on reading (resid_pre) is let go once scored
                m = vecs.shape[0] // n
                res = _scored(space, window, vecs, inv.repeat(m), acts.input_ids.repeat(m), similarities, K, budget, ws)
                del vecs
                start = 0
                for size in sizes:
                    sl = slice(start, start + size)
                    start = sl.stop
                    yield {sim: [t[sl] for t in res[sim]] for sim in similarities}
                del res  # this batch's top-K lists, before the next batch makes its own

        groups = each()
        corrections = None
    else:
        stats = space.position_stats(uniq)
        vecs = torch.cat([acts.embedded[None]] + [acts.site(s) for s in sites]).reshape(-1, acts.embedded.shape[1])
        Q, dev = vecs.shape[0], vecs.device
        out = {
            sim: [torch.empty(Q, device=dev), torch.empty(Q, dtype=torch.long, device=dev), torch.empty(Q, K, dtype=torch.long, device=dev), torch.empty(Q, K, device=dev)]
            for sim in similarities
        }
        corrections = _corrected_scores(space, stats, vecs, inv.repeat(len(sites) * L + 1), acts.input_ids.repeat(len(sites) * L + 1), n, correct, similarities, K, out, chunk_bytes, _fitter(correct, correct_from, sites, L))
        cut = [slice(0, n)] + [slice(n + i * L * n, n + (i + 1) * L * n) for i in range(len(sites))]
        groups = ({sim: [t[sl] for t in out[sim]] for sim in similarities} for sl in cut)
    groups = iter(groups)
    origin = next(groups)
    views = {}
    for i, (site, res) in enumerate(zip(sites, groups)):
        for sim in similarities:
            own_s, rank, ids, vals = res[sim]
            origin_ids, origin_vals = origin[sim][2], origin[sim][3]
            s_ids = ids.view(L, n, K)
            prev = torch.cat([origin_ids[None], s_ids[:-1]])
            ov = overlap(s_ids[..., :overlap_k], prev[..., :overlap_k])
            aniso = (
                anisotropy(acts.site(site) if corrections is None else _corrected_site(acts.site(site), corrections[1 + i * L : 1 + (i + 1) * L]), sim)
                if text_statistics else torch.zeros(L, dtype=torch.float64)
            )  # fmt: skip
            views[(sim, site)] = _residual_view(
                site, space.name, sim, own_s.view(L, n), rank.view(L, n), s_ids[..., :k], vals.view(L, n, K)[..., :k], ov, aniso,
                origin_ids[:, :k], origin_vals[:, :k], min(overlap_k, K),
            )  # fmt: skip
            del own_s, rank, ids, vals, s_ids, prev, ov
        del res  # the site's top-K lists: let go before the next site is scored
    return [views[(sim, site)] for sim in similarities for site in sites]


def _residual_view(site, space, sim, own_s, rank, top_ids, top_sims, ov, aniso, origin_ids, origin_sims, overlap_k) -> View:
    """One residual View from its (L, n[, k]) tensors (own similarity, rank, top-k, overlap),
    its (L,) anisotropy and the (n, k) top-k of the original encodings."""
    cells = Cells(own_sim=_np(own_s), rank=_np(rank), overlap=_np(ov).astype(np.float64), anisotropy=_np(aniso), overlap_k=overlap_k,
                  top_sim=_np(top_sims[..., 0]))
    return View(
        site=site,
        space=space,
        similarity=sim,
        metrics=derive_metrics(cells),
        top_ids=_np(top_ids.contiguous()),  # contiguous: a view keeps only its k columns alive
        top_sims=_np(top_sims.contiguous()),
        overlap_k=overlap_k,
        anisotropy=cells.anisotropy,
        origin_top_ids=_np(origin_ids.contiguous()),
        origin_top_sims=_np(origin_sims.contiguous()),
    )


def _scored(space: VocabSpace, window: "_PositionWindow", vecs: Tensor, pidx: Tensor, own: Tensor, similarities, K: int, budget: int, ws: Tensor) -> dict:
    """(m, d) residual queries -> per similarity [own similarity, rank, top-K ids, top-K sims], chunk by chunk.

    window: the space's statistics for the sorted positions ``pidx`` indexes (shared by
    the batches of sites of one text: a short text's window is made once)."""
    m, V, dev = vecs.shape[0], space.vocab_size, vecs.device
    out = {sim: [torch.empty(m, device=dev), torch.empty(m, dtype=torch.long, device=dev), torch.empty(m, K, dtype=torch.long, device=dev), torch.empty(m, K, device=dev)] for sim in similarities}
    order = torch.argsort(pidx, stable=True)  # queries at one position together: one scaling pass per position
    for c in _chunks(m, V * 4, budget):
        oc = order[c]
        stats, local = window.at(pidx[oc])
        for sim in similarities:
            for buf, val in zip(out[sim], _score(space, vecs[oc][:, None, :], stats, local, None, own[oc], sim, K, ws)):
                buf[oc] = val
        del stats  # the window alone holds it: a new window is made after the old one is let go
    return out


def _fitter(correct: str, correct_from: str | None, sites, L: int):
    """group number -> its correction: fitted to the group's own vectors, or (with a study)
    the study's statistics of the same stage (group 0: the encodings; then site by site,
    layer by layer)."""
    from tokentrail.engine.geometry import fit_correction

    if correct_from is None:
        return lambda g, vectors: fit_correction(correct, vectors)
    from tokentrail.store.schema import EMBEDDED
    from tokentrail.store.stats import read_stats

    stats = read_stats(correct_from)
    where = [(EMBEDDED, 0)] + [(site, layer) for site in sites for layer in range(L)]
    return lambda g, vectors: stats.correction(correct, *where[g])


def _corrected_scores(space, stats, vecs, pidx, own, n, correct, similarities, K, out, chunk_bytes, fit):
    """Residual queries under a geometry correction (:mod:`tokentrail.engine.geometry`): each group of
    ``n`` queries (the origin encodings, then one site at one layer) gets its correction
    (``fit(group number, its vectors)``), and is scored exactly against every corrected row.
    Returns the corrections."""
    from tokentrail.engine.geometry import CorrectedRows

    corrections = []
    V = space.vocab_size
    for start in range(0, vecs.shape[0], n):
        group = slice(start, start + n)
        corr = fit(start // n, vecs[group])
        rows = CorrectedRows(space, corr, stats)
        corrections.append(corr)
        for c in _chunks(n, V * 8 * 3, chunk_bytes):
            q = torch.arange(start, start + n, device=vecs.device)[c]
            for sim in similarities:
                res = score_block(rows.similarities(vecs[q], pidx[q], sim), own[q], K)
                for buf, val in zip(out[sim], res):
                    buf[q] = val.to(buf.dtype)
    return corrections


def _corrected_site(vectors: Tensor, corrections) -> Tensor:
    """(L, n, d) site vectors, each layer through its own correction (for the anisotropy of what was compared)."""
    return torch.stack([corr.apply(v) for corr, v in zip(corrections, vectors)])


def _stacked_products(adapter, spaces: SpaceCache, acts: Activations, kind: str, first: int, cols: Tensor, groups: Tensor, pidx: Tensor, positions: Tensor, ws: Tensor) -> dict:
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


def _head_views(adapter, spaces: SpaceCache, acts: Activations, kind, similarities, k, overlap_k, chunk_bytes, take, tick):
    scorer = _HeadScorer(adapter, spaces, kind, similarities, k, overlap_k, chunk_bytes, take, acts.input_ids, acts.position_ids)
    for layer in range(adapter.n_layers):
        tick()
        scorer.layer(acts, layer)
    return scorer.views()


class _HeadScorer:
    """The ``heads`` views of one head-space kind, scored a layer at a time (:meth:`layer`,
    from activations holding that layer) into (L, H, n[, k]) tensors; :meth:`views` makes
    the Views. A short text's layers may share one product (``stack``: needs every layer's
    activations, so not in a streamed pass)."""

    def __init__(self, adapter, spaces: SpaceCache, kind, similarities, k, overlap_k, chunk_bytes, take, input_ids: Tensor, position_ids: Tensor):
        self.adapter, self.spaces, self.kind, self.similarities, self.k, self.overlap_k, self.take = adapter, spaces, kind, similarities, k, overlap_k, take
        n, L, H = input_ids.shape[0], adapter.n_layers, adapter.n_heads
        self.input_ids = input_ids
        self.uniq, self.inv = torch.unique(position_ids, return_inverse=True)
        dev = input_ids.device
        self.groups = _groups(adapter, kind).to(dev)
        cols, expand = _distinct_columns(adapter, kind)
        self.cols, self.expand = cols.to(dev), expand.to(dev)
        self.res = {sim: dict(own=torch.empty(L, H, n, device=dev), rank=torch.empty(L, H, n, dtype=torch.long, device=dev), ids=None, vals=None) for sim in similarities}
        self.aniso = {sim: torch.empty(L, H, device=dev) for sim in similarities}
        self.budget = min(chunk_bytes, BLOCK_BYTES)
        self.ws = None
        self.stacked: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (its block, the table) of a product made for several layers at once

    def layer(self, acts: Activations, layer: int, stack: bool = True) -> None:
        adapter, spaces, kind, similarities, budget = self.adapter, self.spaces, self.kind, self.similarities, self.budget
        n, L, H, dev = self.input_ids.shape[0], adapter.n_layers, adapter.n_heads, self.input_ids.device
        uniq, inv, groups, cols, expand, res = self.uniq, self.inv, self.groups, self.cols, self.expand, self.res
        C = len(cols)
        space = spaces.get(kind, layer)
        V = space.vocab_size
        kk = min(self.k, V)
        window = _PositionWindow(space, uniq)
        z = head_vectors(adapter, acts, kind, layer)  # (n, H, dh)
        for sim in similarities:
            if res[sim]["ids"] is None:
                res[sim]["ids"] = torch.empty(L, H, n, kk, dtype=torch.long, device=dev)
                res[sim]["vals"] = torch.empty(L, H, n, kk, device=dev)
            self.aniso[sim][layer] = anisotropy(z.transpose(0, 1), sim)
        stack = stack and "cosine" in similarities and 2 * n * C * V * 4 <= budget  # a short text: layers share one product
        if self.ws is None:
            self.ws = self.take((budget // (V * 4) if stack else min(n, max(1, budget // (C * V * 4))) * C) * V)
        ws = self.ws
        zd = z[:, cols]  # the distinct columns: a key head shared by a KV group is scored once
        scorer = space.for_queries(n * C)
        if stack and layer not in self.stacked:
            self.stacked = _stacked_products(adapter, spaces, acts, kind, layer, cols, groups[cols], inv, uniq, ws)
        stacked = self.stacked
        for c in _chunks(n, C * V * 4, budget):
            zc = zd[c]
            m = zc.shape[0]
            own = self.input_ids[c].repeat_interleave(C)
            stats, local = window.at(inv[c])
            for sim in similarities:
                ready = sim == "cosine" and layer in stacked and scorer.through_embeddings and scorer.x is stacked[layer][1]
                out = stacked[layer][0] if ready else ws
                own_s, rank, ids, vals = _score(scorer, zc, stats, local, groups[cols], own, sim, kk, out, ready)
                r = res[sim]
                r["own"][layer, :, c] = own_s.view(m, C)[:, expand].T
                r["rank"][layer, :, c] = rank.view(m, C)[:, expand].T
                r["ids"][layer, :, c] = ids.view(m, C, kk)[:, expand].transpose(0, 1)
                r["vals"][layer, :, c] = vals.view(m, C, kk)[:, expand].transpose(0, 1)
            del stats  # the window alone holds it (see _scored)
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
                        own_sim=_np(r["own"]),
                        rank=_np(r["rank"]),
                        overlap=np.full((L, H, n), np.nan),  # each layer's head space differs: no layer-to-layer overlap
                        anisotropy=_np(self.aniso[sim]),
                        overlap_k=self.overlap_k,  # named like the residual views; NaN (see docs/spec.md)
                        top_sim=_np(r["vals"][..., 0]),
                    )
                ),
                top_ids=_np(r["ids"]),
                top_sims=_np(r["vals"]),
                overlap_k=self.overlap_k,
                anisotropy=_np(self.aniso[sim]),
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
        own_s, rank, ids, vals = _score(space, z, stats, torch.zeros(1, dtype=torch.long, device=dev), groups, own, similarity, kk)
    used = sorted({int(i) for i in ids.unique()} | {int(acts.input_ids[token])})
    return HeadsAt(
        layer=layer,
        token=token,
        own_id=int(acts.input_ids[token]),
        space=kind,
        similarity=similarity,
        self_sim=_np(own_s),
        rank=_np(rank),
        top_ids=_np(ids),
        top_sims=_np(vals),
        attention=_np(acts.attentions[layer, :, token]).copy(),
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


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
