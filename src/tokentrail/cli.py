"""The ``tokentrail`` command: a thin layer over the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import TokentrailError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Follow every token's encoding through every layer and head of a transformer, "
    "measured against the model's own vocabulary.",
)
# piped output (a file, a pager) gets wide lines rather than rich's 80-column fallback
out = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

FORMATS = ("table", "csv", "json", "parquet")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def trace(
    text: str = typer.Argument(..., help="The text to trace; '-' reads it from standard input."),
    model: str = typer.Option("minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."),
    token: Optional[str] = typer.Option(None, "--token", "-t", help="Token to follow: its index (0 = first) or its text. Omitted: a grid of all tokens."),
    site: str = typer.Option("attn_resid", help="attn_resid, attn_resid_ln, layer_out, heads; comma-separated or 'all'."),
    space: str = typer.Option("encodings", help="encodings, embeddings (residual sites); value, key, query (heads); or 'all'."),
    similarity: str = typer.Option("cosine", help="cosine, euclidean, or 'all'."),
    k: int = typer.Option(15, "-k", min=1, help="Nearest vocabulary tokens to show per layer."),
    overlap_k: int = typer.Option(100, "--overlap-k", min=1, help="Set size for the layer-to-layer neighbour overlap."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Show only this layer (negative counts from the end)."),
    head: Optional[int] = typer.Option(None, "--head", help="With site heads: show this head's neighbours."),
    lens: bool = typer.Option(False, "--lens", help="Also run the logit lens (the model's own output head on every layer)."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Decoders: keep (default) or disable the causal mask."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet (the tidy frame)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the export here (required for parquet)."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut text longer than the model's positions instead of refusing it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Trace a text: self-similarity, rank and nearest vocabulary tokens per layer."""
    from .api import trace as run_trace
    from .analysis import ALL_SITES, ALL_SPACES, check_options
    from .api import expand_choice
    from .inputs import check_text
    from .metrics import SIMILARITIES
    from .models import load

    if text == "-":
        text = sys.stdin.read()
    fmt = fmt.lower()
    if fmt not in FORMATS:
        _fail(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if fmt == "parquet" and out_path is None:
        _fail("--format parquet needs --out FILE")
    say = (lambda f, m: None) if quiet else (lambda f, m: err.print(f"[dim]… {m}[/]"))
    try:
        check_text(text)  # before the (slow) model load
        check_options(expand_choice(site, ALL_SITES), expand_choice(space, ALL_SPACES), expand_choice(similarity, SIMILARITIES), k, overlap_k)
        if not quiet:
            err.print(f"[dim]… loading {model}[/]")
        loaded = load(model, allow_pickle=allow_pickle, revision=revision, progress=lambda m: say(0, m))
        trail = run_trace(
            text, loaded, site=site, space=space, similarity=similarity, k=k, overlap_k=overlap_k,
            lens=lens, causal=causal, truncate=truncate, progress=say,
        )
        if "truncated_from" in trail.info.options and not quiet:
            err.print(f"[yellow]note:[/] the text was {trail.info.options['truncated_from']} tokens; kept the first {trail.n_tokens} (--truncate)")
        if fmt != "table":
            _export(trail, fmt, out_path)
            return
        from .report import print_report

        print_report(out, trail, token=token, layer=layer, head=head)
    except TokentrailError as exc:
        _fail(str(exc))


def _export(trail, fmt: str, out_path: Path | None) -> None:
    if out_path is None:
        if fmt == "csv":
            trail.frame().to_csv(sys.stdout, index=False)
        else:
            sys.stdout.write(trail.to_json() + "\n")
        return
    if out_path.is_dir():
        _fail(f"--out {out_path} is a folder; give a file name")
    path = trail.export(out_path, fmt)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


@app.command()
def models() -> None:
    """List the models tokentrail can name: bundled, known hub models, and the local hub cache."""
    from .models import list_models

    table = Table("name", "status", "description", box=None, pad_edge=False)
    for row in list_models():
        table.add_row(row["name"], row["status"], row["description"])
    out.print(table)
    out.print("\nAlso accepted: any hub id (owner/name) of a supported architecture, or a local model folder.")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Only this machine by default."),
    port: int = typer.Option(7860, help="Port to listen on."),
    share: bool = typer.Option(False, "--share", help="Create a public Gradio share link (off by default)."),
    model: list[str] = typer.Option([], "--model", "-m", help="Preload a model and offer it in the page (repeatable; hub ids and local folders allowed here, never from the page)."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests waiting at most; beyond it users see a busy message."),
) -> None:
    """Start the web app."""
    try:
        from .app import launch
    except ImportError as exc:
        _fail(f"the web app needs gradio: pip install 'tokentrail[app]' ({exc})")
    try:
        launch(host=host, port=port, share=share, models=list(model) or None, preload=tuple(model), max_queue=max_queue)
    except TokentrailError as exc:
        _fail(str(exc))


@app.command()
def study(
    source: Path = typer.Argument(..., help="The corpus: text (one per line), .conllu (gold word classes), .csv/.tsv or .parquet (with --column)."),
    model: str = typer.Option("minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."),
    out_dir: Path = typer.Option(Path("study"), "--out", "-o", help="Folder for the study (Parquet parts + manifest)."),
    batch: int = typer.Option(32, "--batch", min=1, help="Texts per batch (one Parquet part each)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Study at most this many texts."),
    column: Optional[str] = typer.Option(None, "--column", help="CSV/Parquet: the column holding the texts (default 'text')."),
    site: str = typer.Option("attn_resid", "--site", help="Residual sites, comma-separated: attn_resid, attn_resid_ln, layer_out, or 'all'."),
    overlap_k: int = typer.Option(100, "--overlap-k", min=1, help="Set size for the layer-to-layer neighbour overlap."),
    sample: int = typer.Option(2000, "--sample", min=2, help="Tokens in the corpus anisotropy sample."),
    seed: int = typer.Option(0, "--seed", help="Seed of the anisotropy sample."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Decoders: keep (default) or disable the causal mask."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted study in --out from its last complete batch."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad record (empty, over-long, undecodable) instead of skipping it."),
    engine: str = typer.Option("local", "--engine", help="local, or ray (batches as tasks on actors that hold the model)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: an existing Ray cluster's address (default: start a local one)."),
    workers: int = typer.Option(1, "--workers", min=1, help="With --engine ray and no GPU: CPU actors to start."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Study a corpus: every token x layer x site, written as Parquet while the run goes."""
    from .api import expand_choice
    from .capture import SITES
    from .study import study as run_study

    bar = _StudyProgress(err, quiet)
    try:
        with bar:
            s = run_study(
                source, model, out_dir, sites=expand_choice(site, SITES), batch=batch, limit=limit, column=column,
                overlap_k=overlap_k, sample=sample, seed=seed, causal=causal, resume=resume, strict=strict,
                engine=engine, address=address, workers=workers, allow_pickle=allow_pickle,
                progress=bar.update, on_start=bar.start,
            )
    except TokentrailError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] finished batches are kept in {out_dir}; rerun with --resume to continue")
        raise typer.Exit(130)
    m = s.manifest
    skipped = m.get("skipped", {})
    err.print(f"wrote {out_dir}: {m['texts']:,} texts, {m['tokens']:,} tokens in {m['elapsed_s']} s")
    if skipped.get("total"):
        err.print(f"[yellow]skipped {skipped['total']} records:[/] " + ", ".join(f"{n} {r}" for r, n in skipped["counts"].items()) + f" (samples in {out_dir}/manifest.json)")


class _StudyProgress:
    """A rich progress bar over texts, with tokens/s and ETA (nothing when quiet)."""

    def __init__(self, console, quiet: bool):
        self.quiet = quiet
        self.task = None
        if not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("studying"), BarColumn(), MofNCompleteColumn(), TextColumn("texts"),
                TextColumn("{task.fields[tps]} tokens/s, {task.fields[bad]} skipped"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False,
            )
        self.t0 = None
        self.tokens0 = None

    def __enter__(self):
        if not self.quiet:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)

    def start(self, total):
        import time

        self.t0 = time.monotonic()
        if not self.quiet:
            self.task = self.bar.add_task("study", total=total, tps="-", bad=0)

    def update(self, texts: int, tokens: int, bad: int):
        import time

        if self.quiet or self.task is None:
            return
        if self.tokens0 is None:
            self.tokens0 = tokens  # resumed batches are not this run's speed
            self.t0 = time.monotonic()
        dt = time.monotonic() - self.t0
        tps = f"{(tokens - self.tokens0) / dt:,.0f}" if dt > 0 and tokens > self.tokens0 else "-"
        self.bar.update(self.task, completed=texts + bad, tps=tps, bad=bad)


@app.command()
def report(
    study_dir: Path = typer.Argument(..., help="A study folder written by `tokentrail study`."),
    out_path: Path = typer.Option(Path("study.html"), "--out", "-o", help="The HTML file to write (self-contained, works offline)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write each figure as a PNG into this folder (needs kaleido)."),
) -> None:
    """Render a study's aggregates as one self-contained HTML file (plots, tables, metadata)."""
    from .study import Study

    if out_path.is_dir():
        _fail(f"--out {out_path} is a folder; give a file name")
    try:
        s = Study(study_dir)
        path = s.report(out_path)
        if png is not None:
            from .study.report import write_pngs

            pngs = write_pngs(s, png)
            err.print(f"wrote {len(pngs)} figures into {png}")
    except TokentrailError as exc:
        _fail(str(exc))
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
