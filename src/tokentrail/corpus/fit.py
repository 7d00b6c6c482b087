"""``fit``: a translator fitted exactly from a corpus in one streaming pass (issue 26).

A fit is a study whose parts are sufficient statistics instead of rows: the corpus is
read and batched as a study's (:func:`~tokentrail.corpus.inputs.records`,
:func:`~tokentrail.corpus.inputs.iter_batches`), each batch goes through the model in
forward groups (:func:`~tokentrail.corpus.compute.forward_groups`) and gives float64
running sums per site and layer (:class:`~tokentrail.engine.translator.FitSums`; no
vocabulary product), on the local engine or as tasks on the study's Ray actors. The driver
adds the batches' sums **in batch order** whatever order they finish in, so an
interrupted and resumed run or two Ray workers give the uninterrupted local run's sums bit
for bit; another batch size groups the additions differently (float64 noise). The sums
are checkpointed (``DIR/sums.safetensors``, with the number of batches they hold) every
``checkpoint_s`` seconds and when the run ends or is interrupted; ``resume`` continues
from the checkpoint. The translator is solved once at the end
(:func:`~tokentrail.engine.translator.fit_all`) and saved
(:func:`~tokentrail.store.translators.save_translator`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokentrail.corpus.batches import model_info
from tokentrail.corpus.compute import StudyOptions, forward_groups, sample_key, token_limit
from tokentrail.corpus.inputs import Skipped, count, iter_batches, records
from tokentrail.corpus.ray_engine import RayRunner
from tokentrail.corpus.run import _check_run, _input_identity, _now
from tokentrail.engine.budget import check_fit
from tokentrail.engine.translator import KINDS, FitSums, Sums, Translator, fit_all, translator_from
from tokentrail.session.inputs import MAX_CHARS
from tokentrail.session.models import LoadedModel, load
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import TraceOptions
from tokentrail.spec.version import __version__
from tokentrail.store.translators import load_sums, save_sums, save_translator
from tokentrail.store.writer import StudyDir

FORMAT = "tokentrail-fit/1"
IDENTITY = ("model", "model_revision", "options", "input")  # what a resumed fit must share
Progress = Callable[[int, int, int], None]  # texts, tokens, skipped so far


@dataclass(frozen=True)
class FitOptions:
    """What a fit computes; recorded in its manifest (a resumed fit must match)."""

    kind: str = "identity"
    sites: tuple[str, ...] = ("attn_resid",)
    layers: tuple[int, ...] | None = None  # None: every layer
    ridges: tuple[float, ...] = (1e-3,)
    holdout: float = 0.0  # share of texts held out to choose the ridge (by their sample key)
    special: bool = False  # fit on special tokens ([CLS], <s>, ...) too
    batch: int = 32
    seed: int = 0
    causal: bool | None = None

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "sites": list(self.sites),
            "layers": None if self.layers is None else list(self.layers),
            "ridges": list(self.ridges),
            "holdout": self.holdout,
            "special": self.special,
            "batch": self.batch,
            "seed": self.seed,
            "causal": self.causal,
        }

    def check(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown translator kind {self.kind!r}: choose from {', '.join(KINDS)}")
        if not self.ridges or any(not math.isfinite(r) or r < 0 for r in self.ridges):
            raise InputError(f"--ridge takes finite values of at least 0, not {', '.join(map(str, self.ridges))}")
        if not 0 <= self.holdout < 1:
            raise InputError("--holdout is a share of the texts, at least 0 and below 1")
        if len(self.ridges) > 1 and self.holdout == 0:
            raise InputError("several --ridge values are chosen on held-out texts: give --holdout (e.g. 0.1)")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise InputError("--layers takes layer numbers from 0")


def target_of(acts, kind: str) -> torch.Tensor:
    """(n, d) what a translator of ``kind`` reconstructs: the original encodings (the rows
    ``self_sim`` compares with), or the last layer's residual before any final norm."""
    return acts.embedded if kind == "identity" else acts.layer_out[-1]


@torch.no_grad()
def fit_batch_sums(
    loaded: LoadedModel, batch: list, options: FitOptions, layers: Sequence[int], strict: bool = False
) -> tuple[FitSums, dict[str, Any]]:
    """One batch's sums (its tokens in input order, one float64 product per site and
    layer) and its counts. No vocabulary product: only the forward pass and the sums."""
    tok = loaded.tokenizer
    adapter = loaded.adapter
    skipped = Skipped(strict=strict)
    limit = token_limit(loaded)
    special_ids = set(tok.all_special_ids)
    kept = []
    for rec in batch:
        ids = tok(rec.text, add_special_tokens=True)["input_ids"]
        if len(ids) > limit:
            skipped.add(rec.index, f"over-long (more than {limit} tokens)", rec.text)
            continue
        if not ids:
            skipped.add(rec.index, "empty", rec.text)
            continue
        kept.append((rec, ids))
    trace_options = TraceOptions(
        sites=tuple(options.sites), spaces=("encodings",), similarities=("cosine",), k=1, causal=options.causal
    )
    per_text: list[tuple[bool, dict[str, torch.Tensor], torch.Tensor] | None] = [None] * len(kept)
    for group in forward_groups([len(ids) for _, ids in kept], adapter.n_layers, adapter.n_heads, adapter.d_model):
        runs = loaded.runs([kept[i][0].text for i in group], trace_options)
        for i, run in zip(group, runs):
            rec, ids = kept[i]
            if run.ids.tolist() != list(ids):
                raise RuntimeError(f"text {rec.index}: the run's tokens differ from the tokenizer's")
            mask = torch.tensor([options.special or i not in special_ids for i in ids], dtype=torch.bool)
            acts = run.acts
            held = options.holdout > 0 and sample_key(options.seed, rec.index, -1) < options.holdout
            vecs = {site: acts.site(site)[list(layers)][:, mask].double() for site in options.sites}
            per_text[i] = (held, vecs, target_of(acts, options.kind)[mask].double())
        del runs
    sums = FitSums()
    for part in (False, True):
        texts = [t for t in per_text if t is not None and t[0] == part]
        if not texts:
            continue
        target = torch.cat([t[2] for t in texts])  # input order
        into = sums.held if part else sums.train
        for site in options.sites:
            h = torch.cat([t[1][site] for t in texts], dim=1)  # (L', N, d)
            for j, layer in enumerate(layers):
                into[(site, layer)] = Sums.of(h[j], target)
    meta = {
        "texts": len(kept),
        "tokens": sum(int(t[2].shape[0]) for t in per_text if t is not None),
        "skipped": skipped.as_dict(),
    }
    return sums, meta


def fit_job(loaded, b: int, batch: list, options: FitOptions, sd: StudyDir, *, threshold: float, strict: bool):
    """:func:`fit_batch_sums` as a Ray actor's task: ``(b, counts, sums)`` (nothing written;
    the driver adds and checkpoints). ``threshold`` is the study's sampling threshold, unused."""
    sums, meta = fit_batch_sums(loaded, batch, options, _layers(options, loaded.adapter.n_layers), strict)
    return b, meta, sums


def _layers(options: FitOptions, n_layers: int) -> tuple[int, ...]:
    if options.layers is None:
        return tuple(range(n_layers))
    bad = [layer for layer in options.layers if layer >= n_layers]
    if bad:
        raise InputError(f"the model has layers 0-{n_layers - 1}, not {bad[0]}")
    return tuple(sorted(set(options.layers)))


def fit(
    source: str | Path | Sequence[str],
    model: str = "minilm",
    out: str | Path = "translator",
    *,
    kind: str = "identity",
    sites: Sequence[str] = ("attn_resid",),
    layers: Sequence[int] | None = None,
    ridge: float | Sequence[float] = 1e-3,
    holdout: float = 0.0,
    special: bool = False,
    batch: int = 32,
    limit: int | None = None,
    fmt: str | None = None,
    column: str | None = None,
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
    checkpoint_s: float = 30.0,
    progress: Progress | None = None,
    on_start: Callable[[int | None], None] | None = None,
    on_load: Callable[[str], None] | None = None,
    on_memory: Callable[[int], None] | None = None,
) -> Translator:
    """Fit a translator on a corpus and save it in ``out``; returns it.

    ``kind``: ``identity`` (each site vector -> the token's own original encoding) or
    ``prediction`` (-> the last layer's residual before the final norm: a fitted lens).
    ``ridge``: the relative ridge λ (:mod:`tokentrail.engine.translator`); several values:
    each (site, layer) takes the one with the lowest error on the ``holdout`` share of the
    texts, then is fitted on every text. ``layers``: fit only these (less memory).
    ``on_memory(bytes)`` hears the memory the sums need before the model loads
    (refused when it does not fit). Inputs, engines and ``resume`` as for ``study``.
    """
    ridges = (float(ridge),) if isinstance(ridge, (int, float)) else tuple(float(r) for r in ridge)
    options = FitOptions(
        kind=kind,
        sites=tuple(dict.fromkeys(sites)),
        layers=None if layers is None else tuple(int(x) for x in layers),
        ridges=ridges,
        holdout=float(holdout),
        special=special,
        batch=batch,
        seed=seed,
        causal=causal,
    )
    options.check()
    device = _check_run(StudyOptions(sites=options.sites, batch=batch), device, engine, address, workers, limit)
    if checkpoint_s < 0:
        raise InputError("checkpoint_s must be at least 0")
    fmt, input_id = _input_identity(source, fmt, column, limit, max_chars)
    sd = StudyDir(out)
    with sd.writing(create=not resume):
        old = _check_dir(sd, resume, model, options, input_id)
        # ---- model work starts here ----
        say = on_load or (lambda message: None)
        if engine == "local":
            runner: Any = _Local(model, allow_pickle, device, say)
        else:
            runner = RayRunner(
                model, allow_pickle, options, strict, sd, address=address, workers=workers, device=device, say=say,
                job=fit_job,
            )  # fmt: skip
        try:
            info = runner.info
            fit_layers = _layers(options, info["n_layers"])
            need = check_fit(len(options.sites), len(fit_layers), info["d_model"], options.holdout > 0)
            if on_memory is not None:
                on_memory(need)
            identity = {
                "model": info["model"],
                "model_revision": info["model_revision"],
                "options": options.as_dict(),
                "input": input_id,
            }
            if resume:
                _same_run(sd, old, identity)
            sums, done = load_sums(sd.root) if resume else (FitSums(), 0)
            manifest = {
                "format": FORMAT,
                **identity,
                "model_info": info,
                "tokentrail_version": __version__,
                "created": old.get("created") or _now(),
                "engine": engine,
                "memory_bytes": need,
                "complete": False,
            }
            totals = {k: old.get(k, 0) for k in ("texts", "tokens")} if resume else {"texts": 0, "tokens": 0}
            compute_skipped = Skipped()
            if resume:
                for reason, n in (old.get("compute_skipped") or {}).items():
                    compute_skipped.counts[reason] = n
            sd.write_manifest({**manifest, **totals, "batches_done": done})
            skipped = Skipped(strict=strict)
            stream = iter_batches(
                records(source, fmt=fmt, column=column, skipped=skipped, limit=limit, max_chars=max_chars), batch
            )
            if on_start is not None:
                on_start(count(source, fmt, limit))
            state = _State(sums, done, totals, compute_skipped, skipped, progress)
            started = time.monotonic()
            try:
                numbered = ((b, recs) for b, recs in enumerate(stream) if b >= done)
                last = time.monotonic()
                results = (
                    runner.run(numbered, options, fit_layers, strict)
                    if engine == "local"
                    else runner.run(numbered, _NoSample(), sd)
                )
                for b, meta, part in results:
                    state.arrive(b, meta, part)
                    if time.monotonic() - last >= checkpoint_s:
                        _checkpoint(sd, manifest, state)
                        last = time.monotonic()
                if state.pending:
                    raise RuntimeError(f"batches {sorted(state.pending)} finished but an earlier one never came")
                manifest["complete"] = True
            finally:
                manifest["elapsed_s"] = round(old.get("elapsed_s", 0) + time.monotonic() - started, 2)
                manifest["finished" if manifest["complete"] else "interrupted"] = _now()
                _checkpoint(sd, manifest, state)
        finally:
            runner.close()
        if not any(s.n for s in state.sums.train.values()):
            raise InputError("the corpus gave no tokens to fit on (every text skipped, or only special tokens)")
        fitted = fit_all(state.sums, options.ridges)
        meta = {
            "model": info["model"],
            "model_revision": info["model_revision"],
            "model_info": info,
            "options": options.as_dict(),
            "input": input_id,
            "layers": list(fit_layers),
            "sites": list(options.sites),
            "target": "original encodings (the rows self_sim compares with)"
            if kind == "identity"
            else "last layer's residual before the final norm",
            "ridge_definition": "λ times the mean variance per dimension, tr(C_hh)/d, added to C_hh",
            "fit": {
                f"{site}/{layer}": {
                    "ridge": f.ridge,
                    "tokens": f.n,
                    "held_out_mse": None if f.held_error is None else {str(k): v for k, v in f.held_error.items()},
                }
                for (site, layer), f in fitted.items()
            },
            "texts": state.totals["texts"],
            "tokens": state.totals["tokens"],
            "tokentrail_version": __version__,
            "created": _now(),
        }
        translator = translator_from(fitted, kind, meta)
        save_translator(sd.root, translator)
    return translator


class _State:
    """The running sums of the batches added so far (in batch order), and their counts."""

    def __init__(self, sums: FitSums, done: int, totals: dict, compute_skipped: Skipped, skipped: Skipped, progress):
        self.sums, self.done, self.totals = sums, done, totals
        self.compute_skipped, self.skipped, self.progress = compute_skipped, skipped, progress
        self.pending: dict[int, tuple[dict, FitSums]] = {}
        self.report()

    def arrive(self, b: int, meta: dict, part: FitSums) -> None:
        self.pending[b] = (meta, part)
        while self.done in self.pending:  # add in batch order: the same sums whatever the engine
            meta, part = self.pending.pop(self.done)
            self.sums.add(part)
            self.totals["texts"] += meta["texts"]
            self.totals["tokens"] += meta["tokens"]
            for reason, n in meta["skipped"]["counts"].items():
                self.compute_skipped.counts[reason] = self.compute_skipped.counts.get(reason, 0) + n
            self.done += 1
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.totals["texts"], self.totals["tokens"], self.compute_skipped.total + self.skipped.total)


def _checkpoint(sd: StudyDir, manifest: dict, state: _State) -> None:
    """The sums of the batches added so far, then the manifest that counts them."""
    save_sums(sd.root, state.sums, state.done)
    sd.write_manifest(
        {
            **manifest,
            **state.totals,
            "batches_done": state.done,
            "compute_skipped": dict(state.compute_skipped.counts),
            "skipped_records": dict(state.skipped.counts),
        }
    )


def _check_dir(sd: StudyDir, resume: bool, model: str, options: FitOptions, input_id) -> dict:
    """A new folder, or (``resume``) the manifest of a fit of the same model, options and input."""
    if not resume:
        if sd.exists() or (sd.root / "translator.json").exists():
            raise InputError(f"{sd.root} already holds a fit: pass --resume to continue it, or choose another --out")
        return {}
    old = sd.read_manifest()
    if old.get("format") != FORMAT:
        raise InputError(f"{sd.root} holds no fit (its manifest is {old.get('format')!r})")
    if old.get("model") != model and old.get("model_info", {}).get("model") != model:
        raise InputError(f"cannot resume {sd.root}: it fitted model {old.get('model')!r}, not {model!r}")
    for key, want in (("options", options.as_dict()), ("input", input_id)):
        if old.get(key) != want:
            raise InputError(f"cannot resume {sd.root}: its {key} was {old.get(key)}, this run's is {want}")
    return old


def _same_run(sd: StudyDir, old: dict, identity: dict) -> None:
    for key in IDENTITY:
        if old.get(key) != identity.get(key):
            raise InputError(
                f"cannot resume {sd.root}: its {key} was {old.get(key)!r}, this run's is {identity[key]!r}"
            )


class _NoSample:
    """The sampling threshold a Ray task is given: a fit keeps no sample."""

    def threshold(self) -> float:
        return 0.0


class _Local:
    """Batches computed here, one after another."""

    def __init__(self, model, allow_pickle, device, say):
        self.loaded = load(model, allow_pickle=allow_pickle, device=device, progress=say)
        self.info = model_info(self.loaded)

    def run(self, numbered, options: FitOptions, layers, strict: bool):
        for b, batch in numbered:
            sums, meta = fit_batch_sums(self.loaded, batch, options, layers, strict)
            yield b, meta, sums

    def close(self):
        pass
