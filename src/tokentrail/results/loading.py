"""A tokentrail export read back: a Parquet, CSV or JSON file written by
:mod:`~tokentrail.results.trailio` -> a Trail's parts (its fields by name, the views and
lens rebuilt), which :meth:`Trail.from_parts <tokentrail.results.trail.Trail.from_parts>`
makes a Trail equal to the one written. This module knows the records, not the Trail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tokentrail.results.records import LENS_METRICS, CrossView, LensResult, RunInfo, View
from tokentrail.results.trailio import FORMAT_VERSION, TABLES
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import read_csv


def load(path: str | Path) -> dict[str, Any]:
    """A Trail's parts (:meth:`Trail.from_parts` builds it) from a Parquet, CSV or JSON
    export written by tokentrail (any version-1 file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a folder: give the export file (.parquet, .csv or .json)")
    if not p.exists():
        raise InputError(f"no such file: {p}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        if head == b"PAR1":
            import pyarrow.parquet as pq

            return _from_long(pq.read_table(p).to_pandas(), p)
        if head.lstrip()[:1] == b"{":
            doc = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or "trail" not in doc["meta"]:
                raise InputError(f"{p} is not a tokentrail export (no meta.trail in the document)")
            frames = {name: pd.DataFrame.from_records(doc[name]) for name in TABLES[1:] if name in doc}
            return from_tables(doc["meta"], frames, p)
        frame = read_csv(
            p,
            keep_default_na=False,
            na_values=[""],
            dtype={
                c: object
                for c in ("token_str", "id_str", "meta", "site", "space", "similarity", "metric", "table", "stack")
            },
        )
        return _from_long(frame, p)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p} is not a readable tokentrail export ({type(exc).__name__}: {exc})") from None


def _from_long(frame: pd.DataFrame, p: Path) -> dict[str, Any]:
    if "table" not in frame.columns or "meta" not in frame.columns:
        raise InputError(
            f"{p} is not a tokentrail export: it has no 'table' and 'meta' columns (written by an older version?)"
        )
    groups = {name: g for name, g in frame.groupby("table", sort=False)}
    if "meta" not in groups:
        raise InputError(f"{p} is not a tokentrail export: it has no meta row")
    meta = json.loads(groups["meta"]["meta"].iloc[0])
    return from_tables(meta, {k: g.reset_index(drop=True) for k, g in groups.items() if k != "meta"}, p)


def _ints(col: pd.Series) -> np.ndarray:
    return col.to_numpy(dtype=np.float64).astype(np.int64) if col.dtype.kind == "f" else col.to_numpy(dtype=np.int64)


def _fill(shape: tuple[int, ...], dtype: str, index: tuple[np.ndarray, ...], values: np.ndarray) -> np.ndarray:
    arr = np.zeros(shape, dtype=np.float64)
    arr[index] = values
    return arr.astype(dtype)


def from_tables(
    meta: Mapping[str, Any], frames: Mapping[str, pd.DataFrame], where: Path | str = "the export"
) -> dict[str, Any]:
    """A Trail's parts (its fields by name) from its metadata and tables (see
    :mod:`~tokentrail.results.trailio`); an encoder-decoder's with its decoder's parts
    under ``decoder``."""
    rb = meta.get("trail")
    if isinstance(rb, dict) and rb.get("stack") is not None:

        def part(stack: str) -> dict[str, pd.DataFrame]:
            return {
                name: f[f["stack"] == stack].reset_index(drop=True)
                for name, f in frames.items()
                if "stack" in f.columns
            }

        decoder = (
            from_tables(meta["decoder"], part("decoder"), where) if isinstance(meta.get("decoder"), dict) else None
        )
        return _one_stack(meta, part(rb["stack"]), where, decoder)
    return _one_stack(meta, frames, where, None)


def _one_stack(meta: Mapping[str, Any], frames: Mapping[str, pd.DataFrame], where, decoder) -> dict[str, Any]:
    rb = meta.get("trail")
    if not isinstance(rb, dict) or rb.get("format") != FORMAT_VERSION:
        raise InputError(
            f"{where} is not a tokentrail export this version can read (format {rb.get('format') if isinstance(rb, dict) else None!r})"
        )
    info = RunInfo.from_dict(
        {k: v for k, v in meta.items() if k not in ("text", "tokens", "kv_groups", "trail", "decoder")}
    )
    L, H = int(rb["n_layers"]), int(rb["n_heads"])
    tokens = tuple(meta["tokens"])
    n = len(tokens)
    dt = rb["dtypes"]
    tok = frames["tokens"]
    order = np.argsort(_ints(tok["token"]))
    ids = _ints(tok["id"])[order].astype(dt["ids"])
    positions = _ints(tok["position"])[order].astype(dt["positions"])
    special = (tok["value"].to_numpy(np.float64)[order] != 0).astype(dt["special"])

    met, nb = frames.get("metrics"), frames.get("neighbours")
    views = [_view(spec, met, nb, L, H, n) for spec in rb["views"]]

    attentions = None
    if rb.get("attention_shape") is not None:
        a = frames["attention"]
        idx = tuple(_ints(a[c]) for c in ("layer", "head", "token", "source"))
        attentions = _fill(tuple(rb["attention_shape"]), dt["attentions"], idx, a["value"].to_numpy(np.float64))

    labels = {int(i): s for i, s in rb["labels"].items()}
    lens = None if rb.get("lens") is None else _lens(rb["lens"], frames, n, tuple(tokens), labels)
    cross_views, cross_att = _cross(rb, frames, L, H, n)

    return dict(
        info=info,
        text=meta["text"],
        tokens=tokens,
        ids=ids,
        positions=positions,
        special=special,
        n_layers=L,
        n_heads=H,
        views=tuple(views),
        labels=labels,
        attentions=attentions,
        kv_groups=int(meta.get("kv_groups", 1)),
        lens=lens,
        stack=rb.get("stack"),
        decoder=decoder,
        cross_views=tuple(cross_views),
        cross_attentions=cross_att,
        source_tokens=None if rb.get("source_tokens") is None else tuple(rb["source_tokens"]),
    )


def _view(spec: Mapping[str, Any], met: pd.DataFrame, nb: pd.DataFrame, L: int, H: int, n: int) -> View:
    """One view of the trail from its rows in the metrics and neighbours tables."""
    key = (spec["site"], spec["space"], spec["similarity"])
    m = met[(met["site"] == key[0]) & (met["space"] == key[1]) & (met["similarity"] == key[2])]
    per_head, k = spec["per_head"], int(spec["k"])
    cell = (L, H, n) if per_head else (L, n)

    def where_(rows: pd.DataFrame, per_head: bool = per_head) -> tuple[np.ndarray, ...]:
        li, ti = _ints(rows["layer"]), _ints(rows["token"])
        return (li, _ints(rows["head"]), ti) if per_head else (li, ti)

    metrics = {}
    for name, label, dtype in spec["metrics"]:
        rows = m[m["metric"] == label]
        metrics[name] = _fill(cell, dtype, where_(rows), rows["value"].to_numpy(np.float64))
    rows = m[(m["metric"] == "anisotropy")]
    aniso_shape = (L, H) if per_head else (L,)
    aniso_index = where_(rows)[:-1]
    anisotropy = _fill(aniso_shape, spec["dtypes"]["anisotropy"], aniso_index, rows["value"].to_numpy(np.float64))
    b = nb[(nb["site"] == key[0]) & (nb["space"] == key[1]) & (nb["similarity"] == key[2])]
    layer = _ints(b["layer"])
    main, origin = b[layer >= 0], b[layer < 0]
    idx = (*where_(main), _ints(main["place"]))
    top_ids = _fill((*cell, k), spec["dtypes"]["top_ids"], idx, _ints(main["id"]).astype(np.float64))
    top_sims = _fill((*cell, k), spec["dtypes"]["top_sims"], idx, main["value"].to_numpy(np.float64))
    o_ids = o_sims = None
    if spec["origin_k"] is not None:
        oidx = (_ints(origin["token"]), _ints(origin["place"]))
        shape = (n, int(spec["origin_k"]))
        o_ids = _fill(shape, spec["origin_dtypes"][0], oidx, _ints(origin["id"]).astype(np.float64))
        o_sims = _fill(shape, spec["origin_dtypes"][1], oidx, origin["value"].to_numpy(np.float64))
    return View(
        site=key[0],
        space=key[1],
        similarity=key[2],
        metrics=metrics,
        top_ids=top_ids,
        top_sims=top_sims,
        overlap_k=int(spec["overlap_k"]),
        anisotropy=anisotropy,
        origin_top_ids=o_ids,
        origin_top_sims=o_sims,
    )


def _lens(
    ls: Mapping[str, Any], frames: Mapping[str, pd.DataFrame], n: int, tokens: tuple[str, ...], labels: dict[int, str]
) -> LensResult:
    """The logit lens from its metadata (``ls``) and the lens and lens_top tables, labelled
    with the Trail's tokens and labels."""
    ld = ls["dtypes"]
    LL, k = int(ls["n_layers"]), int(ls["k"])
    lm = frames["lens"]
    arrays: dict[str, Any] = {}
    for name in LENS_METRICS:
        if ld.get(name) is None:  # kl: None in a streamed trace's lens (and in files before it)
            arrays[name] = None
            continue
        rows = lm[lm["metric"] == name]
        vals = rows["value"].to_numpy(np.float64)
        if name == "next_rank":  # written as NaN where undefined (the last token): -1 in the result
            vals = np.where(np.isnan(vals), -1.0, vals)
        arrays[name] = _fill((LL, n), ld[name], (_ints(rows["layer"]), _ints(rows["token"])), vals)
    lt = frames["lens_top"]
    idx = (_ints(lt["layer"]), _ints(lt["token"]), _ints(lt["place"]))
    return LensResult(
        site=ls["site"],
        is_decoder=bool(ls["is_decoder"]),
        input_ids=np.asarray(ls["input_ids"], dtype=ld["input_ids"]),
        top_ids=_fill((LL, n, k), ld["top_ids"], idx, _ints(lt["id"]).astype(np.float64)),
        top_probs=_fill((LL, n, k), ld["top_probs"], idx, lt["value"].to_numpy(np.float64)),
        **arrays,
    ).labelled(tokens, lambda ids: {i: labels.get(i, str(i)) for i in ids})


def _cross(
    rb: Mapping[str, Any], frames: Mapping[str, pd.DataFrame], L: int, H: int, n: int
) -> tuple[list[CrossView], np.ndarray | None]:
    """A decoder's cross-attention views and weights (none for other stacks)."""
    cross_views, cross_att = [], None
    for spec in rb.get("cross") or []:
        c = frames["cross"]
        c = c[(c["space"] == spec["space"]) & (c["similarity"] == spec["similarity"])]
        m = len(rb["source_tokens"])
        idx = (_ints(c["layer"]), _ints(c["head"]), _ints(c["token"]), _ints(c["place"]))
        cross_views.append(
            CrossView(
                site=spec["site"],
                space=spec["space"],
                similarity=spec["similarity"],
                source_order=_fill((L, H, n, m), spec["dtypes"][0], idx, _ints(c["source"]).astype(np.float64)),
                source_sims=_fill((L, H, n, m), spec["dtypes"][1], idx, c["value"].to_numpy(np.float64)),
            )
        )
    if rb.get("cross_attention") is not None:
        shape, dtype = rb["cross_attention"]
        a = frames["cross_attention"]
        cross_att = _fill(
            tuple(shape),
            dtype,
            tuple(_ints(a[c]) for c in ("layer", "head", "token", "source")),
            a["value"].to_numpy(np.float64),
        )
    return cross_views, cross_att
