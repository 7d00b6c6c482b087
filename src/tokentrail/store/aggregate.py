"""Aggregates of a finished (or partly finished) study, computed by DuckDB over its
Parquet parts: the token rows are never loaded whole into memory.

- :func:`by_class`: per site x layer x word class, count, mean/median/quantiles of
  every registered metric (self_sim, rank, overlap, margin, ...), and the mean of the
  text-adjusted and corpus-adjusted self-similarity;
- :func:`by_token`: the same per token id, for the most frequent tokens;
- :func:`anisotropy`: the corpus baseline per site and layer (Ethayarajh 2019): mean
  cosine of pairs of sampled tokens from *different* texts;
- :func:`jumps`: each class's change between consecutive layers, both as the change of
  the class mean and as the mean of every token's own change (paired).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tokentrail.engine.cells import CELL_METRICS
from tokentrail.spec.errors import InputError
from tokentrail.store.frequencies import FILE_NAME as FREQUENCIES_FILE

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def metrics(con, summary: str = "quantiles") -> list[str]:
    """The registered metrics (:data:`tokentrail.engine.cells.CELL_METRICS`) aggregated as
    ``summary`` (``quantiles``: mean, median and quantiles; ``mean``) that the study's
    token rows hold: a study written before a metric was registered has no column for it."""
    columns = {r[0] for r in con.execute("DESCRIBE token_rows").fetchall()}
    return [name for name, m in CELL_METRICS.items() if m.summary == summary and name in columns]


def connect(root: str | Path):
    """A DuckDB connection over a study's parts, with views ``tokens`` (the token rows
    and their ``freq_rank``), ``freq`` (``token_id, count, freq_rank``: from the study's
    ``--frequencies`` file, else counted in its own corpus) and ``sample``."""
    import duckdb

    root = Path(root)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    data = sorted((root / "data").glob("part-*.parquet"))
    sample = sorted((root / "sample").glob("part-*.parquet"))
    if not data:
        raise InputError(f"{root} has no finished batch yet (no data/part-*.parquet)")
    # union_by_name: a study resumed across a new registered metric has parts with and without its column
    con.execute(f"CREATE VIEW token_rows AS SELECT * FROM read_parquet({_paths(data)}, union_by_name = true)")
    given = root / FREQUENCIES_FILE
    if given.exists():  # --frequencies: the counts of the user's file
        counts = f"SELECT token_id, count FROM read_parquet({_paths([given])})"
    else:  # occurrences of each id among the studied texts (one site and layer: one row per token)
        counts = "SELECT token_id, count(*) AS count FROM token_rows WHERE layer = 0 AND site = (SELECT min(site) FROM token_rows) GROUP BY token_id"
    # the one rule of freq_rank: 1 + the number of ids with a larger count (ties share it)
    con.execute(
        f"CREATE VIEW freq AS SELECT token_id, count, rank() OVER (ORDER BY count DESC) AS freq_rank FROM ({counts})"
    )
    con.execute("CREATE VIEW tokens AS SELECT t.*, f.freq_rank FROM token_rows t LEFT JOIN freq f USING (token_id)")
    if sample:
        con.execute(f"CREATE VIEW sample AS SELECT * FROM read_parquet({_paths(sample)})")
    return con


def _paths(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _stats(metric: str, table: str = "") -> str:
    col = f"{table}{metric}"
    parts = [f"avg({col}) AS {metric}_mean", f"median({col}) AS {metric}_median"]
    parts += [f"quantile_cont({col}, {q}) AS {metric}_q{int(q * 100):02d}" for q in QUANTILES if q != 0.5]
    return ", ".join(parts)


def by_class(con, *, first_subword_only: bool = False) -> pd.DataFrame:
    where = "WHERE first_subword" if first_subword_only else ""
    sql = f"""
        SELECT site, layer, word_class, count(*) AS n,
               {", ".join(_stats(m) for m in metrics(con))},
               {"".join(f"avg({m}) AS {m}_mean, " for m in metrics(con, "mean"))}avg(norm) AS norm_mean
        FROM tokens {where}
        GROUP BY site, layer, word_class
        ORDER BY site, word_class, layer
    """
    return con.execute(sql).df()


def by_token(con, *, top: int = 50, min_count: int = 5) -> pd.DataFrame:
    """Per site x layer x token id, for the ``top`` most frequent tokens (by occurrences
    at one site and layer) seen at least ``min_count`` times, with their ``freq_rank``."""
    sql = f"""
        WITH freq AS (
            SELECT token_id, any_value(token) AS token, count(*) AS n
            FROM tokens WHERE layer = 0 AND site = (SELECT min(site) FROM tokens)
            GROUP BY token_id HAVING count(*) >= {int(min_count)}
            ORDER BY n DESC, token_id LIMIT {int(top)}
        )
        SELECT t.site, t.layer, t.token_id, f.token, f.n AS occurrences, any_value(t.freq_rank) AS freq_rank,
               mode(t.word_class) AS word_class,
               {", ".join(_stats(m, "t.") for m in metrics(con))}
        FROM tokens t JOIN freq f USING (token_id)
        GROUP BY t.site, t.layer, t.token_id, f.token, f.n
        ORDER BY f.n DESC, t.token_id, t.site, t.layer
    """
    return con.execute(sql).df()


def sample_vectors(con, size: int, embedded: bool = False) -> pd.DataFrame:
    """The corpus sample: the ``size`` tokens with the smallest keys, every site/layer
    (and, with ``embedded``, their encodings before the first layer: site ``embedded``)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "sample" not in tables:
        return pd.DataFrame(columns=["text_id", "position", "key", "word_class", "site", "layer", "vector"])
    sql = f"""
        WITH chosen AS (
            SELECT DISTINCT text_id, position, key FROM sample ORDER BY key LIMIT {int(size)}
        )
        SELECT s.* FROM sample s JOIN chosen c USING (text_id, position)
        {"" if embedded else "WHERE s.site <> 'embedded'"}
        ORDER BY s.site, s.layer, s.key
    """
    return con.execute(sql).df()


def anisotropy(con, size: int) -> pd.DataFrame:
    """Mean cosine over all pairs of sampled tokens from different texts, per site/layer.

    The sample is bounded (``size`` tokens), so its vectors fit in memory whatever the
    corpus size: the pairs are summed exactly with one matrix product per layer."""
    sample = sample_vectors(con, size)
    rows = []
    for (site, layer), g in sample.groupby(["site", "layer"], sort=True):
        v = np.stack(g["vector"].to_numpy()).astype(np.float64)  # (m, d)
        u = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-300, None)
        cos = u @ u.T
        texts = g["text_id"].to_numpy()
        other = texts[:, None] != texts[None, :]
        pairs = int(other.sum()) // 2
        rows.append(
            {
                "site": site,
                "layer": int(layer),
                "anisotropy": float(cos[other].mean()) if pairs else float("nan"),
                "tokens": len(g),
                "pairs": pairs,
            }
        )
    return pd.DataFrame(rows, columns=["site", "layer", "anisotropy", "tokens", "pairs"])


def jumps(con) -> pd.DataFrame:
    """Per site x class x layer (>= 1): change of mean self_sim, median rank and mean
    overlap from the layer before, and the mean of each token's own self_sim change."""
    sql = """
        WITH paired AS (
            SELECT site, word_class, layer, self_sim,
                   self_sim - lag(self_sim) OVER (PARTITION BY site, text_id, position ORDER BY layer) AS d_self_sim
            FROM tokens
        ),
        per_layer AS (
            SELECT site, word_class, layer, avg(self_sim) AS self_sim_mean, avg(d_self_sim) AS d_self_sim_paired,
                   count(*) AS n
            FROM paired GROUP BY site, word_class, layer
        ),
        ranks AS (
            SELECT site, word_class, layer, median(rank) AS rank_median, avg(overlap) AS overlap_mean
            FROM tokens GROUP BY site, word_class, layer
        )
        SELECT p.site, p.word_class, p.layer, p.n,
               p.self_sim_mean - lag(p.self_sim_mean) OVER w AS d_self_sim_mean,
               p.d_self_sim_paired,
               r.rank_median - lag(r.rank_median) OVER w AS d_rank_median,
               r.overlap_mean AS overlap_mean
        FROM per_layer p JOIN ranks r USING (site, word_class, layer)
        WINDOW w AS (PARTITION BY p.site, p.word_class ORDER BY p.layer)
        ORDER BY p.site, p.word_class, p.layer
    """
    df = con.execute(sql).df()
    return df[df["layer"] >= 1].reset_index(drop=True)


def summary(con, sample_size: int) -> dict[str, pd.DataFrame]:
    """Every aggregate, with the corpus-adjusted self-similarity joined in."""
    classes = by_class(con)
    aniso = anisotropy(con, sample_size)
    if len(aniso):
        classes = classes.merge(aniso[["site", "layer", "anisotropy"]], on=["site", "layer"], how="left")
        classes["corpus_adjusted_self_sim_mean"] = classes["self_sim_mean"] - classes["anisotropy"]
    return {
        "by_class": classes,
        "by_class_first_subword": by_class(con, first_subword_only=True),
        "by_token": by_token(con),
        "anisotropy": aniso,
        "jumps": jumps(con),
    }
