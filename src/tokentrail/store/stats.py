"""A study's per-layer statistics, read back for corpus-fitted corrections (issue 9).

A study writes, per batch, the count, sum and sum of squares of every token's vector
at each site and layer, and of the encodings before the first layer (site ``embedded``):
``stats/part-*.parquet``. Summed over the batches they give the exact corpus mean and
(population) standard deviation. What a sum cannot give (the dimensions that dominate the
cosine, the top principal directions) comes from the study's corpus sample: the
``sample.size`` tokens with the smallest keys, drawn uniformly with a fixed seed.
:func:`read_stats` returns them; :func:`tokentrail.engine.geometry.fit_corpus_correction` fits a
correction from one entry.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tokentrail.engine.geometry import LayerStats, fit_corpus_correction
from tokentrail.spec.errors import InputError
from tokentrail.store.aggregate import connect, sample_vectors
from tokentrail.store.schema import EMBEDDED
from tokentrail.store.writer import _PART, StudyDir

MODEL_FACTS = ("model", "model_revision", "model_type", "n_layers", "d_model", "vocab_size")


@dataclass(frozen=True)
class CorpusStats:
    root: str
    model_info: Mapping[str, Any]
    causal: bool | None
    layers: Mapping[tuple[str, int], LayerStats]
    _fits: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def correction(self, spec: str, site: str, layer: int):
        """:func:`tokentrail.engine.geometry.fit_corpus_correction` of one site and layer, kept:
        ``abtt`` takes an SVD of the sample per layer, and every later trace reuses it."""
        key = (spec, site, layer)
        with self._lock:
            if key not in self._fits:
                self._fits[key] = fit_corpus_correction(spec, self.get(site, layer))
            return self._fits[key]

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(site for site, _ in self.layers if site != EMBEDDED))

    def get(self, site: str, layer: int) -> LayerStats:
        try:
            return self.layers[(site, layer)]
        except KeyError:
            raise InputError(
                f"the study at {self.root} recorded {', '.join(self.sites)}, not {site!r}: correct from a study of that site"
            ) from None

    def check_model(self, facts: Mapping[str, Any]) -> None:
        """Refuse a model other than the study's: every fact given must equal the study's."""
        for key in MODEL_FACTS:
            if key in facts and key in self.model_info and facts[key] != self.model_info[key]:
                raise InputError(
                    f"the study at {self.root} was made with {self.model_info.get('model')!r} ({key} {self.model_info[key]!r}); "
                    f"this model has {key} {facts[key]!r}: correct from a study of the same model"
                )


def read_stats(root: str | Path) -> CorpusStats:
    """The statistics of the study at ``root`` (cached while its manifest is unchanged)."""
    sd = StudyDir(root)
    manifest = sd.manifest_path
    if not manifest.exists():
        raise InputError(f"{root} holds no study (no manifest.json): run `tokentrail study ... --out {root}` first")
    return _read(str(Path(root).resolve()), manifest.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read(root: str, _mtime: int) -> CorpusStats:
    sd = StudyDir(root)
    m = sd.read_manifest()
    done = sd.done_batches()
    have = (
        {int(g.group(1)) for p in sd.stats.glob("part-*.parquet") if (g := _PART.match(p.name))}
        if sd.stats.exists()
        else set()
    )
    if not done:
        raise InputError(f"the study at {root} has no finished batch yet")
    if not done <= have:
        raise InputError(
            f"the study at {root} has no per-layer statistics for {len(done - have)} of its {len(done)} batches "
            "(written by an older tokentrail): run the study again to correct from it"
        )
    sums: dict[tuple[str, int], list] = {}
    for b in sorted(done):
        t = pq.read_table(sd.stats / f"part-{b:06d}.parquet").to_pydict()
        for site, layer, count, total, squares in zip(t["site"], t["layer"], t["count"], t["sum"], t["sumsq"]):
            e = sums.setdefault((site, int(layer)), [0, 0.0, 0.0])
            e[0] += count
            e[1] = e[1] + np.asarray(total, dtype=np.float64)
            e[2] = e[2] + np.asarray(squares, dtype=np.float64)
    sample = sample_vectors(connect(Path(root)), int(m["sample"]["size"]), embedded=True)
    layers = {}
    for (site, layer), (count, total, squares) in sums.items():
        mean = total / count
        std = np.sqrt(np.clip(squares / count - mean**2, 0.0, None))
        g = sample[(sample.site == site) & (sample.layer == layer)]
        vecs = np.stack(g["vector"].to_numpy()).astype(np.float64) if len(g) else np.zeros((0, mean.shape[0]))
        layers[(site, layer)] = LayerStats(count, mean, std, vecs, g["text_id"].to_numpy())
    opts = m.get("options", {})
    return CorpusStats(root=root, model_info=dict(m.get("model_info", {})), causal=opts.get("causal"), layers=layers)
