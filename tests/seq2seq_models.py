"""Tiny random encoder-decoders (BART, Marian, T5) saved with ``save_pretrained``, each with
a tiny word-level tokenizer built offline (no hub), for the seq2seq tests and the docs."""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "time flies like an arrow",
    "fruit flies like a banana",
    "the quick brown fox jumps over the lazy dog",
    "le chat est sur le tapis",
    "un chien court dans le parc",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3: bos, pad, eos, unk (BART's order)


def tokenizer(eos_only: bool = False):
    """A WordLevel tokenizer over :data:`SENTENCES`: ``<s> words </s>`` (``words </s>`` for T5/Marian)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    single = "$A </s>" if eos_only else "<s> $A </s>"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


WORDS = sorted({w for s in SENTENCES for w in s.split()})
VOCAB = len(SPECIALS) + len(WORDS)  # the models' vocabulary is the tokenizer's


def _perturb(model, seed: int):
    """Random norms and biases (the default init leaves them 1 and 0, hiding mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(0.2 * torch.randn(model.final_logits_bias.shape, generator=g))
    return model.eval()


def bart(folder: Path | None = None, seed: int = 0):
    import transformers

    cfg = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = _perturb(transformers.BartForConditionalGeneration(cfg), seed + 11)
    return _save(model, tokenizer(), folder)


def marian(folder: Path | None = None, seed: int = 0):
    import transformers

    cfg = transformers.MarianConfig(
        vocab_size=VOCAB,
        decoder_vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        bos_token_id=0,
        forced_eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = _perturb(transformers.MarianMTModel(cfg), seed + 12)
    return _save(model, tokenizer(eos_only=True), folder)


def t5(folder: Path | None = None, seed: int = 0, tied: bool = True):
    import transformers

    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        tie_word_embeddings=tied,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(seed)
    model = _perturb(transformers.T5ForConditionalGeneration(cfg), seed + 13)
    return _save(model, tokenizer(eos_only=True), folder)


def _save(model, tok, folder: Path | None):
    model.set_attn_implementation("eager")  # attention probabilities need eager
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return model, tok
