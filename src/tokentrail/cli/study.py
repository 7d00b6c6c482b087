"""``tokentrail study`` (a corpus through one model, written as Parquet while it runs) and
``tokentrail report`` (a study as one HTML file)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import tokentrail as tt
from tokentrail.cli.common import err, fail, one_line
from tokentrail.present.progress import TerminalProgress
from tokentrail.spec.errors import TokentrailError
from tokentrail.spec.fileio import CORPUS_FILES, check_input_file
from tokentrail.spec.options import RESIDUAL_SITES, expand_choice


def study(
    source: Path = typer.Argument(
        ..., help="The corpus: text (one per line), .conllu (gold word classes), .csv/.tsv or .parquet (with --column)."
    ),
    model: str = typer.Option(
        "minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."
    ),
    out_dir: Path = typer.Option(Path("study"), "--out", "-o", help="Folder for the study (Parquet parts + manifest)."),
    batch: int = typer.Option(32, "--batch", min=1, help="Texts per batch (one Parquet part each)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Study at most this many texts."),
    column: str | None = typer.Option(
        None, "--column", help="CSV/Parquet: the column holding the texts (default 'text')."
    ),
    site: str = typer.Option(
        "attn_resid",
        "--site",
        help="Residual sites, comma-separated: resid_pre, attn_resid, attn_resid_ln, layer_out, mlp_out, or 'all'.",
    ),
    overlap_k: int | None = typer.Option(
        None,
        "--overlap-k",
        min=1,
        help="Set size for the layer-to-layer neighbour overlap: default 100 (or the vocabulary size, if smaller).",
    ),
    sample: int = typer.Option(2000, "--sample", min=2, help="Tokens in the corpus anisotropy sample."),
    seed: int = typer.Option(0, "--seed", help="Seed of the anisotropy sample."),
    causal: bool | None = typer.Option(
        None, "--causal/--no-causal", help="Decoders: keep (default) or disable the causal mask."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted study in --out from its last complete batch."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first bad record (empty, over-long, undecodable) instead of skipping it."
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local, or ray (batches as tasks on actors that hold the model)."
    ),
    address: str | None = typer.Option(
        None, "--address", help="With --engine ray: an existing Ray cluster's address (default: start a local one)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="With --engine ray and no GPU: CPU actors to start."),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="cpu, cuda, mps or auto (a GPU if there is one); with --engine ray, each GPU gets an actor.",
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."
    ),
    frequencies: Path | None = typer.Option(
        None,
        "--frequencies",
        help="TOKEN<TAB>COUNT file (tokens as the tokenizer spells them, or #ID) for the freq_rank column; default: rank by count in this corpus.",
    ),
    translator: Path | None = typer.Option(
        None,
        "--translator",
        help="An identity translator of this model (the folder `tokentrail fit` wrote): its <site>_translated rows are studied too.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Study a corpus: every token x layer x site, written as Parquet while the run goes."""
    bar = _StudyProgress(err, quiet)
    try:
        check_input_file(source, CORPUS_FILES)  # before the study's machinery (torch) is imported
        with bar:
            s = tt.study(
                source,
                model,
                out_dir,
                sites=expand_choice(site, RESIDUAL_SITES),
                batch=batch,
                limit=limit,
                column=column,
                overlap_k=overlap_k,
                sample=sample,
                seed=seed,
                causal=causal,
                resume=resume,
                strict=strict,
                engine=engine,
                address=address,
                workers=workers,
                allow_pickle=allow_pickle,
                device=device,
                frequencies=frequencies,
                translator=translator,
                progress=bar.update,
                on_start=bar.start,
                on_load=bar.loading,
            )
    except (TokentrailError, OSError) as exc:  # ours, and what the checks could not foresee: one line
        one_line(exc)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] finished batches are kept in {out_dir}; rerun with --resume to continue")
        raise typer.Exit(130) from None
    m = s.manifest
    skipped = m.get("skipped", {})
    err.print(f"wrote {out_dir}: {m['texts']:,} texts, {m['tokens']:,} tokens in {m['elapsed_s']} s")
    if skipped.get("total"):
        err.print(
            f"[yellow]skipped {skipped['total']} records:[/] "
            + ", ".join(f"{n} {r}" for r, n in skipped["counts"].items())
            + f" (samples in {out_dir}/manifest.json)"
        )


class _StudyProgress:
    """What loads (the model, Ray's workers: lines like the trace command's), then a rich
    progress bar over texts, with tokens/s and ETA; nothing when quiet. Both come once
    the inputs are checked: an input refused before then leaves its one error line alone
    on stderr."""

    def __init__(self, console, quiet: bool, verb: str = "studying"):
        self.console = console
        self.quiet = quiet
        self.task = None  # the bar's task, once it is drawn
        self.loader: TerminalProgress | None = None  # while the model loads
        if not quiet:
            self.bar = Progress(
                TextColumn(verb),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("texts"),
                TextColumn("{task.fields[tps]} tokens/s, {task.fields[bad]} skipped"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
        self.t0 = None
        self.tokens0 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._loaded()
        if self.task is not None:
            self.bar.__exit__(*exc)

    def loading(self, message: str) -> None:
        if self.quiet:
            return
        if self.loader is None:
            self.loader = TerminalProgress(self.console).__enter__()
        self.loader.loading(message)

    def _loaded(self) -> None:
        if self.loader is not None:
            self.loader.__exit__(None, None, None)
            self.loader = None

    def start(self, total):
        self._loaded()
        self.t0 = time.monotonic()
        if not self.quiet:
            self.bar.__enter__()
            self.task = self.bar.add_task("study", total=total, tps="-", bad=0)

    def update(self, texts: int, tokens: int, bad: int):
        if self.quiet or self.task is None:
            return
        if self.tokens0 is None:
            self.tokens0 = tokens  # resumed batches are not this run's speed
            self.t0 = time.monotonic()
        dt = time.monotonic() - self.t0
        tps = f"{(tokens - self.tokens0) / dt:,.0f}" if dt > 0 and tokens > self.tokens0 else "-"
        self.bar.update(self.task, completed=texts + bad, tps=tps, bad=bad)


def report(
    study_dir: Path = typer.Argument(..., help="A study folder written by `tokentrail study`."),
    out_path: Path = typer.Option(
        Path("study.html"), "--out", "-o", help="The HTML file to write (self-contained, works offline)."
    ),
    png: Path | None = typer.Option(
        None, "--png", help="Also write each figure as a PNG into this folder (needs kaleido)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Render a study's aggregates as one self-contained HTML file (plots, tables, metadata)."""
    if out_path.is_dir():
        fail(f"--out {out_path} is a folder; give a file name")
    try:
        s = tt.Study(study_dir)  # its manifest only
        path = s.report(out_path, force=force)  # checked before anything is rendered
        if png is not None:
            pngs = tt.write_study_pngs(s, png)
            err.print(f"wrote {len(pngs)} figures into {png}")
    except TokentrailError as exc:
        fail(str(exc))
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
