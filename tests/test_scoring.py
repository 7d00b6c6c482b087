"""The fused scoring path against the definitions (SPEC "Metrics"): ``score_block`` against
``rank_in_vocab``/``top_k`` on hand-made and tie-heavy blocks; spaces with the same rows
scored once; a head space's table rebuilt for one call, with the numbers of the kept one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.engine import scoring
from tokentrail.engine.metrics import rank_in_vocab, top_k
from tokentrail.engine.scoring import SLICES, score_block, top_values
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import build_space
from tokentrail.spec.options import RESIDUAL_SITES, TraceOptions


def test_score_block_on_hand_block():
    block = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.9, 0.2],  # own 2: rows 1 and 3 beat it; top-2 = 1, 3 (tie by lower id)
            [0.3, 0.3, 0.3, 0.1, 0.0],  # own 1: ties do not count, rank 0; top-2 = 0, 1
            [0.5, 0.4, 0.3, 0.2, 0.1],  # own 4: last of five, rank 4 (outside the k + 1 values)
        ]
    )
    own_s, rank, ids, vals = score_block(block.clone(), torch.tensor([2, 1, 4]), 2)  # a copy: the block may be consumed
    assert own_s.tolist() == pytest.approx([0.5, 0.3, 0.1])
    assert rank.tolist() == [2, 0, 4]
    assert ids.tolist() == [[1, 3], [0, 1], [0, 1]]
    assert torch.equal(vals, block.gather(1, ids))


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_score_block_equals_the_definitions_with_many_ties(k):
    """Quantised values make ties everywhere: inside the list, across its boundary and at
    the own row; own ids are drawn so the own row is sometimes inside the k + 1 values
    (rank read from the list) and sometimes far outside (rank counted in full)."""
    g = torch.Generator().manual_seed(k)
    block = torch.randint(0, 12, (64, 40), generator=g).float() / 11
    own = torch.randint(0, 40, (64,), generator=g)
    own[:16] = block[:16].argmax(1)  # own row at the top (rank 0 or ties)
    own_s, rank, ids, vals = score_block(block.clone(), own, k)
    want_ids, want_vals = top_k(block, k)
    assert torch.equal(own_s, block.gather(1, own[:, None])[:, 0])
    assert torch.equal(rank, rank_in_vocab(block, own))
    assert torch.equal(ids, want_ids) and torch.equal(vals, want_vals)


@pytest.mark.parametrize("V", [8192, 8192 + 7, 30522])  # the last V mod SLICES columns are candidates of their own
@pytest.mark.parametrize("levels", [12, 200, None])  # heavy ties, some ties, continuous values
@pytest.mark.parametrize("k", [1, 16, 101])
def test_long_rows_take_the_candidate_path_and_equal_the_definitions(V, levels, k, monkeypatch):
    """Rows long enough for :func:`top_values` to pick candidate columns (V // SLICES >= 4 (k + 1)):
    its values are torch.topk's, and the scored block equals the definitions, ties included.
    Where the maxima of the slices are themselves long rows (V // SLICES**2 >= 4 (k + 1)),
    their k largest are found the same way, level after level (the levels are counted)."""
    assert 4 * (k + 1) <= V // SLICES
    calls = []
    monkeypatch.setattr(
        scoring, "top_values", lambda b, kk, sorted=True: calls.append(b.shape[1]) or top_values(b, kk, sorted)
    )
    g = torch.Generator().manual_seed(V + k)
    block = (
        torch.rand(48, V, generator=g)
        if levels is None
        else torch.randint(0, levels, (48, V), generator=g).float() / (levels - 1)
    )
    block[5, V - 3] = 2.0  # the best value in the tail columns
    block[6, ::97] = 1.5  # many equal best values spread over every slice
    own = torch.randint(0, V, (48,), generator=g)
    own[:12] = block[:12].argmax(1)
    vals, ids = top_values(block, k + 1)
    assert torch.equal(vals, torch.topk(block, k + 1, dim=1).values) and torch.equal(block.gather(1, ids), vals)
    levels_deep = 1 + sum(V // SLICES**i >= 4 * (k + 1) for i in (2, 3))
    assert len(calls) == levels_deep and calls[0] == V // SLICES, calls
    own_s, rank, got_ids, got_vals = score_block(block.clone(), own, k)
    want_ids, want_vals = top_k(block, k)
    assert torch.equal(rank, rank_in_vocab(block, own))
    assert torch.equal(got_ids, want_ids) and torch.equal(got_vals, want_vals)


def _llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        num_attention_heads=6,
        num_key_value_heads=2,
        num_hidden_layers=2,
        hidden_size=48,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _trail(adapter, cache, ids, **kw):
    n = len(ids)
    return analyse(
        adapter,
        cache,
        ids,
        text="x",
        tokens=[str(int(i)) for i in ids],
        special=[False] * n,
        label=lambda used: {int(i): str(int(i)) for i in used},
        model_name="tiny",
        options=TraceOptions(**kw),
    )


def test_spaces_with_the_same_rows_are_scored_once_with_the_same_views():
    """RoPE model without an embedding norm: ``encodings`` rows are ``W_E``'s, so its views are
    the ``embeddings`` views under its own name (own arrays), equal to scoring it alone."""
    adapter = adapter_for(_llama())
    cache = SpaceCache(adapter)
    assert cache.get("embeddings").same_rows(cache.get("encodings"))
    ids = torch.randint(3, 97, (7,), generator=torch.Generator().manual_seed(1))
    both = _trail(adapter, cache, ids, sites=RESIDUAL_SITES, spaces=("embeddings", "encodings"), k=5, overlap_k=10)
    alone = _trail(adapter, SpaceCache(adapter), ids, sites=RESIDUAL_SITES, spaces=("encodings",), k=5, overlap_k=10)
    for site in RESIDUAL_SITES:
        enc, emb, ref = (
            both.view(site, "encodings", "cosine"),
            both.view(site, "embeddings", "cosine"),
            alone.view(site, "encodings", "cosine"),
        )
        assert enc.space == "encodings"
        for name in ("rank", "overlap", "self_sim"):
            assert np.array_equal(enc.metrics[name], ref.metrics[name]) and np.array_equal(
                enc.metrics[name], emb.metrics[name]
            )
        assert np.array_equal(enc.top_ids, ref.top_ids) and enc.top_ids is not emb.top_ids


def test_spaces_that_move_with_position_are_not_the_same(tiny_models):
    adapter = adapter_for(tiny_models["bert"])
    assert not build_space(adapter, "embeddings").same_rows(build_space(adapter, "encodings"))
    assert not build_space(adapter, "value", 0).same_rows(build_space(adapter, "value", 0))


def test_head_table_rebuilt_for_many_queries_equals_the_kept_one():
    adapter = adapter_for(_llama())
    kept = build_space(adapter, "value", 1)
    dropped = build_space(adapter, "value", 1)
    assert dropped.drop_table() and dropped.P is None
    G, k, d = dropped.M.shape
    few = G * k * d // (d - k)  # at or below this many columns, W_E is cheaper than the table
    assert dropped.for_queries(few) is dropped
    call = dropped.for_queries(few + 1)
    assert call is not dropped and dropped.P is None  # the cached space keeps no table
    torch.testing.assert_close(call.P, kept.P, rtol=1e-5, atol=1e-6)
    # the same scores through the rebuilt table and through W_E
    z = torch.randn(5, adapter.n_heads, adapter.d_head, generator=torch.Generator().manual_seed(2))
    groups = adapter.kv_heads()
    stats = dropped.position_stats(torch.arange(5))
    a, ia = call.cosine_rows(z, stats, torch.arange(5), groups)
    b, ib = dropped.cosine_rows(z, stats, torch.arange(5), groups)
    torch.testing.assert_close(a[torch.argsort(ia)], b[torch.argsort(ib)], rtol=1e-5, atol=1e-6)


def test_residual_sites_scored_in_batches_or_one_by_one_agree():
    """A block budget of one row scores the origin and every site on its own (one query per
    chunk); the default scores them together: the same views."""
    adapter = adapter_for(_llama())
    ids = torch.randint(3, 97, (6,), generator=torch.Generator().manual_seed(3))
    kw = dict(sites=RESIDUAL_SITES, spaces=("encodings",), k=5, overlap_k=10)
    whole = _trail(adapter, SpaceCache(adapter), ids, **kw)
    n = len(ids)
    one = analyse(
        adapter,
        SpaceCache(adapter),
        ids,
        text="x",
        tokens=[str(int(i)) for i in ids],
        special=[False] * n,
        label=lambda used: {int(i): str(int(i)) for i in used},
        model_name="tiny",
        options=TraceOptions(**kw),
        chunk_bytes=1,
    )
    for a, b in zip(whole.views, one.views):
        assert a.key == b.key
        assert np.array_equal(a.top_ids, b.top_ids) and np.array_equal(a.origin_top_ids, b.origin_top_ids)
        assert np.array_equal(a.metrics["rank"], b.metrics["rank"]) and np.array_equal(
            a.metrics["overlap"], b.metrics["overlap"]
        )
        np.testing.assert_allclose(a.metrics["self_sim"], b.metrics["self_sim"], rtol=0, atol=1e-6)
