"""Presentation over results: terminal tables (``report``), plotly figures (``plots``),
2-D maps (``maps``) and progress (``progress``)."""
