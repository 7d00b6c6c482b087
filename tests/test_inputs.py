"""Validating text and options at the edge: each refusal is an InputError saying what to fix."""

from __future__ import annotations

import pytest
import torch

import tokentrail
from tokentrail.analysis.bare import analyse
from tokentrail.session.inputs import MAX_CHARS, check_text, encode
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions

LONG = " ".join(["time flies like an arrow ."] * 5)  # 30 words -> 32 tokens with [CLS]/[SEP]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the text is empty: type something to trace"),
        ("   \n\t ", "the text is empty"),
        ("ab\ud800c", "the text has a lone surrogate U+D800 at character 2: it is not valid Unicode"),
        ("x\udfff", "lone surrogate U+DFFF at character 1"),
        ("a\x07b", "the text has a control character U+0007 at character 1: remove it"),
        ("\x00", "control character U+0000 at character 0"),
        ("ok\x7f", "control character U+007F at character 2"),
        (42, "text must be a string, not int"),
        (None, "text must be a string, not NoneType"),
        ("a" * (MAX_CHARS + 1), f"the text is {MAX_CHARS + 1:,} characters; the limit is {MAX_CHARS:,}"),
    ],
)
def test_bad_text(text, message):
    with pytest.raises(InputError) as err:
        check_text(text)
    assert message in str(err.value)


@pytest.mark.parametrize("text", ["time\tflies\nlike\r\nan arrow", "naïve café ☕", "a" * MAX_CHARS])
def test_good_text_passes_unchanged(text):
    assert check_text(text) is text


def test_encode(loaded_tiny):
    enc = encode(loaded_tiny, "Time flies like an arrow.")
    assert enc.tokens == ["[CLS]", "time", "flies", "like", "an", "arrow", ".", "[SEP]"]
    assert enc.special == [True, False, False, False, False, False, False, True]
    assert enc.ids.dtype == torch.long and enc.ids.tolist()[0] == loaded_tiny.tokenizer.cls_token_id
    assert enc.truncated_from is None


def test_over_long_text_says_how_many_tokens_over(loaded_tiny):
    limit = loaded_tiny.adapter.max_tokens
    assert limit == 24
    n = len(loaded_tiny.tokenizer(LONG)["input_ids"])
    assert n == 32
    with pytest.raises(InputError) as err:
        encode(loaded_tiny, LONG)
    msg = str(err.value)
    assert f"the text is {n} tokens" in msg and f"takes at most {limit}" in msg
    assert f"({n - limit} over)" in msg and "--truncate" in msg


def test_truncate_cuts_and_records(loaded_tiny):
    enc = encode(loaded_tiny, LONG, truncate=True)
    assert len(enc.ids) == 24 and enc.truncated_from == 32
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"  # special tokens survive the cut
    assert encode(loaded_tiny, "time flies", max_tokens=3, truncate=True).tokens == ["[CLS]", "time", "[SEP]"]
    with pytest.raises(InputError, match=r"takes at most 3 \(1 over\)"):
        encode(loaded_tiny, "time flies", max_tokens=3)


def test_trace_records_truncation(loaded_tiny):
    trail = tokentrail.trace(LONG, loaded_tiny, truncate=True, k=3, overlap_k=5)
    assert trail.n_tokens == 24
    assert trail.info.truncated_from == 32
    with pytest.raises(InputError, match="8 over"):
        tokentrail.trace(LONG, loaded_tiny)
    with pytest.raises(InputError, match="the text is empty"):
        tokentrail.trace("  ", loaded_tiny)


# ---- options --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(loaded_tiny):
    ids = encode(loaded_tiny, "time flies").ids

    def go(**options):
        return analyse(
            loaded_tiny.adapter,
            loaded_tiny.spaces,
            ids,
            text="time flies",
            tokens=["a"] * len(ids),
            special=[False] * len(ids),
            label=loaded_tiny.labels,
            model_name="tiny",
            options=TraceOptions(**options),
        )

    return go


@pytest.mark.parametrize(
    "options, message",
    [
        (
            dict(sites=["attn_out"]),
            "unknown site 'attn_out': choose from resid_pre, attn_resid, attn_resid_ln, layer_out, mlp_out, heads, cross_resid, cross_heads or all",
        ),
        (dict(spaces=["vocab"]), "unknown space 'vocab': choose from encodings, embeddings, value, key, query or all"),
        (dict(similarities=["dot"]), "unknown similarity 'dot': choose from cosine, euclidean or all"),
        (dict(k=0), "k must be at least 1, not 0"),
        (dict(overlap_k=0), "overlap k must be at least 1, not 0"),
        (dict(causal=True), "bert is an encoder: it has no causal mask to turn on"),
        (dict(sites=["layer_out"], spaces=["value"]), "no site/space pair to compute"),
    ],
)
def test_bad_options(run, options, message):
    with pytest.raises(InputError) as err:
        run(**options)
    assert message in str(err.value)


def test_trace_expands_lists_and_all(loaded_tiny):
    trail = tokentrail.trace(
        "time flies", loaded_tiny, site="attn_resid, layer_out", space=["encodings"], similarity="all", k=2, overlap_k=3
    )
    assert {v.key for v in trail.views} == {
        (s, "encodings", m) for s in ("attn_resid", "layer_out") for m in ("cosine", "euclidean")
    }
    assert trail.info.options.sites == ("attn_resid", "layer_out")
