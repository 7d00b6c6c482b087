"""tt.compare: one word in two contexts, two tokens of one text, one text in two models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import tokentrail as tt
from tokentrail.cli.commands import app
from tokentrail.session.comparing import _overlaps
from tokentrail.session.comparison import _trim, align_spans
from tokentrail.spec.errors import InputError

TEXT = "time flies like an arrow . fruit flies like a banana"
runner = CliRunner()


# ---- pure definitions, hand-computed ------------------------------------------------------
def test_align_spans_by_character_overlap():
    # "café 3.14": a = [CLS] café 3 . 14 [SEP]; b = C af é ␣3 . 1 4
    a = [None, (0, 4), (5, 6), (6, 7), (7, 9), None]
    b = [(0, 1), (1, 3), (3, 4), (5, 6), (6, 7), (7, 8), (8, 9)]
    assert align_spans(a, b) == ((), (0, 1, 2), (3,), (4,), (5, 6), ())
    assert align_spans(b, a)[1] == (1,) and align_spans(b, a)[6] == (4,)
    # touching spans do not overlap (half-open)
    assert align_spans([(0, 2)], [(2, 4), (1, 3)]) == ((1,),)


def test_trim_drops_surrounding_whitespace():
    text = "a  bank\n"
    assert _trim(text, 1, 7) == (3, 7)
    assert _trim(text, 1, 3) is None  # only spaces: no characters
    assert _trim(text, 7, 8) is None


def test_overlaps_count_shared_ids_per_cell():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 9], [7, 8, 9]])
    np.testing.assert_array_equal(_overlaps(a, b), [2.0, 0.0])


# ---- one model, tiny ---------------------------------------------------------------------------
@pytest.mark.parametrize("site", ["attn_resid", "layer_out", "heads"])
def test_a_text_compared_with_itself_is_identical_at_every_layer(loaded_tiny, site):
    c = tt.compare(TEXT, TEXT, model=loaded_tiny, token="flies:1", site=site, k=4, overlap_k=10)
    assert c.a.token == c.b.token == 8
    np.testing.assert_allclose(c.cosine, 1.0, atol=1e-6)
    assert (c.overlap == 10).all()
    np.testing.assert_array_equal(c.a.top_ids, c.b.top_ids)
    for layer in range(c.a.n_layers):
        for head in range(c.a.n_heads) if c.per_head else [None]:
            assert c.separating("a", layer, head).empty and c.separating("b", layer, head).empty
    # the same word at two places of the text is not the same vector: the test can fail
    two = tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:1", site=site, k=4, overlap_k=10)
    assert (two.a.token, two.b.token) == (2, 8)
    assert two.cosine.min() < 0.999


def test_cosine_and_sides_match_the_run(loaded_tiny):
    c = tt.compare(TEXT, "the cat sat on the mat", model=loaded_tiny, token="like", token_b="cat", k=5, overlap_k=12)
    ra, rb = loaded_tiny.run(TEXT), loaded_tiny.run("the cat sat on the mat")
    va, vb = ra.acts.attn_resid[:, 3], rb.acts.attn_resid[:, 2]
    want = torch.nn.functional.cosine_similarity(va, vb, dim=-1).numpy()
    np.testing.assert_allclose(c.cosine, want, rtol=1e-5, atol=1e-6)
    ta = ra.trail(k=12, overlap_k=12).view()
    np.testing.assert_allclose(c.a.self_sim, ta.self_sim[:, 3])
    np.testing.assert_array_equal(c.a.rank, ta.rank[:, 3])
    layer = c.diverge[0]
    assert c.cosine[layer] == c.cosine.min()
    # separating: in a's set of 12, not in b's, a's order, at most k
    sep = c.separating("a", layer)
    other = set(c.b.top_ids[layer, :12].tolist())
    want_ids = [i for i in c.a.top_ids[layer, :12].tolist() if i not in other][:5]
    assert sep["id"].tolist() == want_ids
    assert c.overlap[layer] == 12 - len([i for i in c.a.top_ids[layer, :12].tolist() if i not in other])


def test_causal_prefix_gives_identical_vectors_until_the_first_difference(tokenizer):
    from test_parity_decoders import tiny_model

    model = tt.load(tiny_model("llama"), tokenizer=tokenizer)
    a, b = "time flies like an arrow", "time flies like the arrow"  # [CLS] time flies like | an/the arrow [SEP]
    for t in range(4):  # the shared prefix
        c = tt.compare(a, b, model=model, token=t, k=3, overlap_k=5, causal=True)
        np.testing.assert_allclose(c.cosine, 1.0, atol=1e-6)
        np.testing.assert_allclose(c.a.self_sim, c.b.self_sim, atol=1e-6)
        assert (c.overlap == 5).all()
        h = tt.compare(a, b, model=model, token=t, k=3, overlap_k=5, causal=True, site="heads")
        np.testing.assert_allclose(h.cosine, 1.0, atol=1e-6)
    after = tt.compare(a, b, model=model, token="arrow", k=3, overlap_k=5, causal=True)
    assert after.cosine.min() < 0.999  # same token, but it has read a different word
    both_ways = tt.compare(a, b, model=model, token=1, k=3, overlap_k=5, causal=False)
    assert both_ways.cosine.min() < 0.999  # without the mask the prefix sees the difference


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "gemma", "phi"])
@pytest.mark.parametrize("site", ["layer_out", "heads"])
def test_every_decoder_family_and_site(tokenizer, family, site):
    from test_parity_decoders import tiny_model

    model = tt.load(tiny_model(family), tokenizer=tokenizer)
    c = tt.compare(TEXT, model=model, token="flies:0", token_b="flies:1", site=site, k=3, overlap_k=5)
    L, H = model.adapter.n_layers, model.adapter.n_heads
    assert c.cosine.shape == ((L, H) if site == "heads" else (L,))
    assert np.all(c.cosine <= 1 + 1e-6) and c.cosine.min() < 0.999
    assert c.a.self_sim.shape == c.cosine.shape and c.a.top_ids.shape == (*c.cosine.shape, 5)
    same = tt.compare(TEXT, TEXT, model=model, token="flies:1", site=site, k=3, overlap_k=5)
    np.testing.assert_allclose(same.cosine, 1.0, atol=1e-6)


def test_errors_are_clear(loaded_tiny):
    with pytest.raises(InputError, match=r"no token 'bank' in the text; tokens are 0:\[CLS\] 1:time"):
        tt.compare(TEXT, TEXT, model=loaded_tiny, token="bank")
    with pytest.raises(InputError, match=r"'flies' occurs 2 time\(s\) \(at 2, 8\)"):
        tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:2")
    with pytest.raises(InputError, match="give two tokens"):
        tt.compare(TEXT, model=loaded_tiny, token="flies")
    with pytest.raises(InputError, match="give the token"):
        tt.compare(TEXT, TEXT, model=loaded_tiny)
    with pytest.raises(InputError, match="heads site compares with value or key or query"):
        tt.compare(TEXT, TEXT, model=loaded_tiny, token=1, site="heads", space="encodings")
    with pytest.raises(InputError, match="compare takes one site"):
        tt.compare(TEXT, TEXT, model=loaded_tiny, token=1, site="attn_resid,layer_out")
    with pytest.raises(InputError, match="overlap k = 500 is more than the vocabulary of 96"):
        tt.compare(TEXT, TEXT, model=loaded_tiny, token=1, overlap_k=500)
    with pytest.raises(InputError, match="causal is for decoders"):
        tt.compare(TEXT, TEXT, model=loaded_tiny, token=1, causal=True)
    with pytest.raises(InputError, match="the text is empty"):
        tt.compare(TEXT, "  ", model=loaded_tiny, token=1)


def test_frame_and_exports(loaded_tiny, tmp_path):
    c = tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:1", k=3, overlap_k=6)
    f = c.frame()
    assert set(f["side"]) == {"a", "b", "ab"}
    assert set(f[f.side == "ab"]["metric"]) == {"cosine", "overlap"}
    assert set(f[f.side == "a"]["metric"]) == {"self_sim", "rank"}
    L = loaded_tiny.adapter.n_layers
    assert len(f) == 6 * L
    cos = f[(f.side == "ab") & (f.metric == "cosine")].sort_values("layer")["value"].to_numpy()
    np.testing.assert_allclose(cos, c.cosine)
    n = c.neighbours_frame()
    assert set(n["side"]) == {"a", "b"} and n["separating"].dtype == bool
    assert len(n) == 2 * L * 6
    for fmt in ("csv", "json", "parquet"):
        path = c.export(tmp_path / f"c.{fmt}")
        assert path.stat().st_size > 0
    back = pd.read_parquet(tmp_path / "c.parquet")
    pd.testing.assert_frame_equal(back, f, check_dtype=False)
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["meta"]["sides"]["b"]["token"] == 8 and doc["meta"]["diverge_layer"] == c.diverge[0]
    with pytest.raises(InputError, match="unknown export format"):
        c.export(tmp_path / "c.xlsx")


def test_plots_build_from_the_result(loaded_tiny):
    from tokentrail.present.plots_compare import compare_heatmaps, compare_lines, cosine_figure

    c = tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:1", k=3, overlap_k=6)
    assert len(compare_lines(c).data) == 2
    assert list(cosine_figure(c).data[0].y) == pytest.approx(list(c.cosine))
    heat = compare_heatmaps(c)
    assert heat.data[0].zmin == heat.data[1].zmin and heat.data[0].zmax == heat.data[1].zmax
    h = tt.compare(TEXT, model=loaded_tiny, token="flies:0", token_b="flies:1", site="heads", k=3, overlap_k=6)
    assert np.asarray(cosine_figure(h).data[0].z).shape == h.cosine.shape
    with pytest.raises(ValueError, match="residual site"):
        compare_heatmaps(h)


# ---- the command ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["x"], "give two tokens"),
        (["x", "-t", "a", "-t", "b", "-t", "c"], "one or two --token"),
        (["x", "-m", "a", "-m", "b", "-m", "c", "-t", "1"], "one or two --model"),
        (["x", "y"], "give the token"),
        (["x", "y", "-t", "1", "--site", "heads", "--space", "embeddings"], "heads site compares with"),
        (["x", "y", "-t", "1", "--head", "0"], "--head selects a head"),
        (["x", "-m", "a", "-m", "b", "-t", "1", "--site", "heads"], "two models have different heads"),
        (["", "y", "-t", "1"], "the text is empty"),
        (["x", "y", "-t", "1", "-f", "parquet"], "--format parquet needs --out"),
    ],
)
def test_cli_refuses_bad_input_in_one_line_before_model_work(args, message):
    res = runner.invoke(app, ["compare", *args])
    assert res.exit_code == 2
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output


def test_cli_compares_and_exports(bert_folder, tmp_path):
    res = runner.invoke(
        app, ["compare", TEXT, "-m", str(bert_folder), "-t", "flies:0", "-t", "flies:1", "--overlap-k", "8", "-k", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "they diverge most at layer" in res.output and "shared" in res.output
    assert re.search(r"\b\d/8\b", res.output), res.output  # shared neighbours out of --overlap-k
    res = runner.invoke(app, ["compare", TEXT, "-m", str(bert_folder), "-t", "flies:0", "-t", "flies:9"])
    assert res.exit_code == 2 and "occurs 2 time(s)" in res.output
    out = tmp_path / "c.csv"
    res = runner.invoke(
        app, ["compare", TEXT, "-m", str(bert_folder), "-t", "flies:0", "-t", "flies:1", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(out)["side"]) == {"a", "b", "ab"}


def test_cli_says_what_loads_and_runs_unless_quiet(bert_folder, tmp_path):
    model = str(shutil.copytree(bert_folder, tmp_path / "model"))  # not loaded by another test: it does load
    res = runner.invoke(app, ["compare", TEXT, "-m", model, "-t", "flies:0", "-t", "flies:1"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[:2] == [f"… loading {model}", "… running both sides"], res.output
    res = runner.invoke(app, ["compare", TEXT, "-m", model, "-t", "flies:0", "-t", "flies:1", "-q"])
    assert res.exit_code == 0 and "…" not in res.output and "they diverge most at layer" in res.output, res.output


# ---- real models ----------------------------------------------------------------------------
@pytest.mark.slow
def test_spans_align_across_minilm_and_smollm2_tokenizers():
    from tokentrail.session.comparison import token_spans

    mini, smol = tt.load("minilm"), tt.load("smollm2")
    cases = {
        "Café à 3.14, naïve!": ("naive", "ïve"),  # accents: BERT strips them, its spans keep the original characters
        "It costs $1,234.56 (approx.)": ("234", "4"),
        "don't stop-and-go...": ("stop", "stop"),
    }
    for text, (word_a, last_b) in cases.items():
        ea, eb = mini.encode(text), smol.encode(text)
        sa, sb = token_spans(mini, text, ea.ids.tolist()), token_spans(smol, text, eb.ids.tolist())
        assert sa[0] is None and sa[-1] is None  # [CLS], [SEP]
        for tok, span in zip(ea.tokens, sa):  # every real token's span reads as the token
            if span is not None:
                piece = text[span[0] : span[1]].lower()
                assert tok.replace("##", "") in (piece, piece.encode("ascii", "ignore").decode()) or len(
                    tok.replace("##", "")
                ) == len(piece), (tok, piece)
        al = align_spans(sa, sb)
        t = ea.tokens.index(word_a)
        assert al[t] and eb.tokens[al[t][-1]].replace("␣", "").endswith(last_b), (text, al[t], eb.tokens)
        covered = {j for js in al for j in js}
        assert covered == {j for j, s in enumerate(sb) if s is not None}  # every b token with characters is reached


@pytest.mark.slow
def test_bank_in_two_senses_on_minilm_and_across_models():
    c = tt.compare("I sat on the river bank.", "I paid at the bank.", model="minilm", token="bank")
    assert c.cosine.max() < 0.95 and c.overlap[-1] < 100
    layer = c.diverge[0]
    money = set(c.separating("b", layer)["token"])
    assert money & {"cash", "debts", "debt", "loan", "financial", "payment", "atm"}
    m = tt.compare("I sat on the river bank.", model="minilm", model_b="smollm2", token="bank")
    assert m.cosine is None and m.b.token_str == "␣bank" and m.b.depth[-1] == 1.0
    assert m.a.grid.shape == (6, m.a.grid.shape[1]) and m.b.grid.shape[0] == 30


def test_two_models_on_one_text_tiny(loaded_tiny, tokenizer):
    from test_parity_decoders import tiny_model
    from tokentrail.present.plots_compare import compare_heatmaps, compare_lines

    llama = tt.load(tiny_model("llama"), tokenizer=tokenizer)
    c = tt.compare(TEXT, model=loaded_tiny, model_b=llama, token="flies:1", k=3, overlap_k=5)
    # one tokenizer on both sides: every token with characters is aligned with itself
    assert c.alignment[1:-1] == tuple((i,) for i in range(1, len(c.a.tokens) - 1)) and c.alignment[0] == ()
    assert c.b.token == c.a.token == 8 and c.a.span == c.b.span == (33, 38) and TEXT[33:38] == "flies"
    assert c.cosine is None and c.overlap is None and c.diverge is None
    np.testing.assert_allclose(c.a.depth, [0.5, 1.0])
    assert set(c.frame()["side"]) == {"a", "b"}
    with pytest.raises(InputError, match="one model on both sides"):
        c.separating("a", 0)
    assert compare_lines(c).layout.xaxis.title.text.startswith("relative depth")
    assert len(compare_heatmaps(c).data) == 2
    whole = tt.compare(TEXT, model=loaded_tiny, model_b=llama, k=3, overlap_k=5)  # no token: whole-text curves
    grid = whole.a.grid[:, 1:-1]  # [CLS] and [SEP] are special
    np.testing.assert_allclose(whole.a.self_sim, grid.mean(axis=1), rtol=1e-6)
    with pytest.raises(InputError, match="two models have different heads"):
        tt.compare(TEXT, model=loaded_tiny, model_b=llama, token=1, site="heads")
    with pytest.raises(InputError, match=r"token 0 '\[CLS\]' .* covers no characters"):
        tt.compare(TEXT, model=loaded_tiny, model_b=llama, token=0)


def test_tt_compare_is_the_function_even_after_importing_the_modules():
    import subprocess
    import sys

    code = (
        "import tokentrail as tt, tokentrail.session.comparison, tokentrail.present.plots_compare; "
        "assert callable(tt.compare) and tt.compare.__name__ == 'compare', tt.compare; "
        "assert tt.Comparison.__name__ == 'Comparison'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cosine_after_a_geometry_correction(loaded_tiny):
    """With a correction, each side's metrics are its corrected trace, and the cosine is
    that of both vectors through the map fitted per layer to both texts' tokens."""
    import torch

    from tokentrail.engine.geometry import fit_correction

    a, b = "time flies like an arrow", "fruit flies like a banana"
    for correct in ("center", "zscore", "abtt:2"):
        c = tt.compare(a, b, model=loaded_tiny, token="flies", site="layer_out", correct=correct, k=3, overlap_k=5)
        ra, rb = loaded_tiny.run(a), loaded_tiny.run(b)
        ta, tb = ra.tokens.index("flies"), rb.tokens.index("flies")
        A, B = ra.acts.site("layer_out"), rb.acts.site("layer_out")
        for layer in range(A.shape[0]):
            T = fit_correction(correct, torch.cat([A[layer], B[layer]]))
            want = torch.nn.functional.cosine_similarity(T.apply(A[layer, ta]), T.apply(B[layer, tb]), dim=0)
            assert c.cosine[layer] == pytest.approx(float(want), abs=1e-9)
        raw = tt.compare(a, b, model=loaded_tiny, token="flies", site="layer_out", k=3, overlap_k=5)
        assert not np.allclose(c.cosine, raw.cosine), "the correction must change the cosine"
        want_side = ra.trail(sites=("layer_out",), k=3, overlap_k=5, correct=correct).view("layer_out")
        np.testing.assert_array_equal(c.a.rank, want_side.rank[:, ta])
        assert c.a.info.options.correct == correct and c.meta()["correct"] == correct
    with pytest.raises(InputError, match="residual sites"):
        tt.compare(a, b, model=loaded_tiny, token="flies", site="heads", correct="center")
    with pytest.raises(InputError, match="unknown correction|correction"):
        tt.compare(a, b, model=loaded_tiny, token="flies", correct="wobble")
