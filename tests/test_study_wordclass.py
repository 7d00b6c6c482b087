"""Word classes and word -> subword alignment on hand-made sentences, for WordPiece,
byte-level BPE (GPT-2/SmolLM2 'Ġ') and RoBERTa-style tokenizers built in the test."""

from __future__ import annotations

import pytest

from tokentrail.corpus.inputs import Skipped, records
from tokentrail.corpus.wordclass import (
    ENGLISH_FUNCTION_WORDS,
    Word,
    align,
    class_of_untagged,
    class_of_upos,
    split_words,
)

CONLLU = """\
# sent_id = s1
# text = I don't like bananas.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tlike\tlike\tVERB\tVB\t_\t0\troot\t_\t_
5\tbananas\tbanana\tNOUN\tNNS\t_\t4\tobj\t_\tSpaceAfter=No
6\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
# text = Wanna go?
1-2\tWanna\t_\t_\t_\t_\t_\t_\t_\t_
1\tWan\twant\tVERB\tVB\t_\t0\troot\t_\t_
2\tna\tto\tPART\tTO\t_\t3\tmark\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t1\txcomp\t_\tSpaceAfter=No
4\t?\t?\tPUNCT\t.\t_\t1\tpunct\t_\t_

# sent_id = s3
# text = du pain
1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_
1\tde\tde\tADP\t_\t_\t3\tcase\t_\t_
2\tle\tle\tDET\t_\t_\t3\tdet\t_\t_
3\tpain\tpain\tNOUN\t_\t_\t0\troot\t_\t_
"""


def test_upos_classes_follow_the_issue():
    for tag in ("ADP", "AUX", "CCONJ", "DET", "PART", "PRON", "SCONJ"):
        assert class_of_upos(tag) == "function"
    for tag in ("NOUN", "PROPN", "VERB", "ADJ", "ADV", "NUM"):
        assert class_of_upos(tag) == "content"
    assert class_of_upos("PUNCT") == class_of_upos("SYM") == "punctuation"
    assert class_of_upos("INTJ") == class_of_upos("X") == "other"


def test_untagged_words_use_the_closed_class_list():
    assert class_of_untagged("The") == "function" and "the" in ENGLISH_FUNCTION_WORDS
    assert class_of_untagged("banana") == "unknown"  # never guessed to be content
    assert class_of_untagged("...") == "punctuation"
    assert [(w.start, w.end) for w in split_words("I don't, ok")] == [(0, 1), (2, 7), (7, 8), (9, 11)]


def test_conllu_spans_and_multiword_tokens(tmp_path):
    path = tmp_path / "s.conllu"
    path.write_text(CONLLU)
    recs = list(records(path, skipped=Skipped()))
    assert [r.source_id for r in recs] == ["s1", "s2", "s3"]
    s1 = recs[0]
    assert s1.text == "I don't like bananas."
    got = [(s1.text[w.start : w.end], w.upos) for w in s1.words]
    # "don't" is spelled by its words: each gets its own part
    assert got == [("I", "PRON"), ("do", "AUX"), ("n't", "PART"), ("like", "VERB"), ("bananas", "NOUN"), (".", "PUNCT")]
    s2 = recs[1]
    assert [(s2.text[w.start : w.end], w.upos) for w in s2.words] == [
        ("Wan", "VERB"),
        ("na", "PART"),
        ("go", "VERB"),
        ("?", "PUNCT"),
    ]
    s3 = recs[2]  # "du" is not spelled by "de" + "le": the whole surface goes to the first word
    assert [(s3.text[w.start : w.end], w.upos) for w in s3.words] == [("du", "ADP"), ("pain", "NOUN")]


def _classes(tok, text, words):
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    special = [i in set(tok.all_special_ids) for i in enc["input_ids"]]
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    return toks, align(text, enc["offset_mapping"], special, words)


def test_wordpiece_subwords(tokenizer):
    text = "the cat sat on a mat , fast ."
    words = [
        Word(m.start, m.end, u)
        for m, u in zip(split_words(text), ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT", "ADV", "PUNCT"])
    ]
    # a word out of the tiny vocabulary splits into WordPiece '##' pieces
    text2 = "the cats sat"
    words2 = [Word(0, 3, "DET"), Word(4, 8, "NOUN"), Word(9, 12, "VERB")]
    toks, cls = _classes(tokenizer, text2, words2)
    assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
    assert cls[0].word_class == "special" and cls[-1].word_class == "special"
    cat = [i for i, t in enumerate(toks) if i and cls[i].word == 1]
    assert len(cat) >= 2 and any(toks[i].startswith("##") for i in cat)
    assert [cls[i].first_subword for i in cat] == [True] + [False] * (len(cat) - 1)
    assert all(cls[i].word_class == "content" and cls[i].upos == "NOUN" for i in cat)
    toks, cls = _classes(tokenizer, text, words)
    comma = toks.index(",")
    assert cls[comma].word_class == "punctuation" and cls[comma].first_subword
    assert [c.word_class for c in cls][1:3] == ["function", "content"]


def _bpe(roberta: bool, trim_offsets: bool):
    """A tiny byte-level BPE tokenizer (GPT-2 style; RoBERTa style adds <s> ... </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat", "the dog ran", "bananas are yellow", "I like the cat"] * 5
    special = ["<s>", "</s>", "<pad>"]
    tk.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    if roberta:
        tk.post_processor = processors.RobertaProcessing(
            ("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")), trim_offsets=trim_offsets
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    kw = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    return PreTrainedTokenizerFast(tokenizer_object=tk, **kw)


@pytest.mark.parametrize("roberta", [False, True], ids=["gpt2", "roberta"])
@pytest.mark.parametrize("trim", [False, True], ids=["untrimmed", "trimmed"])
def test_byte_level_leading_space_tokens(roberta, trim):
    tok = _bpe(roberta, trim)
    text = "the cat likes bananas, zyx."
    words = [
        Word(m.start, m.end, u)
        for m, u in zip(split_words(text), ["DET", "NOUN", "VERB", "NOUN", "PUNCT", "X", "PUNCT"])
    ]
    toks, cls = _classes(tok, text, words)
    assert any(t.startswith("Ġ") for t in toks)  # leading-space tokens are really there
    if roberta:
        assert toks[0] == "<s>" and toks[-1] == "</s>"
        assert cls[0].word_class == cls[-1].word_class == "special"
    body = [(t, c) for t, c in zip(toks, cls) if c.word_class != "special"]
    lone = [c for t, c in body if t == "Ġ"]  # a space the BPE could not merge: no word
    assert all(c.word == -1 and c.word_class == "other" and not c.first_subword for c in lone)
    body = [(t, c) for t, c in body if c.word >= 0]
    # every word gets exactly one first subword, in order, whatever the 'Ġ' offsets include
    firsts = [c.word for _, c in body if c.first_subword]
    assert firsts == list(range(len(words)))
    by_word = {}
    for t, c in body:
        by_word.setdefault(c.word, []).append(t)
    assert "".join(by_word[1]).replace("Ġ", "") == "cat" and by_word[1][0].startswith("Ġ")
    assert len(by_word[5]) >= 2 and [c.first_subword for _, c in body if c.word == 5] == [True] + [False] * (
        len(by_word[5]) - 1
    )
    assert [c.word_class for _, c in body if c.word == 4] == ["punctuation"]
    assert {c.upos for _, c in body if c.word == 3} == {"NOUN"}


def test_untagged_alignment_marks_function_words(tokenizer):
    toks, cls = _classes(tokenizer, "the cat sat on a mat .", None)
    assert [c.word_class for c in cls] == [
        "special",
        "function",
        "unknown",
        "unknown",
        "function",
        "function",
        "unknown",
        "punctuation",
        "special",
    ]
    assert all(c.upos is None for c in cls)
