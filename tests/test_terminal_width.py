"""The command line in a terminal of 80 and of 120 columns: help pages with examples, and
`trace`, `compare`, `study` and `verify` output that fits the width without cutting a word.

The outputs run as real processes with ``COLUMNS`` set, as a user's terminal sets it (the
consoles read the width when the command starts)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.main import get_command
from typer.testing import CliRunner

from tokentrail.cli.commands import EXAMPLES, app
from tokentrail.present.progress import _Counted

WIDTHS = (80, 120)
TEXT = "Time flies like an arrow. Fruit flies like a banana."
COMMANDS = sorted(get_command(app).commands)


def cli(*args: str, width: int, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(width), "OMP_NUM_THREADS": "1"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tokentrail.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_fits(output: str, width: int, *, uncut: bool = True) -> None:
    long = [line for line in output.splitlines() if len(line) > width]
    assert not long, f"{len(long)} lines over {width} columns, e.g. {long[0]!r}"
    assert not uncut or "…" not in output, "a word was cut to fit"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_the_width_and_shows_examples(name, width):
    res = CliRunner().invoke(app, [name, "--help"], terminal_width=width, env={"COLUMNS": str(width)})
    assert res.exit_code == 0, res.output
    assert_fits(res.output, width)
    assert "<bool>" not in res.output and "<str>" not in res.output.split("Options:")[-1]
    assert "Examples:" in res.output
    assert 1 <= len(EXAMPLES[name]) <= 3
    if name == "trace":  # the longest page: one line per option's line of help (rich's boxes made 219 lines)
        assert len(res.output.splitlines()) < 170


@pytest.mark.parametrize("name", COMMANDS)
def test_every_example_names_only_options_its_command_has(name):
    command = get_command(app).commands[name]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for _what, example in EXAMPLES[name]:
        words = shlex.split(example)
        assert words[:2] == ["tokentrail", name], example
        used = {w.split("=", 1)[0] for w in words[2:] if w.startswith("-") and w != "-"}
        assert used <= options, f"{example}: {sorted(used - options)} is not an option of {name}"


def test_top_level_help_gives_each_command_one_uncut_line():
    res = CliRunner().invoke(app, ["--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert_fits(res.output, 80)
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S", res.output, re.M), name
    assert "..." not in res.output.split("Commands:")[1]


@pytest.mark.parametrize("width", WIDTHS)
def test_trace_fits_the_width(bert_folder, width):
    proc = cli("trace", TEXT, "-m", str(bert_folder), "-t", "flies", "-k", "12", width=width)
    assert "flies" in proc.stdout
    assert_fits(proc.stdout, width)
    grid = cli("trace", TEXT, "-m", str(bert_folder), width=width)
    assert_fits(grid.stdout, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_keeps_each_neighbour_with_its_similarity(bert_folder, width):
    proc = cli("compare", TEXT, "-m", str(bert_folder), "-t", "flies:0", "-t", "flies:1", "--show", "6", width=width)
    assert_fits(proc.stdout, width)
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^\d+ +0\.\d{4} ", line)]
    assert len(rows) >= 2, proc.stdout  # one line of numbers per layer
    assert "shared" in proc.stdout
    section = proc.stdout.split("separating neighbours", 1)[1].splitlines()[1:-1]
    assert section, proc.stdout
    for line in section:  # every item is "token similarity": none split across lines
        items = re.sub(r"^\s*\d*\s*[ab]?\s{2}", "", line).rstrip(",").split(", ")
        if items == ["none"]:  # this side has no neighbour the other lacks
            continue
        for item in items:
            assert re.fullmatch(r"\S+ -?\d\.\d\d,?", item.strip()), (item, line)


@pytest.mark.parametrize("width", WIDTHS)
def test_verify_fits_the_width(bert_folder, width):
    proc = cli("verify", str(bert_folder), "--text", TEXT, width=width)
    assert_fits(proc.stdout, width)


@pytest.mark.parametrize("width", WIDTHS)
def test_study_fits_the_width(bert_folder, tmp_path, width):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Time flies like an arrow.\nFruit flies like a banana.\n")
    proc = cli("study", str(corpus), "-m", str(bert_folder), "--out", str(tmp_path / "s"), width=width)
    assert_fits(proc.stdout, width)
    # the progress line fits; a line naming a long path may not, and wraps in the terminal
    assert_fits("\n".join(line for line in proc.stderr.splitlines() if str(tmp_path) not in line), width, uncut=False)


def test_a_phase_without_a_total_shows_no_count_or_eta():
    progress = Progress(
        TextColumn("{task.description}"),
        _Counted(BarColumn()),
        _Counted(MofNCompleteColumn()),
        _Counted(TextColumn("eta")),
        _Counted(TimeRemainingColumn()),
    )
    progress.add_task("loading", total=None)
    progress.add_task("running", total=10, completed=3)
    loading, running = progress.tasks
    columns = progress.columns[1:]
    assert [str(c.render(loading)) for c in columns] == ["", "", "", ""]
    assert str(columns[1].render(running)) == " 3/10" or str(columns[1].render(running)).strip() == "3/10"
    assert str(columns[2].render(running)) == "eta"


def test_an_error_line_keeps_its_brackets(tmp_path):
    """rich markup must not swallow ``[umap]`` in an install hint (or brackets in a file name)."""
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401

        pytest.skip("umap-learn is installed: no hint to show")
    except ImportError:
        pass
    res = CliRunner().invoke(app, ["trace", TEXT, "--map", str(tmp_path / "m.html"), "--map-method", "umap"])
    assert res.exit_code == 2
    assert "pip install 'tokentrail[umap]'" in res.output, res.output
