"""Results are data: the tidy frame's schema, neighbour tables, token lookup and exports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import tokentrail
from tokentrail.spec.errors import InputError

TEXT = "Time flies like an arrow."
COLUMNS = ["token", "token_str", "position", "layer", "head", "site", "space", "similarity", "metric", "value"]
METRICS = ["self_sim", "rank", "overlap@10", "anisotropy", "adjusted_self_sim", "margin"]


@pytest.fixture(scope="module")
def trail(loaded_tiny):
    return tokentrail.trace(
        TEXT,
        loaded_tiny,
        site="attn_resid,layer_out,heads",
        space="encodings,value",
        similarity="all",
        k=4,
        overlap_k=10,
    )


def test_trail_basics(trail, loaded_tiny):
    assert trail.tokens == ("[CLS]", "time", "flies", "like", "an", "arrow", ".", "[SEP]")
    assert trail.special.tolist() == [True] + [False] * 6 + [True]
    assert trail.n_layers == 2 and trail.n_heads == 4
    assert {v.key for v in trail.views} == {
        (site, space, sim)
        for sim in ("cosine", "euclidean")
        for site, space in (("attn_resid", "encodings"), ("layer_out", "encodings"), ("heads", "value"))
    }
    assert trail.info.model == loaded_tiny.name and trail.info.family == "bert"
    assert trail.info.options.k == 4 and trail.info.options.overlap_k == 10
    assert set(trail.labels) >= set(trail.ids.tolist())  # every id shown has a label
    assert trail.labels[int(trail.ids[2])] == "flies"


def test_frame_schema_and_row_counts(trail):
    df = trail.frame()
    assert list(df.columns) == COLUMNS
    n, L, H = trail.n_tokens, trail.n_layers, trail.n_heads
    counts = df.groupby(["site", "space", "similarity"]).size().to_dict()
    for v in trail.views:
        per = n * L * (H if v.per_head else 1)
        assert counts[v.key] == per * len(METRICS), v.key
    assert len(df) == sum(n * L * (H if v.per_head else 1) * len(METRICS) for v in trail.views)
    for v in trail.views:
        names = df[(df.site == v.site) & (df.space == v.space) & (df.similarity == v.similarity)]["metric"].unique()
        assert sorted(names) == sorted(
            ["self_sim", "rank", f"overlap@{v.overlap_k}", "anisotropy", "adjusted_self_sim", "margin"]
        )
    assert sorted(df[df.site != "heads"]["metric"].unique()) == sorted(METRICS)
    # each layer's head space differs, so the heads site has no layer-to-layer overlap
    assert df[(df.site == "heads") & df.metric.str.startswith("overlap")]["value"].isna().all()
    resid = df[df.site != "heads"]
    assert (resid["head"] == -1).all()
    assert sorted(df[df.site == "heads"]["head"].unique()) == list(range(H))
    # token_str and position follow the token index
    assert (df["token_str"] == np.array(trail.tokens, dtype=object)[df["token"]]).all()
    assert (df["position"] == trail.positions[df["token"]]).all()


def _value(df, **where):
    mask = np.ones(len(df), dtype=bool)
    for col, val in where.items():
        mask &= (df[col] == val).to_numpy()
    (row,) = df[mask]["value"].tolist()
    return row


def test_frame_values_match_the_view(trail):
    df = trail.frame()
    v = trail.view("attn_resid", "encodings", "cosine")
    key = dict(site="attn_resid", space="encodings", similarity="cosine", layer=1, token=2)
    assert _value(df, metric="rank", **key) == v.rank[1, 2]
    assert _value(df, metric="self_sim", **key) == pytest.approx(float(v.self_sim[1, 2]))
    assert _value(df, metric="overlap@10", **key) == v.overlap[1, 2]
    assert _value(df, metric="anisotropy", **key) == pytest.approx(float(v.anisotropy[1]))
    assert _value(df, metric="adjusted_self_sim", **key) == pytest.approx(float(v.self_sim[1, 2] - v.anisotropy[1]))
    h = trail.view("heads", "value", "euclidean")
    hk = dict(site="heads", space="value", similarity="euclidean", layer=0, head=3, token=5)
    assert _value(df, metric="rank", **hk) == h.rank[0, 3, 5]
    assert _value(df, metric="self_sim", **hk) == pytest.approx(float(h.self_sim[0, 3, 5]))
    assert _value(df, metric="anisotropy", **hk) == pytest.approx(float(h.anisotropy[0, 3]))


def test_neighbours(trail):
    nb = trail.neighbours("flies", 1, site="layer_out", similarity="cosine")
    v = trail.view("layer_out", "encodings", "cosine")
    assert list(nb.columns) == ["place", "id", "token", "similarity", "own", "own_rank"]
    assert nb["id"].tolist() == v.top_ids[1, 2].tolist()
    assert nb["similarity"].tolist() == pytest.approx(v.top_sims[1, 2].tolist())
    assert nb["place"].tolist() == [0, 1, 2, 3]
    assert (nb["own"] == (nb["id"] == trail.ids[2])).all()
    assert (nb["own_rank"] == v.rank[1, 2]).all()
    assert nb["token"].tolist() == [trail.labels[i] for i in nb["id"]]
    assert len(trail.neighbours(2, -1, k=2)) == 2  # layer -1 is the last layer
    hv = trail.view("heads", "value", "cosine")
    nh = trail.neighbours(0, 0, head=1, similarity="cosine")  # a head implies the heads site
    assert nh["id"].tolist() == hv.top_ids[0, 1, 0].tolist()
    with pytest.raises(InputError, match="needs a head index"):
        trail.neighbours(0, 0, site="heads")
    with pytest.raises(InputError, match="head 9 is out of range"):
        trail.neighbours(0, 0, head=9)
    with pytest.raises(InputError, match="layer 5 is out of range: the model has 2 layers"):
        trail.neighbours(0, 5)


def test_neighbours_frame(trail):
    nf = trail.neighbours_frame()
    n, L, H, k = trail.n_tokens, trail.n_layers, trail.n_heads, 4
    assert len(nf) == sum(n * L * (H if v.per_head else 1) * k for v in trail.views)
    row = nf[
        (nf.site == "attn_resid") & (nf.similarity == "cosine") & (nf.layer == 0) & (nf.token == 3) & (nf.place == 1)
    ]
    assert row["neighbour_id"].item() == trail.view("attn_resid", "encodings", "cosine").top_ids[0, 3, 1]


@pytest.mark.parametrize(
    "token, index",
    [("flies", 2), ("FLIES", 2), (" arrow ", 5), ("[CLS]", 0), (3, 3), (-1, 7), ("2", 2), ("-2", 6), (np.int64(4), 4)],
)
def test_token_index(trail, token, index):
    assert trail.token_index(token) == index


def test_token_index_errors(trail):
    with pytest.raises(InputError, match=r"token index 8 is out of range: the text has 8 tokens \(0\.\.7\)"):
        trail.token_index(8)
    with pytest.raises(InputError, match="token index -9 is out of range"):
        trail.token_index(-9)
    with pytest.raises(InputError, match=r"no token 'banana' in the text; tokens are 0:\[CLS\] 1:time 2:flies"):
        trail.token_index("banana")


def test_view_lookup_error_lists_what_was_computed(trail):
    with pytest.raises(InputError, match="computed: attn_resid/encodings/cosine"):
        trail.view("attn_resid_ln")


def test_parquet_round_trip(trail, tmp_path):
    import pyarrow.parquet as pq

    path = trail.export(tmp_path / "t.parquet")
    assert path == tmp_path / "t.parquet"
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"tokentrail"])
    assert meta["model"] == trail.info.model and meta["text"] == TEXT
    assert meta["tokens"] == list(trail.tokens)
    assert meta["options"]["similarities"] == ["cosine", "euclidean"]
    assert meta["tokentrail_version"] == tokentrail.__version__
    frame = table.to_pandas()
    metrics = frame[frame["table"] == "metrics"][COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(metrics, trail.frame(), check_dtype=False)  # the long table's ints are nullable


def test_csv_round_trip(trail, tmp_path):
    path = trail.export(tmp_path / "t.csv")
    back = pd.read_csv(path, dtype={"token_str": str}, keep_default_na=False, na_values=[""])
    expected = trail.frame()
    assert list(back.columns[: len(COLUMNS)]) == COLUMNS  # then the other tables' columns and "table"
    back = back[back["table"] == "metrics"][COLUMNS].reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)


def test_json_round_trip(trail, tmp_path):
    path = trail.export(tmp_path / "t.json")
    doc = json.loads(path.read_text())
    assert set(doc) == {"meta", "tokens", "metrics", "neighbours", "attention"}
    assert doc["meta"]["tokens"] == list(trail.tokens)
    frame = trail.frame()
    assert len(doc["metrics"]) == len(frame)
    assert set(doc["metrics"][0]) == set(COLUMNS)
    back = pd.DataFrame(doc["metrics"])[COLUMNS]
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)  # NaN overlaps come back as null -> NaN
    origin = sum(
        trail.n_tokens * 4 for v in trail.views if v.origin_top_ids is not None
    )  # layer -1: the original encoding's
    assert len(doc["neighbours"]) == len(trail.neighbours_frame()) + origin
    assert trail.to_json() == path.read_text()  # without a path: the same document as text


def test_unknown_export_format(trail, tmp_path):
    with pytest.raises(InputError, match="unknown export format 'xlsx': use parquet, csv or json"):
        trail.export(tmp_path / "t.xlsx")
