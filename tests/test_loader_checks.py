"""Broken model folders and caches: each is one clear ModelError (CLI: one line, exit 2).

Folders are tiny models saved in tmp_path, then damaged the way real downloads are.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tokentrail
from tokentrail.cli.commands import app
from tokentrail.spec.errors import ModelError

runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory, tokenizer, make_tiny, save_model):
    return save_model(tmp_path_factory.mktemp("good"), make_tiny("bert_mlm", seed=3), tokenizer)


def damaged(good: Path, tmp_path: Path, how) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    how(folder)
    return folder


def _no_tokenizer(d: Path):
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink(missing_ok=True)


def _only_specials(d: Path):
    _no_tokenizer(d)
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")


def _hidden_size(d: Path):
    config = json.loads((d / "config.json").read_text())
    config["hidden_size"] = 64
    (d / "config.json").write_text(json.dumps(config))


def _truncate(d: Path):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


CASES = [
    ("no tokenizer", _no_tokenizer, "has no tokenizer files"),
    ("only special tokens", _only_specials, "has no vocabulary beyond its 5 special tokens"),
    (
        "empty weights",
        lambda d: (d / "model.safetensors").write_bytes(b""),
        "is not a complete safetensors file (0 bytes",
    ),
    ("truncated weights", _truncate, "is not a complete safetensors file"),
    (
        "garbage weights",
        lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 100),
        "is not a complete safetensors file (800 bytes",
    ),
    ("invalid config", lambda d: (d / "config.json").write_text("{not json"), "cannot read the config in"),
    ("hidden size", _hidden_size, "do not match its config.json (hidden size 64"),
]


@pytest.mark.parametrize("name, how, message", CASES, ids=[c[0] for c in CASES])
def test_broken_folder_is_one_clear_error(good, tmp_path, name, how, message):
    folder = damaged(good, tmp_path, how)
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        tokentrail.load(str(folder))
    res = runner.invoke(app, ["trace", "time flies", "-m", str(folder), "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1, res.output


def test_tokenizer_larger_than_the_embedding_table(tmp_path, tokenizer, make_tiny, save_model):
    folder = save_model(tmp_path / "small-vocab", make_tiny("bert_mlm", vocab_size=50), tokenizer)
    with pytest.raises(ModelError, match="has ids up to 95 but the model's embedding table has 50 rows"):
        tokentrail.load(str(folder))


# ---- the GGUF cache ----------------------------------------------------------------
@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + os.urandom(256))
    return path


def test_cache_that_is_a_file_is_refused_before_converting(tmp_path, fake_gguf, monkeypatch):
    from tokentrail.session import gguf_cache

    converted = []
    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: converted.append(a))
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("TOKENTRAIL_CACHE", str(not_a_folder))
    with pytest.raises(
        ModelError, match=r"the cache .*cache-file is not a folder: set TOKENTRAIL_CACHE to a writable folder"
    ):
        gguf_cache.load_gguf_causal_lm(fake_gguf)
    assert not converted


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_is_refused_before_converting(tmp_path, fake_gguf, monkeypatch):
    from tokentrail.session import gguf_cache

    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("converted"))
    locked = tmp_path / "locked"
    (locked / "gguf").mkdir(parents=True)
    locked.joinpath("gguf").chmod(0o500)
    with pytest.raises(ModelError, match="permission denied"):
        gguf_cache.load_gguf_causal_lm(fake_gguf, cache_dir=locked)


def test_cache_under_a_file_cannot_be_created(tmp_path, fake_gguf, monkeypatch):
    from tokentrail.session import gguf_cache

    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("converted"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="cannot create the cache folder"):
        gguf_cache.load_gguf_causal_lm(fake_gguf, cache_dir=tmp_path / "file" / "cache")


def _stale(root: Path, name: str, age_s: float, size: int = 1000) -> Path:
    p = root / "gguf" / name
    p.mkdir(parents=True)
    (p / "model.safetensors").write_bytes(b"\0" * size)
    old = time.time() - age_s
    os.utime(p, (old, old))
    return p


def test_stale_conversions_are_cleaned_at_the_next_conversion(tmp_path, fake_gguf, monkeypatch):
    from tokentrail.session import gguf_cache

    root = tmp_path / "cache"
    stale = _stale(root, ".tmp-killed", 2 * gguf_cache.STALE_AFTER_S, size=5000)
    fresh = _stale(root, ".tmp-running", 10)

    def fake_convert(src, target, *_progress_and_check):
        assert not stale.exists() and fresh.exists()  # cleaned before converting
        raise RuntimeError("stop here")

    monkeypatch.setattr(gguf_cache, "_convert", fake_convert)
    with pytest.raises(RuntimeError, match="stop here"):
        gguf_cache.load_gguf_causal_lm(fake_gguf, cache_dir=root)
    assert fresh.exists() and not stale.exists()


def test_cache_command_lists_and_clears(tmp_path, monkeypatch):
    from tokentrail.session import gguf_cache

    root = tmp_path / "cache"
    model = root / "gguf" / "SmolLM2-abc"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\0" * 2_000_000)
    (model / gguf_cache._MARKER).write_text("{}")
    _stale(root, ".tmp-killed", 2 * gguf_cache.STALE_AFTER_S, size=500_000)
    monkeypatch.setenv("TOKENTRAIL_CACHE", str(root))
    res = runner.invoke(app, ["cache"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "gguf/SmolLM2-abc 2.0 MB converted GGUF model" in flat
    assert "gguf/.tmp-killed 500.0 KB stale temporary (an interrupted conversion)" in flat
    assert "total 2.5 MB" in flat
    res = runner.invoke(app, ["cache", "--clear"])  # not a terminal: asks nothing
    assert res.exit_code == 0, res.output
    assert "freed 2.5 MB (2 entries)" in " ".join(res.output.split())
    assert list((root / "gguf").iterdir()) == []
    res = runner.invoke(app, ["cache"])
    assert "is empty" in res.output
