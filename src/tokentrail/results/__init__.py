"""Frozen result objects (``trail``, made of the parts in ``records``), their files
(``trailio`` writes Parquet, CSV and JSON; ``loading`` reads them back into a Trail's
parts) and their notebook displays (``notebook``). Data only: nothing here runs a model."""
