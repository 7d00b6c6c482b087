"""The compute step of a study, in one function: a batch of records -> token rows.

:func:`compute_batch` is the only place a study touches the model: the batch's texts go
through one padded forward pass (:meth:`tokentrail.session.models.LoadedModel.runs`) and are
scored against the vocabulary together (:func:`tokentrail.session.runner.trail_many`), which gives
each text exactly what it gets alone (SPEC "Batches"); the same pass gives the site
vectors for the norm column and the anisotropy sample.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tokentrail.analysis.translated import check_layers, translated_name
from tokentrail.corpus.inputs import Record, Skipped
from tokentrail.corpus.wordclass import align
from tokentrail.engine.budget import estimate_capture
from tokentrail.engine.cells import CELL_METRICS
from tokentrail.engine.translator import Translator
from tokentrail.session.inputs import MAX_TOKENS, readable_tokens
from tokentrail.session.models import LoadedModel
from tokentrail.session.runner import trail_many
from tokentrail.session.translating import model_facts_of, translate
from tokentrail.spec.options import TraceOptions
from tokentrail.store.schema import EMBEDDED, SAMPLE_SCHEMA, STATS_SCHEMA, token_schema
from tokentrail.store.translators import check_identity, load_translator


@dataclass(frozen=True)
class StudyOptions:
    """What a study computes; recorded in its manifest (a resumed run must match)."""

    sites: tuple[str, ...] = ("attn_resid",)
    overlap_k: int | None = None  # None: 100, or the vocabulary if smaller (as a trace)
    batch: int = 32
    sample: int = 2000  # tokens in the corpus anisotropy sample
    seed: int = 0
    causal: bool | None = None
    translator: str | None = None  # an identity translator's folder: its <site>_translated rows too (issue 26)

    def as_dict(self) -> dict:
        extra = {} if self.translator is None else {"translator": self.translator}
        return {
            **extra,
            "sites": list(self.sites),
            "overlap_k": self.overlap_k,
            "batch": self.batch,
            "sample": self.sample,
            "seed": self.seed,
            "causal": self.causal,
            "space": "encodings",
            "similarity": "cosine",
        }


@dataclass
class BatchResult:
    tokens: pa.Table  # token_schema()
    sample: pa.Table  # SAMPLE_SCHEMA
    stats: pa.Table  # STATS_SCHEMA: every token of the batch, per site and layer
    n_texts: int
    n_tokens: int
    skipped: Skipped = field(default_factory=Skipped)


def sample_key(seed: int, text_id: int, position: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, text, position): the same token gets
    the same key in any run, batch size or engine, so the sample is reproducible."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, text_id, position), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def token_limit(loaded: LoadedModel) -> int:
    return min(loaded.adapter.max_tokens or MAX_TOKENS, MAX_TOKENS)


FORWARD_BYTES = 32 << 20  # activation bytes of one forward group (budget.estimate's formula)


def forward_groups(
    lengths: list[int], layers: int, heads: int, d_model: int, budget: int | None = None
) -> list[list[int]]:
    """The texts of a batch (by index) in forward-pass groups of similar length whose
    padded activations stay under ``budget`` bytes: what a batch holds at once is then
    bounded by the budget, not by how many texts it has or how long its longest one is
    (a long text no longer pads 31 short ones). Shortest texts first; a text over the
    budget on its own gets a group of its own."""
    budget = FORWARD_BYTES if budget is None else budget
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    group: list[int] = []
    for i in order:
        padded = lengths[i]  # sorted: the newest text is the longest of its group
        cost = (len(group) + 1) * activation_bytes(padded, layers, heads, d_model)
        if group and cost > budget:
            groups.append(group)
            group = []
        group.append(i)
    if group:
        groups.append(group)
    return groups


def activation_bytes(tokens: int, layers: int, heads: int, d_model: int) -> int:
    """One text's captured activations (attention maps and hooked vectors), as
    :func:`tokentrail.engine.budget.estimate` counts them."""
    return estimate_capture(tokens=tokens, layers=layers, heads=heads, d_model=d_model).activations


@torch.no_grad()
def compute_batch(
    loaded: LoadedModel, batch: list[Record], options: StudyOptions, *, threshold: float = 1.0, strict: bool = False
) -> BatchResult:
    """Token rows (one per token x layer x site) and the anisotropy sample candidates of
    one batch: tokens whose key is below ``threshold``, at most ``options.sample``."""
    adapter, tok = loaded.adapter, loaded.tokenizer
    skipped = Skipped(strict=strict)
    limit = token_limit(loaded)
    special_ids = set(tok.all_special_ids)
    kept = []  # (record, ids, word classes) of the texts the model will see
    for rec in batch:
        enc = tok(rec.text, add_special_tokens=True, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if len(ids) > limit:
            skipped.add(rec.index, f"over-long (more than {limit} tokens)", rec.text)
            continue
        if not ids:
            skipped.add(rec.index, "empty", rec.text)
            continue
        special = [i in special_ids for i in ids]
        classes = align(rec.text, enc["offset_mapping"], special, list(rec.words) if rec.words is not None else None)
        kept.append((rec, ids, classes))
    trace_options = TraceOptions(
        sites=tuple(options.sites),
        spaces=("encodings",),
        similarities=("cosine",),
        k=1,
        overlap_k=options.overlap_k,
        causal=options.causal,
    )
    translator = None if options.translator is None else study_translator(options.translator, model_facts_of(loaded))
    rows: list[dict | None] = [None] * len(kept)
    sums: dict[tuple[str, int], list] = {}  # (site, layer) -> [count, sum (d,), sum of squares (d,)], float64
    for group in forward_groups([len(ids) for _, ids, _ in kept], adapter.n_layers, adapter.n_heads, adapter.d_model):
        # one padded forward pass per group and its tokens scored against the vocabulary
        # together: per text exactly what it gets alone (SPEC "Batches"). The group's
        # activations are dropped before the next group runs.
        runs = loaded.runs([kept[i][0].text for i in group], trace_options)
        for i, run, trail in zip(group, runs, trail_many(runs)):
            if translator is not None:
                trail = translate(run, trail, translator)
            rows[i] = _text_rows(*kept[i], run, trail, options, threshold, tok, translator)
        del runs
    cols = {name: [part for r in rows for part in r["cols"][name]] for name in token_schema().names}  # input order
    for r in rows:  # each text's sums added in input order: the same float64 sums as text by text
        for key, (count, total, squares) in r["sums"].items():
            entry = sums.setdefault(key, [0, 0.0, 0.0])
            entry[0] += count
            entry[1] = entry[1] + total
            entry[2] = entry[2] + squares
    candidates = sorted((c for r in rows for c in r["candidates"]), key=lambda c: c[0])
    n_tokens = sum(len(ids) for _, ids, _ in kept)
    result = BatchResult(
        _table(cols),
        _sample_table(candidates[: options.sample], options.sites),
        _stats_table(sums),
        len(kept),
        n_tokens,
        skipped,
    )
    del rows, cols, candidates
    release_freed_memory()
    return result


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to trim
        return None


def release_freed_memory() -> None:
    """Hand the heap memory a batch freed back to the OS (glibc ``malloc_trim``).

    glibc keeps freed blocks below its (self-raising) mmap threshold in the heap; batch
    after batch of differently shaped temporaries fragments it, and the process's
    resident size creeps up although nothing is kept. A no-op where there is no glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=2)
def _translator(root: str, facts: tuple) -> Translator:
    return load_translator(root, dict(facts))


def study_translator(root: str, facts: dict) -> Translator:
    """The identity translator a study adds rows of (loaded once per process), checked
    against the model; a prediction translator is refused (it has no views)."""
    t = _translator(root, tuple(sorted(facts.items())))
    check_identity(t, root)
    check_layers(t, int(facts["n_layers"]))
    return t


def _text_rows(
    rec: Record, ids: list[int], classes, run, trail, options: StudyOptions, threshold: float, tok, translator=None
) -> dict:
    """One text's token columns (per site, layer-major), its sample candidates and its
    per-layer count, sum and sum of squares of every site (and the encodings)."""
    if run.ids.tolist() != list(ids):
        raise RuntimeError(f"text {rec.index}: the run's tokens differ from the aligned ones")
    acts = run.acts
    L, n = acts.layer_out.shape[0], len(ids)
    token_strs = np.array(readable_tokens(tok, ids), dtype=object)
    words = [c.word for c in classes]
    cols: dict[str, list] = {name: [] for name in token_schema().names}
    sums: dict[tuple[str, int], list] = {}
    _add_stats(sums, EMBEDDED, acts.embedded[None])
    extra = () if translator is None else tuple(translated_name(s) for s in translator.sites)
    for site in (*options.sites, *extra):
        v = trail.view(site, "encodings", "cosine")
        if site in extra:  # a translated site: its vectors for the norm column; no statistics
            base = site[: -len("_translated")]
            vecs = translator.apply(base, acts.site(base))
        else:
            vecs = acts.site(site)  # (L, n, d)
            _add_stats(sums, site, vecs)
        repeat = lambda xs: np.tile(np.asarray(xs), L)  # noqa: E731 - token columns, layer-major
        cols["text_id"].append(np.full(L * n, rec.index, dtype=np.int64))
        cols["position"].append(repeat(np.arange(n, dtype=np.int32)))
        cols["token_id"].append(repeat(np.asarray(ids, dtype=np.int64)))
        cols["token"].append(repeat(token_strs))
        cols["word_class"].append(repeat(np.array([c.word_class for c in classes], dtype=object)))
        cols["upos"].append(repeat(np.array([c.upos for c in classes], dtype=object)))
        cols["first_subword"].append(repeat(np.array([c.first_subword for c in classes], dtype=bool)))
        cols["word"].append(repeat(np.asarray(words, dtype=np.int32)))
        cols["layer"].append(np.repeat(np.arange(L, dtype=np.int16), n))
        cols["site"].append(np.full(L * n, site, dtype=object))
        for name, m in CELL_METRICS.items():  # every registered metric, as the study stores it
            cols[name].append(v.metric(name).reshape(-1).astype(m.dtype))
        cols["norm"].append(vecs.norm(dim=-1).reshape(-1).cpu().numpy().astype(np.float32))
        cols["top1_id"].append(v.top_ids[..., 0].reshape(-1).astype(np.int64))
    candidates = []
    stacked = None
    for p in range(n):
        key = sample_key(options.seed, rec.index, p)
        if key < threshold:
            if stacked is None:
                stacked = torch.stack([acts.site(s) for s in options.sites]).cpu().numpy()  # (S, L, n, d)
            candidates.append(
                (
                    key,
                    rec.index,
                    p,
                    classes[p].word_class,
                    stacked[:, :, p].copy(),
                    acts.embedded[p].cpu().numpy().copy(),
                )
            )
    return {"cols": cols, "candidates": candidates, "sums": sums}


def _add_stats(sums: dict, site: str, vecs: torch.Tensor) -> None:
    """Add (L, n, d) vectors to the running per-layer count, sum and sum of squares."""
    v = vecs.detach().double().cpu()
    for layer in range(v.shape[0]):
        entry = sums.setdefault((site, layer), [0, 0.0, 0.0])
        entry[0] += v.shape[1]
        entry[1] = entry[1] + v[layer].sum(0).numpy()
        entry[2] = entry[2] + v[layer].pow(2).sum(0).numpy()


def _stats_table(sums: dict) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name in STATS_SCHEMA.names}
    for (site, layer), (count, total, squares) in sorted(sums.items()):
        rows["site"].append(site)
        rows["layer"].append(layer)
        rows["count"].append(count)
        rows["sum"].append(np.asarray(total, dtype=np.float64))
        rows["sumsq"].append(np.asarray(squares, dtype=np.float64))
    return pa.Table.from_pydict(rows, schema=STATS_SCHEMA)


def _table(cols: dict[str, list]) -> pa.Table:
    arrays, schema = [], token_schema()
    for f in schema:
        parts = cols[f.name]
        values = np.concatenate(parts) if parts else np.array([], dtype=object if pa.types.is_string(f.type) else None)
        arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _sample_table(candidates, sites) -> pa.Table:
    rows: dict[str, list[Any]] = {name: [] for name in SAMPLE_SCHEMA.names}
    for key, text_id, position, word_class, vecs, emb in candidates:  # vecs (S, L, d), emb (d,)
        at = [(EMBEDDED, 0, emb)] + [
            (site, layer, vecs[s, layer]) for s, site in enumerate(sites) for layer in range(vecs.shape[1])
        ]
        for site, layer, vec in at:
            rows["text_id"].append(text_id)
            rows["position"].append(position)
            rows["key"].append(key)
            rows["word_class"].append(word_class)
            rows["site"].append(site)
            rows["layer"].append(layer)
            rows["vector"].append(vec.astype(np.float32))
    return pa.Table.from_pydict(rows, schema=SAMPLE_SCHEMA)
