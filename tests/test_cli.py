"""The command line: help for every command, clear one-line errors, real output."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tokentrail.cli.commands import app

runner = CliRunner()
TEXT = "Time flies like an arrow. Fruit flies like a banana."


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def command_names() -> list[str]:
    return sorted(get_command(app).commands)


def test_every_command_has_help_text():
    names = command_names()
    assert {"trace", "models", "serve"} <= set(names)
    for name in names:
        res = run(name, "--help")
        assert res.exit_code == 0, res.output
        cmd = get_command(app).commands[name]
        assert cmd.help and len(cmd.help) > 10, f"{name} has no help text"
        for param in cmd.params:
            if param.name != "help" and getattr(param, "help", None) is None and param.param_type_name == "option":
                pytest.fail(f"option {param.name} of {name} has no help")


def test_top_level_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    for name in command_names():
        assert name in res.output


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(
    "args, message",
    [
        (["trace", ""], "text is empty"),
        (["trace", "   \n "], "text is empty"),
        (["trace", "a\x07b"], "control character U+0007"),
        (["trace", "a\ud800b"], "lone surrogate"),
        (["trace", TEXT, "--site", "nowhere"], "unknown site 'nowhere'"),
        (["trace", TEXT, "--space", "values"], "unknown space 'values'"),
        (["trace", TEXT, "--similarity", "dot"], "unknown similarity 'dot'"),
        (["trace", TEXT, "--format", "xml"], "unknown format 'xml'"),
        (["trace", TEXT, "--format", "parquet"], "needs --out"),
        (["trace", TEXT, "--site", "attn_resid", "--space", "value"], "no site/space pair"),
        (["trace", TEXT, "--model", "../../etc/passwd"], "no model folder"),
        (["trace", TEXT, "--model", "not a model!"], "not a known model name"),
        (["trace", TEXT, "--device", "tpu"], "unknown device 'tpu'"),
        (["trace", TEXT, "--dtype", "int8"], "unknown dtype 'int8'"),
        (["trace", TEXT, "--lens-site", "heads"], "the logit lens reads layer_out or attn_resid"),
        *([(["trace", TEXT, "--device", "cuda"], "no CUDA GPU is usable here")] if not _cuda() else []),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_offline_hub_miss_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    res = run("trace", TEXT, "--model", "someone/not-cached-model")
    assert res.exit_code == 2
    assert "offline" in res.output and "not in the local hub cache" in res.output


@pytest.mark.slow
class TestBundled:
    def test_token_journey_table(self):
        res = run("trace", TEXT, "--token", "flies", "-k", "5", "-q")
        assert res.exit_code == 0, res.output
        assert "token 2 flies" in res.output
        # one row per layer (MiniLM has 6) plus the original encoding
        rows = [
            line.split()
            for line in res.output.splitlines()
            if line.strip()[:1].isdigit() or line.strip().startswith("emb")
        ]
        assert [r[0] for r in rows] == ["emb", "0", "1", "2", "3", "4", "5"]

    def test_grid_of_all_tokens(self):
        res = run("trace", TEXT, "-q")
        assert res.exit_code == 0, res.output
        assert "L0" in res.output and "L5" in res.output and "2:flies" in res.output

    def test_bad_indices(self):
        for args, message in [
            (["--token", "99"], "token index 99 is out of range"),
            (["--token", "zebra"], "no token 'zebra'"),
            (["--token", "2", "--layer", "6"], "layer 6 is out of range"),
            (["--site", "heads", "--token", "2", "--head", "12"], "head 12 is out of range"),
        ]:
            res = run("trace", TEXT, "-q", *args)
            assert res.exit_code == 2, (args, res.output)
            assert message in res.output

    def test_overlong_text_refused_then_truncated(self):
        long = "word " * 600
        res = run("trace", long, "-q")
        assert res.exit_code == 2
        assert "602 tokens" in res.output and "90 over" in res.output and "--truncate" in res.output
        res = run("trace", long, "--truncate", "--format", "json")
        assert res.exit_code == 0, res.output[-500:]

    def test_exports(self, tmp_path):
        out = tmp_path / "t.parquet"
        res = run("trace", TEXT, "--format", "parquet", "--out", str(out), "-q")
        assert res.exit_code == 0, res.output
        frame = pd.read_parquet(out)
        assert set(frame["metric"]) >= {"self_sim", "rank", "overlap@100"}
        res = run("trace", TEXT, "--format", "json", "-q")
        doc = json.loads(res.stdout)
        assert doc["meta"]["model"] == "minilm" and doc["meta"]["tokens"][2] == "flies"
        res = run("trace", TEXT, "--format", "csv", "-q")
        assert res.stdout.splitlines()[0].startswith(
            "token,token_str,position,layer,head,site,space,similarity,metric,value"
        )

    def test_stdin_text(self):
        res = run("trace", "-", "-q", "--token", "1", input="hello world")
        assert res.exit_code == 0 and "hello" in res.output

    def test_every_combination_runs(self):
        res = run(
            "trace", "Fruit flies.", "--site", "all", "--space", "all", "--similarity", "all", "--format", "json", "-q"
        )
        assert res.exit_code == 0, res.output[-2000:]
        combos = {(m["site"], m["space"], m["similarity"]) for m in json.loads(res.stdout)["metrics"]}
        assert ("heads", "key", "euclidean") in combos and ("layer_out", "embeddings", "cosine") in combos
        assert ("mlp_out", "encodings", "cosine") in combos and ("resid_pre", "embeddings", "euclidean") in combos
        assert len(combos) == 5 * 2 * 2 + 3 * 2

    def test_models_lists_bundled(self):
        res = run("models")
        assert res.exit_code == 0
        assert "minilm" in res.output and "bundled: installed" in res.output and "roberta-base" in res.output


def test_console_script_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "tokentrail.cli", "trace", "", "-q"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: the text is empty: type something to trace"]


@pytest.mark.slow
def test_lens_on_bundled_decoder_table_and_mode():
    res = run(
        "trace", "Time flies like an arrow. Fruit flies like a", "--model", "smollm2", "--lens", "--layer", "-1", "-q"
    )
    assert res.exit_code == 0, res.output[-2000:]
    flat = " ".join(res.output.split())  # rich wraps at 80 columns here
    assert "causal mask on" in flat
    assert "logit lens" in flat and "the last token" in flat
    # the last layer's top prediction for the last token is the model's greedy next token
    last_row = [line for line in res.output.splitlines() if line.strip().startswith("29 ")][-1]
    assert "certain" in last_row.split("top predictions")[-1]
    res = run("trace", "Fruit flies like a", "--model", "smollm2", "--no-causal", "-q", "--layer", "0")
    assert res.exit_code == 0 and "causal mask OFF (bidirectional)" in " ".join(res.output.split())
    res = run("trace", "Fruit flies", "--model", "smollm2", "--site", "heads", "--token", "1", "--layer", "0", "-q")
    assert res.exit_code == 0, res.output[-1000:]
    assert "each value space is shared by 3 query heads" in " ".join(res.output.split())


def test_lens_refused_for_encoder_without_head():
    res = run("trace", TEXT, "--lens", "-q")
    assert res.exit_code == 2
    assert "no masked-LM head" in res.output
