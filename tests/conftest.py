"""Shared fixtures: tiny random encoders built from configs (no downloads), a tiny
WordPiece tokenizer, and helpers to save them as model folders.

Random BERT-family inits leave LayerNorm gammas at 1 and every bias at 0, which would
let a wrong formula pass (a missing ``beta`` or ``b_V`` adds zero). :func:`perturb` makes
all of them non-trivial. ``tests/e2e/conftest.py`` (browser harness) is separate.

torch and transformers are imported by the fixtures that need them, not here: a test that
needs no model (the import contract, option checks, the CLI's refusals) starts without
paying seconds for torch first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

# tests never touch the network; set before transformers/huggingface_hub are imported
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def pytest_collection_modifyitems(config, items):
    """The tier markers by where a test lives: ``parity`` for tests/test_parity_*.py, ``e2e``
    for tests/e2e/ (``pytest -m parity``; ``make test-fast`` leaves out slow and browser)."""
    for item in items:
        path = item.path
        if path.name.startswith("test_parity_"):
            item.add_marker(pytest.mark.parity)
        if path.parent.name == "e2e":
            item.add_marker(pytest.mark.e2e)


TINY = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.2,
)

WORDS = (
    "time flies like an arrow . fruit a banana the cat sat on mat , dog ran fast slow red blue "
    "green one two three four five six seven eight nine ten up down left right in out"
).split()


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every LayerNorm a non-trivial gamma/beta and every Linear a non-zero bias."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Embedding):
                # word and position rows of similar size, so position really moves encodings
                m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=g))
    return model.eval()


def build_tiny(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random model of ``family`` (bert, bert_mlm, roberta, roberta_mlm, xlmr)."""
    import torch
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertModel,
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaModel,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    kinds = {
        "bert": (BertConfig, BertModel, {}),
        "bert_mlm": (BertConfig, BertForMaskedLM, {}),
        "roberta": (RobertaConfig, RobertaModel, {"max_position_embeddings": 26}),
        "roberta_mlm": (RobertaConfig, RobertaForMaskedLM, {"max_position_embeddings": 26}),
        "xlmr": (XLMRobertaConfig, XLMRobertaModel, {"max_position_embeddings": 26}),
    }
    config_cls, model_cls, extra = kinds[family]
    torch.manual_seed(seed)
    config = config_cls(**{**TINY, **extra, **overrides}, attn_implementation="eager")
    return perturb(model_cls(config), seed)


@pytest.fixture(scope="session")
def make_tiny():
    """:func:`build_tiny`, for tests that need a fresh model of their own (to edit it)."""
    return build_tiny


@pytest.fixture(scope="session")
def make_ids():
    """:func:`tiny_ids`."""
    return tiny_ids


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, nn.Module]:
    """One tiny model per family, built once per session (treat as read-only)."""
    return {name: build_tiny(name, seed=i) for i, name in enumerate(("bert", "bert_mlm", "roberta", "xlmr"))}


def tiny_ids(adapter, n: int = 9, seed: int = 0) -> torch.Tensor:
    """A 'text' of n random ids: a CLS/<s>-like id first, a repeated id to exercise duplicates."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, adapter.vocab_size, (n,), generator=g)
    ids[0] = 2
    ids[-1] = ids[1]  # one token appears twice, at two positions
    return ids


def write_vocab(folder: Path, size: int = TINY["vocab_size"]) -> Path:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokens += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens += [c for c in "bcdefghijklmnopqrstuvwxyz"]
    tokens = list(dict.fromkeys(tokens))
    tokens += [f"[unused{i}]" for i in range(size - len(tokens))]
    assert len(tokens) == size
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def tiny_tokenizer(folder: Path):
    """A WordPiece tokenizer over :data:`WORDS` (+ letters), vocabulary size = the tiny models'."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_vocab(folder).read_text().split()
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("vocab"))


def save_folder(folder: Path, model: nn.Module, tokenizer, *, pickle_only: bool = False) -> Path:
    """Save ``model`` + ``tokenizer`` as a transformers folder (safetensors, or only a pickle)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    if pickle_only:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def save_model():
    """:func:`save_folder`."""
    return save_folder


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory, tokenizer) -> Path:
    """A loadable local folder: tiny BertForMaskedLM (safetensors) + the tiny tokenizer."""
    return save_folder(tmp_path_factory.mktemp("tiny-bert"), build_tiny("bert_mlm", seed=7), tokenizer)


@pytest.fixture(scope="session")
def loaded_tiny(bert_folder):
    """``tokentrail.load`` of :func:`bert_folder` (exercises the real local-folder path)."""
    import tokentrail

    return tokentrail.load(str(bert_folder))


@pytest.fixture(scope="session")
def minilm():
    """The bundled real model; skips when its package is not installed."""
    import tokentrail
    from tokentrail.session.resolve import CATALOGUE, package_file

    if package_file(CATALOGUE["minilm"]) is None:
        pytest.skip("bundled MiniLM is not installed")
    return tokentrail.load("minilm")
