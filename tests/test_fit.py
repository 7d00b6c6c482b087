"""Fitted translators (issue 26): the ridge solve from float64 sums recovers a known affine
map; the corpus fit gives the same translator across batch sizes (float64 noise), an
interrupted-and-resumed run and two Ray workers (bit for bit); a translator is refused
for another model; the memory of a fit is stated and refused with the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokentrail as tt
from tokentrail.corpus.fit import fit
from tokentrail.engine.budget import check_fit, fit_bytes
from tokentrail.engine.translator import FitSums, Sums, fit_all, solve, squared_error
from tokentrail.spec.errors import InputError
from tokentrail.store.translators import load_translator

WORDS = "time flies like an arrow fruit a banana the cat sat on mat dog ran fast slow red blue green up down".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) + " ." for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the maths, on synthetic data --------------------------------------------------------


def synthetic(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + rng.normal(size=d) * 5  # anisotropic, off-centre
    A = rng.normal(size=(d, d))
    b = rng.normal(size=d)
    return torch.from_numpy(h), torch.from_numpy(h @ A + b), A, b


def test_exact_affine_map_is_recovered_from_chunked_sums():
    h, t, A, b = synthetic()
    total = Sums.zeros(6)
    for lo, hi in ((0, 1), (1, 57), (57, 300), (300, 400)):  # chunks of different sizes
        total.add(Sums.of(h[lo:hi], t[lo:hi]))
    W, c = solve(total, 0.0)
    # float64 noise: the centred normal equations of a condition number ~1e4 lose ~4 digits
    np.testing.assert_allclose(W, A, rtol=0, atol=1e-9)
    np.testing.assert_allclose(c, b, rtol=0, atol=1e-9)
    assert abs(squared_error(total, W, c)) < 1e-12 * float((t**2).sum())


def test_sums_merge_is_associative_and_error_formula_matches_direct():
    h, t, _, _ = synthetic(seed=1)
    t = t + torch.from_numpy(np.random.default_rng(2).normal(size=t.shape))  # not exactly affine
    a, b_, c = Sums.of(h[:100], t[:100]), Sums.of(h[100:250], t[100:250]), Sums.of(h[250:], t[250:])
    left = a.copy()
    left.add(b_)
    left.add(c)
    bc = b_.copy()
    bc.add(c)
    right = a.copy()
    right.add(bc)
    for name in ("sh", "st", "shh", "sht", "stt"):
        np.testing.assert_allclose(getattr(left, name), getattr(right, name), rtol=1e-13)
    W, bias = solve(left, 0.1)
    direct = float(((t.numpy() - (h.numpy() @ W + bias)) ** 2).sum())
    assert squared_error(left, W, bias) == pytest.approx(direct, rel=1e-9)
    # the ridge shrinks: a larger λ gives a larger training error
    W2, b2 = solve(left, 10.0)
    assert squared_error(left, W2, b2) > squared_error(left, W, bias)


def test_held_out_split_picks_the_ridge_and_refits_on_everything():
    h, t, A, b = synthetic(n=300, d=5, seed=3)
    noisy = t + torch.from_numpy(np.random.default_rng(4).normal(size=t.shape) * 0.01)
    fs = FitSums(train={("s", 0): Sums.of(h[:200], noisy[:200])}, held={("s", 0): Sums.of(h[200:], noisy[200:])})
    f = fit_all(fs, [0.0, 1e-8, 100.0])[("s", 0)]
    assert f.ridge < 100.0 and f.n == 300 and set(f.held_error) == {0.0, 1e-8, 100.0}
    assert f.held_error[100.0] > f.held_error[f.ridge]
    np.testing.assert_allclose(f.W, A, atol=1e-2)


def test_singular_covariance_without_ridge_is_refused():
    h = torch.ones(10, 3, dtype=torch.float64)
    with pytest.raises(InputError, match="singular"):
        solve(Sums.of(h, h), 0.0)


def test_fit_memory_is_two_l_d_squared_float64_per_site_and_refused_with_the_figure():
    assert fit_bytes(1, 30, 576) == 30 * (2 * 576 * 576 + 4 * 576) * 8
    assert fit_bytes(2, 3, 4, held_out=True) == 2 * 2 * 3 * (2 * 16 + 16) * 8
    with pytest.raises(InputError, match=r"float64 sums .*--layers"):
        check_fit(1, 30, 576, False, available=10_000_000)
    assert check_fit(1, 6, 384, False, available=10**12) == 2 * fit_bytes(1, 6, 384)


# ---- the corpus fit on the tiny BERT --------------------------------------------------------


@pytest.fixture(scope="module")
def model(bert_folder):
    return str(bert_folder)


@pytest.fixture(scope="module")
def base(model, tmp_path_factory):
    return fit(corpus(14), model, tmp_path_factory.mktemp("fit") / "t", sites=["attn_resid", "layer_out"], batch=4)


def maps_equal(a, b, atol=0.0):
    assert a.maps.keys() == b.maps.keys()
    for key in a.maps:
        for x, y in zip(a.maps[key], b.maps[key]):
            if atol == 0.0:
                assert torch.equal(x, y), key
            else:
                torch.testing.assert_close(x, y, rtol=0, atol=atol)


def test_fit_writes_a_translator_that_loads_back_equal(base, model):
    assert base.kind == "identity" and base.sites == ("attn_resid", "layer_out")
    assert base.meta["tokens"] > 0 and base.meta["texts"] == 14
    assert set(base.meta["fit"]) == {f"{s}/{layer}" for s in ("attn_resid", "layer_out") for layer in range(2)}


def test_batch_sizes_resume_and_reload_give_the_same_translator(base, model, tmp_path):
    # another batch size: the tokens' sums grouped otherwise (float64 noise) and, above
    # all, the forward pass padded to other shapes, which moves the float32 vectors by an
    # ulp or two (SPEC "Batches"); the solve carries that to ~3e-6 in W and b here
    one = fit(corpus(14), model, tmp_path / "one", sites=["attn_resid", "layer_out"], batch=1)
    maps_equal(base, one, atol=2e-5)

    # interrupted after two batches, then resumed: bit for bit
    class Stop(Exception):
        pass

    def stop(texts, tokens, skipped):
        if texts >= 8:
            raise Stop

    with pytest.raises(Stop):
        fit(corpus(14), model, tmp_path / "r", sites=["attn_resid", "layer_out"], batch=4, progress=stop)
    assert not (tmp_path / "r" / "translator.json").exists()
    import json

    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["batches_done"] == 2 and not m["complete"]
    resumed = fit(corpus(14), model, tmp_path / "r", sites=["attn_resid", "layer_out"], batch=4, resume=True)
    maps_equal(base, resumed)
    assert resumed.meta["tokens"] == base.meta["tokens"]
    maps_equal(resumed, load_translator(tmp_path / "r"))


def test_a_finished_fit_is_not_overwritten_and_options_are_checked(base, model, tmp_path):
    with pytest.raises(InputError, match="several --ridge"):
        fit(corpus(3), model, tmp_path / "x", ridge=[0.1, 1.0])
    with pytest.raises(InputError, match="kind"):
        fit(corpus(3), model, tmp_path / "x", kind="nope")
    for bad in (float("nan"), float("inf"), -1.0):  # refused before the pass, not after it
        with pytest.raises(InputError, match="--ridge takes finite values of at least 0"):
            fit(corpus(3), model, tmp_path / "x", ridge=[bad])
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="layers 0-1"):
        fit(corpus(3), model, tmp_path / "x", layers=[5])
    with pytest.raises(InputError, match="no tokens to fit"):
        fit(["", "  "], model, tmp_path / "z")
    done = fit(corpus(3), model, tmp_path / "y", layers=[1])
    assert set(done.maps) == {("attn_resid", 1)}
    with pytest.raises(InputError, match="already holds a fit"):
        fit(corpus(3), model, tmp_path / "y")


def test_translator_for_another_model_is_refused(base, tmp_path):
    from tokentrail.store.translators import save_translator

    save_translator(tmp_path / "t", base)
    info = dict(base.meta["model_info"])
    load_translator(tmp_path / "t", info)  # its own model: fine
    with pytest.raises(InputError, match="fitted on .*d_model 32.*this model has d_model 64"):
        load_translator(tmp_path / "t", {**info, "d_model": 64})


def test_prediction_translator_with_held_out_ridge(model, tmp_path):
    t = fit(
        corpus(20), model, tmp_path / "p", kind="prediction", sites=["layer_out"], ridge=[1e-6, 1e-2, 10.0], holdout=0.3
    )
    assert t.kind == "prediction"
    # the last layer's layer_out is its own target: the fit reproduces it (λ small) on the
    # vectors the model makes (a post-norm BERT's lie in a subspace: W is I only there)
    fitted = t.meta["fit"]["layer_out/1"]
    assert fitted["ridge"] < 10.0 and len(fitted["held_out_mse"]) == 3
    acts = tt.load(model).run("the cat sat on the mat .").acts
    got = t.apply("layer_out", acts.layer_out)
    assert got.shape == acts.layer_out.shape
    torch.testing.assert_close(got[1], acts.layer_out[1], atol=1e-3, rtol=1e-3)
    assert (got[0] - acts.layer_out[0]).abs().max() < (acts.layer_out[0] - acts.layer_out[1]).abs().max()


@pytest.mark.slow
def test_two_ray_workers_give_the_local_translator_bit_for_bit(base, model, tmp_path):
    pytest.importorskip("ray")
    r = fit(corpus(14), model, tmp_path / "ray", sites=["attn_resid", "layer_out"], batch=4, engine="ray", workers=2)
    maps_equal(base, r)


# ---- surfaces: tt.fit, tt.trace(translator=...) ----------------------------------------------


def test_trace_with_translator_adds_translated_views_scored_like_any_site(base, model, loaded_tiny, tmp_path):
    from tokentrail.store.translators import save_translator

    save_translator(tmp_path / "t", base)
    trail = tt.trace("the cat sat on the mat .", model=loaded_tiny, translator=tmp_path / "t", k=3)
    sites = {v.site for v in trail.views}
    assert sites == {"attn_resid", "attn_resid_translated", "layer_out_translated"}
    v = trail.view("attn_resid_translated", "encodings", "cosine")
    raw = trail.view("attn_resid", "encodings", "cosine")
    assert v.metrics["rank"].shape == raw.metrics["rank"].shape and v.top_ids.shape == raw.top_ids.shape
    # scored exactly as a site: the translated vectors through the same scoring
    acts = loaded_tiny.run("the cat sat on the mat .").acts
    t = base.apply("attn_resid", acts.site("attn_resid"))[1]  # (n, d) layer 1
    space = loaded_tiny.spaces.get("encodings")
    ids, pos = acts.input_ids, acts.position_ids
    rows = torch.cat([space.rows(ids[p : p + 1], int(pos[p])).reshape(1, -1) for p in range(len(ids))])
    own = torch.nn.functional.cosine_similarity(t, rows.to(t.dtype), dim=-1)
    np.testing.assert_allclose(v.metrics["self_sim"][1], own.numpy(), atol=1e-5)
    frame = trail.frame()
    assert frame[frame.site.str.contains("translated")].site.nunique() == 2
    # the translated identity map is close to the encodings at layer 0 of a tiny model: better than raw
    assert (v.metrics["rank"] <= raw.metrics["rank"]).mean() > 0.5


def test_prediction_translator_gives_a_fitted_lens_beside_the_logit_lens(model, loaded_tiny, tmp_path):
    t = fit(corpus(20), model, tmp_path / "p", kind="prediction", sites=["layer_out"], ridge=1e-6)
    trail = tt.trace("the cat sat on the mat .", model=loaded_tiny, translator=tmp_path / "p", lens=True, k=3)
    assert trail.lens is not None and trail.fitted_lens is not None
    assert trail.fitted_lens.site == "layer_out_translated"
    # the last layer maps to itself: its fitted lens is the logit lens there
    assert np.array_equal(trail.fitted_lens.top_ids[-1], trail.lens.top_ids[-1])
    assert t.kind == "prediction"


def test_trace_refuses_a_translator_of_another_model(base, tmp_path, make_tiny, tokenizer, save_model):
    from tokentrail.store.translators import save_translator

    save_translator(tmp_path / "t", base)
    other = save_model(tmp_path / "other", make_tiny("bert", seed=3, hidden_size=48), tokenizer)
    with pytest.raises(InputError, match="fitted on"):
        tt.trace("the cat", model=str(other), translator=tmp_path / "t")


def test_exports_and_trail_load_carry_translated_views_and_the_fitted_lens(base, model, loaded_tiny, tmp_path):
    from dataclasses import replace

    from tokentrail.store.translators import save_translator

    save_translator(tmp_path / "t", base)
    fit(corpus(6), model, tmp_path / "p", kind="prediction", sites=["layer_out"], ridge=1e-3)
    text = "the cat sat on the mat ."
    with_views = tt.trace(text, model=loaded_tiny, translator=tmp_path / "t", lens=True, k=3)
    with_lens = tt.trace(text, model=loaded_tiny, translator=tmp_path / "p", lens=True, k=3)
    trail = replace(with_views, fitted_lens=with_lens.fitted_lens, labels={**with_views.labels, **with_lens.labels})
    for fmt in ("parquet", "csv", "json"):
        back = tt.Trail.load(trail.export(tmp_path / f"t.{fmt}"))
        assert back == trail, fmt
        assert back.fitted_lens is not None and back.fitted_lens.site == "layer_out_translated"


def test_command_line_fit_then_trace_with_the_translator(model, tmp_path):
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    src = tmp_path / "c.txt"
    src.write_text("\n".join(corpus(10)) + "\n")
    cli = CliRunner()
    r = cli.invoke(app, ["fit", str(src), "--model", model, "--out", str(tmp_path / "t"), "--batch", "3", "-q"])
    assert r.exit_code == 0, r.output
    assert "an identity translator of attn_resid at 2 layers" in r.output
    r = cli.invoke(app, ["fit", str(src), "--model", model, "--out", str(tmp_path / "u"), "--ridge", "1,2"])
    assert r.exit_code == 2 and "several --ridge" in r.output
    r = cli.invoke(app, ["fit", str(src), "--model", model, "--out", str(tmp_path / "u"), "--layers", "x"])
    assert r.exit_code == 2 and "--layers takes" in r.output
    out = tmp_path / "trace.json"
    r = cli.invoke(
        app, ["trace", "the cat sat", "--model", model, "--translator", str(tmp_path / "t"), "-o", str(out), "-q"]
    )
    assert r.exit_code == 0, r.output
    back = tt.Trail.load(out)
    assert {v.site for v in back.views} == {"attn_resid", "attn_resid_translated"}
    r = cli.invoke(app, ["trace", "the cat", "--model", model, "--translator", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "holds no translator" in r.output


def test_study_with_translator_adds_translated_rows_to_the_aggregates(base, model, tmp_path):
    from tokentrail.corpus import study
    from tokentrail.store.translators import save_translator

    save_translator(tmp_path / "t", base)
    s = study(corpus(6), model, tmp_path / "s", sites=["attn_resid"], batch=3, translator=tmp_path / "t")
    sites = set(s.query("SELECT DISTINCT site FROM tokens")["site"])
    assert sites == {"attn_resid", "attn_resid_translated", "layer_out_translated"}
    by = s.aggregate()["by_class"]
    assert {"attn_resid_translated", "layer_out_translated"} <= set(by["site"])
    # the rows are the trace's translated view of each text
    loaded = tt.load(model)
    text = corpus(6)[0]
    trail = tt.trace(text, model=loaded, translator=tmp_path / "t", k=1)
    got = s.query("SELECT * FROM tokens WHERE text_id = 0 AND site = 'attn_resid_translated' ORDER BY layer, position")
    want = trail.view("attn_resid_translated", "encodings", "cosine").metrics["rank"]
    np.testing.assert_array_equal(got["rank"].to_numpy().reshape(want.shape), want)
    # a prediction translator has no views: refused
    fit(corpus(4), model, tmp_path / "p", kind="prediction", sites=["layer_out"])
    with pytest.raises(InputError, match="identity translator"):
        study(corpus(3), model, tmp_path / "s2", batch=3, translator=tmp_path / "p")


def test_lens_versus_final_agreement_and_kl(loaded_tiny):
    from tokentrail.analysis.translated import lens_versus_final

    acts = loaded_tiny.run("the cat sat on the mat .").acts
    adapter = loaded_tiny.adapter
    agree, kl = lens_versus_final(adapter, acts.layer_out, acts.layer_out[-1])
    assert agree.shape == kl.shape == acts.layer_out.shape[:2]
    assert bool(agree[-1].all()) and float(kl[-1].abs().max()) < 1e-5  # the last layer is the final prediction
    head = adapter.lens_head()
    p = torch.log_softmax(head(acts.layer_out[-1]).float(), -1)
    q = torch.log_softmax(head(acts.layer_out[0]).float(), -1)
    want = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)  # KL(p || q)
    torch.testing.assert_close(kl[0], want, rtol=1e-5, atol=1e-6)
    assert torch.equal(agree[0], q.argmax(-1) == p.argmax(-1))


def test_fit_refuses_a_falling_layer_range_in_one_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Time flies like an arrow.\n")
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    res = CliRunner().invoke(app, ["fit", str(corpus), "--out", str(tmp_path / "f"), "--layers", "5-2"])
    assert res.exit_code == 2 and "a range goes up (2-4), not '5-2'" in res.output, res.output
