"""Corpus studies: the per-text metrics of tokentrail over thousands of texts, written
as Parquet while the run goes, aggregated with DuckDB, reported as one HTML file.

``Study`` (reading a study) and ``study`` (running one) are imported on first use, so
that reading a study's folder never imports torch, which running one needs."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_LAZY = {"Study": "dataset", "study": "run"}

__all__ = ["Study", "study"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrail.corpus' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


if TYPE_CHECKING:  # for type checkers and IDEs
    from tokentrail.corpus.dataset import Study as Study
    from tokentrail.corpus.run import study as study
