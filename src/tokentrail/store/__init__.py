"""A corpus study on disk: its folder (``writer``: parts, manifest, resume), the DuckDB
views over its parts (``aggregate``), token frequencies (``frequencies``) and its
per-layer statistics read back for corpus-fitted corrections (``stats``)."""
