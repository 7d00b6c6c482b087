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
def verify(
    model: str = typer.Argument(..., help="Bundled name (see `tokentrail models`), hub id, or local folder."),
    text: str = typer.Option("Time flies like an arrow. Fruit flies like a banana.", "--text", help="The text to run the model on; '-' reads it from standard input."),
    rtol: float = typer.Option(1e-4, "--rtol", help="Relative tolerance (SPEC: 1e-4, fp32)."),
    layer: list[int] = typer.Option([], "--layer", "-l", help="Layers whose value/key/query spaces are checked (repeatable; default: first, middle, last)."),
    sample: int = typer.Option(32, "--sample", help="Vocabulary ids compared row by row in the space checks."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Check every SPEC identity on your model and a text: tokentrail's numbers against the framework's."""
    from .inputs import check_text
    from .models import load
    from .verify import verify as run_verify

    if text == "-":
        text = sys.stdin.read()
    say = (lambda m: None) if quiet else (lambda m: err.print(f"[dim]… {m}[/]"))
    try:
        check_text(text)  # before the (slow) model load
        if not rtol > 0:
            _fail(f"--rtol must be positive, got {rtol}")
        if sample < 1:
            _fail(f"--sample must be at least 1, got {sample}")
        say(f"loading {model}")
        loaded = load(model, allow_pickle=allow_pickle, progress=say)
        result = run_verify(loaded, text, rtol=rtol, layers=list(layer) or None, sample=sample, progress=say)
    except TokentrailError as exc:
        _fail(str(exc))
    table = Table("identity", "result", "max |Δ|", "max rel", "tolerance", "worst at", box=None, pad_edge=False)
    for row in result.rows:
        mark = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "n/a": "[dim]n/a[/]"}[row.status]
        if row.passed is None:
            table.add_row(row.identity, mark, "", "", "", row.note)
        else:
            table.add_row(row.identity, mark, f"{row.max_abs:.2e}", f"{row.max_rel:.2e}", f"rtol {row.rtol:.0e}, atol {row.atol:.2e}", row.where)
    out.print(f"{result.model} ({result.family}), {result.n_tokens} tokens, {'causal' if result.causal else 'no'} mask")
    out.print(table)
    if result.passed:
        out.print(f"[green]all {sum(r.passed is True for r in result.rows)} identities hold[/]")
        return
    names = ", ".join(r.identity for r in result.failed)
    out.print(f"[bold red]{len(result.failed)} identit{'y' if len(result.failed) == 1 else 'ies'} failed:[/] {names}")
    raise typer.Exit(1)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
