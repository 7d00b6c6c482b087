"""One writer per study folder (issue 25): a second `study --out same/` is refused at
once, before the model loads, naming the first; a lock left by a killed run blocks nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokentrail.corpus import Study, study
from tokentrail.spec.errors import InputError
from tokentrail.store.writer import LOCK_FILE

TEXTS = ["the cat sat on the mat .", "time flies like an arrow .", "a banana .", "dog ran fast ."]
NO_MODEL = "no-such-owner/no-such-model"  # a refusal before model work never gets to this

HOLDER = """
import sys
from tokentrail.store.writer import StudyDir
with StudyDir(sys.argv[1]).writing():
    sys.stdin.read()  # hold the folder until the test closes stdin
"""


def _holder(out: Path) -> subprocess.Popen:
    """Another process, writing the study at ``out`` through the library, once its lock
    file names it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lock = out / LOCK_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            pytest.fail(f"the lock holder exited ({p.returncode}): {p.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            if json.loads(lock.read_text()).get("pid") == p.pid:
                return p
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.01)
    p.kill()
    pytest.fail("the lock holder never named itself in the lock file")


def _release(p: subprocess.Popen) -> None:
    p.communicate(timeout=60)  # closes stdin: the holder leaves its `with` and exits
    assert p.returncode == 0


@pytest.fixture(scope="module")
def model(bert_folder):
    return str(bert_folder)


def test_a_second_writer_is_refused_at_once_naming_the_first(model, tmp_path):
    out = tmp_path / "s"
    first = study(TEXTS, model, out, batch=2)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    holder = _holder(out)
    try:
        want = (
            rf"the study at {out} is being written by pid {holder.pid} on {socket.gethostname()} since \S+: "
            r"wait for it or choose another output folder"
        )
        started = time.monotonic()
        with pytest.raises(InputError, match=want):  # not "already holds a study": the writer comes first
            study(TEXTS, NO_MODEL, out)
        with pytest.raises(InputError, match=want):
            study(TEXTS, NO_MODEL, out, resume=True)
        assert time.monotonic() - started < 30  # at once: no waiting for the lock
        # the command line: one line, exit 2
        from typer.testing import CliRunner

        from tokentrail.cli.commands import app

        src = tmp_path / "t.txt"
        src.write_text("\n".join(TEXTS) + "\n")
        r = CliRunner().invoke(app, ["study", str(src), "--model", NO_MODEL, "-o", str(out), "--resume"])
        text = r.output.rstrip("\n")
        assert r.exit_code == 2 and len(text.splitlines()) == 1, text
        assert f"being written by pid {holder.pid}" in text and "Traceback" not in text
        # readers need no lock
        s = Study(out)
        assert s.complete and s.manifest["texts"] == 4
        assert len(s.query("SELECT * FROM tokens")) == len(first.query("SELECT * FROM tokens"))
        # the refused writers touched nothing
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before
    finally:
        _release(holder)
    resumed = study(TEXTS, model, out, batch=2, resume=True)  # the folder is free again
    assert resumed.complete and resumed.manifest["texts"] == 4


def test_a_lock_left_by_a_killed_process_blocks_nothing(model, tmp_path):
    out = tmp_path / "s"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the file stays; its lock died
    s = study(TEXTS, model, out, batch=2)
    assert s.complete and s.manifest["texts"] == 4
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()  # this run held it


def test_a_run_that_fails_to_load_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(Exception):  # noqa: B017 - whatever the missing model raises
        study(TEXTS, NO_MODEL, out)
    assert not out.exists()  # the folder made for the lock is removed with it
