"""The files tokentrail writes that other parts read back: their names and format tags
(pure Python: the app's shelves check a folder without importing the code that wrote it)."""

from __future__ import annotations

#: a fitted translator's folder: its weights (safetensors), its metadata (JSON) and the tag
#: the metadata's ``format`` carries (the number after the slash is the layout's version)
TRANSLATOR_WEIGHTS = "translator.safetensors"
TRANSLATOR_META = "translator.json"
TRANSLATOR_FORMAT = "tokentrail-translator/1"
