"""Checked output paths, atomic writes and spreadsheet-safe CSV (hand-made cases)."""

from __future__ import annotations

import io
import os

import pandas as pd
import pytest

from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import atomic_write, check_output_path, csv_escape, csv_unescape, read_csv, write_csv


def test_output_path_checks(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "x.csv")
    with pytest.raises(InputError, match="is a folder"):
        check_output_path(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        check_output_path(tmp_path / "file" / "x.csv")
    with pytest.raises(InputError, match="unknown output format 'xlsx'"):
        check_output_path(tmp_path / "x.xlsx", formats=("csv", "json"))
    with pytest.raises(InputError, match="cannot tell the format"):
        check_output_path(tmp_path / "x", formats=("csv", "json"))
    (tmp_path / "old.csv").write_text("keep")
    with pytest.raises(InputError, match="already exists: pass --force"):
        check_output_path(tmp_path / "old.csv")
    assert check_output_path(tmp_path / "old.csv", force=True, formats=("csv",)) == (tmp_path / "old.csv", "csv")
    assert check_output_path(tmp_path / "x", fmt="json", formats=("json",))[1] == "json"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(InputError, match="permission denied"):
        check_output_path(locked / "x.csv")


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("the old, complete file")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "the old, complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary file left


def test_oserror_while_writing_is_one_clear_error(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(InputError, match=r"cannot write .*t.json: File too large"), atomic_write(target):
        raise OSError(27, "File too large")
    assert target.read_text() == "old"


def test_new_file_gets_normal_permissions(tmp_path):
    target = tmp_path / "new.json"
    with atomic_write(target) as tmp:
        tmp.write_text("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    "cell, written",
    [
        ("nan", "'nan"),
        ("NA", "'NA"),
        ("null", "'null"),
        ("None", "'None"),
        ("", "'"),
        ("=1+2", "'=1+2"),
        ("+x", "'+x"),
        ("-", "'-"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("'s", "'s"),
        ("'nan", "''nan"),
        ("''=", "'''="),
        ("␣the", "␣the"),
        ("flies", "flies"),
        ("a=b", "a=b"),
    ],
)
def test_csv_escape_by_hand(cell, written):
    assert csv_escape(cell) == written
    assert csv_unescape(written) == cell


def test_csv_round_trip_with_plain_pandas(tmp_path):
    cells = ["nan", "null", "NA", "N/A", "None", "=cmd|' /C calc'!A0", "+1", "-2", "@x", "'s", "'nan", "flies", "␣the"]
    frame = pd.DataFrame(
        {"token_str": cells, "value": [float(i) - 3.5 for i in range(len(cells))], "layer": range(len(cells))}
    )
    path = tmp_path / "t.csv"
    write_csv(frame, path)
    plain = pd.read_csv(path)
    assert plain["token_str"].notna().all()  # nothing reads back as missing
    assert not any(str(c).startswith(("=", "+", "-", "@")) for c in plain["token_str"])  # no formula
    assert plain["value"].tolist() == frame["value"].tolist()  # numbers are untouched
    assert read_csv(path)["token_str"].tolist() == cells
    buf = io.StringIO()
    write_csv(frame, buf)
    assert buf.getvalue() == path.read_text()
