"""Frozen result objects (``trail``), their files (``trailio``: Parquet, CSV, JSON and
back) and their notebook displays (``notebook``). Data only: nothing here runs a model."""
