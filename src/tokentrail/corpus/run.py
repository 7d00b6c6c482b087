"""Running a study: stream the corpus in batches, compute each, write it, record it.

The engines differ only in where :func:`~tokentrail.corpus.batches.run_batch` (compute,
tag, write, record) runs: ``local`` runs it here, one batch after another; ``ray``
(:mod:`.ray_engine`) sends batches as tasks to actors that hold the model and write
their own parts. The driver
alone reads the input, forms the batches and writes the manifest, so both engines write
the same files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tokentrail.corpus.batches import model_info, read_batch_meta, run_batch
from tokentrail.corpus.compute import StudyOptions
from tokentrail.corpus.dataset import Study
from tokentrail.corpus.inputs import (
    SAMPLES_KEPT,
    Skipped,
    check_source,
    count,
    file_hash,
    iter_batches,
    records,
    texts_hash,
)
from tokentrail.corpus.ray_engine import RayRunner
from tokentrail.session.inputs import MAX_CHARS
from tokentrail.session.models import load, local_revision, resolve_device
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import RESIDUAL_SITES as SITES
from tokentrail.spec.version import __version__
from tokentrail.store import frequencies as freq
from tokentrail.store.translators import check_identity, load_translator
from tokentrail.store.translators import check_model as check_translator_model
from tokentrail.store.writer import FORMAT, Reservoir, StudyDir, atomic_write_table

ENGINES = ("local", "ray")

# what a progress display is told after each batch: texts, tokens, skipped records so far
Progress = Callable[[int, int, int], None]


def check_options(options: StudyOptions) -> None:
    if not options.sites:
        raise InputError("choose at least one site")
    for s in options.sites:
        if s not in SITES:
            raise InputError(f"a study takes residual-stream sites ({', '.join(SITES)}), not {s!r}")
    if options.batch < 1:
        raise InputError("--batch must be at least 1")
    if options.overlap_k is not None and options.overlap_k < 1:
        raise InputError("--overlap-k must be at least 1")
    if options.sample < 2:
        raise InputError("--sample must be at least 2 (the anisotropy baseline needs pairs)")


def study(
    source: str | Path | Sequence[str],
    model: str = "minilm",
    out: str | Path = "study",
    *,
    sites: Sequence[str] = ("attn_resid",),
    batch: int = 32,
    limit: int | None = None,
    fmt: str | None = None,
    column: str | None = None,
    overlap_k: int | None = None,
    sample: int = 2000,
    seed: int = 0,
    causal: bool | None = None,
    resume: bool = False,
    strict: bool = False,
    engine: str = "local",
    address: str | None = None,
    workers: int = 1,
    allow_pickle: bool = False,
    device: str | None = None,
    max_chars: int = MAX_CHARS,
    frequencies: str | Path | None = None,
    translator: str | Path | None = None,
    progress: Progress | None = None,
    on_start: Callable[[int | None], None] | None = None,
    on_load: Callable[[str], None] | None = None,
):
    """Run a corpus study and return a :class:`~tokentrail.corpus.dataset.Study` handle.

    ``source``: a file (plain text one per line, ``.conllu``, ``.csv``/``.tsv``,
    ``.parquet`` with ``column``) or a list of texts. Results go to ``out`` as Parquet
    parts while the run goes; ``resume=True`` continues an interrupted run there.
    ``frequencies``: a ``TOKEN<TAB>COUNT`` file for ``freq_rank``
    (:mod:`tokentrail.store.frequencies`); without one, ``freq_rank`` is the rank by
    count in the study's own corpus. ``on_load(message)`` hears what is loading once the
    inputs are checked (``models.load``'s progress messages; with Ray, the workers'
    start), ``on_start(total texts or None)`` when the texts start, ``progress`` after
    each batch. ``translator``: the folder of an identity translator of this model
    (``tokentrail fit``): its ``<site>_translated`` rows are studied too.
    """
    options = StudyOptions(
        sites=tuple(dict.fromkeys(sites)),
        overlap_k=overlap_k,
        batch=batch,
        sample=sample,
        seed=seed,
        causal=causal,
        translator=None if translator is None else str(Path(translator).resolve()),
    )
    fitted = None if translator is None else load_translator(translator)  # its files, before the model
    if fitted is not None:
        check_identity(fitted, translator)
    device = _check_run(options, device, engine, address, workers, limit)
    fmt, input_id = _input_identity(source, fmt, column, limit, max_chars)
    counts = None if frequencies is None else freq.read_frequencies(frequencies)
    freq_id = None if frequencies is None else freq.file_identity(frequencies)
    sd = StudyDir(out)
    with sd.writing(create=not resume):  # one writer at a time: held until the run ends
        _check_dir(sd, resume, model, options, input_id, freq_id)

        # ---- model work starts here ----
        runner = _runner(engine, model, allow_pickle, options, strict, sd, address, workers, device, on_load)
        try:
            if fitted is not None:
                check_translator_model(fitted.meta, runner.info, translator)
            manifest, done, reservoir = _begin(runner, sd, model, engine, options, input_id, freq_id, counts, resume)
            skipped = Skipped(strict=strict)
            stream = iter_batches(
                records(source, fmt=fmt, column=column, skipped=skipped, limit=limit, max_chars=max_chars), batch
            )
            if on_start is not None:
                on_start(count(source, fmt, limit))
            _run_batches(runner, sd, manifest, stream, done, reservoir, skipped, progress)
        finally:
            runner.close()
    return Study(sd.root)


def _check_run(
    options: StudyOptions, device: str | None, engine: str, address: str | None, workers: int, limit: int | None
) -> str | None:
    """Check the study's options and where it runs; the device resolved."""
    check_options(options)
    if device is not None:
        device = resolve_device(device)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
    if address and engine != "ray":
        raise InputError("--address is for --engine ray")
    if workers < 1:
        raise InputError("--workers must be at least 1")
    if limit is not None and limit < 1:
        raise InputError("--limit must be at least 1")
    return device


def _input_identity(
    source: str | Path | Sequence[str], fmt: str | None, column: str | None, limit: int | None, max_chars: int
) -> tuple[str | None, dict[str, Any]]:
    """The input's format (checked) and identity (what a resumed run must match)."""
    if isinstance(source, (str, Path)):
        fmt = check_source(source, fmt, column)
        input_id = {
            "name": Path(source).name,
            "format": fmt,
            "column": column,
            "limit": limit,
            "max_chars": max_chars,
            "sha256": file_hash(source),
        }
    else:
        if isinstance(source, str) or not hasattr(source, "__len__"):
            raise InputError("texts must be a file path or a list of strings")
        input_id = {
            "name": "<texts>",
            "format": "texts",
            "column": None,
            "limit": limit,
            "max_chars": max_chars,
            "sha256": texts_hash(source),
        }
    return fmt, input_id


def _check_dir(sd: StudyDir, resume: bool, model: str, options: StudyOptions, input_id, freq_id) -> None:
    """The output folder (its lock held), checked: new, or (``resume``) a run of the same
    model, options and input."""
    if resume:
        old = sd.read_manifest()
        if old.get("model") != model:
            raise InputError(f"cannot resume {sd.root}: it studied model {old.get('model')!r}, not {model!r}")
        revision = local_revision(model)  # a local folder's files, hashed before the model loads
        if revision is not None and old.get("model_revision") != revision:
            raise InputError(
                f"cannot resume {sd.root}: the files of the model folder {model} changed since the study began "
                f"(they hash to {revision[:23]}…, the study's model to {str(old.get('model_revision'))[:23]}…); "
                "restore them or start a new study"
            )
        for key, want in (("options", options.as_dict()), ("input", input_id), ("frequencies", freq_id)):
            if old.get(key) != want:
                sd.check_resume(
                    {
                        "model": old.get("model"),
                        "model_revision": old.get("model_revision"),
                        "options": options.as_dict(),
                        "input": input_id,
                        "frequencies": freq_id,
                    }
                )
    else:
        sd.check_new()


def _runner(engine, model, allow_pickle, options, strict, sd, address, workers, device, on_load):
    say = on_load or (lambda message: None)
    if engine == "local":
        return _local_runner(model, allow_pickle, options, strict, device, say)
    return _ray_runner(model, allow_pickle, options, strict, sd, address, workers, device, say)


def _begin(
    runner, sd: StudyDir, model: str, engine: str, options: StudyOptions, input_id, freq_id, counts, resume: bool
) -> tuple[dict[str, Any], set[int], Reservoir]:
    """The run's manifest written (not yet complete), the batches finished before, and the
    sample's reservoir with the keys kept so far."""
    info = runner.info
    if not info["fast_tokenizer"]:
        raise ModelError(
            f"{model}'s tokenizer gives no character offsets (not a fast tokenizer); a study needs them to align words"
        )
    identity = {
        "model": info["model"],
        "model_revision": info["model_revision"],
        "options": options.as_dict(),
        "input": input_id,
        "frequencies": freq_id,
    }
    manifest = sd.check_resume(identity) if resume else {}
    sd.root.mkdir(parents=True, exist_ok=True)
    sd.prepare()
    done = sd.done_batches()
    freq_rank: dict[str, Any] = {"source": "corpus", "definition": freq.CORPUS_NOTE}
    if counts is not None:
        table, matched = freq.match_vocabulary(counts, runner.vocab(), freq_id["name"])
        atomic_write_table(sd.root / freq.FILE_NAME, table)
        freq_rank = {"source": "file", "definition": freq.FILE_NOTE.format(name=freq_id["name"]), **matched}
    manifest = {
        "format": FORMAT,
        **identity,
        "model_info": info,
        "tokentrail_version": __version__,
        "created": manifest.get("created") or _now(),
        "engine": engine,
        "freq_rank": freq_rank,
        "sample": {
            "size": options.sample,
            "seed": options.seed,
            "selection": "tokens with the smallest blake2b(seed, text_id, position) keys",
        },
        "complete": False,
    }
    sd.write_manifest(manifest)
    return manifest, done, Reservoir(options.sample, sd.sample_keys())


def _run_batches(
    runner,
    sd: StudyDir,
    manifest: dict[str, Any],
    stream,
    done: set[int],
    reservoir: Reservoir,
    skipped: Skipped,
    progress: Progress | None,
) -> None:
    """Run the batches not finished before, recording totals in the manifest after each
    and, finished or interrupted, at the end."""
    started = time.monotonic()
    tally = _Tally(progress)
    for b in sorted(done):  # counts of batches finished before: kept in their own parts
        tally.add(read_batch_meta(sd, b), skipped, quiet=True)
    tally.report(skipped)
    try:
        for _b, meta, keys in runner.run(_numbered(stream, done, tally, skipped), reservoir, sd):
            for k in keys:
                reservoir.add(k)
            tally.add(meta, skipped)
            tally.record(manifest, skipped)
            sd.write_manifest(manifest)
        manifest["complete"] = True
    finally:
        tally.record(manifest, skipped)
        manifest["elapsed_s"] = round(manifest.get("elapsed_s", 0) + time.monotonic() - started, 2)
        manifest["finished" if manifest["complete"] else "interrupted"] = _now()
        sd.write_manifest(manifest)


class _Tally:
    """Running totals of the finished batches (the manifest holds totals, not a list of
    batches, so writing it costs the same at batch 10 and batch 100,000)."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.batches = self.texts = self.tokens = 0
        self.counts: dict[str, int] = {}
        self.samples: list[dict] = []

    def add(self, meta, skipped: Skipped, quiet: bool = False) -> None:
        self.batches += 1
        self.texts += meta["texts"]
        self.tokens += meta["tokens"]
        for reason, n in meta["skipped"]["counts"].items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        self.samples = _first_per_reason(self.samples + meta["skipped"]["samples"])
        if not quiet:
            self.report(skipped)

    def report(self, skipped: Skipped) -> None:
        if self.progress is not None:
            self.progress(self.texts, self.tokens, sum(self.counts.values()) + skipped.total)

    def record(self, manifest: dict, skipped: Skipped) -> None:
        counts = dict(skipped.counts)
        for reason, n in self.counts.items():
            counts[reason] = counts.get(reason, 0) + n
        manifest["batches_done"] = self.batches
        manifest["texts"] = self.texts
        manifest["tokens"] = self.tokens
        manifest["skipped"] = {
            "total": sum(counts.values()),
            "counts": counts,
            "samples": _first_per_reason(self.samples + skipped.samples),
        }


def _first_per_reason(samples: list[dict]) -> list[dict]:
    """The first few skipped records of each reason, by record number (so the log does
    not depend on the order batches finish in)."""
    per_reason: dict[str, int] = {}
    kept = []
    for s in sorted(samples, key=lambda s: s["record"]):
        per_reason[s["reason"]] = per_reason.get(s["reason"], 0) + 1
        if per_reason[s["reason"]] <= SAMPLES_KEPT:
            kept.append(s)
    return kept


def _numbered(stream, done: set[int], tally: _Tally, skipped: Skipped) -> Iterator[tuple[int, list]]:
    for b, records_ in enumerate(stream):
        if b in done:
            tally.report(skipped)  # finished before: nothing to run
            continue
        yield b, records_


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _local_runner:
    """Batches computed here, one after another."""

    def __init__(self, model, allow_pickle, options, strict, device, say):
        self.loaded = load(model, allow_pickle=allow_pickle, device=device, progress=say)
        self.options, self.strict = options, strict
        self.info = model_info(self.loaded)

    def vocab(self) -> dict[str, int]:
        return self.loaded.tokenizer.get_vocab()

    def run(self, numbered, reservoir: Reservoir, sd: StudyDir):
        for b, batch in numbered:
            yield run_batch(
                self.loaded, b, batch, self.options, sd, threshold=reservoir.threshold(), strict=self.strict
            )

    def close(self):
        pass


def _ray_runner(model, allow_pickle, options, strict, sd, address, workers, device, say):
    return RayRunner(model, allow_pickle, options, strict, sd, address=address, workers=workers, device=device, say=say)
