"""The fitted translators the server offers (issue 26): ``tokentrail serve --translators DIR``.

The page never names a path. The operator gives one folder; the page offers its direct
subfolders that hold a translator ``tokentrail fit`` wrote (``translator.json`` of the
tokentrail format beside its weights), by name, in the *Translator* choice. A folder that
is, or holds, a symbolic link is not offered, and a request for anything else is refused
in one line. A translator of another model than the page's is refused in one line by the
library (:func:`tokentrail.translate`) and not applied.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokentrail.app.study_tab import first_link
from tokentrail.spec.errors import InputError
from tokentrail.spec.formats import TRANSLATOR_FORMAT, TRANSLATOR_META, TRANSLATOR_WEIGHTS

META, WEIGHTS = TRANSLATOR_META, TRANSLATOR_WEIGHTS
FORMAT_PREFIX = TRANSLATOR_FORMAT.split("/")[0] + "/"  # any version of the layout; tt.load_translator checks which
NO_TRANSLATOR = "none"
NO_FOLDER = "No translators folder: start the server with `tokentrail serve --translators DIR`."


class TranslatorShelf:
    """The translators under one folder the operator chose; the only way the page reaches them."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root).resolve()

    def _meta(self, folder: Path) -> dict | None:
        """The translator's metadata when ``folder`` is an offered translator, else None."""
        if folder.is_symlink() or not folder.is_dir() or self.root is None:
            return None
        if not folder.resolve().is_relative_to(self.root) or first_link(folder) is not None:
            return None
        if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
            return None
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not str(meta.get("format", "")).startswith(FORMAT_PREFIX):
            return None
        return meta

    def _offered(self) -> dict[str, dict]:
        """Each offered translator's metadata, by folder name (sorted)."""
        if self.root is None or not self.root.is_dir():
            return {}
        found = {p.name: self._meta(p) for p in self.root.iterdir()}
        return {name: meta for name, meta in sorted(found.items()) if meta is not None}

    def names(self) -> list[str]:
        """The translators on offer, by folder name (sorted)."""
        return list(self._offered())

    def choices(self, model: str | None = None) -> list[tuple[str, str]]:
        """The choice's menu as (label, value): none first, then each offered translator as
        ``NAME: KIND, fitted on MODEL``; with ``model`` (the page's), those fitted on another
        are marked *not this model* (the library refuses them when chosen)."""
        out = [("none", NO_TRANSLATOR)]
        for name, meta in self._offered().items():
            fitted = str((meta.get("model_info") or {}).get("model", "?"))
            label = f"{name}: {meta.get('kind', '?')}, fitted on {Path(fitted).name}"
            out.append((label if model is None or fitted == model else f"{label} (not this model)", name))
        return out

    def path(self, name: object) -> Path:
        """The folder of an offered translator; anything else is refused."""
        if self.root is None:
            raise InputError(NO_FOLDER)
        if not isinstance(name, str) or name not in self.names():
            raise InputError(f"no translator {name!r} in the translators folder: choose one from the list")
        folder = self.root / name
        if self._meta(folder) is None:  # checked again: the folder may have changed since listing
            raise InputError(f"no translator {name!r} in the translators folder: choose one from the list")
        return folder
