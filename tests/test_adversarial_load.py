"""A checkpoint or file that does not fit its claims (issue 23 point 1; issue 25 points 2,
5, 7 and 9): each is refused in one line (CLI: exit 2, no traceback) before the model
loads where no model is needed, or loads as what it really is.

Folders are tiny random models saved with ``save_pretrained`` into tmp folders; every test
here failed on main at 79b5c82 (docs/robustness.md, its last section, lists the probes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import tokentrail as tt
from tokentrail.cli.commands import app
from tokentrail.corpus import study
from tokentrail.spec.errors import InputError, ModelError

ROPE = dict(
    vocab_size=128,  # room for the special tokens a Qwen2 tokenizer adds
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
    bos_token_id=2,
    eos_token_id=3,
    pad_token_id=0,
)
NEOX = {k: v for k, v in ROPE.items() if k != "num_key_value_heads"}
BARE = {  # decoders saved without their head (e.g. decoder-based embedding models)
    "llama": (transformers.LlamaConfig, transformers.LlamaModel, ROPE),
    "mistral": (transformers.MistralConfig, transformers.MistralModel, ROPE),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2Model, ROPE),
    "gpt_neox": (transformers.GPTNeoXConfig, transformers.GPTNeoXModel, {**NEOX, "rotary_pct": 0.25}),
    "phi": (transformers.PhiConfig, transformers.PhiModel, NEOX),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3Model, {**ROPE, "head_dim": 8}),
    "olmo2": (transformers.Olmo2Config, transformers.Olmo2Model, ROPE),
    "phi3": (transformers.Phi3Config, transformers.Phi3Model, ROPE),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2Model, {**ROPE, "head_dim": 8}),
    "opt": (
        transformers.OPTConfig,
        transformers.OPTModel,
        dict(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=48,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        ),
    ),
}


def one_line_exit_2(args: list[str], message: str) -> None:
    """The CLI refuses ``args`` with one line holding ``message``, exit 2, no traceback."""
    result = CliRunner().invoke(app, args)
    text = result.output.strip()
    last = text.splitlines()[-1] if text else ""
    assert result.exit_code == 2, text
    assert message in last and "Traceback" not in text, text
    assert last.startswith("error:"), text


def save_bare(folder: Path, family: str, tokenizer, seed: int = 0, **overrides) -> Path:
    config_cls, model_cls, sizes = BARE[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**sizes, "tie_word_embeddings": False, **overrides}))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_full(tmp_path_factory, tokenizer) -> Path:
    """A whole tiny LlamaForCausalLM (untied head), the folder the damaged copies start from."""
    folder = tmp_path_factory.mktemp("llama-full")
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**ROPE, tie_word_embeddings=False)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---- issue 23, point 1: a decoder checkpoint saved without its output head -------------
@pytest.mark.parametrize("family", sorted(BARE))
def test_a_bare_decoder_loads_as_the_base_model_and_refuses_the_lens(family, tmp_path, tokenizer):
    folder = save_bare(tmp_path / family, family, tokenizer)
    loaded = tt.load(str(folder))
    assert loaded.adapter.lens_head() is None  # main: a random lm_head, a different lens each load
    assert not hasattr(loaded.adapter.model, "lm_head") and not hasattr(loaded.adapter.model, "embed_out")
    with pytest.raises(ModelError, match="this checkpoint has no output head"):
        tt.trace("the cat sat", loaded, lens=True)
    trail = tt.trace("the cat sat", loaded, site="layer_out", space="encodings")  # everything else works
    assert trail.n_layers == 2
    result = tt.verify(loaded, "the cat sat on the mat")
    row = result.row("lens = logits")
    assert row.passed is None and "no output head" in row.note  # main: "pass", with the random head
    assert result.passed


def test_the_cli_refuses_the_lens_of_a_bare_decoder_and_verify_says_it_is_not_checked(tmp_path, tokenizer, monkeypatch):
    folder = save_bare(tmp_path / "llama", "llama", tokenizer)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tt, "load", no_load)  # refused from the tensor names, before the weights load
    one_line_exit_2(["trace", "-m", str(folder), "--lens", "the cat"], "this checkpoint has no output head")
    monkeypatch.undo()
    result = CliRunner().invoke(app, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "not checked: lens = logits (this checkpoint has no output head" in " ".join(result.output.split())


def test_a_bare_decoder_with_tied_embeddings_keeps_its_head(tmp_path, tokenizer):
    folder = save_bare(tmp_path / "tied", "llama", tokenizer, tie_word_embeddings=True)
    loaded = tt.load(str(folder))
    head = loaded.adapter.model.lm_head.weight
    assert torch.equal(head, loaded.adapter.model.model.embed_tokens.weight)  # the tied head is the table
    assert tt.verify(loaded, "the cat sat").row("lens = logits").passed is True


# ---- issue 25, point 2: a checkpoint that does not fill the model its config builds ------
def test_a_gpt2_config_over_bert_weights_is_refused_before_the_weights_load(tmp_path, bert_folder, monkeypatch):
    folder = copy_of(bert_folder, tmp_path)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 24})
    )

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(ModelError, match=r"hold none of the tensors of the GPT2LMHeadModel .*\(it needs wte\.weight"):
        tt.load(str(folder))  # main: a randomly initialised GPT-2, exit 0
    monkeypatch.undo()
    one_line_exit_2(["trace", "-m", str(folder), "the cat"], "hold none of the tensors")


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[name]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path, llama_full):
    folder = copy_of(llama_full, tmp_path)
    _drop_tensor(folder, "model.layers.1.mlp.down_proj.weight")
    with pytest.raises(ModelError, match=r"1 of its tensors are missing \(model.layers.1.mlp.down_proj.weight\)"):
        tt.load(str(folder))  # main: that matrix random, exit 0
    one_line_exit_2(["trace", "-m", str(folder), "the cat"], "model.layers.1.mlp.down_proj.weight")


def test_a_config_with_fewer_layers_than_its_weights_is_refused(tmp_path, llama_full):
    folder = copy_of(llama_full, tmp_path)
    edit_config(folder, num_hidden_layers=1)
    with pytest.raises(ModelError, match=r"tensors have no place in it \(model.layers.1"):
        tt.load(str(folder))  # main: a one-layer model, silently another model than the checkpoint's


def test_unread_and_foreign_head_tensors_are_allowed(tmp_path, tokenizer, make_tiny, save_model):
    """The documented exceptions: BERT's pooler may be absent; a classifier head outside the
    base model may be present. Neither changes a number tokentrail reports."""
    model = make_tiny("bert", seed=5)
    folder = save_model(tmp_path / "bert", model, tokenizer)
    tensors = load_file(folder / "model.safetensors")
    for name in [k for k in tensors if k.startswith("pooler.")]:
        del tensors[name]
    tensors["classifier.weight"] = torch.zeros(2, 32)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    loaded = tt.load(str(folder))
    assert loaded.adapter.family == "bert"


# ---- issue 25, point 5: --resume with a local model folder whose files changed -----------
def test_resume_refuses_a_local_folder_whose_weights_changed_before_loading(tmp_path, bert_folder, monkeypatch):
    folder = copy_of(bert_folder, tmp_path)
    texts = ["the cat sat on the mat", "time flies like an arrow", "one two three"]
    study(texts, str(folder), tmp_path / "o", batch=1, limit=1)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert str(manifest["model_revision"]).startswith("sha256:")  # main: null
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = tensors[name] * 1.01
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("tokentrail.corpus.run.load", no_load)
    with pytest.raises(InputError, match="the files of the model folder .* changed since the study began"):
        study(texts, str(folder), tmp_path / "o", batch=1, limit=1, resume=True)
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n")
    args = ["study", str(src), "--model", str(folder), "--out", str(tmp_path / "o"), "--resume"]
    one_line_exit_2(args, "changed since the study began")


def test_a_local_folders_revision_is_the_hash_of_its_files(tmp_path, bert_folder):
    from tokentrail.session.checkpoint import folder_revision

    folder = copy_of(bert_folder, tmp_path)
    before = folder_revision(folder)
    assert before == folder_revision(copy_of(bert_folder, tmp_path / "again"))  # content, not path or time
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert folder_revision(folder) != before


# ---- issue 25, point 7: Trail.load trusts the file ------------------------------------
@pytest.fixture(scope="module")
def trail_json(loaded_tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "trail.json"
    tt.trace("the cat sat", loaded_tiny, site="layer_out", space="encodings", k=3).export(path)
    return path


def _forged(trail_json: Path, tmp_path: Path, edit) -> Path:
    doc = json.loads(trail_json.read_text())
    edit(doc)
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_file_claiming_more_cells_than_it_has_rows_is_refused(trail_json, tmp_path):
    assert tt.Trail.load(trail_json).n_layers == 2  # the genuine file reads back

    def inflate(doc):
        doc["meta"]["trail"]["n_layers"] = 200_000  # main: a 210 kB file -> a Trail of gigabytes

    with pytest.raises(InputError, match=r"claims arrays of [\d,]+ cells but holds [\d,]+ rows"):
        tt.Trail.load(_forged(trail_json, tmp_path, inflate))


def test_a_forged_parquet_export_is_refused_too(loaded_tiny, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "trail.parquet"
    tt.trace("the cat sat", loaded_tiny, site="layer_out", space="encodings", k=3).export(path)
    frame = pq.read_table(path).to_pandas()
    row = frame.index[frame["table"] == "meta"][0]
    meta = json.loads(frame.at[row, "meta"])
    meta["trail"]["n_heads"] = meta["trail"]["n_layers"] = 100_000
    frame.at[row, "meta"] = json.dumps(meta)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    with pytest.raises(InputError, match=r"claims arrays of [\d,]+ cells but holds [\d,]+ rows"):
        tt.Trail.load(path)


def test_a_file_whose_arrays_would_not_fit_in_memory_is_refused_with_the_figure(trail_json, monkeypatch):
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "1000")
    with pytest.raises(InputError, match=r"would need about [\d.,]+ \w+ of memory to load"):
        tt.Trail.load(trail_json)


def test_deep_nesting_and_oversized_files_are_refused(trail_json, tmp_path, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text('{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(InputError, match="nests deeper"):
        tt.Trail.load(deep)  # main: RecursionError
    chain = _forged(trail_json, tmp_path, lambda d: d["meta"].update(decoder={"decoder": {}, "trail": {}}))
    with pytest.raises(InputError, match="not a tokentrail export"):
        tt.Trail.load(chain)
    monkeypatch.setattr("tokentrail.results.trailbounds.MAX_TRAIL_BYTES", 1000)
    with pytest.raises(InputError, match=r"tokentrail reads exports of at most 1\.0 KB"):
        tt.Trail.load(trail_json)


# ---- issue 25, point 9: configs that gave tracebacks ------------------------------------
def _deep_config(folder: Path) -> None:
    text = (folder / "config.json").read_text().rstrip()[:-1]
    (folder / "config.json").write_text(text + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _huge_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): "x" * 64 for i in range(80_000)}
    (folder / "config.json").write_text(json.dumps(config))


CONFIGS = [
    ("hidden_size big", lambda d: edit_config(d, hidden_size="big"), "hidden_size"),
    ("no layers", lambda d: edit_config(d, num_hidden_layers=0), "num_hidden_layers = 0"),
    ("negative layers", lambda d: edit_config(d, num_hidden_layers=-1), "num_hidden_layers = -1"),
    ("heads a float", lambda d: edit_config(d, num_attention_heads=2.5), "num_attention_heads"),
    ("nested 100k deep", _deep_config, "nests deeper than 32 levels"),
    ("huge", _huge_config, "reads a config.json of at most 4,194,304 bytes"),
    ("not an object", lambda d: (d / "config.json").write_text("[1, 2]"), "is not a JSON object"),
]


@pytest.mark.parametrize("name, how, message", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_a_broken_config_is_one_line_before_the_weights_are_read(name, how, message, tmp_path, llama_full):
    folder = copy_of(llama_full, tmp_path)
    how(folder)
    (folder / "model.safetensors").write_bytes(b"\x00garbage")  # never reached: the config is refused first
    with pytest.raises(ModelError, match=message):
        tt.load(str(folder))
    one_line_exit_2(["trace", "-m", str(folder), "the cat"], message)
