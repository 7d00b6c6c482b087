"""The factorised reference spaces against brute force: every one of the V rows built with
the model's own modules (embeddings.LayerNorm, the query/key/value nn.Linear), at several
positions, for dot products, squared norms and explicit rows (SPEC "Reference vocabularies")."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tokentrail.engine import space_memory
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.spaces import build_space
from tokentrail.spec.errors import InputError

RTOL = 1e-4


def close(actual, expected):
    # 1e-4 relative, with an absolute floor scaled to the data (dots near 0 have no relative accuracy)
    expected = expected.double()
    assert_close(actual.double(), expected, rtol=RTOL, atol=RTOL * 1e-1 * expected.abs().max().item())


@pytest.fixture(scope="module", params=["bert", "roberta", "xlmr", pytest.param("minilm", marks=pytest.mark.slow)])
def encoder(request, tiny_models):
    if request.param == "minilm":
        adapter = request.getfixturevalue("minilm").adapter
    else:
        from tokentrail.adapters import adapter_for

        adapter = adapter_for(tiny_models[request.param])
    model = adapter.model
    first = getattr(model.base_model.embeddings, "padding_idx", None)
    start = 0 if first is None else first + 1  # RoBERTa positions start at padding_idx + 1
    positions = [start, start + 3, start + 11]
    layers = [0, adapter.n_layers - 1] if request.param != "minilm" else [2]
    return request.param, model, adapter, positions, layers


@torch.no_grad()
def brute_rows(model, adapter, kind: str, position: int, layer: int | None) -> torch.Tensor:
    """All V rows of a space at ``position``, shaped (G, V, k), from the model's own modules."""
    emb = model.base_model.embeddings
    W_E = emb.word_embeddings.weight
    if kind == "embeddings":
        return W_E[None]
    enc = emb.LayerNorm(W_E + emb.position_embeddings.weight[position] + emb.token_type_embeddings.weight[0])
    if kind == "encodings":
        return enc[None]
    att = model.base_model.encoder.layer[layer].attention.self
    linear = {"value": att.value, "key": att.key, "query": att.query}[kind]
    return linear(enc).view(-1, adapter.n_heads, adapter.d_head).transpose(0, 1)


@pytest.mark.parametrize("kind", ["embeddings", "encodings", "value", "key", "query"])
def test_factorised_space_equals_brute_force(encoder, kind):
    name, model, adapter, positions, layers = encoder
    for layer in layers if kind in ("value", "key", "query") else [None]:
        space = build_space(adapter, kind, layer)
        assert space.name == (kind if layer is None else f"{kind}@{layer}")
        pos = torch.tensor(positions)
        stats = space.position_stats(pos)
        G = space.groups
        g = torch.Generator().manual_seed(0)
        r = torch.randn(2 * len(positions), G, space.dim, generator=g)  # two queries per position
        pidx = torch.arange(len(positions)).repeat(2)
        dots = space.dots(r, stats, pidx)  # (Q, G, V)
        for i, p in enumerate(positions):
            rows = brute_rows(model, adapter, kind, p, layer)  # (G, V, k)
            assert rows.shape == (G, adapter.vocab_size, space.dim)
            close(stats.sq_norm[i], rows.pow(2).sum(-1))
            for q in (pidx == i).nonzero().flatten().tolist():
                close(dots[q], torch.einsum("gk,gvk->gv", r[q], rows))
            some = torch.tensor([0, 5, adapter.vocab_size - 1])
            close(space.rows(some, p), rows[:, some].transpose(0, 1))


def test_head_space_groups_select_heads(tiny_models):
    """``dots(..., groups)`` compares each column with the head it names (GQA reuse)."""
    from tokentrail.adapters import adapter_for

    model = tiny_models["bert"]
    adapter = adapter_for(model)
    space = build_space(adapter, "value", 1)
    stats = space.position_stats(torch.tensor([4]))
    r = torch.randn(1, 3, adapter.d_head, generator=torch.Generator().manual_seed(1))
    groups = torch.tensor([3, 0, 3])
    got = space.dots(r, stats, torch.tensor([0]), groups)
    rows = brute_rows(model, adapter, "value", 4, 1)
    for c, h in enumerate(groups.tolist()):
        close(got[0, c], rows[h] @ r[0, c])


def test_positional_spaces_change_with_position_embeddings_space_does_not(tiny_models):
    from tokentrail.adapters import adapter_for

    adapter = adapter_for(tiny_models["bert"])
    pos = torch.tensor([0, 5])
    enc = build_space(adapter, "encodings").position_stats(pos).sq_norm
    emb = build_space(adapter, "embeddings").position_stats(pos).sq_norm
    assert not torch.allclose(enc[0], enc[1])
    assert torch.equal(emb[0], emb[1])


def test_moving_residual_norms_are_kept_per_position_up_to_the_bound(tiny_models, monkeypatch):
    """A warm call reuses the norms of positions seen before (in any order, mixed with new
    ones), they equal the model's own rows, and no more than POSITION_MEMO_BYTES is kept."""
    import tokentrail.engine.budget as budget
    from tokentrail.adapters import adapter_for

    model = tiny_models["roberta"]
    adapter = adapter_for(model)
    V = adapter.vocab_size
    monkeypatch.setattr(
        budget, "POSITION_MEMO_BYTES", 2 * 4 * V * 4
    )  # room for two positions (sigma, norms, two factors)
    space = build_space(adapter, "encodings")
    first = space.position_stats(torch.tensor([2, 5, 7]))
    assert sorted(space._at) == [2, 5] and space._at_bytes <= budget.POSITION_MEMO_BYTES
    again = space.position_stats(torch.tensor([9, 5, 2, 7]))  # 9 new, 7 not kept: computed again
    assert sorted(space._at) == [2, 5]
    for i, j in ((1, 1), (2, 0)):  # positions 5 and 2: the kept rows, bit for bit
        assert torch.equal(again.sq_norm[i], first.sq_norm[j]) and torch.equal(again.sigma[i], first.sigma[j])
        assert torch.equal(space.cosine_scales(again)[0][i], space.cosine_scales(first)[0][j])
    for i, p in enumerate([9, 5, 2, 7]):
        rows = brute_rows(model, adapter, "encodings", p, None)[0]
        close(again.sq_norm[i], rows.pow(2).sum(-1)[None])
        close(space.cosine_scales(again)[0][i], rows.norm(dim=-1).reciprocal()[None] / again.sigma[i])
    kept = space.position_stats(torch.tensor([2, 5]))  # in consecutive memo slots: views of the memo, no copy
    for got, memo in zip((kept.sigma, kept.sq_norm, *space.cosine_scales(kept)), space._slots):
        assert got.untyped_storage().data_ptr() == memo.untyped_storage().data_ptr()
    assert torch.equal(kept.sq_norm, first.sq_norm[:2]) and torch.equal(kept.sigma, first.sigma[:2])


def test_scratch_block_is_kept_between_traces_and_never_lent_twice(tiny_models):
    """SpaceCache.scratch lends one block from trace to trace (its pages stay mapped); a
    second trace while it is lent, or an ask larger than the block, gets its own buffer."""
    from tokentrail.adapters import adapter_for
    from tokentrail.engine.budget import BLOCK_BYTES

    cache = SpaceCache(adapter_for(tiny_models["bert"]))
    with cache.scratch() as take:
        first = take(1000)
        with cache.scratch() as other:  # lent already: a buffer of its own
            assert other(1000).data_ptr() != first.data_ptr()
        assert take(BLOCK_BYTES // 4 + 1).data_ptr() != first.data_ptr()
        assert take(10).data_ptr() == first.data_ptr()  # each take reuses the block
    with cache.scratch() as take:  # the next trace: a block kept by one of those before
        again = take(1000).data_ptr()
    with cache.scratch() as take:
        assert take(500).data_ptr() == again
    memo = space_memory.adapter_memo(cache.adapter)
    assert memo["scratch"].data_ptr() == again
    cache.release_scratch()
    assert "scratch" not in memo


def test_the_logit_lens_takes_the_place_of_the_scratch_block(tiny_models, make_ids):
    """The lens' chunks replace the views' scratch block in memory: it lets the block go."""
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.lens import logit_lens
    from tokentrail.engine.capture import capture

    adapter = adapter_for(tiny_models["bert_mlm"])
    with space_memory.scratch(adapter) as take:
        take(100)
    assert "scratch" in space_memory.adapter_memo(adapter)
    logit_lens(adapter, capture(adapter, make_ids(adapter)), k=3)
    assert "scratch" not in space_memory.adapter_memo(adapter)


def test_space_cache_keeps_and_evicts(tiny_models):
    from tokentrail.adapters import adapter_for

    adapter = adapter_for(tiny_models["bert"])
    cache = SpaceCache(adapter, max_bytes=1)  # room for a single head space
    assert cache.get("encodings") is cache.get("encodings")
    v0 = cache.get("value", 0)
    assert cache.get("value", 0) is v0
    cache.get("value", 1)  # evicts value@0 (over budget), keeps the newest
    assert cache.get("value", 0) is not v0
    assert cache.get("encodings") is cache.get("encodings")  # residual spaces always stay


@pytest.mark.parametrize(
    "kind, layer, message",
    [
        ("values", 0, "unknown space 'values'"),
        ("value", None, "needs a layer in 0..1"),
        ("key", 2, "needs a layer in 0..1"),
        ("query", -1, "got -1"),
    ],
)
def test_bad_space_requests_are_input_errors(tiny_models, kind, layer, message):
    from tokentrail.adapters import adapter_for

    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_space(adapter_for(tiny_models["bert"]), kind, layer)
