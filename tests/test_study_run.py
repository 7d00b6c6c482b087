"""Corpus studies end to end on the tiny random BERT: batch = single text = trace,
DuckDB aggregates = pandas, bad-record accounting, kill-and-resume, Ray = local."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import tokentrail as tt
from tokentrail.corpus import Study, study
from tokentrail.engine.capture import capture
from tokentrail.spec.errors import InputError

WORDS = "time flies like an arrow fruit a banana the cat sat on mat dog ran fast slow red blue green up down".split()
ORDER = "text_id, site, layer, position"


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) + " ." for _ in range(n)]


def rows(s: Study) -> pd.DataFrame:
    return s.query(f"SELECT * FROM tokens ORDER BY {ORDER}")


def assert_same_rows_to_fp32_noise(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Every id, count, word and label equal; every float within fp32 noise (SPEC
    "Batches"). A padded batch runs its matrix products at other shapes, and on some CPUs
    (AVX-512 kernels) that moves floats by an ulp or two: norms of ~10 by ~2e-6, cosines
    by ~2e-7 (an adjusted cosine near 0 is then off by far more than 1e-5 of itself)."""
    floats = [c for c in want.columns if want[c].dtype.kind == "f"]
    exact = [c for c in want.columns if c not in floats]
    pd.testing.assert_frame_equal(got[exact], want[exact], check_exact=True)
    pd.testing.assert_frame_equal(got[floats], want[floats], check_exact=False, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~100x faster on one thread on a busy shared CPU (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(bert_folder):
    return str(bert_folder)


@pytest.fixture(scope="module")
def small(model, tmp_path_factory):
    """A small study at two sites, every token in the anisotropy sample."""
    return study(
        corpus(14), model, tmp_path_factory.mktemp("small"), sites=["attn_resid", "layer_out"], batch=4, sample=10_000
    )


def test_batches_give_what_each_text_alone_gives(small, model, tmp_path):
    one = study(corpus(14), model, tmp_path / "one", sites=["attn_resid", "layer_out"], batch=1, sample=10_000)
    assert_same_rows_to_fp32_noise(rows(small), rows(one))
    assert sorted(p.name for p in (small.root / "data").iterdir()) == [f"part-{b:06d}.parquet" for b in range(4)]


def test_rows_equal_a_trace_of_each_text(small, model):
    loaded = tt.load(model)
    df = rows(small)
    for i, text in enumerate(corpus(14)[:4]):
        trail = tt.trace(text, loaded, site=["attn_resid", "layer_out"])  # the default overlap k, as the study
        acts = capture(loaded.adapter, torch.tensor(trail.ids))
        for site in ("attn_resid", "layer_out"):
            v = trail.view(site)
            got = df[(df.text_id == i) & (df.site == site)]
            L, n = v.rank.shape
            assert len(got) == L * n
            np.testing.assert_allclose(got.self_sim.to_numpy().reshape(L, n), v.self_sim, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got["rank"].to_numpy().reshape(L, n), v.rank)
            np.testing.assert_array_equal(got.overlap.to_numpy().reshape(L, n), v.overlap)
            np.testing.assert_array_equal(got.top1_id.to_numpy().reshape(L, n), v.top_ids[..., 0])
            np.testing.assert_allclose(
                got.adjusted_self_sim.to_numpy().reshape(L, n), v.adjusted_self_sim, rtol=1e-5, atol=1e-6
            )
            np.testing.assert_array_equal(got.token_id.to_numpy().reshape(L, n)[0], trail.ids)
            norms = acts.site(site).norm(dim=-1).numpy()
            np.testing.assert_allclose(got.norm.to_numpy().reshape(L, n), norms, rtol=1e-5)
        # layer_out is the framework's own hidden state: the norm column follows it
        lo = df[(df.text_id == i) & (df.site == "layer_out")]
        hs = torch.stack(acts.hidden_states[1:]).norm(dim=-1).numpy()
        np.testing.assert_allclose(lo.norm.to_numpy().reshape(hs.shape), hs, rtol=1e-4)


def test_duckdb_aggregates_equal_pandas(small, model):
    agg = small.aggregate()
    df = pq.read_table(small.root / "data").to_pandas()
    g = df.groupby(["site", "layer", "word_class"])
    want = pd.DataFrame(
        {
            "n": g.size(),
            "self_sim_mean": g.self_sim.mean(),
            "self_sim_median": g.self_sim.median(),
            "self_sim_q10": g.self_sim.quantile(0.1),
            "self_sim_q90": g.self_sim.quantile(0.9),
            "rank_mean": g["rank"].mean(),
            "rank_median": g["rank"].median(),
            "rank_q75": g["rank"].quantile(0.75),
            "overlap_mean": g.overlap.mean(),
            "overlap_q25": g.overlap.quantile(0.25),
            "norm_mean": g.norm.mean(),
        }
    ).reset_index()
    got = agg["by_class"].merge(want, on=["site", "layer", "word_class"], suffixes=("", "_pd"))
    assert len(got) == len(want) == len(agg["by_class"])
    for col in want.columns[3:]:
        np.testing.assert_allclose(got[col].astype(float), got[col + "_pd"].astype(float), rtol=1e-5, err_msg=col)
    # jumps: each token's own change from the layer before, averaged per class
    d = df.sort_values(["site", "text_id", "position", "layer"]).copy()
    d["d"] = d.groupby(["site", "text_id", "position"]).self_sim.diff()
    paired = d[d.layer >= 1].groupby(["site", "word_class", "layer"]).d.mean().reset_index()
    j = agg["jumps"].merge(paired, on=["site", "word_class", "layer"])
    assert len(j) == len(paired) == len(agg["jumps"])
    np.testing.assert_allclose(j.d_self_sim_paired, j.d, rtol=1e-5, atol=1e-7)
    # frequent tokens: occurrences counted once per token (one site, one layer)
    bt = agg["by_token"]
    top = df[(df.layer == 0) & (df.site == "attn_resid")].token_id.value_counts()
    for tid, n in bt.groupby("token_id").occurrences.first().items():
        assert n == top[tid]


def test_corpus_anisotropy_is_the_mean_cosine_of_pairs_from_different_texts(small, model):
    loaded = tt.load(model)
    vecs, owner = {}, []
    for i, text in enumerate(corpus(14)):
        ids = loaded.tokenizer(text)["input_ids"]
        acts = capture(loaded.adapter, torch.tensor(ids))
        for site in ("attn_resid", "layer_out"):
            vecs.setdefault(site, []).append(acts.site(site).double())  # (L, n, d)
        owner += [i] * len(ids)
    owner = np.array(owner)
    other = owner[:, None] != owner[None, :]
    an = small.aggregate()["anisotropy"]
    assert small.manifest["sample"] == {**small.manifest["sample"], "size": 10_000, "seed": 0}
    for site in ("attn_resid", "layer_out"):
        v = torch.cat(vecs[site], dim=1)  # (L, N, d): the sample holds every token here
        u = v / v.norm(dim=-1, keepdim=True)
        cos = (u @ u.transpose(1, 2)).numpy()
        want = [cos[layer][other].mean() for layer in range(v.shape[0])]
        got = an[an.site == site].sort_values("layer")
        np.testing.assert_allclose(got.anisotropy, want, rtol=1e-5)
        assert (got.tokens == len(owner)).all()


def test_the_sample_is_the_smallest_keys_and_bounded(model, tmp_path):
    from tokentrail.corpus.compute import sample_key
    from tokentrail.store.aggregate import sample_vectors

    s = study(corpus(14), model, tmp_path / "s", batch=3, sample=7, seed=3)
    chosen = sample_vectors(s._con, 7)
    df = rows(s)
    tokens = df[(df.layer == 0)][["text_id", "position"]].to_numpy()
    keys = sorted((sample_key(3, int(t), int(p)), int(t), int(p)) for t, p in tokens)[:7]
    assert sorted(set(zip(chosen.text_id, chosen.position))) == sorted((t, p) for _, t, p in keys)
    written = s.query("SELECT count(DISTINCT (text_id, position)) AS n FROM sample").n[0]
    assert written <= 7 * 5  # at most the sample size per batch, however many tokens


def write_bad_corpus(path: Path) -> list[str]:
    good = corpus(6, seed=1)
    lines = [
        good[0].encode(),
        b"",
        good[1].encode(),
        b"\xff\xfe not utf-8",
        good[2].encode(),
        b"ctrl \x07 bell",
        good[3].encode(),
        " ".join(["banana"] * 40).encode(),
        b"   ",
        good[4].encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good


def test_bad_records_are_counted_sampled_and_skipped(model, tmp_path):
    src = tmp_path / "bad.txt"
    good = write_bad_corpus(src)
    s = study(src, model, tmp_path / "out", batch=2)
    m = s.manifest
    assert m["complete"] and m["texts"] == 5
    assert m["skipped"]["counts"] == {
        "empty": 2,
        "undecodable (not UTF-8)": 1,
        "invalid (control character or lone surrogate)": 1,
        "over-long (more than 24 tokens)": 1,
    }
    assert m["skipped"]["total"] == 5
    assert {x["record"] for x in m["skipped"]["samples"]} == {1, 3, 5, 7, 8}
    ids = s.query("SELECT DISTINCT text_id FROM tokens ORDER BY 1").text_id.tolist()
    assert ids == [0, 2, 4, 6, 9]  # a text keeps its line number as id
    with pytest.raises(InputError, match="record 1 .*--strict"):
        study(src, model, tmp_path / "strict", strict=True)
    with pytest.raises(InputError, match="record 1 .*over-long"):
        study([good[0], " ".join(["banana"] * 40)] * 4, model, tmp_path / "strict2", strict=True, limit=None, batch=1)


def test_table_inputs_and_limit(model, tmp_path):
    texts = corpus(5)
    pd.DataFrame({"id": range(5), "body": texts}).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame({"body": texts}).to_parquet(tmp_path / "c.parquet")
    a = study(tmp_path / "c.csv", model, tmp_path / "a", column="body", limit=3)
    b = study(tmp_path / "c.parquet", model, tmp_path / "b", column="body", limit=3)
    c = study(texts[:3], model, tmp_path / "c")
    assert a.manifest["texts"] == 3
    pd.testing.assert_frame_equal(rows(a), rows(b))
    pd.testing.assert_frame_equal(rows(a), rows(c))
    with pytest.raises(InputError, match="no column 'text'.*body"):
        study(tmp_path / "c.csv", model, tmp_path / "d")


def test_refusals_come_before_model_work(tmp_path):
    missing = "no-such-owner/no-such-model"
    src = tmp_path / "t.txt"
    src.write_text("the cat\n")
    with pytest.raises(InputError, match="no input file"):
        study(tmp_path / "nope.txt", missing, tmp_path / "o")
    with pytest.raises(InputError, match="residual-stream sites"):
        study(src, missing, tmp_path / "o", sites=["heads"])
    with pytest.raises(InputError, match="no study"):
        study(src, missing, tmp_path / "o", resume=True)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a study"):
        study(src, missing, tmp_path / "o")


def test_resume_refuses_a_different_run(model, tmp_path):
    texts = corpus(4)
    study(texts, model, tmp_path / "o", batch=2)
    with pytest.raises(InputError, match="options"):
        study(texts, model, tmp_path / "o", batch=3, resume=True)
    with pytest.raises(InputError, match="input"):
        study(texts[:3], model, tmp_path / "o", batch=2, resume=True)


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tokentrail.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


N_KILL = 200


@pytest.mark.slow  # three CLI processes and 200 batches: about a minute on a busy 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_to_the_same_dataset(model, tmp_path, sig):
    src = tmp_path / "c.txt"
    src.write_text("\n".join(corpus(N_KILL, seed=2)) + "\n")
    args = ["study", str(src), "--model", model, "--batch", "1", "--sample", "50", "-q"]
    whole = _cli([*args, "--out", str(tmp_path / "whole")])
    cut = _cli([*args, "--out", str(tmp_path / "cut")])
    data = tmp_path / "cut" / "data"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not data.exists() or len(list(data.glob("part-*.parquet"))) < 5):
        time.sleep(0.01)
    cut.send_signal(sig)
    _, err = cut.communicate(timeout=60)
    parts = len(list(data.glob("part-*.parquet")))
    assert 5 <= parts < N_KILL, "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
        assert cut.returncode == 130 and b"--resume" in err
        assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"] is False
    for p in data.glob("part-*.parquet"):
        pq.read_table(p)  # every file left is whole
    assert not [p for p in data.iterdir() if not p.name.startswith("part-")] or sig == signal.SIGKILL
    resumed = _cli([*args, "--out", str(tmp_path / "cut"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    a, b = Study(tmp_path / "whole"), Study(tmp_path / "cut")
    # two processes run at once on all cores: floats agree to fp32 noise (margin, a
    # difference of two cosines, carries their absolute noise however small it is)
    assert_same_rows_to_fp32_noise(rows(b), rows(a))
    assert b.manifest["complete"] and b.manifest["texts"] == a.manifest["texts"] == N_KILL
    assert b.manifest["tokens"] == a.manifest["tokens"]
    for name in ("by_class", "anisotropy", "jumps"):
        pd.testing.assert_frame_equal(a.aggregate()[name], b.aggregate()[name], atol=1e-6)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    src = tmp_path / "t.txt"
    src.write_text("the cat\n")
    for args, msg in [
        (["study", str(tmp_path / "nope.txt"), "--model", "no-such-owner/x"], "no input file"),
        (["study", str(src), "--site", "heads", "--model", "no-such-owner/x"], "residual-stream sites"),
        (["study", str(src), "--column", "x", "--model", "no-such-owner/x"], "--column is for CSV"),
        (["study", str(src), "--engine", "spark", "--model", "no-such-owner/x"], "unknown engine"),
        (["report", str(tmp_path)], "no study"),
    ]:
        r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "o")] if args[0] == "study" else args)
        text = r.output.rstrip("\n")  # nothing before the line: no empty progress display either
        assert r.exit_code == 2, text
        assert msg in text and "Traceback" not in text and len(text.splitlines()) == 1, repr(text)


def test_cli_says_what_loads_before_the_texts_and_nothing_when_quiet(model, tmp_path):
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    src = tmp_path / "t.txt"
    src.write_text("the cat sat .\ntime flies .\n")
    model = str(shutil.copytree(model, tmp_path / "model"))  # a folder no test loaded yet: it does load
    r = CliRunner().invoke(app, ["study", str(src), "--model", model, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"… loading {model}", lines  # first, while the model loads (a spinner on a terminal)
    assert lines[-1].startswith(f"wrote {tmp_path / 'a'}: 2 texts")
    q = CliRunner().invoke(app, ["study", str(src), "--model", model, "-o", str(tmp_path / "b"), "-q"])
    assert q.exit_code == 0 and "loading" not in q.output and q.output.startswith("wrote "), q.output


def test_interrupted_run_resumes_to_the_same_dataset(model, tmp_path):
    """In process: Ctrl-C after three batches, then --resume (the subprocess kill tests
    below do the same with real signals)."""
    texts = corpus(20, seed=4)
    whole = study(texts, model, tmp_path / "whole", batch=2, sample=9)

    def stop_after_three(texts_done, tokens, bad):
        if texts_done >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study(texts, model, tmp_path / "cut", batch=2, sample=9, progress=stop_after_three)
    cut = Study(tmp_path / "cut")
    assert not cut.complete and cut.manifest["batches_done"] == 3 and cut.manifest["texts"] == 6
    resumed = study(texts, model, tmp_path / "cut", batch=2, sample=9, resume=True)
    pd.testing.assert_frame_equal(rows(whole), rows(resumed))
    assert (
        resumed.complete and resumed.manifest["texts"] == 20 and resumed.manifest["tokens"] == whole.manifest["tokens"]
    )
    pd.testing.assert_frame_equal(whole.aggregate()["anisotropy"], resumed.aggregate()["anisotropy"])


def test_report_is_one_offline_html_file(small, tmp_path):
    path = small.report(tmp_path / "r.html")
    text = path.read_text()
    import re

    assert text.count("<script") >= 5 and not re.search(
        r"<script[^>]*\bsrc=", text
    )  # plotly.js inline, nothing fetched
    assert text.count("Plotly.newPlot") >= 5
    assert "Plotly" in text and small.manifest["model"] in text and "by layer and word class".lower() in text.lower()


@pytest.mark.slow
def test_ray_engine_equals_local(small, model, tmp_path):
    pytest.importorskip("ray")
    r = study(
        corpus(14),
        model,
        tmp_path / "ray",
        sites=["attn_resid", "layer_out"],
        batch=4,
        sample=10_000,
        engine="ray",
        workers=2,
    )
    pd.testing.assert_frame_equal(rows(small), rows(r))
    assert r.manifest["engine"] == "ray" and r.manifest["complete"]
    pd.testing.assert_frame_equal(small.aggregate()["anisotropy"], r.aggregate()["anisotropy"])


def test_forward_groups_sort_by_length_and_keep_under_the_budget():
    from tokentrail.corpus.compute import activation_bytes, forward_groups

    L, H, d = 2, 2, 4
    one = lambda n: 4 * (L * H * n * n + 6 * L * n * d)  # noqa: E731 - budget.estimate's activations, by hand
    assert activation_bytes(3, L, H, d) == one(3) == 4 * (2 * 2 * 9 + 6 * 2 * 3 * 4)
    lengths = [5, 2, 9, 2, 5]
    # budget for two texts of 5 tokens, padded: the two 2-token texts fit with one 5 (3 x one(5) > budget)
    groups = forward_groups(lengths, L, H, d, budget=2 * one(5))
    assert groups == [[1, 3], [0, 4], [2]]  # shortest first, ties by input order; the 9 alone
    assert forward_groups(lengths, L, H, d, budget=1) == [[1], [3], [0], [4], [2]]  # over budget: one text each
    assert forward_groups(lengths, L, H, d, budget=10**12) == [[1, 3, 0, 4, 2]]
    assert forward_groups([], L, H, d) == []


def test_forward_groups_do_not_change_the_rows(small, model, tmp_path, monkeypatch):
    from tokentrail.corpus import compute

    monkeypatch.setattr(compute, "FORWARD_BYTES", 1)  # every text its own forward pass
    alone = study(corpus(14), model, tmp_path / "alone", sites=["attn_resid", "layer_out"], batch=4, sample=10_000)
    assert_same_rows_to_fp32_noise(rows(small), rows(alone))
    for p in sorted((small.root / "sample").iterdir()):
        a, b = pq.read_table(p).to_pandas(), pq.read_table(alone.root / "sample" / p.name).to_pandas()
        pd.testing.assert_frame_equal(a.drop(columns="vector"), b.drop(columns="vector"))  # the same tokens
        np.testing.assert_allclose(
            np.stack(a.vector), np.stack(b.vector), rtol=1e-5, atol=1e-6
        )  # padding: fp32 rounding only


def test_freq_rank_is_the_rank_by_count_in_the_corpus(model, tmp_path):
    s = study(["the cat the", "the dog", "cat"], model, tmp_path / "f", sample=100)
    tok = tt.load(model).tokenizer
    the, cat, dog = (tok.convert_tokens_to_ids(w) for w in ("the", "cat", "dog"))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    # by hand: [CLS] 3, [SEP] 3, the 3, cat 2, dog 1 -> ranks 1, 1, 1, 4, 5 (ties share a rank)
    want = {cls: (3, 1), sep: (3, 1), the: (3, 1), cat: (2, 4), dog: (1, 5)}
    got = s.query("SELECT token_id, count, freq_rank FROM freq")
    assert {int(r.token_id): (int(r.count), int(r.freq_rank)) for r in got.itertuples()} == want
    per_row = s.query("SELECT DISTINCT token_id, freq_rank FROM tokens")
    assert {int(r.token_id): int(r.freq_rank) for r in per_row.itertuples()} == {i: r for i, (_, r) in want.items()}
    assert (
        s.manifest["freq_rank"]["source"] == "corpus"
        and "rank by count in this corpus" in s.manifest["freq_rank"]["definition"]
    )
    bt = s.aggregate()["by_token"]
    assert set(bt.columns) >= {"freq_rank", "occurrences"}


def test_freq_rank_from_a_frequencies_file(model, tmp_path):
    tok = tt.load(model).tokenizer
    cat = tok.convert_tokens_to_ids("cat")
    f = tmp_path / "freq.tsv"
    # the: 500, #<cat's id>: 900 (by id), dog: 500 (tie with the), and one word the vocabulary lacks
    f.write_text(f"the\t500\n#{cat}\t900\n\ndog\t500\nnot-a-token-here\t7\n", encoding="utf-8")
    s = study(["the cat the", "the dog", "cat"], model, tmp_path / "f", sample=100, frequencies=f)
    ranks = s.query("SELECT DISTINCT token, freq_rank FROM tokens").set_index("token").freq_rank
    assert ranks["cat"] == 1 and ranks["the"] == 2 and ranks["dog"] == 2
    assert pd.isna(ranks["[CLS]"]) and pd.isna(ranks["[SEP]"])  # not in the file: unknown
    fr = s.manifest["freq_rank"]
    assert (fr["source"], fr["matched"], fr["not_in_vocabulary"]) == ("file", 3, 1)
    assert s.manifest["frequencies"]["name"] == "freq.tsv"
    # resuming with another file is refused before any model work
    g = tmp_path / "other.tsv"
    g.write_text("the\t1\n", encoding="utf-8")
    with pytest.raises(InputError, match="frequencies"):
        study(["the cat the", "the dog", "cat"], model, tmp_path / "f", sample=100, frequencies=g, resume=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ("the 5\n", "expected TOKEN<TAB>COUNT"),
        ("the\tfive\n", "not a whole number"),
        ("the\t-1\n", "not a whole number"),
        ("the\t1\nthe\t2\n", "listed twice"),
        ("\n\n", "lists no tokens"),
    ],
)
def test_bad_frequencies_files_are_refused_with_the_line(tmp_path, content, message):
    f = tmp_path / "freq.tsv"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        study(["a b"], "no-such-model-is-loaded", tmp_path / "s", frequencies=f)  # refused before the model is resolved


def test_an_oversized_frequencies_file_is_refused_with_its_size_before_reading(tmp_path):
    from tokentrail.store.frequencies import MAX_FILE_BYTES

    f = tmp_path / "freq.tsv"
    with open(f, "wb") as out:
        out.write(b"the\t5\n")
        out.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk, no memory
    with pytest.raises(InputError, match=r"is 256 MiB; .* at most 256 MiB"):
        study(["a b"], "no-such-model-is-loaded", tmp_path / "s", frequencies=f)


def test_frequencies_no_token_in_the_vocabulary_is_refused(model, tmp_path):
    f = tmp_path / "freq.tsv"
    f.write_text("zzzqqq\t5\n", encoding="utf-8")
    with pytest.raises(InputError, match="none of its 1 tokens"):
        study(["a b"], model, tmp_path / "s", frequencies=f)
