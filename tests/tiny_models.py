"""One tiny random model per supported ``model_type``, from one table (:data:`TINY`), saved
with ``save_pretrained`` next to a tiny word-level tokenizer: what the families table
(``benchmarks/families_table.py``) and the parity tests of issue 23's families build.

Adding a family is one entry: its ``model_type``, the transformers Auto class that loads it
with its head (``masked``, ``causal``, ``seq2seq`` or ``base``) and the config keywords
that make it tiny and exercise what is particular to it. :func:`build` seeds the init and
then :func:`perturb` gives every norm a non-trivial scale, every bias a non-zero value and
every matrix random entries (the default init leaves norms at 1 and biases at 0, which
would let a missing term pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seq2seq_models import VOCAB, tokenizer

#: the ids every tiny model shares with the word-level tokenizer (bos, pad, eos)
IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)
_ENC = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    **IDS,
)
_DEC = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    **IDS,
)
_S2S = dict(
    vocab_size=VOCAB,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    decoder_start_token_id=2,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    **IDS,
)

# local/global layers, a window of 3, query pre-scaling, soft-capping, head_dim != d / H
_GEMMA2 = dict(
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=3,
    hidden_size=32,
    intermediate_size=48,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    head_dim=12,
    query_pre_attn_scalar=20,
    attn_logit_softcapping=2.0,
    final_logit_softcapping=3.0,
    sliding_window=3,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    attention_bias=True,
    **IDS,
)


@dataclass(frozen=True)
class Tiny:
    """How to build one family's tiny model."""

    auto: str  # "masked", "causal", "seq2seq" or "base": the head it is built with
    config: dict[str, Any] = field(default_factory=dict)
    #: the family's name in the table when it differs from the model_type
    note: str = ""


#: model_type -> its tiny model. One entry per family; others add theirs here.
TINY: dict[str, Tiny] = {
    "bert": Tiny("masked", _ENC),
    "roberta": Tiny("masked", {**_ENC, "max_position_embeddings": 42}),
    "xlm-roberta": Tiny("masked", {**_ENC, "max_position_embeddings": 42}),
    "camembert": Tiny("masked", {**_ENC, "max_position_embeddings": 42}),
    "distilbert": Tiny(
        "masked",
        dict(
            vocab_size=VOCAB,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=48,
            max_position_embeddings=40,
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=1,
        ),
    ),
    # embedding_size 16 < hidden 32: the embedding stage ends in embeddings_project
    "electra": Tiny("masked", {**_ENC, "embedding_size": 16}),
    # 3 layers: global, local (window 2 each way), global; biases on; distinct rope thetas
    "modernbert": Tiny(
        "masked",
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=64,
            global_attn_every_n_layers=2,
            local_attention=4,
            global_rope_theta=1000.0,
            local_rope_theta=50.0,
            norm_bias=True,
            attention_bias=True,
            mlp_bias=True,
            classifier_bias=True,
            decoder_bias=True,
            cls_token_id=0,
            sep_token_id=2,
            **IDS,
        ),
    ),
    "gpt2": Tiny("causal", dict(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, **IDS)),
    "llama": Tiny("causal", {**_DEC, "attention_bias": True}),
    "mistral": Tiny("causal", {**_DEC, "sliding_window": None}),
    "qwen2": Tiny("causal", _DEC),
    "gpt_neox": Tiny(
        "causal",
        dict(
            num_attention_heads=4,
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=80,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            rotary_pct=0.25,
            **IDS,
        ),
    ),
    "gemma": Tiny("causal", {**_DEC, "num_key_value_heads": 1, "head_dim": 12, "attention_bias": True}),
    "phi": Tiny("causal", {**_DEC, "num_key_value_heads": 6, "partial_rotary_factor": 0.5}),
    # issue 23's decoders (their adapters' own parity tests use the same shapes)
    "qwen3": Tiny("causal", {**_DEC, "head_dim": 8, "attention_bias": True}),  # QK-norm, head_dim != d / H
    "olmo2": Tiny("causal", {**_DEC, "attention_bias": True}),
    "phi3": Tiny("causal", {**_DEC, "partial_rotary_factor": 0.5}),
    "opt": Tiny(
        "causal",
        dict(
            num_attention_heads=4,
            num_hidden_layers=2,
            hidden_size=32,
            ffn_dim=48,
            word_embed_proj_dim=32,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            **IDS,
        ),
    ),
    "gemma2": Tiny("causal", _GEMMA2),
    "gemma3_text": Tiny(
        "causal",
        {
            **_GEMMA2,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        },
    ),
    "bart": Tiny("seq2seq", {**_S2S, "scale_embedding": True}),
    "marian": Tiny("seq2seq", {**_S2S, "decoder_vocab_size": VOCAB, "scale_embedding": True}),
    "mbart": Tiny("seq2seq", {**_S2S, "scale_embedding": True}),
    "t5": Tiny(
        "seq2seq",
        dict(
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
            pad_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
    ),
}


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random matrices, norm scales ``1 + 0.3 N(0, 1)`` and biases ``0.2 N(0, 1)`` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * 0.2)
            elif name.endswith("weight"):  # a norm's scale
                p.copy_(1 + 0.3 * noise)
            else:  # a bias
                p.copy_(0.2 * noise)
        bias = getattr(model, "final_logits_bias", None)
        if bias is not None:
            bias.copy_(0.2 * torch.randn(bias.shape, generator=g))
    return model.eval()


def build(model_type: str, seed: int = 0, auto: str | None = None, **overrides: Any) -> torch.nn.Module:
    """The tiny random model of ``model_type`` (eager attention), with ``auto``'s head
    (default: the table's) and config ``overrides``."""
    import transformers

    entry = TINY[model_type]
    config = transformers.AutoConfig.for_model(model_type, **{**entry.config, **overrides})
    classes = {
        "masked": transformers.AutoModelForMaskedLM,
        "causal": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "base": transformers.AutoModel,
    }
    torch.manual_seed(seed)
    model = classes[auto or entry.auto].from_config(config, attn_implementation="eager")
    return perturb(model, seed + 101)


def save(model: torch.nn.Module, folder: Path) -> Path:
    """``model`` and the tiny word-level tokenizer as a loadable folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    eos_only = model.config.model_type in ("t5", "marian")
    tokenizer(eos_only=eos_only).save_pretrained(folder)
    return folder
