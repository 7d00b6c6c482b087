"""The adversarial suite (issue 25): what an attacker or a careless user does to studies,
files, inputs and the server, on loopback, offline, with tiny random models.

Every refusal is one line (an :class:`InputError`; the CLI: one line on stderr, exit 2),
before the model loads wherever no model is needed: ``NO_MODEL`` below is a model name
that cannot load, so a test that gets the input's own error shows the check came first.
A full disk is simulated without root in two ways, named at each test: ``RLIMIT_FSIZE``
in a CLI subprocess (``preexec_fn``; writes past the limit fail with EFBIG, as Python
ignores SIGXFSZ), or a patched ``pyarrow.parquet.write_table`` raising ENOSPC
part-way. Subprocess timeouts are hang guards only (a hang on the old code fails the
test instead of stalling the suite), never assertions about time.

The table of probes, with commands and which test covers each, is docs/robustness.md;
the loaders' probes (points 2, 5, 7, 9) are tests/test_adversarial_load.py. Points that
already held are covered here or by the tests named in docs/robustness.md.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import tokentrail as tt
from tokentrail.corpus import Study, study
from tokentrail.corpus.inputs import Skipped, count, records
from tokentrail.engine import budget
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import TEMPORARY_SUFFIX

SRC = Path(tt.__file__).resolve().parents[1]  # the CLI subprocesses run the tokentrail under test
TEXTS = ["the cat sat on the mat .", "time flies like an arrow .", "a banana .", "dog ran fast ."]
NO_MODEL = "no-such-owner/no-such-model"  # loading it fails: a refusal that names the input came first
HANG_GUARD = 300  # seconds; only so that a hang fails the test instead of stalling the suite


def cli(args, *, stdin=None, input_bytes=None, fsize: int | None = None, env=None) -> subprocess.CompletedProcess:
    """``tokentrail ARGS`` in a subprocess (stdout, stderr as text); ``fsize`` caps the size
    of every file it writes (RLIMIT_FSIZE: a full disk without root)."""

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full_env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tokentrail.cli", *map(str, args)],
        stdin=stdin,
        input=input_bytes,
        capture_output=True,
        env=full_env,
        timeout=HANG_GUARD,
        preexec_fn=limit,
    )


def one_line(result: subprocess.CompletedProcess, match: str) -> str:
    """The run failed with exit 2 and one error line that contains ``match``."""
    err = result.stderr.decode(errors="replace").strip()
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    assert match in err, err
    return err


def one_line_here(args, match: str) -> str:
    """:func:`one_line` for a command run in this process (typer's runner): for refusals
    that need neither a hang guard nor a file-size limit, without a Python start."""
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    text = r.output.strip()
    assert r.exit_code == 2, (r.exit_code, text[-2000:], r.exception)
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text[-2000:]
    assert match in text, text
    return text


def stray_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(TEMPORARY_SUFFIX) or ".tmp-" in p.name]


@pytest.fixture(scope="module")
def model(bert_folder):
    return str(bert_folder)


@pytest.fixture(scope="module")
def finished(model, tmp_path_factory):
    """A small finished study (read-only for the tests)."""
    out = tmp_path_factory.mktemp("finished") / "s"
    study(TEXTS, model, out, batch=2, sample=50)
    return out


# ---- point 3: study's errors, one line, before the model loads ---------------------------------
def test_out_under_a_file_is_refused_before_loading(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"cannot create --out .*afile/x: Not a directory"):
        study(TEXTS, NO_MODEL, tmp_path / "afile" / "x")


def test_read_only_out_is_refused_before_loading(tmp_path, monkeypatch):
    """A read-only --out (simulated: root writes anywhere, so every file opened inside the
    folder fails with EROFS, as on a read-only mount) is refused before the model loads."""
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)).resolve().is_relative_to(out.resolve()) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(InputError, match=r"cannot write in --out .*ro: Read-only file system"):
        study(TEXTS, NO_MODEL, out)
    monkeypatch.undo()
    assert list(out.iterdir()) == []


def test_a_folder_whose_data_cannot_be_written_is_refused_before_loading(tmp_path, monkeypatch):
    """The probe tries every folder a run writes in, not only --out itself."""
    out = tmp_path / "s"
    (out / "data").mkdir(parents=True)
    real_open = os.open

    def data_read_only(path, flags, *args, **kwargs):
        where = Path(os.fsdecode(path))
        if "data" in (where.name, where.parent.name) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", data_read_only)
    with pytest.raises(InputError, match=r"cannot write in .*data: Permission denied"):
        study(TEXTS, NO_MODEL, out)


def test_csv_with_an_unterminated_quote_is_refused_before_loading(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text\n" + "the cat sat\n" * 3000 + '"unterminated, dog\na cat\n')
    with pytest.raises(InputError, match=r"cannot read .*bad.csv as csv: .*EOF inside string starting at row 3001"):
        study(path, NO_MODEL, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_conllu_with_a_bad_id_is_refused_with_its_line_before_loading(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text("1\tthe\tthe\tDET\t_\t_\t_\t_\t_\t_\nabc\tcat\tcat\tNOUN\t_\t_\t_\t_\t_\t_\n\n")
    with pytest.raises(InputError, match=r"bad.conllu, line 2: ID 'abc' is not a word ID"):
        study(path, NO_MODEL, tmp_path / "o")


def test_study_errors_on_the_command_line_are_one_line_exit_2(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "t.txt").write_text("the cat sat .\n")
    one_line_here(["study", tmp_path / "t.txt", "-m", NO_MODEL, "--out", tmp_path / "afile" / "x", "-q"], "afile/x")
    conllu = tmp_path / "bad.conllu"
    conllu.write_text("abc\tcat\tcat\tNOUN\t_\t_\t_\t_\t_\t_\n")
    one_line_here(["study", conllu, "-m", NO_MODEL, "--out", tmp_path / "o", "-q"], "line 1: ID 'abc'")


def test_disk_full_mid_study_is_one_line_keeps_whole_files_and_resumes(model, tmp_path, monkeypatch):
    """A full disk at batch 3 (simulated: ``pyarrow.parquet.write_table`` writes part of
    the file, then raises ENOSPC): one InputError line, no temporary or half file, a
    readable manifest, and ``--resume`` ends with the rows of an uninterrupted run."""
    import pyarrow.parquet as pq

    texts = [f"{t} {i}" for i in range(4) for t in TEXTS]
    whole = tmp_path / "whole"
    study(texts, model, whole, batch=2, sample=50)

    real_write = pq.write_table
    calls = {"n": 0}

    def fills_the_disk(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # batch 2's sample part: three files a batch
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(table, where, *args, **kwargs)

    out = tmp_path / "full"
    monkeypatch.setattr(pq, "write_table", fills_the_disk)
    with pytest.raises(InputError, match=r"cannot write .*part-000002.parquet: No space left on device") as info:
        study(texts, model, out, batch=2, sample=50)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert stray_files(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["batches_done"] == 2
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-000000.parquet", "part-000001.parquet"]
    study(texts, model, out, batch=2, sample=50, resume=True)
    a, b = Study(whole), Study(out)
    assert b.complete and a.manifest["tokens"] == b.manifest["tokens"]
    q = "select * from tokens order by text_id, position, layer, site"
    assert a.query(q).equals(b.query(q))


def test_disk_full_on_the_command_line_is_one_line_without_temporary_files(model, tmp_path):
    """A full disk (simulated: RLIMIT_FSIZE of 8 kB, below a sample part's size) stops
    `study` in one line; what it wrote is whole, and a resume finishes it."""
    src = tmp_path / "t.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "s"
    err = one_line(cli(["study", src, "-m", model, "--out", out, "-q", "--batch", "2"], fsize=8192), "cannot write")
    assert "File too large" in err
    assert stray_files(out) == []
    json.loads((out / "manifest.json").read_text())  # whole
    resumed = study(src, model, out, batch=2, resume=True)  # the CLI's defaults otherwise
    assert resumed.complete and resumed.manifest["texts"] == len(TEXTS)


# ---- point 4: CoNLL-U without blank lines --------------------------------------------------------
def _word(i: int, form: str, upos: str = "NOUN") -> str:
    return f"{i}\t{form}\t{form}\t{upos}\t_\t_\t_\t_\t_\t_"


def test_conllu_sentences_without_blank_lines_are_each_a_text(tmp_path):
    lines = []
    for s in range(50):
        lines += [
            f"# sent_id = s{s}",
            f"# text = the cat {s}",
            _word(1, "the", "DET"),
            _word(2, "cat"),
            _word(3, str(s)),
        ]
    path = tmp_path / "noblank.conllu"
    path.write_text("\n".join(lines) + "\n")
    skipped = Skipped()
    got = list(records(path, skipped=skipped))
    assert [r.text for r in got] == [f"the cat {s}" for s in range(50)]
    assert [r.source_id for r in got] == [f"s{s}" for s in range(50)]
    assert [len(r.words or ()) for r in got] == [3] * 50 and skipped.total == 0
    assert count(path) == 50


def test_conllu_ids_starting_again_at_1_start_a_sentence_but_a_multiword_token_does_not(tmp_path):
    lines = [_word(1, "dog"), _word(2, "ran"), "1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_", _word(1, "do", "AUX")]
    lines += [_word(2, "n't", "PART"), _word(3, "go", "VERB"), _word(1, "fast", "ADV")]
    path = tmp_path / "restart.conllu"
    path.write_text("\n".join(lines) + "\n")
    got = list(records(path, skipped=Skipped()))
    assert [r.text for r in got] == ["dog ran", "don't go", "fast"]
    assert [[w.upos for w in r.words or ()] for r in got] == [["NOUN", "NOUN"], ["AUX", "PART", "VERB"], ["ADV"]]


def test_a_conllu_study_counts_every_sentence(model, tmp_path):
    lines = []
    for s in range(6):
        lines += [f"# text = the cat sat {s}", _word(1, "the", "DET"), _word(2, "cat"), _word(3, "sat", "VERB")]
        lines += [_word(4, str(s), "NUM")]
    path = tmp_path / "noblank.conllu"
    path.write_text("\n".join(lines) + "\n")
    s = study(path, model, tmp_path / "o", batch=4, sample=20)
    assert s.manifest["texts"] == 6 and s.manifest["skipped"]["total"] == 0


# ---- point 8: no hang, no unbounded read -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_a_pipe_is_refused_before_loading(tmp_path, kind):
    if kind == "device":
        source, want = Path("/dev/zero"), "/dev/zero is a device, not a regular file"
    else:
        source, want = tmp_path / "pipe", "is a named pipe, not a regular file"
        os.mkfifo(source)
    # through the CLI only: on a version without the check, the hash of /dev/zero never ends
    one_line(cli(["study", source, "-m", NO_MODEL, "--out", tmp_path / "o", "-q"]), want)


def test_standard_input_is_read_with_a_bound(tmp_path):
    with open("/dev/zero", "rb") as zero:
        one_line(cli(["trace", "-", "-m", NO_MODEL], stdin=zero), "standard input holds more than 400,000 bytes")


# ---- point 10: report ---------------------------------------------------------------------------------
def test_report_keeps_an_existing_file_without_force(finished, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("mine")
    one_line_here(["report", finished, "--out", out], "already exists: pass --force")
    assert out.read_text() == "mine"
    from typer.testing import CliRunner

    from tokentrail.cli.commands import app

    done = CliRunner().invoke(app, ["report", str(finished), "--out", str(out), "--force"])
    assert done.exit_code == 0 and out.read_text().startswith("<!doctype html>")
    # the Python API keeps it too: Study.report replaces a file only with force=True
    out.write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        tt.Study(finished).report(out)
    assert out.read_text() == "mine"
    assert tt.Study(finished).report(out, force=True).read_text().startswith("<!doctype html>")


def test_report_on_a_full_disk_is_one_line_and_keeps_the_old_file(finished, tmp_path):
    """Full disk simulated with RLIMIT_FSIZE (64 kB, below the report's size)."""
    out = tmp_path / "r.html"
    out.write_text("mine")
    one_line(cli(["report", finished, "--out", out, "--force"], fsize=65536), "cannot write")
    assert out.read_text() == "mine" and stray_files(tmp_path) == []


def test_report_on_a_file_or_a_bomb_manifest_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_here(["report", tmp_path / "afile", "--out", tmp_path / "r.html"], "is a file, not a study folder")
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    one_line_here(["report", deep, "--out", tmp_path / "r.html"], "nests deeper than 32 levels")
    big = tmp_path / "big"
    big.mkdir()
    (big / "manifest.json").write_text('{"a": "' + "x" * (5 << 20) + '"}')
    one_line_here(["report", big, "--out", tmp_path / "r.html"], "is over 4,194,304 bytes")
    with pytest.raises(InputError, match="not a JSON object"):
        (big / "manifest.json").write_text("[1, 2]")
        Study(big)


# ---- point 12 (the memory cap) and what already held, kept held ------------------------------------------
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "lots"])
def test_a_memory_cap_that_is_not_a_positive_size_is_refused(monkeypatch, value):
    monkeypatch.setenv("TOKENTRAIL_MAX_MEMORY", value)
    with pytest.raises(InputError, match=f"TOKENTRAIL_MAX_MEMORY='{value}' is not a number of bytes"):
        budget.env_limit()


def test_resume_with_another_model_or_site_is_refused_before_loading(finished):
    """(Held before; another input or batch: test_study_run::test_resume_refuses_a_different_run.)"""
    with pytest.raises(InputError, match="it studied model"):
        study(TEXTS, NO_MODEL, finished, batch=2, sample=50, resume=True)
    manifest = json.loads((finished / "manifest.json").read_text())
    with pytest.raises(InputError, match="cannot resume .*options"):
        study(TEXTS, manifest["model"], finished, batch=2, sample=50, sites=("layer_out",), resume=True)


def test_one_token_and_special_only_texts_give_no_nan(loaded_tiny):
    import numpy as np

    for text in (".", "[SEP]", "[CLS] [SEP]"):
        t = tt.trace(text, loaded_tiny, k=2)
        for v in t.views:
            for f in dataclasses.fields(v):
                value = getattr(v, f.name)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    assert np.isfinite(value).all(), (text, v.site, f.name)


# ---- the app: points 6, 11, 12 ---------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=0)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def shelf(model, tmp_path_factory):
    """A studies folder with a hostile folder name and model, and one whose data links out."""
    root = tmp_path_factory.mktemp("studies")
    hostile = root / "<img src=x onerror=alert(1)>"
    study(TEXTS[:2], model, hostile, batch=2, sample=20)
    manifest = json.loads((hostile / "manifest.json").read_text())
    manifest["model"] = "<b>bold</b> **strong**"
    (hostile / "manifest.json").write_text(json.dumps(manifest))
    linked = root / "linked"
    study(TEXTS[:2], model, linked, batch=2, sample=20)
    outside = tmp_path_factory.mktemp("outside")
    (linked / "data").rename(outside / "data")
    os.symlink(outside / "data", linked / "data")  # inside a listed study, pointing out
    return root


def test_the_study_tab_shows_names_and_models_as_text_not_html(shelf):
    pytest.importorskip("gradio")
    from tokentrail.app.study_tab import StudyShelf, status

    name = "<img src=x onerror=alert(1)>"
    status = status(name, Study(StudyShelf(shelf).path(name)).manifest)  # the line show() puts first
    assert "<img" not in status and "<b>" not in status
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in status and "\\*\\*strong\\*\\*" in status


def test_the_study_tab_refuses_a_study_holding_a_symlink(shelf):
    pytest.importorskip("gradio")
    from tokentrail.app.study_tab import StudyShelf

    with pytest.raises(InputError, match=r"study 'linked' holds a symbolic link \(data\): not opened"):
        StudyShelf(shelf).path("linked")


@pytest.fixture(scope="module")
def served(shelf):
    pytest.importorskip("gradio")
    import importlib.util

    from tokentrail.app import build_app, launch_options

    spec = importlib.util.spec_from_file_location(
        "tokentrail_e2e_harness", Path(__file__).parent / "e2e" / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    demo = build_app(studies=str(shelf))
    try:
        with harness.serve(demo, **launch_options()) as url:
            yield url
    finally:
        demo.tokentrail_folder.remove()


def _http(url, method="GET", body=b"", headers=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_request_bodies_are_bounded(served):
    """A body declared over 1 MiB is refused at once (413, one line); one streamed without
    a Content-Length is cut as soon as it passes the limit."""
    import http.client
    from urllib.parse import urlsplit

    limit = 1 << 20  # tokentrail.app.security.MAX_BODY, stated in docs/app.md

    handler = _Records()
    logging.getLogger("tokentrail.app").addHandler(handler)
    try:
        where = urlsplit(served)

        def post(declared: int | None, body: bytes):
            """Headers first, then as much of the body as the server takes: it may answer
            and close before the rest is sent (a refused client sees a broken pipe)."""
            conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
            conn.putrequest("POST", "/gradio_api/call/open_study")
            conn.putheader("Content-Type", "application/json")
            if declared is None:
                conn.putheader("Transfer-Encoding", "chunked")
            else:
                conn.putheader("Content-Length", str(declared))
            conn.endheaders()
            try:
                if declared is None:  # chunked: 64 KiB chunks, then the last one
                    for i in range(0, len(body), 65536):
                        part = body[i : i + 65536]
                        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                    conn.send(b"0\r\n\r\n")
                else:
                    conn.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = conn.getresponse()
            status, text = r.status, r.read()
            conn.close()
            return status, text

        # declared over the limit: refused from the header alone, before any body is read
        status, text = post(limit + 10, b"")
        assert status == 413 and b"request body over 1,048,576 bytes" in text
        # streamed (chunked), no Content-Length: cut once it passes the limit
        status, text = post(None, b"x" * (limit + 65536))
        assert status == 413 and b"request body over" in text
    finally:
        logging.getLogger("tokentrail.app").removeHandler(handler)
    lines = [r.getMessage() for r in handler.records if "request body over" in r.getMessage()]
    assert len(lines) == 2 and not [r for r in handler.records if r.exc_info]
    assert _http(served)[0] == 200  # still serving


def test_a_refused_value_logs_one_line_not_a_traceback(served, capfd):
    gradio_client = pytest.importorskip("gradio_client")
    handler = _Records()
    logging.getLogger("tokentrail.app").addHandler(handler)
    try:
        client = gradio_client.Client(served, verbose=False)
        capfd.readouterr()
        for forged in ("../outside", "/etc"):
            with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices"):
                client.predict(forged, api_name="/open_study")
        out, err = capfd.readouterr()
    finally:
        logging.getLogger("tokentrail.app").removeHandler(handler)
    assert "Traceback" not in err + out, (err + out)[-3000:]
    refused = [r.getMessage() for r in handler.records if r.getMessage().startswith("refused a call")]
    assert len(refused) == 2 and "not in the list of choices" in refused[0]


@pytest.mark.parametrize(
    "path", ["gradio_api/file=/etc/passwd", "gradio_api/file=../../../../etc/passwd", "gradio_api/file=%2e%2e/x"]
)
def test_file_routes_refuse_traversal(served, path):
    status, text = _http(served + path)
    assert status == 403 and b"root:" not in text


def test_uploads_stay_refused(served):
    status, _ = _http(served + "gradio_api/upload", "POST", b"x" * 1000, {"Content-Type": "multipart/form-data"})
    assert status == 403
