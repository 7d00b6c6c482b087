"""The display rule for vocabulary tokens: hand-made tables and the bundled tokenizers."""

from __future__ import annotations

import pytest

from tokentrail.spec import tokens
from tokentrail.spec.tokens import BYTE_LEVEL, PLAIN, SENTENCEPIECE, WORDPIECE, readable, show_bytes, tokenizer_kind


def byte_level(text: str) -> str:
    """How a byte-level BPE vocabulary spells ``text``."""
    table = tokens.bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def test_gpt2_byte_table_by_hand():
    table = tokens.bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("\t")] == "ĉ"
    assert table[ord("a")] == "a" and table[0xE3] == "ã" and table[0x82] == "Ĥ"


@pytest.mark.parametrize(
    "token, shown",
    [
        ("ÙĤ", "ق"),  # U+0642 = D9 82
        ("ãĤĭ", "る"),  # U+308B = E3 82 8B
        ("ĠÙĤ", "␣ق"),
        ("Ġthe", "␣the"),
        ("ĊĊ", "↵↵"),
        ("ĉx", "⇥x"),
        ("ãģ", "<0xE3><0x81>"),  # the first two bytes of a three-byte character
        ("Ĥ", "<0x82>"),  # a lone continuation byte
        ("Ġãģ«", "␣に"),
        ("ā", "<0x01>"),  # a control byte
        ("<|im_start|>", "<|im_start|>"),  # an added token is shown as it is
    ],
)
def test_byte_level_tokens(token, shown):
    assert readable(token, BYTE_LEVEL) == shown


def test_byte_level_round_trip_of_any_text():
    text = "naïve 東京 — ok"
    assert readable(byte_level(text), BYTE_LEVEL) == "naïve␣東京␣—␣ok"


@pytest.mark.parametrize(
    "token, shown",
    [
        ("▁the", "␣the"),
        ("ing", "ing"),
        ("<0xE3>", "<0xE3>"),  # a byte-fallback fragment stays an escape
        ("<0x0A>", "↵"),
        ("<0x41>", "A"),
        ("<s>", "<s>"),
    ],
)
def test_sentencepiece_tokens(token, shown):
    assert readable(token, SENTENCEPIECE) == shown


def test_wordpiece_untouched_and_plain_markers():
    assert readable("##ing", WORDPIECE) == "##ing"
    assert readable("[CLS]", WORDPIECE) == "[CLS]"
    assert readable("a\nb", PLAIN) == "a↵b"
    assert readable(None, PLAIN) == ""


def test_show_bytes_by_hand():
    assert show_bytes("é".encode()) == "é"
    assert show_bytes(b"\xe3\x82") == "<0xE3><0x82>"
    assert show_bytes(b"\xff a") == "<0xFF>␣a"
    assert show_bytes(b"\xf0\x9f\x98\x80") == "😀"
    assert show_bytes(b"\xed\xa0\x80") == "<0xED><0xA0><0x80>"  # an encoded surrogate is not UTF-8


def _fast_tokenizer(decoder, pre_tokenizer):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    tok = Tokenizer(BPE())
    tok.decoder = decoder
    tok.pre_tokenizer = pre_tokenizer
    return type("Wrapped", (), {"backend_tokenizer": tok})()


def test_kind_from_the_tokenizer_object():
    from tokenizers import decoders, pre_tokenizers

    assert tokenizer_kind(_fast_tokenizer(decoders.ByteLevel(), pre_tokenizers.ByteLevel())) == BYTE_LEVEL
    llama = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    assert tokenizer_kind(_fast_tokenizer(llama, None)) == SENTENCEPIECE
    assert tokenizer_kind(_fast_tokenizer(decoders.Metaspace(), pre_tokenizers.Metaspace())) == SENTENCEPIECE
    assert tokenizer_kind(_fast_tokenizer(decoders.WordPiece(), pre_tokenizers.BertPreTokenizer())) == WORDPIECE
    assert tokenizer_kind(object()) == PLAIN
    assert tokenizer_kind(type("SlowGPT2", (), {"byte_encoder": {}})()) == BYTE_LEVEL


def test_wordpiece_tokenizer_from_conftest(tokenizer):
    from tokentrail.session.inputs import readable_tokens

    assert tokenizer_kind(tokenizer) == WORDPIECE
    ids = tokenizer("fruit flies")["input_ids"]
    assert readable_tokens(tokenizer, ids)[0] == "[CLS]"


@pytest.mark.slow
def test_bundled_smollm2_tokens_are_readable():
    import tokentrail
    from tokentrail.session.inputs import readable_tokens
    from tokentrail.session.resolve import CATALOGUE, package_file

    if package_file(CATALOGUE["smollm2"]) is None:
        pytest.skip("bundled SmolLM2 is not installed")
    tok = tokentrail.load("smollm2").tokenizer
    assert tokenizer_kind(tok) == BYTE_LEVEL
    ids = tok.convert_tokens_to_ids(["ÙĤ", "ãĤĭ", "Ġthe", "Ċ"])
    assert readable_tokens(tok, ids) == ["ق", "る", "␣the", "↵"]
    ids = tok("こんにちは")["input_ids"]
    shown = "".join(readable_tokens(tok, ids))
    assert "Ã" not in shown and "ã" not in shown
    # every piece is either a whole character or an escaped fragment of one
    assert shown.replace("<0x", "").count(">") == shown.count("<0x")
