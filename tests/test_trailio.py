"""Every export format carries every table, and Trail.load reads each back into an equal Trail."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pandas as pd
import pytest

import tokentrail as tt
from test_parity_decoders import tiny_model
from tokentrail.results.trailio import LONG_COLUMNS
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import read_csv

TEXT = "Time flies like an arrow, time flies."
TABLES = {"meta", "tokens", "metrics", "neighbours", "attention", "lens", "lens_top"}


@pytest.fixture(scope="module")
def trail(loaded_tiny):
    return tt.trace(
        TEXT,
        loaded_tiny,
        site="attn_resid,layer_out,heads",
        space="encodings,key",
        similarity="all",
        k=4,
        overlap_k=6,
        lens=True,
        lens_site="attn_resid",
    )


@pytest.fixture(scope="module")
def decoder_trail(tokenizer):
    """A decoder: next-token lens columns (-1 / NaN at the last token) and grouped heads."""
    return tt.trace(
        TEXT,
        tiny_model("llama"),
        tokenizer=tokenizer,
        site="attn_resid,heads",
        space="encodings,query",
        k=3,
        overlap_k=5,
        lens=True,
    )


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
@pytest.mark.parametrize("which", ["trail", "decoder_trail"])
def test_every_format_reads_back_into_an_equal_trail(request, which, fmt, tmp_path):
    trail = request.getfixturevalue(which)
    path = trail.export(tmp_path / f"t.{fmt}")
    back = tt.Trail.load(path)
    assert back == trail
    # the equality is strict: one changed number, dtype or label breaks it
    v = back.views[0]
    bumped = dict(v.metrics, rank=v.rank + 1)
    assert dataclasses.replace(back, views=(dataclasses.replace(v, metrics=bumped), *back.views[1:])) != trail
    assert dataclasses.replace(back, ids=back.ids.astype(np.int32)) != trail
    assert dataclasses.replace(back, labels={**back.labels, int(back.ids[1]): "?"}) != trail
    lens = back.lens
    assert (
        dataclasses.replace(
            back, lens=dataclasses.replace(lens, top_probs=lens.top_probs * np.float32(1.0000001) + np.float32(1e-9))
        )
        != trail
    )


def test_decoder_lens_keeps_minus_one_at_the_last_token(decoder_trail, tmp_path):
    back = tt.Trail.load(decoder_trail.export(tmp_path / "t.csv"))
    assert (
        back.lens.is_decoder and (back.lens.next_rank[:, -1] == -1).all() and np.isnan(back.lens.next_prob[:, -1]).all()
    )
    assert back.lens.next_rank.dtype == np.int64 and back.kv_groups == 3


def test_parquet_and_csv_are_one_long_table_with_every_table(trail, tmp_path):
    for fmt in ("parquet", "csv"):
        path = trail.export(tmp_path / f"t.{fmt}")
        frame = pd.read_parquet(path) if fmt == "parquet" else read_csv(path)
        assert list(frame.columns) == LONG_COLUMNS
        assert set(frame["table"]) == TABLES
        n, L, H = trail.n_tokens, trail.n_layers, trail.n_heads
        counts = frame["table"].value_counts().to_dict()
        assert counts["meta"] == 1 and counts["tokens"] == n and counts["attention"] == L * H * n * n
        assert counts["metrics"] == len(trail.frame())
        # neighbours: top-k of every cell, plus the original encoding's (layer -1) per residual view
        per_cell = sum(n * L * (H if v.per_head else 1) * 4 for v in trail.views)
        origin = sum(n * 4 for v in trail.views if v.origin_top_ids is not None)
        assert counts["neighbours"] == per_cell + origin and origin > 0
        assert (
            counts["lens_top"] == L * n * 4 and counts["lens"] == L * n * 4
        )  # own_rank, own_prob, entropy, kl (an encoder)
        # a hand-picked cell of each table carries the number the Trail holds
        nb = frame[
            (frame.table == "neighbours")
            & (frame.site == "layer_out")
            & (frame.similarity == "cosine")
            & (frame.layer == 1)
            & (frame.token == 2)
            & (frame.place == 0)
        ]
        assert nb["id"].item() == trail.view("layer_out", "encodings", "cosine").top_ids[1, 2, 0]
        assert nb["id_str"].item() == trail.labels[int(nb["id"].item())]
        lt = frame[(frame.table == "lens_top") & (frame.layer == 0) & (frame.token == 3) & (frame.place == 1)]
        assert lt["id"].item() == trail.lens.top_ids[0, 3, 1] and lt["value"].item() == pytest.approx(
            float(trail.lens.top_probs[0, 3, 1])
        )
        at = frame[
            (frame.table == "attention")
            & (frame.layer == 1)
            & (frame["head"] == 2)
            & (frame.token == 4)
            & (frame.source == 1)
        ]
        assert at["value"].item() == pytest.approx(float(trail.attentions[1, 2, 4, 1]))
        tok = frame[frame.table == "tokens"].sort_values("token")
        assert (
            tok["token_str"].tolist() == list(trail.tokens)
            and tok["value"].tolist() == trail.special.astype(float).tolist()
        )
        meta = json.loads(frame[frame.table == "meta"]["meta"].item())
        assert meta["text"] == TEXT and meta["trail"]["lens"]["site"] == "attn_resid"
        # the metrics rows are exactly Trail.frame()
        m = frame[frame.table == "metrics"][list(trail.frame().columns)].reset_index(drop=True)
        pd.testing.assert_frame_equal(m, trail.frame(), check_dtype=False)


def test_json_is_one_document_with_every_table(trail):
    doc = json.loads(trail.to_json())
    assert set(doc) == TABLES
    assert len(doc["lens_top"]) == trail.n_layers * trail.n_tokens * 4
    assert set(doc["neighbours"][0]) == {
        "token",
        "token_str",
        "position",
        "layer",
        "head",
        "site",
        "space",
        "similarity",
        "place",
        "id",
        "id_str",
        "value",
    }
    assert "NaN" not in trail.to_json()  # strict JSON: undefined cells are null


def test_cli_stdout_csv_reads_back(trail, tmp_path):
    buf = io.StringIO()
    trail.to_csv(buf)
    path = tmp_path / "stdout.csv"
    path.write_text(buf.getvalue())
    assert tt.Trail.load(path) == trail


def test_load_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "old.csv").write_text("token,token_str,value\n0,a,1.0\n")
    (tmp_path / "x.json").write_text('{"a": 1}')
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    for name, msg in (
        ("old.csv", "no 'table' and 'meta' columns"),
        ("x.json", "not a tokentrail export"),
        ("bad.parquet", "not a readable tokentrail export"),
        ("missing.csv", "no such file"),
    ):
        with pytest.raises(InputError, match=msg):
            tt.Trail.load(tmp_path / name)


def test_the_attention_table_is_bounded_unless_asked_for(trail, tmp_path, monkeypatch):
    import tokentrail.results.trailio as tio

    monkeypatch.setattr(tio, "MAX_ATTENTION_ROWS", trail.attentions.size - 1)  # just over the limit
    back = tt.Trail.load(trail.export(tmp_path / "t.parquet"))
    assert back.attentions is None and back == dataclasses.replace(trail, attentions=None)
    meta = json.loads(trail.to_json())["meta"]["trail"]
    assert meta["attention_left_out"].startswith(f"{trail.attentions.size:,} rows (more than the default limit")
    assert tt.Trail.load(trail.export(tmp_path / "forced.csv", attention=True)) == trail
    assert "attention" not in tt.Trail.load(trail.export(tmp_path / "none.json", attention=False)).tables()
    monkeypatch.setattr(tio, "MAX_ATTENTION_ROWS", trail.attentions.size)  # at the limit: included
    assert tt.Trail.load(trail.export(tmp_path / "t2.parquet")) == trail
