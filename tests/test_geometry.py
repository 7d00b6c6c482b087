"""Geometry diagnostics and corrections: hand-computed definitions, and corrected rank/top-k
against brute force over every vocabulary row (tiny BERT, tiny Llama, MiniLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokentrail.engine.geometry import cosine_shares, cosine_terms, diagnose, fit_correction, rogue_layers
from tokentrail.engine.metrics import anisotropy, similarity
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions, parse_correction


# ---- diagnostics: hand-computed ----------------------------------------------------------------
def test_cosine_terms_split_the_mean_pairwise_cosine_by_dimension():
    # pairs (0,1): cos 1, (0,2) and (1,2): cos 0 -> mean over 6 ordered pairs = 1/3, all from dim 0
    v = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(cosine_terms(v), [1 / 3, 0.0])
    np.testing.assert_allclose(cosine_shares(v), [1.0, 0.0])


def test_a_dimension_can_pull_pairs_apart_negative_share():
    # u = (.6, .8), (.6, -.8): dim 0 gives .36, dim 1 gives -.64, cos = -.28
    v = np.array([[3.0, 4.0], [3.0, -4.0]])
    np.testing.assert_allclose(cosine_terms(v), [0.36, -0.64])
    np.testing.assert_allclose(cosine_shares(v), [0.36 / -0.28, -0.64 / -0.28])


def test_corpus_baseline_counts_only_pairs_from_different_texts():
    v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(cosine_terms(v, groups=[0, 0, 1]), [0.0, 0.0])  # the two equal vectors share a text
    np.testing.assert_allclose(cosine_terms(v, groups=[0, 1, 1]), [0.5, 0.0])  # pairs (0,1) cos 1, (0,2) cos 0
    assert np.isnan(cosine_terms(v, groups=[4, 4, 4])).all()  # no pair across texts


def test_terms_sum_to_the_anisotropy_metric():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(7, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])
    assert cosine_terms(v).sum() == pytest.approx(float(anisotropy(v, "cosine")), abs=1e-6)


def test_diagnose_finds_the_rogue_dimension_and_norms():
    g = torch.Generator().manual_seed(1)
    calm = 5.0 + 0.3 * torch.randn(2, 6, 4, generator=g)  # every dimension carries about a quarter
    rogue = calm.clone()
    rogue[1, :, 2] += 40.0  # layer 1: dimension 2 dominates every cosine
    geo = diagnose(rogue, site="layer_out", top=2)
    assert geo.top_dims[1, 0] == 2 and geo.top_shares[1, 0] > 0.9
    assert geo.rogue() == [(1, 2, pytest.approx(geo.top_shares[1, 0]))]
    np.testing.assert_allclose(geo.shares.sum(1), 1.0)
    np.testing.assert_allclose(geo.norms, rogue.double().norm(dim=-1).numpy())
    np.testing.assert_allclose(geo.mean_norm, geo.norms.mean(1))
    line = rogue_layers(geo)
    assert "layer_out" in line and "dim 2" in line and "--correct rogue:1" in line
    assert rogue_layers(diagnose(calm)) is None
    assert np.abs(diagnose(calm).shares - 0.25).max() < 0.05


# ---- corrections: hand-computed ----------------------------------------------------------------
def test_zscore_and_center_by_hand():
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mu (2, 4), population std (1, 2)
    z = fit_correction("zscore", v)
    torch.testing.assert_close(z.apply(torch.tensor([[5.0, 0.0]])), torch.tensor([[3.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(z.apply(v), torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64))
    c = fit_correction("center", v)
    torch.testing.assert_close(c.apply(torch.tensor([5.0, 0.0])), torch.tensor([3.0, -4.0], dtype=torch.float64))


def test_zscore_zeroes_a_constant_dimension():
    z = fit_correction("zscore", torch.tensor([[1.0, 7.0], [3.0, 7.0]]))
    torch.testing.assert_close(z.apply(torch.tensor([2.0, 100.0])), torch.tensor([0.0, 0.0], dtype=torch.float64))


def test_rogue_removes_the_dimensions_with_the_largest_cosine_share():
    v = torch.tensor([[1.0, 10.0, 0.1], [-1.0, 10.0, 0.2], [0.5, 9.0, -0.1]])
    r = fit_correction("rogue:1", v)
    assert r.removed == (1,)
    torch.testing.assert_close(
        r.apply(torch.tensor([2.0, 5.0, 3.0])), torch.tensor([2.0, 0.0, 3.0], dtype=torch.float64)
    )


def test_abtt_removes_the_top_principal_direction():
    v = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]])  # mean 0, one direction (1, 1)
    a = fit_correction("abtt:1", v)
    torch.testing.assert_close(a.apply(torch.tensor([3.0, 1.0])), torch.tensor([1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(a.matrix(), torch.tensor([[0.5, -0.5], [-0.5, 0.5]], dtype=torch.float64))


@pytest.mark.parametrize("spec", ["center", "zscore", "rogue:2", "abtt:2"])
def test_matrix_form_is_the_affine_map(spec):
    g = torch.Generator().manual_seed(2)
    v = torch.randn(9, 6, generator=g) * torch.tensor([1, 8, 1, 1, 3, 1.0])
    corr = fit_correction(spec, v)
    x = torch.randn(4, 6, generator=g)
    torch.testing.assert_close(corr.apply(x), (x.double() - corr.mu) @ corr.matrix().T)


@pytest.mark.parametrize(
    "value, message",
    [
        ("zcore", "unknown correction"),
        ("rogue", "needs a count"),
        ("abtt:0", "needs a count"),
        ("zscore:2", "takes no count"),
        (3, "correction"),
    ],
)
def test_bad_correction_names_are_one_clear_error(value, message):
    with pytest.raises(InputError, match=message):
        TraceOptions.make(correct=value)


def test_correction_round_trips_in_options():
    opts = TraceOptions.make(correct="abtt:3")
    assert parse_correction(opts.correct) == ("abtt", 3)
    assert TraceOptions.from_dict(opts.to_dict()) == opts


# ---- corrected scoring against brute force over every row --------------------------------------
def _brute_check(adapter, acts, views, spec, space_kind, site, k, fit=None):
    """Every corrected cell against all V rows corrected explicitly; ``fit(layer, vectors)``
    gives the layer's correction (default: fitted to the text's vectors)."""
    from tokentrail.engine.spaces import build_space

    fit = fit or (lambda layer, v: fit_correction(spec, v))

    space = build_space(adapter, space_kind)
    V = space.vocab_size
    checked = 0
    for view in views:
        if view.site != site or view.space != space_kind:
            continue
        vecs = acts.site(site)
        for layer in range(vecs.shape[0]):
            corr = fit(layer, vecs[layer])
            for t in range(vecs.shape[1]):
                p = int(acts.position_ids[t])
                rows = corr.apply(space.rows(torch.arange(V), p)[:, 0, :])  # (V, d) explicit corrected rows
                s = similarity(corr.apply(vecs[layer, t])[None], rows, view.similarity)[0]  # float64
                own = s[int(acts.input_ids[t])]
                lo, hi = int((s > own + 1e-6).sum()), int((s > own - 1e-6).sum())
                assert lo <= view.rank[layer, t] <= hi, (spec, view.similarity, layer, t)
                assert float(view.self_sim[layer, t]) == pytest.approx(float(own), abs=2e-5)
                top = torch.sort(s, descending=True).values[:k]
                np.testing.assert_allclose(view.top_sims[layer, t], top.numpy(), atol=2e-5)
                gap = float(top[:-1].sub(top[1:]).min()) if k > 1 else 1.0
                if gap > 1e-5:  # no near tie inside the top-k: the ids are determined
                    assert list(view.top_ids[layer, t]) == torch.argsort(s, descending=True)[:k].tolist()
                checked += 1
    assert checked


@pytest.mark.parametrize("spec", ["center", "zscore", "rogue:2", "abtt:2"])
def test_corrected_views_equal_brute_force_tiny_bert(tiny_models, spec):
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.checks import check_against
    from tokentrail.analysis.views import compute_views
    from tokentrail.engine.capture import capture
    from tokentrail.engine.space_cache import SpaceCache

    adapter = adapter_for(tiny_models["bert"])
    ids = torch.tensor([0, 5, 9, 33, 5, 70, 12, 1])
    opts = check_against(
        adapter,
        TraceOptions.make(
            site="attn_resid,layer_out", space="encodings,embeddings", similarity="all", k=6, correct=spec
        ),
    )
    with torch.no_grad():
        acts = capture(adapter, ids)
        views = compute_views(adapter, SpaceCache(adapter), acts, opts)
    for kind in ("encodings", "embeddings"):
        _brute_check(adapter, acts, views, spec, kind, "layer_out", 6)
    _brute_check(adapter, acts, views, spec, "encodings", "attn_resid", 6)


@pytest.mark.parametrize("spec", ["zscore", "rogue:2", "abtt:3"])
def test_corrected_views_equal_brute_force_tiny_llama(spec):
    from test_parity_decoders import tiny_model
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.checks import check_against
    from tokentrail.analysis.views import compute_views
    from tokentrail.engine.capture import capture
    from tokentrail.engine.space_cache import SpaceCache

    adapter = adapter_for(tiny_model("llama"))
    ids = torch.tensor([0, 7, 19, 44, 7, 90, 3, 61, 12])
    opts = check_against(
        adapter, TraceOptions.make(site="layer_out", space="encodings", similarity="all", k=5, correct=spec)
    )
    with torch.no_grad():
        acts = capture(adapter, ids)
        views = compute_views(adapter, SpaceCache(adapter), acts, opts)
    _brute_check(adapter, acts, views, spec, "encodings", "layer_out", 5)


def test_correction_changes_the_numbers_and_is_recorded(tiny_models):
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.bare import analyse
    from tokentrail.engine.space_cache import SpaceCache

    adapter = adapter_for(tiny_models["bert"])
    ids = torch.tensor([0, 5, 9, 33, 5, 70, 12, 1])
    kw = dict(
        text="x",
        tokens=[str(i) for i in ids.tolist()],
        special=[False] * 8,
        label=lambda xs: {i: str(i) for i in xs},
        model_name="tiny",
    )
    raw = analyse(adapter, SpaceCache(adapter), ids, options=TraceOptions.make(site="layer_out"), **kw)
    cor = analyse(
        adapter, SpaceCache(adapter), ids, options=TraceOptions.make(site="layer_out", correct="center"), **kw
    )
    assert cor.info.options.correct == "center" and raw.info.options.correct is None
    import json

    from tokentrail.results.trail import RunInfo

    meta = json.loads(cor.to_json())["meta"]  # exports carry it, typed on the way back
    assert RunInfo.from_dict(meta).options.correct == "center"
    assert not np.allclose(raw.views[0].self_sim, cor.views[0].self_sim)
    # the anisotropy is that of the corrected (here: centred) vectors
    from tokentrail.engine.capture import capture

    with torch.no_grad():
        h = capture(adapter, ids).layer_out.double()
    expected = anisotropy(h - h.mean(1, keepdim=True), "cosine").numpy()
    np.testing.assert_allclose(cor.views[0].anisotropy, expected, atol=1e-5)


def test_abtt_needs_more_tokens_than_components(tiny_models):
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.checks import check_against

    adapter = adapter_for(tiny_models["bert"])
    with pytest.raises(InputError, match="abtt:5"):
        check_against(adapter, TraceOptions.make(correct="abtt:5"), tokens=5)
    check_against(adapter, TraceOptions.make(correct="abtt:5"), tokens=6)


@pytest.mark.slow
def test_corrected_views_equal_brute_force_minilm():
    import tokentrail as tt
    from tokentrail.engine.geometry import CorrectedRows  # noqa: F401  (the path under test)

    model = tt.load("minilm")
    run = model.run("Time flies like an arrow.")
    for spec in ("zscore", "abtt:2"):
        trail = run.trail(sites=("layer_out",), k=5, correct=spec)
        adapter = model.adapter
        _brute_check(adapter, run.acts, trail.views, spec, "encodings", "layer_out", 5)


def test_a_batch_fits_each_texts_correction_to_that_text(loaded_tiny):
    import tokentrail as tt

    texts = ["time flies like an arrow", "fruit flies like a banana . the cat sat"]
    opts = TraceOptions.make(site="layer_out", correct="abtt:2")
    together = tt.trail_many([loaded_tiny.run(t) for t in texts], opts)
    for text, trail in zip(texts, together):
        alone = loaded_tiny.run(text).trail(opts)
        np.testing.assert_allclose(trail.views[0].self_sim, alone.views[0].self_sim, atol=1e-6)
        np.testing.assert_array_equal(trail.views[0].rank, alone.views[0].rank)
