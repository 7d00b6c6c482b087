"""A handle on a study's folder: its manifest, SQL over its rows, its aggregates."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from tokentrail.corpus.report import write_report
from tokentrail.store import aggregate
from tokentrail.store.writer import StudyDir


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

    def aggregate(self) -> dict[str, pd.DataFrame]:
        """Every aggregate (see :mod:`tokentrail.store.aggregate`), as small frames."""
        return aggregate.summary(self._con, int(self.manifest["sample"]["size"]))

    def report(self, path: str | Path) -> Path:
        return write_report(self, path)

    def __repr__(self) -> str:
        m = self.manifest
        state = "complete" if self.complete else "incomplete"
        return f"Study({str(self.root)!r}: {m.get('model')}, {m.get('texts', 0)} texts, {m.get('tokens', 0)} tokens, {state})"
