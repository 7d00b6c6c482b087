"""Option and output checks of ``tokentrail trace``, on a tiny local BERT folder (fast).

Each refusal is one line with exit 2, and comes before the work it would waste: output
paths and option combinations before the model loads; layer/head/k before the analysis.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import tokentrail
from patching import count_calls
from tokentrail.cli.commands import app
from tokentrail.spec.errors import InputError

runner = CliRunner()
TEXT = "time flies like an arrow . fruit flies like a banana"


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def one_line_error(res, message: str) -> None:
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output


@pytest.fixture
def no_analysis(monkeypatch):
    """Fail the test if the forward pass or the analysis starts: the error must come before both."""

    def boom(*a, **kw):
        raise AssertionError("the model ran before the error")

    monkeypatch.setattr("tokentrail.engine.capture.capture", boom)
    monkeypatch.setattr("tokentrail.engine.capture.capture_batch", boom)
    monkeypatch.setattr("tokentrail.session.runner.compute_views", boom)


def test_out_checked_before_the_model_loads(tmp_path):
    # the model does not exist: if the --out error shows, it was checked first
    res = run("trace", TEXT, "-m", "/nowhere/model", "--out", tmp_path / "missing" / "x.csv")
    one_line_error(res, "does not exist")
    res = run("trace", TEXT, "-m", "/nowhere/model", "--out", tmp_path)
    one_line_error(res, "is a folder")
    res = run("trace", TEXT, "-m", "/nowhere/model", "--out", tmp_path / "x.xlsx")
    one_line_error(res, "unknown output format 'xlsx'")


def test_existing_file_needs_force(tmp_path, bert_folder):
    target = tmp_path / "t.json"
    target.write_text("precious")
    res = run("trace", TEXT, "-m", bert_folder, "--out", target, "-q")
    one_line_error(res, "already exists: pass --force")
    assert target.read_text() == "precious"
    res = run("trace", TEXT, "-m", bert_folder, "--out", target, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(target.read_text())["meta"]["tokens"][2] == "flies"  # format from the suffix
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--site", "heads", "--space", "encodings"], "--site heads compares each head"),
        (["--head", "1"], "--head selects a head of the heads site"),
        (["-m", ""], "--model is empty"),
        (["-m", "  "], "--model is empty"),
        (["-k", "0"], "Invalid value for '-k'"),  # a usage error, as one line too
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_option_errors_before_loading(args, message):
    one_line_error(run("trace", TEXT, *args), message)


def test_usage_error_of_the_group_is_one_line():
    one_line_error(run("nosuchcommand"), "No such command 'nosuchcommand'")


def test_revision_with_a_local_folder(bert_folder):
    one_line_error(run("trace", TEXT, "-m", bert_folder, "--revision", "v1"), "--revision applies to hub models")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--no-causal"], "--no-causal is for decoders; bert is an encoder"),
        (["--causal"], "--causal is for decoders"),
        (["-k", "97"], "k = 97 is more than the model's vocabulary of 96 tokens"),
        (["--overlap-k", "12000"], "overlap k = 12,000 is more than the model's vocabulary of 96 tokens"),
        (["--layer", "2"], "layer 2 is out of range: the model has 2 layers"),
        (["--site", "heads", "--head", "4"], "head 4 is out of range: the model has 4 heads"),
        (["--token", "zebra"], "no token 'zebra'"),
        (["--token", "flies:2"], "'flies' occurs 2 time(s) (at 2, 8)"),
    ],
)
def test_model_dependent_errors_before_the_analysis(bert_folder, no_analysis, args, message):
    one_line_error(run("trace", TEXT, "-m", bert_folder, "-q", *args), message)


def test_memory_estimate_refuses_before_the_analysis(bert_folder, no_analysis, monkeypatch):
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", "100000000")
    one_line_error(run("trace", TEXT, "-m", bert_folder, "-q"), "would need about")


def test_repeated_token_says_which_and_selects_by_occurrence(bert_folder):
    res = run("trace", TEXT, "-m", bert_folder, "--token", "flies", "-k", "3")
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "'flies' occurs 2 times; following token 2 (occurrence 0); the others are at 8" in flat
    assert "token 2 flies" in flat
    res = run("trace", TEXT, "-m", bert_folder, "--token", "flies:1", "-k", "3", "-q")
    assert res.exit_code == 0, res.output
    assert "token 8 flies" in res.output and "occurs" not in res.output


def test_heads_with_a_residual_space_among_other_sites_is_a_note(bert_folder):
    res = run(
        "trace", TEXT, "-m", bert_folder, "--site", "attn_resid,heads", "--space", "encodings", "--format", "json"
    )
    assert res.exit_code == 0, res.output
    assert "the heads site uses its value space" in res.stderr
    combos = {(m["site"], m["space"]) for m in json.loads(res.stdout)["metrics"]}
    assert combos == {("attn_resid", "encodings"), ("heads", "value")}


def test_binary_stdin_is_one_clear_line():
    res = run("trace", "-", input=b"caf\xe9 \xff")
    one_line_error(res, "standard input is not UTF-8 text (byte 0xE9 at offset 3)")


def test_binary_stdin_under_a_strict_locale(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        "PYTHONUTF8": "0",
        "PYTHONPATH": str(Path(tokentrail.__file__).parents[1]),
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tokentrail.cli", "trace", "-", "-q"],
        input=b"\x80\x81abc",
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.decode().strip()
        == "error: standard input is not UTF-8 text (byte 0x80 at offset 0): pass a text file"
    )


def test_csv_tokens_read_back_and_cannot_run_as_formulas(tmp_path, tokenizer, make_tiny, save_model):
    import pandas as pd
    from transformers import BertTokenizerFast

    from tokentrail.spec.fileio import read_csv

    vocab = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    tricky = ["nan", "null", "na", "-", "=", "@"]
    for word, spare in zip(tricky, ["##q", "##x", "##z", "##j", "##v", "##w"]):
        vocab[vocab.index(spare)] = word
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    folder = save_model(tmp_path / "tricky", make_tiny("bert", seed=5), tok)
    res = run("trace", "NaN null NA - = @ time", "-m", folder, "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    plain = pd.read_csv(io.StringIO(res.stdout))
    plain = plain[plain["table"].isin(["metrics", "tokens"])]
    assert plain["token_str"].notna().all()
    assert not plain["token_str"].str.startswith(("-", "=", "+", "@")).any()
    out = tmp_path / "t.csv"
    assert run("trace", "NaN null NA - = @ time", "-m", folder, "--out", out, "-q").exit_code == 0
    shown = read_csv(out).query("layer == 0 and metric == 'rank'")["token_str"].tolist()
    assert shown == ["[CLS]", *tricky, "time", "[SEP]"]


def test_api_accepts_paths_and_refuses_wrong_types(bert_folder):
    trail = tokentrail.trace("time flies", Path(bert_folder), k=3)
    assert trail.tokens[1] == "time"
    for kwargs, message in [
        ({"k": "5"}, "k must be a whole number, not the string '5'"),
        ({"overlap_k": 2.5}, "overlap k must be a whole number"),
        ({"k": 0}, "k must be at least 1"),
    ]:
        with pytest.raises(InputError, match=message.replace("(", r"\(")):
            tokentrail.trace("time flies", Path(bert_folder), **kwargs)
    with pytest.raises(InputError, match="the model name is empty"):
        tokentrail.trace("time flies", "")
    with pytest.raises(InputError, match="vocabulary of 96"):
        tokentrail.trace("time flies", bert_folder, k=500)


# ---- progress --------------------------------------------------------------------
def test_plain_progress_never_repeats_a_line():
    from tokentrail.present.progress import TerminalProgress

    buf = io.StringIO()
    with TerminalProgress(Console(file=buf, width=100)) as bar:
        bar.loading("loading bundled smollm2")
        bar.start_analysis(31)
        for layer in range(30):
            bar.analysis((1 + layer) / 31, "heads: value spaces")
        bar.analysis(1.0, "done")
    lines = buf.getvalue().splitlines()
    assert lines == ["… loading bundled smollm2", "… heads: value spaces (1/31)", "… done (31/31)"]


def test_live_progress_shows_steps_elapsed_and_eta():
    from tokentrail.present.progress import TerminalProgress

    buf = io.StringIO()
    with TerminalProgress(Console(file=buf, width=120, force_terminal=True, color_system=None)) as bar:
        bar.start_analysis(31)
        bar.analysis(10 / 31, "heads: value spaces")
        bar._progress.refresh()
        shown = buf.getvalue()
    assert "heads: value spaces" in shown and "10/31" in shown and "0:00:0" in shown and "eta" in shown


def test_quiet_progress_says_nothing():
    from tokentrail.present.progress import TerminalProgress

    buf = io.StringIO()
    with TerminalProgress(Console(file=buf, force_terminal=True), quiet=True) as bar:
        bar.loading("x")
        bar.analysis(0.5, "y")
    assert buf.getvalue() == ""


def test_heads_site_progress_in_the_cli_is_not_repeated(bert_folder):
    res = run("trace", TEXT, "-m", bert_folder, "--site", "heads", "--format", "json")
    assert res.exit_code == 0, res.output
    progress = [line for line in res.stderr.splitlines() if line.startswith("…")]
    assert len(progress) == len(set(progress)) and any("heads: value spaces" in p for p in progress)


@pytest.mark.slow
def test_truncate_quiet_prints_no_transformers_warning():
    proc = subprocess.run(
        [sys.executable, "-m", "tokentrail.cli", "trace", "word " * 600, "--truncate", "-q", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""


# ---- errors before weight: refused before torch is imported ---------------------------------
def refuse_without_torch(tmp_path, *args) -> tuple[str, float]:
    """Run the CLI's ``main`` in a fresh interpreter: exit 2, one line, and torch never imported."""
    code = (
        "import sys, time; t0 = time.monotonic(); from tokentrail.cli import main; sys.argv = ['tokentrail', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules, code, round(time.monotonic() - t0, 2))"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(tokentrail.__file__).parents[1]),
        "HOME": str(tmp_path),
        "COLUMNS": "200",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    torch_loaded, transformers_loaded, exit_code, seconds = proc.stdout.split()
    assert (torch_loaded, transformers_loaded, exit_code) == ("False", "False", "2"), proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0], float(seconds)


@pytest.mark.parametrize(
    "args, message",
    [
        (("trace", TEXT, "--site", "attn"), "unknown site 'attn'"),
        (("trace", TEXT, "--site", "heads", "--space", "encodings"), "--site heads compares each head"),
        (("trace", TEXT, "--map-head", "1.2"), "--map-head says which head --map draws"),
        (("trace", TEXT, "--target", "x", "--max-new-tokens", "3"), "give one of them, not both"),
        (("trace", " ", "-q"), "the text is empty"),
        (("compare", TEXT, "another text", "--token", "1", "--site", "nowhere"), "compare takes one site"),
        (("study", "no-such-corpus.txt", "-q"), "no input file at no-such-corpus.txt"),
        (("report", "no-such-study"), "no-such-study holds no study"),
    ],
)
def test_checks_that_need_no_model_come_before_torch(tmp_path, args, message):
    line, seconds = refuse_without_torch(tmp_path, *args)
    assert message in line


@pytest.mark.parametrize(
    "args, message",
    [
        (("trace", TEXT, "-m", "minlm"), "unknown model 'minlm': did you mean minilm? (`tokentrail models` lists them"),
        (("trace", TEXT, "-m", "gpt-2"), "unknown model 'gpt-2': did you mean gpt2?"),
        (
            ("compare", TEXT, "another text", "--token", "1", "-m", "roberta"),
            "did you mean roberta-base or roberta-large?",
        ),
    ],
)
def test_a_misspelt_model_is_refused_before_torch(tmp_path, args, message):
    line, _ = refuse_without_torch(tmp_path, *args)  # HOME is tmp_path: an empty hub cache
    assert message in line  # and torch was never imported (refuse_without_torch asserts it)


def test_the_options_a_command_line_builds_are_checked_once(bert_folder, monkeypatch):
    from tokentrail.spec.options import TraceOptions

    built = []
    real = TraceOptions._check
    monkeypatch.setattr(TraceOptions, "_check", lambda self: built.append(self) or real(self))
    res = run("trace", TEXT, "-m", bert_folder, "--site", "attn_resid,heads", "-q", "--format", "json")
    assert res.exit_code == 0, res.output
    assert len(built) == 1, "a trace checks its options once, where they are built"
    assert built[0].sites == ("attn_resid", "heads")


def test_the_api_checks_a_traces_options_once(loaded_tiny, monkeypatch):
    import tokentrail as tt
    from tokentrail.spec.options import TraceOptions

    built = []
    real = TraceOptions._check
    monkeypatch.setattr(TraceOptions, "_check", lambda self: built.append(self) or real(self))
    trail = tt.trace(TEXT, loaded_tiny, site="attn_resid,heads", k=5)
    assert len(built) == 1 and trail.info.options.overlap_k is not None


# ---- checks on config.json and the tokenizer: before the weights load --------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer", "99"], "layer 99 is out of range: the model has 2 layers"),
        (["--site", "heads", "--head", "99"], "head 99 is out of range: the model has 4 heads"),
        (["--token", "nosuch"], "no token 'nosuch'"),
        (["--no-causal"], "--no-causal is for decoders; bert is an encoder"),
    ],
)
def test_config_checks_come_before_the_weights_load(bert_folder, monkeypatch, args, message):
    from tokentrail.session import models

    loads = count_calls(monkeypatch, models, "load")
    one_line_error(run("trace", TEXT, "-m", bert_folder, "-q", *args), message)
    assert loads == [], "the weights loaded before the error"


def test_model_facts_are_the_loaded_models(bert_folder, loaded_tiny):
    facts = tokentrail.model_facts(str(bert_folder))
    assert facts is not None
    assert (facts.family, facts.is_decoder, facts.is_seq2seq) == ("bert", False, False)
    assert facts.stacks == loaded_tiny.stacks
    assert (facts.vocab_size, facts.max_tokens) == (loaded_tiny.adapter.vocab_size, loaded_tiny.adapter.max_tokens)
    assert facts.encode(TEXT).tokens == loaded_tiny.encode(TEXT).tokens


def test_model_facts_are_none_where_they_are_not_cheap(tmp_path):
    assert tokentrail.model_facts(str(tmp_path)) is None  # no config.json: the load says why
    assert tokentrail.model_facts("nobody/not-cached-anywhere") is None  # never a download
