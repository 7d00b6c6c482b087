"""``tokentrail report``: a study's aggregates as one self-contained, offline HTML file
(plotly.js inlined once, figures and tables, the run's metadata)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from tokentrail.engine.cells import CELL_METRICS
from tokentrail.spec.axes import rank_axis
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import atomic_write, check_output_path, write_text

CLASS_ORDER = ("function", "content", "punctuation", "special", "other", "unknown")


def _by_class_figure(df: pd.DataFrame, column: str, title: str, *, log: bool = False) -> go.Figure:
    fig = go.Figure()
    for (site, cls), g in df.groupby(["site", "word_class"], sort=False):
        name = cls if df["site"].nunique() == 1 else f"{cls} ({site})"
        fig.add_trace(go.Scatter(x=g["layer"], y=g[column] + (1 if log else 0), mode="lines+markers", name=name))
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis=rank_axis(float(df[column].max())) if log else dict(title_text=_AXIS.get(column, column)),
        template="plotly_white",
        height=380,
    )
    return fig


def _rank_median_figure(by: pd.DataFrame) -> go.Figure:
    """The median rank by class; where it is 0 at every layer (most tokens stay their own
    nearest, as on MiniLM) a flat line says little, so each class's 90th percentile is
    drawn beside it, dotted, and the title says why."""
    flat = "rank_q90" in by and not by["rank_median"].any()
    title = "Rank of the token's own encoding (median, log scale: 0 = nearest)"
    if flat:
        title = "Rank of the token's own encoding: the median is 0 at every layer; dotted: the 90th percentile"
    fig = _by_class_figure(by, "rank_median", title, log=True)
    if flat:
        for (site, cls), g in by.groupby(["site", "word_class"], sort=False):
            name = cls if by["site"].nunique() == 1 else f"{cls} ({site})"
            fig.add_trace(
                go.Scatter(
                    x=g["layer"], y=g["rank_q90"] + 1, mode="lines", line=dict(dash="dot"), name=f"{name}, 90th pct."
                )
            )
        fig.update_layout(yaxis=rank_axis(float(by["rank_q90"].max())))
    return fig


_AXIS = {"self_sim_mean": "cosine (mean)", "overlap_mean": "shared neighbours (mean)"}
"""y-axis titles in words for the columns the figures draw (others: the column's name)."""


_DRAWN_AS = {"rank": ("rank_median", "rank_mean"), "adjusted_self_sim": ("corpus_adjusted_self_sim",)}
"""Registered metrics whose figures above have other names."""


def figures(agg: dict[str, pd.DataFrame]) -> list[go.Figure]:
    """The report's figures, from the aggregates only."""
    return list(named_figures(agg).values())


def named_figures(agg: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """The report's figures by name: ``self_sim``, ``rank_median``, ``rank_mean``,
    ``overlap``, one per other registered metric by its name (``margin``, ...),
    ``corpus_adjusted_self_sim`` and ``anisotropy`` (when the study has a
    sample), ``jumps_0``, ``jumps_1``, ... (one per site)."""
    by = agg["by_class"].copy()
    by["order"] = by["word_class"].map({c: i for i, c in enumerate(CLASS_ORDER)})
    by = by.sort_values(["site", "order", "layer"])
    figs = {
        "self_sim": _by_class_figure(
            by, "self_sim_mean", "Self-similarity (cosine to the token's own original encoding), mean by word class"
        ),
        "rank_median": _rank_median_figure(by),
        "rank_mean": _by_class_figure(by, "rank_mean", "Rank of the token's own encoding (mean, log scale)", log=True),
        "overlap": _by_class_figure(
            by, "overlap_mean", "Overlap of the nearest-vocabulary sets with the layer before (mean)"
        ),
    }
    for name, m in CELL_METRICS.items():  # every other registered metric the study holds: its mean by class
        if name not in figs and name not in _DRAWN_AS and f"{name}_mean" in by:
            figs[name] = _by_class_figure(by, f"{name}_mean", f"{m.title} (mean by word class)")
    if "corpus_adjusted_self_sim_mean" in by:
        figs["corpus_adjusted_self_sim"] = _by_class_figure(
            by,
            "corpus_adjusted_self_sim_mean",
            "Self-similarity minus the corpus anisotropy baseline (Ethayarajh 2019)",
        )
    an = agg["anisotropy"]
    if len(an):
        fig = go.Figure()
        for site, g in an.groupby("site"):
            fig.add_trace(go.Scatter(x=g["layer"], y=g["anisotropy"], mode="lines+markers", name=site))
        fig.update_layout(
            title="Corpus anisotropy: mean cosine of token pairs from different texts",
            xaxis_title="layer",
            yaxis_title="mean cosine",
            template="plotly_white",
            height=340,
        )
        figs["anisotropy"] = fig
    j = agg["jumps"]
    if len(j):
        for i, (site, g) in enumerate(j.groupby("site")):
            pivot = g.pivot(index="word_class", columns="layer", values="d_self_sim_paired")
            fig = go.Figure(
                go.Heatmap(
                    z=pivot.values,
                    x=[f"{l - 1}→{l}" for l in pivot.columns],
                    y=list(pivot.index),
                    colorscale="RdBu",
                    zmid=0,
                    colorbar_title="Δ self_sim",
                )
            )
            fig.update_layout(
                title=f"Change of self-similarity from the layer before, per token, mean by class ({site})",
                template="plotly_white",
                height=300 + 20 * len(pivot),
            )
            figs[f"jumps_{i}"] = fig
    return figs


def freq_rank_note(manifest: dict) -> str:
    """What the study's ``freq_rank`` is (older manifests hold a plain note)."""
    fr = manifest.get("freq_rank", "")
    return fr.get("definition", "") if isinstance(fr, dict) else str(fr)


def _table(df: pd.DataFrame, max_rows: int = 200) -> str:
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def metadata(m: dict) -> dict[str, str]:
    """The run's metadata as the report (and the app's Study tab) show it, from its manifest."""
    return {
        "model": f"{m.get('model')} ({m.get('model_info', {}).get('model_type')}, {m.get('model_info', {}).get('n_layers')} layers), revision {m.get('model_revision')}",
        "input": json.dumps(m.get("input")),
        "options": json.dumps(m.get("options")),
        "texts / tokens": f"{m.get('texts', 0):,} / {m.get('tokens', 0):,}",
        "state": "complete" if m.get("complete") else "INCOMPLETE (resume with --resume)",
        "skipped records": json.dumps(m.get("skipped", {}).get("counts", {})),
        "anisotropy sample": json.dumps(m.get("sample")),
        "frequency rank": freq_rank_note(m),
        "engine, elapsed": f"{m.get('engine')}, {m.get('elapsed_s')} s",
        "tokentrail": f"{m.get('tokentrail_version')}, created {m.get('created')}",
    }


def render(study) -> str:
    agg = study.aggregate()
    m = study.manifest
    figs = figures(agg)
    parts = []
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False))
    meta_rows = metadata(m)
    meta = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta_rows.items())
    samples = pd.DataFrame(m.get("skipped", {}).get("samples", []))
    cols = [
        c
        for c in agg["by_class"].columns
        if c.endswith(("_mean", "_median")) or c in ("site", "layer", "word_class", "n", "anisotropy")
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokentrail study: {html.escape(str(m.get("model")))}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table.t,table.meta{{border-collapse:collapse;font-size:13px;margin:1em 0}}
table.t td,table.t th,table.meta td,table.meta th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
table.meta th{{text-align:left}} table.meta td{{text-align:left}}
details{{margin:1em 0}}
</style></head><body>
<h1>Corpus study: {html.escape(str(m.get("model")))}</h1>
<p>Every token of every text, at every layer, compared with the model's own vocabulary of
encodings (cosine; see the project's SPEC). Word classes come from gold UPOS tags where the
input had them (CoNLL-U), otherwise from a closed-class list of English function words.</p>
<table class="meta">{meta}</table>
{"".join(parts)}
<h2>By layer and word class</h2>{_table(agg["by_class"][cols])}
<h2>Jumps between consecutive layers</h2>{_table(agg["jumps"])}
<h2>Corpus anisotropy</h2>{_table(agg["anisotropy"])}
<details><summary>Most frequent tokens ({agg["by_token"]["token_id"].nunique()} tokens)</summary>{_table(agg["by_token"], 2000)}</details>
<details><summary>Skipped records ({m.get("skipped", {}).get("total", 0)})</summary>{_table(samples) if len(samples) else "<p>none</p>"}</details>
</body></html>
"""


def write_report(study, path: str | Path, *, force: bool = False) -> Path:
    """``render(study)`` written atomically to ``path``, checked first (an existing file
    is replaced only with ``force``; nothing is rendered for a path that would be refused)."""
    check_output_path(path, force=force)
    return write_text(path, render(study))


def write_pngs(study, folder: str | Path, prefix: str = "") -> list[Path]:
    """The report's figures as PNG files (needs kaleido: ``pip install 'tokentrail[app]'``)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise InputError("PNG figures need kaleido: pip install 'tokentrail[app]'") from None
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --png {folder}: {exc.strerror or exc}") from None
    paths = []
    for name, fig in named_figures(study.aggregate()).items():
        path = folder / f"{prefix}{name}.png"
        with atomic_write(path) as tmp:
            fig.write_image(str(tmp), format="png", width=900, height=fig.layout.height or 400)
        paths.append(path)
    return paths
