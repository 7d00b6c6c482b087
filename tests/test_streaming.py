"""A streamed trace (issue 13's memory goal): every layer scored during the forward pass,
holding one layer's activations at a time, gives the Trail a capture of every layer gives:
the same ids, ranks and overlaps, and similarities equal up to their last bits, for views
of every site, space and similarity, the logit lens and attention. Its memory is measured
in ``tests/test_memory.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokentrail.engine.capture
from tokentrail.adapters import adapter_for
from tokentrail.analysis.bare import analyse
from tokentrail.analysis.checks import streams
from tokentrail.engine import budget
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions

LENS_FIELDS = ("top_ids", "top_probs", "own_rank", "own_prob", "next_rank", "next_prob", "entropy")


def _tiny(family: str, make_tiny):
    """Post-LN with position embeddings (BERT: moving ``encodings``), learned positions in
    every head space (GPT-2), rotary grouped-query attention whose ``embeddings`` and
    ``encodings`` share rows (Llama: copied views)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "bert":
        return make_tiny("bert_mlm").eval()
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=300, n_embd=32, n_layer=3, n_head=4, n_positions=64, attn_implementation="eager")
        ).eval()
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


ULP = 2.5e-7  # float32: a few units in the last place of a similarity in [-1, 1]


def same(u, w, what) -> None:
    """Ids, ranks and counts equal; float32 values equal up to the last bits (the matrix
    product may compute a row in another place of its blocks: docs/architecture.md)."""
    assert (u is None) == (w is None), what
    if u is None:
        return
    assert u.dtype == w.dtype and u.shape == w.shape, what
    if np.issubdtype(u.dtype, np.floating):
        assert np.array_equal(np.isnan(u), np.isnan(w)), what
        assert np.allclose(u, w, rtol=0, atol=ULP, equal_nan=True), (
            what,
            float(np.nanmax(np.abs(u.astype(float) - w))),
        )
    else:
        assert np.array_equal(u, w), what


def assert_same_trail(a, b) -> None:
    assert [v.key for v in a.views] == [v.key for v in b.views]
    for x, y in zip(a.views, b.views):
        for f in ("top_ids", "top_sims", "anisotropy", "origin_top_ids", "origin_top_sims"):
            same(getattr(x, f), getattr(y, f), (x.key, f))
        assert x.metrics.keys() == y.metrics.keys()
        for name in x.metrics:
            same(x.metrics[name], y.metrics[name], (x.key, name))
    assert (a.lens is None) == (b.lens is None)
    if a.lens is not None:
        for f in LENS_FIELDS:
            same(getattr(a.lens, f), getattr(b.lens, f), f)
    assert (
        np.array_equal(a.attentions, b.attentions)
        and np.array_equal(a.ids, b.ids)
        and np.array_equal(a.positions, b.positions)
    )
    assert a.labels == b.labels


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("lens_site", ["layer_out", "attn_resid"])
def test_streamed_trace_is_the_captured_one(family, lens_site, make_tiny):
    adapter = adapter_for(_tiny(family, make_tiny))
    spaces = SpaceCache(adapter)
    n = 20
    ids = torch.randint(5, adapter.vocab_size, (n,), generator=torch.Generator().manual_seed(1))
    toks = [str(i) for i in ids.tolist()]
    opts = TraceOptions.make(site="all", space="all", similarity="all", lens=True, k=7, lens_site=lens_site)
    kw = dict(
        text=" ".join(toks),
        tokens=toks,
        special=[False] * n,
        label=lambda vs: {int(v): str(v) for v in vs},
        model_name=family,
        options=opts,
    )
    captured, streamed = (
        analyse(adapter, spaces, ids, stream=False, **kw),
        analyse(adapter, spaces, ids, stream=True, **kw),
    )
    assert_same_trail(streamed, captured)
    assert streamed.view("heads", "query").top_ids.shape == (adapter.n_layers, adapter.n_heads, n, 7)


def test_a_long_texts_run_streams_its_trail_and_captures_only_when_asked(loaded_tiny, monkeypatch):
    text = "time flies like an arrow . fruit flies like a banana"
    opts = TraceOptions.make(site="all", space="all", lens=True)
    # a post-LN model's encodings keep per-position norms between traces; norms made afresh
    # and kept ones may differ in the last bit (docs/architecture.md): compare warm with warm
    loaded_tiny.run(text).trail(opts)
    captured_run = loaded_tiny.run(text)
    assert captured_run._acts is not None  # a short text: captured up front
    want = captured_run.trail(opts)
    from patching import count_calls

    passes = count_calls(monkeypatch, tokentrail.engine.capture, "capture")
    monkeypatch.setattr(budget, "STREAM_BYTES", 0)  # every text is long
    run = loaded_tiny.run(text)
    got = run.trail(opts)
    assert passes == [] and run._acts is None and run.nbytes == budget.held_bytes(run.kept())
    assert_same_trail(got, want)
    assert run.trail(opts) is got  # cached like any Trail
    # what needs every layer's activations captures them once, on first use
    heads = run.heads(1, 2)
    assert passes == [1] and np.array_equal(heads.top_ids, captured_run.heads(1, 2).top_ids)
    run.step(0, 1, 2)
    assert passes == [1]


def test_capturing_a_streamed_texts_activations_is_refused_when_it_cannot_fit(loaded_tiny, monkeypatch):
    """A long text's trail streams; its attention patterns need every layer at once: that
    capture is estimated first and refused with the figure (a SmolLM2 text of 1,020 tokens
    holds 1.9 GB more for --plot-attention)."""
    text = "time flies like an arrow . fruit flies like a banana"
    monkeypatch.setattr(budget, "STREAM_BYTES", 0)  # every text is long: the trail streams
    run = loaded_tiny.run(text)
    run.trail(TraceOptions.make())
    assert run._acts is None
    a = loaded_tiny.adapter
    need = budget.estimate_capture(tokens=run.n_tokens, layers=a.n_layers, heads=a.n_heads, d_model=a.d_model)
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int(need.total / budget.HEADROOM) - 1))
    with pytest.raises(InputError, match="this run would need about .* of memory"):
        run.attention()
    assert run._acts is None
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int(need.total / budget.HEADROOM) + 1))
    assert run.attention().weights.shape[0] == a.n_layers


def test_which_traces_stream(make_tiny):
    adapter = adapter_for(_tiny("llama", make_tiny))
    opts = TraceOptions.make(site="all", space="all")
    per_token = budget.captured_bytes(adapter.n_layers, 1, adapter.d_model)
    over = budget.STREAM_BYTES // per_token + 1
    assert not streams(adapter, opts, over - 1) and streams(adapter, opts, over)
    assert not streams(
        adapter, opts.with_(correct="zscore"), over
    )  # a correction is fitted to every layer's vectors first


def test_a_forced_stream_that_cannot_stream_is_refused_in_one_line(make_tiny):

    adapter = adapter_for(_tiny("llama", make_tiny))
    ids = torch.arange(5, 17)
    toks = [str(i) for i in ids.tolist()]
    opts = TraceOptions.make(site="layer_out", correct="zscore")
    with pytest.raises(InputError, match="needs every layer's vectors"):
        analyse(
            adapter,
            SpaceCache(adapter),
            ids,
            text=" ".join(toks),
            tokens=toks,
            special=[False] * 12,
            label=lambda vs: {},
            model_name="llama",
            options=opts,
            stream=True,
        )


def test_a_batch_is_charged_every_layers_activations(loaded_tiny, monkeypatch):
    """One long text streams and is charged one layer's activations; a batch of texts is
    captured whole, so the memory check charges it every layer's."""
    from tokentrail.analysis.checks import check_against

    monkeypatch.setattr(budget, "STREAM_BYTES", 0)
    texts = ["time flies like an arrow", "fruit flies like a banana"]
    opts = check_against(loaded_tiny.adapter, TraceOptions())
    n = sum(len(loaded_tiny.encode(t).ids) for t in texts)
    sizes = dict(
        tokens=n,
        pairs=opts.pairs(),
        similarities=len(opts.similarities),
        k=opts.k,
        overlap_k=opts.overlap_k,
        lens=opts.lens,
    )
    one, whole = (
        budget.estimate_run(loaded_tiny.adapter, streamed=True, **sizes).total,
        budget.estimate_run(loaded_tiny.adapter, **sizes).total,
    )
    assert whole > one
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", str(int((one + whole) / 2 / budget.HEADROOM)))
    check_against(loaded_tiny.adapter, opts, tokens=n)  # as one streamed text: fits
    with pytest.raises(InputError, match="would need about"):
        loaded_tiny.runs(texts)
