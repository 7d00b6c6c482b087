"""Corrections fitted to a corpus study (issue 9): the study's per-layer statistics by
hand, corrected rank/top-k against brute force over all V rows, metadata, and refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import tokentrail as tt
from test_geometry import _brute_check
from tokentrail.cli.commands import app
from tokentrail.corpus import study
from tokentrail.engine.capture import capture
from tokentrail.engine.geometry import fit_corpus_correction
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions
from tokentrail.store.stats import read_stats

TEXTS = [
    "time flies like an arrow .",
    "fruit flies like a banana .",
    "the cat sat on the mat .",
    "dog ran fast up the road .",
]
NEW = "the red cat ran like an arrow ."


@pytest.fixture(scope="module")
def studied(bert_folder, tmp_path_factory):
    """A study of every token (the sample holds them all), at two sites."""
    root = tmp_path_factory.mktemp("corpus") / "study"
    study(TEXTS, str(bert_folder), root, sites=["attn_resid", "layer_out"], batch=3, sample=10_000)
    return root


def _vectors(loaded):
    """Every token of the corpus by hand: (text id, embedded (n, d), layer_out (L, n, d))."""
    out = []
    for i, text in enumerate(TEXTS):
        ids = torch.as_tensor(loaded.encode(text).ids)
        with torch.no_grad():
            acts = capture(loaded.adapter, ids)
        out.append((i, acts.embedded.double(), acts.layer_out.double()))
    return out


def test_study_statistics_equal_a_hand_computation(studied, bert_folder):
    loaded = tt.load(str(bert_folder))
    per_text = _vectors(loaded)
    stats = read_stats(studied)
    layer = 1
    X = torch.cat([h[layer] for _, _, h in per_text]).numpy()  # (N, d) every token of the corpus
    texts = np.concatenate([[i] * h.shape[1] for i, _, h in per_text])
    s = stats.get("layer_out", layer)
    assert s.count == len(X)
    np.testing.assert_allclose(s.mean, X.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.std, X.std(0), rtol=1e-5, atol=1e-6)
    E = torch.cat([e for _, e, _ in per_text]).numpy()
    np.testing.assert_allclose(stats.get("embedded", 0).mean, E.mean(0), rtol=1e-6, atol=1e-7)

    # zscore: T(x) = (x - mean) / std, element by element
    z = fit_corpus_correction("zscore", s)
    x = torch.tensor(X[:3])
    np.testing.assert_allclose(z.apply(x).numpy(), (X[:3] - X.mean(0)) / X.std(0), rtol=1e-4, atol=1e-5)
    assert z.source == "corpus"
    # abtt:2: the top two principal directions of the (whole) sample, centred on the corpus mean
    a = fit_corpus_correction("abtt:2", s)
    _, _, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    P = a.U.numpy() @ a.U.numpy().T
    np.testing.assert_allclose(P, vt[:2].T @ vt[:2], atol=1e-4)
    # rogue:1: the dimension whose term of the mean cosine over pairs of tokens from
    # different texts is largest, the pairs enumerated one by one
    u = X / np.linalg.norm(X, axis=1, keepdims=True)
    terms = np.zeros(X.shape[1])
    pairs = 0
    for i in range(len(u)):
        for j in range(len(u)):
            if texts[i] != texts[j]:
                terms += u[i] * u[j]
                pairs += 1
    r = fit_corpus_correction("rogue:1", s)
    assert r.removed == (int(np.argmax(terms / pairs)),)


@pytest.mark.parametrize("spec", ["zscore", "center", "rogue:2", "abtt:2"])
def test_corpus_corrected_views_equal_brute_force(studied, bert_folder, spec):
    loaded = tt.load(str(bert_folder))
    run = loaded.run(NEW)
    trail = run.trail(
        sites=("layer_out",), similarities=("cosine", "euclidean"), k=6, correct=spec, correct_from=str(studied)
    )
    stats = read_stats(studied)
    fit = lambda layer, v: fit_corpus_correction(spec, stats.get("layer_out", layer))  # noqa: E731
    _brute_check(loaded.adapter, run.acts, trail.views, spec, "encodings", "layer_out", 6, fit=fit)
    text_fitted = run.trail(sites=("layer_out",), k=6, correct=spec)
    assert not np.allclose(trail.view("layer_out").self_sim, text_fitted.view("layer_out").self_sim)
    # recorded in the run metadata, and read back from an export
    assert trail.info.options.correct_from == str(studied)
    meta = json.loads(trail.to_json())["meta"]
    assert tt.RunInfo.from_dict(meta).options.correct_from == str(studied)


def test_refusals_are_one_clear_error(studied, bert_folder, tmp_path, make_tiny, tokenizer, save_model):
    loaded = tt.load(str(bert_folder))
    with pytest.raises(InputError, match="add --correct"):
        TraceOptions.make(correct_from=str(studied))
    with pytest.raises(InputError, match="recorded attn_resid, layer_out, not 'attn_resid_ln'"):
        loaded.run(NEW, TraceOptions.make(site="attn_resid_ln", correct="zscore", correct_from=str(studied)))
    with pytest.raises(InputError, match="holds no study"):
        loaded.run(NEW, TraceOptions.make(correct="zscore", correct_from=str(tmp_path)))
    # another checkpoint of the same architecture
    other = tt.load(str(save_model(tmp_path / "other", make_tiny("bert_mlm", seed=3), tokenizer)))
    with pytest.raises(InputError, match="was made with"):
        other.run(NEW, TraceOptions.make(correct="zscore", correct_from=str(studied)))
    # another architecture: refused from the adapter's facts, before the forward pass
    wider = tt.load(str(save_model(tmp_path / "wider", make_tiny("bert_mlm", seed=3, hidden_size=48), tokenizer)))
    with pytest.raises(InputError, match="d_model"):
        wider.run(NEW, TraceOptions.make(correct="zscore", correct_from=str(studied)))
    # a study written before the statistics were recorded
    old = tmp_path / "old"
    shutil.copytree(studied, old)
    shutil.rmtree(old / "stats")
    with pytest.raises(InputError, match="older tokentrail"):
        loaded.run(NEW, TraceOptions.make(correct="zscore", correct_from=str(old)))


def test_cli_correct_from(studied, bert_folder, tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "trace",
            NEW,
            "-m",
            str(bert_folder),
            "--site",
            "layer_out",
            "--correct",
            "zscore",
            "--correct-from",
            str(studied),
            "-t",
            "2",
            "-k",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "corrected zscore (fitted per layer to the study" in " ".join(res.output.split())
    monkeypatch.chdir(tmp_path)
    for args, message in (
        (["--correct-from", str(studied)], "add --correct"),
        (["--correct", "zscore", "--correct-from", "nowhere"], "holds no study"),
        (["--site", "mlp_out", "--correct", "zscore", "--correct-from", str(studied)], "not 'mlp_out'"),
    ):
        res = runner.invoke(app, ["trace", "hello", "-m", "no-such-model-folder", *args])
        assert res.exit_code == 2 and message in res.output and "no-such-model" not in res.output, res.output
