"""The memory estimate: a hand-computed case and the refusals it drives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tokentrail.engine import budget
from tokentrail.spec.errors import InputError


def test_estimate_by_hand():
    est = budget.estimate(
        tokens=2,
        layers=1,
        heads=1,
        vocab=10,
        d_model=4,
        residual_sites=1,
        residual_spaces=1,
        head_spaces=0,
        similarities=1,
        k=3,
        overlap_k=5,
        lens=False,
    )
    # K = min(max(3, 5), 10) = 5
    assert est.activations == 4 * (1 * 1 * 2 * 2 + 6 * 1 * 2 * 4)  # 208
    assert est.residual == 12 * (1 * 1 + 1) * 2 * 5 + 16 * 1 * 1 * 2 * 5  # 240 + 160
    assert est.heads == 0 and est.lens == 0
    assert est.working == 2.5 * max(
        (128 << 20) + (64 << 20), 256 << 20
    )  # a block and a window of norms, or the lens' chunk, and their passes
    assert est.spaces == 8 * 10 * 4 * 1 + (64 << 20)  # one residual space (and its per-position memo), no head space
    assert est.total == 208 + 400 + 320 + (64 << 20) + 2.5 * (256 << 20)


def test_heads_and_lens_terms_by_hand():
    est = budget.estimate(
        tokens=3,
        layers=2,
        heads=4,
        vocab=50,
        d_model=8,
        residual_sites=0,
        residual_spaces=1,
        head_spaces=2,
        similarities=2,
        k=7,
        overlap_k=100,
        lens=True,
    )
    assert est.residual == 0  # no residual site, no residual space counted
    assert est.heads == 2 * 2 * 2 * 4 * 3 * (12 * 7 + 12)
    assert est.lens == 2 * 3 * (12 * 7 + 28)  # the logits go through the working chunk
    assert est.working == 640 << 20
    assert est.spaces == 8 * 50 * 8 * 2 * 2  # head spaces of 2 kinds x 2 layers, under the cache cap
    big = budget.estimate(
        tokens=1,
        layers=30,
        heads=9,
        vocab=49152,
        d_model=576,
        residual_sites=0,
        residual_spaces=0,
        head_spaces=3,
        similarities=1,
        k=1,
        overlap_k=1,
        lens=False,
    )
    assert big.spaces == 1 << 30  # the space cache never keeps more


def test_an_encoder_decoder_counts_both_stacks_and_cross_attention_by_hand():
    from types import SimpleNamespace

    encoder = SimpleNamespace(n_layers=1, n_heads=1, vocab_size=10, d_model=4)
    decoder = SimpleNamespace(n_layers=2, n_heads=2, vocab_size=10, d_model=4)
    pairs = [("layer_out", "embeddings"), ("cross_resid", "embeddings"), ("cross_heads", "value")]
    est = budget.estimate_seq2seq(
        encoder, decoder, source_tokens=3, decoder_tokens=2, pairs=pairs, similarities=1, k=3, overlap_k=5, lens=True
    )
    common = dict(vocab=10, d_model=4, residual_spaces=1, head_spaces=0, similarities=1, k=3, overlap_k=5)
    enc = budget.estimate(tokens=3, layers=1, heads=1, residual_sites=1, lens=False, **common)  # no cross site, no lens
    dec = budget.estimate(
        tokens=2, layers=2, heads=2, residual_sites=2, lens=True, **common
    )  # layer_out and cross_resid
    # cross-attention: maps L H n m = 2*2*2*3, three (L, n, d) tensors, the (m, d) encoder output
    assert est.activations == enc.activations + dec.activations + 4 * (24 + 3 * 2 * 2 * 4 + 3 * 4)
    assert est.cross == 12 * 1 * 2 * 2 * 2 * 3  # one (cross_heads, value) pair: order (int64) and similarity per source
    assert (est.residual, est.heads, est.lens, est.spaces) == (
        enc.residual + dec.residual,
        0,
        dec.lens,
        enc.spaces + dec.spaces,
    )
    assert est.working == enc.working  # the stacks are scored one after the other
    alone = budget.estimate_seq2seq(
        encoder, decoder, source_tokens=3, decoder_tokens=None, pairs=pairs, similarities=1, k=3, overlap_k=5, lens=True
    )
    assert alone == enc  # before the decoder input is known


def test_a_streamed_trace_is_charged_one_layers_activations():
    common = dict(
        tokens=5,
        layers=3,
        heads=2,
        vocab=10,
        d_model=4,
        residual_sites=1,
        residual_spaces=1,
        head_spaces=0,
        similarities=1,
        k=3,
        overlap_k=5,
        lens=False,
    )
    assert budget.estimate(**common).activations == 4 * (3 * 2 * 5 * 5 + 6 * 3 * 5 * 4)
    assert budget.estimate(**common, streamed=True).activations == 4 * (3 * 2 * 5 * 5 + 6 * 5 * 4)


SMOLLM2 = dict(layers=30, heads=9, vocab=49152, d_model=576)


def test_extreme_overlap_k_is_refused_with_the_figure_and_the_fix():
    est = budget.estimate(
        tokens=1024,
        **SMOLLM2,
        residual_sites=3,
        residual_spaces=2,
        head_spaces=3,
        similarities=2,
        k=15,
        overlap_k=49152,
        lens=True,
    )
    assert est.total > 400e9 and est.largest() == "residual"
    with pytest.raises(InputError) as err:
        budget.check_fits(est, available=16_000_000_000)
    msg = str(err.value)
    assert "would need about" in msg and "GB" in msg and "16.0 GB available" in msg
    assert "fewer tokens" in msg and "--overlap-k" in msg


def test_the_vocabulary_work_does_not_grow_with_tokens():
    """Only the activations and the results grow with the text: the everything-trace of
    1,024 SmolLM2 tokens (measured at +3.2 GB over the loaded model, docs/benchmarks.md)
    is estimated within a factor of two, and 8,192 tokens are not refused for scoring
    blocks that are bounded."""
    every = dict(
        **SMOLLM2, residual_sites=4, residual_spaces=2, head_spaces=3, similarities=1, k=15, overlap_k=100, lens=True
    )
    short, long = budget.estimate(tokens=64, **every), budget.estimate(tokens=1024, **every)
    assert short.working == long.working and short.spaces == long.spaces
    assert 3.2e9 <= long.total <= 2 * 3.2e9
    huge = budget.estimate(tokens=8192, **every)
    assert huge.largest() == "activations"  # the attention maps: 30 x 9 x 8,192^2 floats
    assert huge.total - huge.activations < 12e9


def test_ordinary_run_fits():
    est = budget.estimate(
        tokens=14,
        **SMOLLM2,
        residual_sites=1,
        residual_spaces=1,
        head_spaces=0,
        similarities=1,
        k=15,
        overlap_k=100,
        lens=False,
    )
    assert est.total < 1e9
    budget.check_fits(est, available=2_000_000_000)  # no error


def test_available_memory_is_known_here_and_env_caps_it(monkeypatch):
    assert budget.available_bytes() > 0
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "1000")
    assert budget.limit_bytes() == 1000
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "lots")
    with pytest.raises(InputError, match="not a number of bytes"):
        budget.limit_bytes()


QWEN3_06B = SimpleNamespace(n_layers=28, n_heads=16, vocab_size=151_936, d_model=1024)  # config shape, no weights


def test_a_qwen3_head_space_trace_is_estimated_and_refused_with_the_figure(monkeypatch):
    """Qwen3-0.6B's QK-normed query space would be a 16 x 151,936 x 128 float32 table,
    1.2 GB a layer (35 GB for 28 layers): it is never made whole (over the space cache's
    budget, its rows are made a vocabulary chunk at a time), so the estimate counts the
    cache's bound for the head spaces and a chunk of rows in the working memory. Under a
    small TOKENTRAIL_MAX_MEMORY the run is refused with the figure."""
    assert budget.SPACE_CACHE_BYTES < 16 * 151_936 * 128 * 4
    pairs = [("heads", "key"), ("heads", "query")]
    est = budget.estimate_run(QWEN3_06B, tokens=100, pairs=pairs, similarities=1, k=15, overlap_k=100, lens=False)
    assert est.spaces == budget.SPACE_CACHE_BYTES
    assert est.working == int(2.5 * max((128 + 64 + 32) << 20, 256 << 20))  # a block, norms, a chunk of rows
    assert 1.5e9 < est.total < 2.5e9
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "1000000000")
    with pytest.raises(InputError) as err:
        budget.check_fits(est)
    msg = str(err.value)
    assert f"would need about {budget.human(est.total)}" in msg and "1.0 GB available" in msg
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "4000000000")
    budget.check_fits(est)  # fits: no 35 GB of tables
