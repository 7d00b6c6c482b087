"""Running a comparison (:func:`compare`): both texts once through their models, and
both occurrences read from those runs into a :class:`~tokentrail.session.comparison.Comparison`
(what it holds and how it is exported is in :mod:`tokentrail.session.comparison`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tokentrail.analysis.trail import make_trail
from tokentrail.engine.capture import head_vectors
from tokentrail.engine.geometry import fit_correction
from tokentrail.results.trail import RunInfo
from tokentrail.session.comparison import Comparison, Side, align_spans, token_spans
from tokentrail.session.inputs import check_text
from tokentrail.session.loaded import LoadedModel
from tokentrail.session.models import load
from tokentrail.session.runner import Run
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import (
    DEFAULT_OVERLAP_K,
    HEAD_SITE,
    HEADS_ACROSS_MODELS,
    TraceOptions,
    check_compare_options,
    parse_correction,
)
from tokentrail.spec.tokens import find_token

__all__ = ["compare"]


def compare(
    text_a: str,
    text_b: str | None = None,
    *,
    model: str | LoadedModel = "minilm",
    model_b: str | LoadedModel | None = None,
    token: int | str | None = None,
    token_b: int | str | None = None,
    site: str = "attn_resid",
    space: str | None = None,
    similarity: str = "cosine",
    k: int = 15,
    overlap_k: int | None = None,
    causal: bool | None = None,
    correct: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Compare two occurrences layer by layer.

    - ``compare(text_a, text_b, token="bank")``: one word in two contexts (``token_b``
      defaults to ``token``);
    - ``compare(text, token="flies:0", token_b="flies:1")``: two tokens of one text;
    - ``compare(text, model="minilm", model_b="smollm2", token="bank")``: one text in two
      models, tokens aligned by character span (``token`` is found in side a; side b takes
      the last of its tokens overlapping that span, which in a decoder has read the whole
      word); ``token`` may be left out for whole-text curves.

    Tokens are an index, a token's text, or ``text:N`` (the N-th occurrence from 0).
    ``overlap_k``: size of the neighbour sets compared (default 100, capped at the
    vocabulary); ``k``: neighbours and separating words kept for display.
    ``correct``: a geometry correction (``center``, ``zscore``, ``rogue:D``, ``abtt:D``;
    residual sites, one model). Each side's metrics are taken under it as in a trace
    (fitted to that side's text), and the cosine between the two occurrences under the
    correction fitted, per layer, to both texts' tokens together (one text's, for two
    tokens of one text), so that both vectors go through the same map. ``progress``
    hears what loads (``models.load``'s messages) and when both sides run."""
    space = check_compare_options(site, space, similarity, k, overlap_k)
    _check_correction(correct, site, model_b)
    check_text(text_a)
    if text_b is not None:
        check_text(text_b)
    say = progress or (lambda message: None)
    ma = load(model, device=device, dtype=dtype, progress=say)
    mb = ma if model_b is None else load(model_b, device=device, dtype=dtype, progress=say)
    same = mb is ma
    _check_sides(ma, mb, site, token, two_texts=text_b is not None, two_tokens=token_b is not None, causal=causal)
    ok, K = _neighbour_counts(ma, mb, k, overlap_k)

    opts = TraceOptions.make(
        site=site, space=space, similarity=similarity, k=K, overlap_k=min(ok, K), causal=causal, correct=correct
    )
    text_b_eff = text_a if text_b is None else text_b
    say("running both sides")
    run_a = ma.run(text_a, opts)
    run_b = run_a if (same and text_b_eff == text_a) else mb.run(text_b_eff, opts)

    ta, tb, alignment = _occurrences(run_a, run_b, token, token_b, two_texts=text_b is not None)

    a = _side("a", run_a, ta, site, space, similarity, K, opts)
    b = _side("b", run_b, tb, site, space, similarity, K, opts)
    cos = ov = None
    if same:
        cos = _cosines(run_a, ta, run_b, tb, site, space, correct)
        ov = _overlaps(a.top_ids[..., :ok], b.top_ids[..., :ok])
    return Comparison(
        site=site,
        space=space,
        similarity=similarity,
        k=k,
        overlap_k=min(ok, K),
        a=a,
        b=b,
        same_model=same,
        cosine=cos,
        overlap=ov,
        alignment=alignment,
        correct=correct,
    )


def _check_correction(correct: str | None, site: str, model_b) -> None:
    """A geometry correction is for residual sites of one model."""
    if correct is None:
        return
    parse_correction(correct)
    if site == HEAD_SITE:
        raise InputError("a geometry correction applies to residual sites; the heads site compares raw head vectors")
    if model_b is not None:
        raise InputError(
            "a geometry correction compares two contexts in one model; two models live in different spaces"
        )


def _check_sides(
    ma: LoadedModel, mb: LoadedModel, site: str, token, *, two_texts: bool, two_tokens: bool, causal: bool | None
) -> None:
    """What the two loaded sides allow: something to compare, heads in one model, a token
    for one model, ``causal`` only for decoders."""
    same = mb is ma
    if same and not two_texts and not two_tokens:
        raise InputError(
            "one text and one model: give two tokens (e.g. token='flies:0', token_b='flies:1'), a second text, or a second model"
        )
    if not same and site == HEAD_SITE:
        raise InputError(HEADS_ACROSS_MODELS)
    if token is None and same:
        raise InputError("give the token to compare (an index, its text, or text:N)")
    if causal is not None:
        for m in {id(ma): ma, id(mb): mb}.values():
            if not m.is_decoder:
                raise InputError(f"causal is for decoders; {m.name} ({m.adapter.family}) is an encoder")


def _neighbour_counts(ma: LoadedModel, mb: LoadedModel, k: int, overlap_k: int | None) -> tuple[int, int]:
    """``(overlap k, K)``: the size of the neighbour sets compared (default 100, capped at
    the smaller vocabulary) and how many neighbours each side's run keeps."""
    vocab = min(ma.adapter.vocab_size, mb.adapter.vocab_size)
    if overlap_k is not None and overlap_k > vocab:
        raise InputError(
            f"overlap k = {overlap_k:,} is more than the vocabulary of {vocab:,} tokens: use at most {vocab:,}"
        )
    ok = overlap_k if overlap_k is not None else min(DEFAULT_OVERLAP_K, vocab)
    K = min(max(k, ok), vocab)
    if k > vocab:
        raise InputError(f"k = {k:,} is more than the vocabulary of {vocab:,} tokens: use at most {vocab:,}")
    return ok, K


def _occurrences(
    run_a: Run, run_b: Run, token, token_b, two_texts: bool
) -> tuple[int | None, int | None, tuple | None]:
    """The two tokens compared (indices into each run's tokens, None for whole-text curves)
    and, for one text in two models, the alignment of their tokens by character span."""
    ma, mb = run_a.model, run_b.model
    ta = None if token is None else find_token(run_a.tokens, token)[0]
    alignment = None
    if mb is ma:
        tb = find_token(run_b.tokens, token if token_b is None else token_b)[0]
    else:
        alignment = (
            align_spans(
                token_spans(ma, run_a.text, run_a.ids.tolist()), token_spans(mb, run_b.text, run_b.ids.tolist())
            )
            if not two_texts
            else None
        )
        if token_b is not None:
            tb = find_token(run_b.tokens, token_b)[0]
        elif ta is None:
            tb = None
        elif alignment is not None:
            if not alignment[ta]:
                raise InputError(
                    f"token {ta} {run_a.tokens[ta]!r} of {ma.name} covers no characters of the text (a special token), "
                    f"so {mb.name} has no counterpart: give side b its own token (token_b=, or a second --token; its tokens are {_listing(run_b.tokens)})"
                )
            tb = alignment[ta][-1]
        else:
            tb = find_token(run_b.tokens, token)[0]
    return ta, tb, alignment


def _listing(tokens: Sequence[str]) -> str:
    return " ".join(f"{i}:{t}" for i, t in enumerate(tokens))


def _side(name: str, run: Run, t: int | None, site: str, space: str, similarity: str, K: int, opts) -> Side:
    m = run.model
    trail = run.trail(opts) if (site != HEAD_SITE or t is None) else None
    grid = None
    if site == HEAD_SITE:
        per = [run.heads(layer, t, kind=space, similarity=similarity, k=K) for layer in range(m.adapter.n_layers)]
        self_sim = np.stack([h.self_sim for h in per])  # (L, H)
        rank = np.stack([h.rank for h in per])
        top_ids = np.stack([h.top_ids for h in per])  # (L, H, K)
        top_sims = np.stack([h.top_sims for h in per])
        labels = {kk: v for h in per for kk, v in h.labels.items()}
        info = _info(run, opts)
    else:
        v = trail.view(site, space, similarity)
        grid = np.asarray(v.self_sim, dtype=np.float64)
        if t is None:
            keep = ~np.asarray(trail.special, dtype=bool)
            keep = keep if keep.any() else np.ones_like(keep)
            self_sim = grid[:, keep].mean(axis=1)
            rank = np.median(v.rank[:, keep], axis=1)
            top_ids = np.zeros((grid.shape[0], 0), dtype=np.int64)
            top_sims = np.zeros((grid.shape[0], 0))
        else:
            self_sim, rank, top_ids, top_sims = v.self_sim[:, t], v.rank[:, t], v.top_ids[:, t], v.top_sims[:, t]
        labels = trail.labels
        info = trail.info
    spans = None
    if t is not None:
        try:
            spans = token_spans(m, run.text, run.ids.tolist())[t]
        except InputError:
            spans = None
    return Side(
        name=name,
        model=m.name,
        text=run.text,
        tokens=tuple(run.tokens),
        token=t,
        span=spans,
        info=info,
        n_layers=m.adapter.n_layers,
        n_heads=m.adapter.n_heads,
        self_sim=np.asarray(self_sim),
        rank=np.asarray(rank),
        top_ids=np.asarray(top_ids),
        top_sims=np.asarray(top_sims),
        grid=grid,
        labels=dict(labels),
    )


def _info(run: Run, opts) -> RunInfo:
    """Run metadata for a side computed without a Trail (the heads site)."""
    m = run.model
    return make_trail(
        m.adapter,
        run.acts,
        [],
        None,
        options=opts,
        text=run.text,
        tokens=run.tokens,
        special=run.encoded.special,
        label=lambda ids: {},
        model_name=m.name,
        revision=m.revision,
        device=m.device,
        dtype=m.dtype,
        truncated_from=run.encoded.truncated_from,
    ).info


def _cosines(run_a: Run, ta: int, run_b: Run, tb: int, site: str, space: str, correct: str | None = None) -> np.ndarray:
    """(L,) or (L, H) cosine between the two occurrences' vectors at every layer (and head);
    with ``correct``, of the vectors through the correction fitted at that layer to both
    texts' tokens (one text's, when both tokens come from it)."""
    if site == HEAD_SITE:
        adapter = run_a.model.adapter
        va = torch.stack(
            [head_vectors(adapter, run_a.acts, space, l)[ta] for l in range(adapter.n_layers)]
        )  # (L, H, dh)
        vb = torch.stack([head_vectors(adapter, run_b.acts, space, l)[tb] for l in range(adapter.n_layers)])
    else:
        A, B = run_a.acts.site(site), run_b.acts.site(site)  # (L, n, d)
        va, vb = A[:, ta], B[:, tb]  # (L, d)
        if correct is not None:
            fits = [
                fit_correction(correct, A[l] if run_b is run_a else torch.cat([A[l], B[l]])) for l in range(A.shape[0])
            ]
            va = torch.stack([T.apply(va[l]) for l, T in enumerate(fits)])
            vb = torch.stack([T.apply(vb[l]) for l, T in enumerate(fits)])
    va, vb = va.double(), vb.double()
    cos = (va * vb).sum(-1) / (va.norm(dim=-1) * vb.norm(dim=-1)).clamp_min(1e-300)
    return cos.cpu().numpy()


def _overlaps(ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
    """(L,[H]) |set_a ∩ set_b| per cell of two (L,[H],K) id arrays."""
    lead = ids_a.shape[:-1]
    a, b = ids_a.reshape(-1, ids_a.shape[-1]), ids_b.reshape(-1, ids_b.shape[-1])
    return np.array([len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)], dtype=np.float64).reshape(lead)
