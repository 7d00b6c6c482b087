"""A handle on a study's folder: its manifest, SQL over its rows, its aggregates."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from tokentrail.corpus.report import named_figures, write_report
from tokentrail.spec import display
from tokentrail.spec.errors import InputError
from tokentrail.store import aggregate
from tokentrail.store.writer import StudyDir


class Aggregates(dict[str, pd.DataFrame]):
    """A study's aggregates by name (``by_class``, ``by_class_first_subword``, ``by_token``,
    ``anisotropy``, ``jumps``): a dict of frames that a notebook shows as a summary and a
    table of the mean self-similarity by layer and word class, not 25 kB of text."""

    def __init__(self, frames: dict[str, pd.DataFrame], name: str = "study"):
        super().__init__(frames)
        self.name = name

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} ({len(v):,} rows)" for k, v in self.items())
        return f"<Aggregates of the {self.name}: {parts}>"

    def frame(self, name: str = "by_class") -> pd.DataFrame:
        """One aggregate's frame (``by_token`` has each token's text)."""
        if name not in self:
            raise InputError(f"no aggregate {name!r}: choose from {', '.join(self)}")
        return self[name]

    def plot(self, name: str = "self_sim") -> Any:
        """One of the study report's figures by name (``self_sim``, ``rank_median``, ...)."""
        figs = named_figures(self)
        if name not in figs:
            raise InputError(f"no figure {name!r}: choose from {', '.join(figs)}")
        return figs[name]

    def _repr_html_(self) -> str:
        rows = [(k, f"{len(v):,} rows × {len(v.columns)} columns") for k, v in self.items()]
        by = self.get("by_class")
        parts = [display.summary(rows, f"Aggregates of the {self.name}")]
        if by is not None and len(by):
            site = str(by["site"].iloc[0])
            pivot = by[by["site"] == site].pivot_table(index="layer", columns="word_class", values="self_sim_mean")
            parts.append(
                display.heat_table(
                    pivot.to_numpy().tolist(),
                    [f"layer {l}" for l in pivot.index],
                    [str(c) for c in pivot.columns],
                    caption=f"cell: mean self-similarity of {site} by layer and word class (.plot() draws every figure of the report)",
                )
            )
        return display.block(*parts)


class Study:
    """A written study (complete or not). Reads the Parquet parts through DuckDB.

    ``query(sql)`` sees three views: ``tokens`` (one row per token x layer x site, with
    its ``freq_rank``), ``freq`` (each token id's count and ``freq_rank``) and ``sample``
    (the anisotropy sample candidates' vectors)."""

    def __init__(self, root: str | Path):
        self.dir = StudyDir(root)
        self.manifest: dict[str, Any] = self.dir.read_manifest()

    @property
    def root(self) -> Path:
        return self.dir.root

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @cached_property
    def _con(self):
        return aggregate.connect(self.root)

    def query(self, sql: str) -> pd.DataFrame:
        return self._con.execute(sql).df()

    def aggregate(self) -> Aggregates:
        """Every aggregate (see :mod:`tokentrail.store.aggregate`), as small frames by name
        (a dict: ``agg["by_class"]``), shown in a notebook as a summary and one table."""
        return Aggregates(aggregate.summary(self._con, int(self.manifest["sample"]["size"])), self._name())

    def frame(self) -> pd.DataFrame:
        """Every token row of the study (the ``tokens`` view, with each token's text), in the
        corpus' order: text, position, site, layer. A large study: slice it with :meth:`query`."""
        return self.query("SELECT * FROM tokens ORDER BY text_id, position, site, layer")

    def plot(self, name: str = "self_sim") -> Any:
        """One of the study report's figures (``self_sim``, ``rank_median``, ``overlap``, ...;
        :func:`tokentrail.study_figures` lists them)."""
        return self.aggregate().plot(name)

    def _name(self) -> str:
        return f"{self.manifest.get('model')} study of {self.manifest.get('texts', 0)} texts"

    def _repr_html_(self) -> str:
        m = self.manifest
        rows = [
            ("folder", str(self.root)),
            ("model", str(m.get("model"))),
            ("texts", f"{m.get('texts', 0):,}"),
            ("tokens", f"{m.get('tokens', 0):,}"),
            ("state", "complete" if self.complete else "incomplete (resume it with --resume)"),
        ]
        return display.block(
            display.summary(rows, "Study"),
            "<p>.aggregate() gives its tables (by word class, by token, anisotropy, jumps); .plot() a figure; .query(sql) any slice.</p>",
        )

    def report(self, path: str | Path, *, force: bool = False) -> Path:
        """The study as one self-contained HTML file at ``path`` (written atomically); an
        existing file is replaced only with ``force``."""
        return write_report(self, path, force=force)

    def __repr__(self) -> str:
        m = self.manifest
        state = "complete" if self.complete else "incomplete"
        return f"Study({str(self.root)!r}: {m.get('model')}, {m.get('texts', 0)} texts, {m.get('tokens', 0)} tokens, {state})"
