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
    site: str = typer.Option("attn_resid", help="attn_resid, attn_resid_ln, layer_out, resid_pre (the layer's input), mlp_out (the FFN's output), heads; comma-separated or 'all'."),
    space: str = typer.Option("encodings", help="encodings, embeddings (residual sites); value, key, query (heads); or 'all'."),
    similarity: str = typer.Option("cosine", help="cosine, euclidean, or 'all'."),
    k: int = typer.Option(15, "-k", min=1, help="Nearest vocabulary tokens to show per layer."),
    overlap_k: int = typer.Option(100, "--overlap-k", min=1, help="Set size for the layer-to-layer neighbour overlap."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Show only this layer (negative counts from the end)."),
    head: Optional[int] = typer.Option(None, "--head", help="With site heads: show this head's neighbours."),
    lens: bool = typer.Option(False, "--lens", help="Also run the logit lens (the model's own output head on every layer)."),
    lens_site: str = typer.Option("layer_out", "--lens-site", help="The residual the lens reads: layer_out (h_{l+1}, default) or attn_resid."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Decoders: keep (default) or disable the causal mask."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet (the tidy frame)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the export here (required for parquet)."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut text longer than the model's positions instead of refusing it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto (a GPU if there is one)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (faster on GPUs; approximate)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Trace a text: self-similarity, rank and nearest vocabulary tokens per layer."""
    from .inputs import check_text
    from .options import TraceOptions

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
        options = TraceOptions.make(
            site=site, space=space, similarity=similarity, k=k, overlap_k=overlap_k,
            lens=lens, lens_site=lens_site, causal=causal, truncate=truncate,
        )  # fmt: skip
        from .models import load, resolve_device, resolve_dtype

        device, dtype = resolve_device(device), resolve_dtype(dtype)
        if not quiet:
            err.print(f"[dim]… loading {model}[/]")
        loaded = load(model, device=device, dtype=dtype, allow_pickle=allow_pickle, revision=revision, progress=lambda m: say(0, m))
        if loaded.dtype != "float32" and not quiet:
            err.print(f"[yellow]note:[/] {loaded.dtype} runs the model approximately; float32 is the exact reference")
        say(0, "running the model")
        trail = loaded.run(text, options).trail(progress=say)
        if trail.info.truncated_from is not None and not quiet:
            err.print(f"[yellow]note:[/] the text was {trail.info.truncated_from} tokens; kept the first {trail.n_tokens} (--truncate)")
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
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto: where the app's models run."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (approximate)."),
) -> None:
    """Start the web app."""
    try:
        from .app import launch
    except ImportError as exc:
        _fail(f"the web app needs gradio: pip install 'tokentrail[app]' ({exc})")
    try:
        from .models import resolve_device, resolve_dtype, set_defaults

        set_defaults(device=resolve_device(device), dtype=resolve_dtype(dtype))
        launch(host=host, port=port, share=share, models=list(model) or None, preload=tuple(model), max_queue=max_queue)
    except TokentrailError as exc:
        _fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
