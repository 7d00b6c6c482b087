"""Corpus studies: the per-text metrics of tokentrail over thousands of texts, written
as Parquet while the run goes, aggregated with DuckDB, reported as one HTML file."""

from tokentrail.corpus.dataset import Study
from tokentrail.corpus.run import study

__all__ = ["Study", "study"]
