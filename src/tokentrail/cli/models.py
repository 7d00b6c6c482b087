"""The commands about models and the machine: ``models``, ``cache``, ``verify`` and ``serve``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import typer
from rich.table import Table

import tokentrail as tt
import tokentrail.app as web
from tokentrail.cli.common import err, fail, out, read_text
from tokentrail.spec.errors import TokentrailError
from tokentrail.spec.text import check_text


def models() -> None:
    """List the models tokentrail can name: bundled, known hub models, and the local hub cache."""
    table = Table("name", "status", "description", box=None, pad_edge=False)
    for row in tt.list_models().to_dict("records"):
        table.add_row(row["name"], row["status"], row["description"])
    out.print(table)
    out.print("\nAlso accepted: any hub id (owner/name) of a supported architecture, or a local model folder.")


def cache(
    clear: bool = typer.Option(
        False, "--clear", help="Delete tokentrail's converted models and temporary folders (rebuilt on the next load)."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="With --clear: do not ask for confirmation in a terminal (it never asks otherwise)."
    ),
) -> None:
    """Show what tokentrail's cache holds (TOKENTRAIL_CACHE or ~/.cache/tokentrail) and its size; --clear frees it."""
    human = tt.human_bytes
    root = tt.cache_root()
    rows = tt.cache_entries(root)
    if not rows:
        out.print(f"the cache {root} is empty")
        return
    table = Table("entry", "size", "what", box=None, pad_edge=False)
    for row in rows:
        table.add_row(str(row["path"].relative_to(root)), human(row["bytes"]), row["kind"])
    total = sum(r["bytes"] for r in rows)
    out.print(f"cache: {root}")
    out.print(table)
    out.print(f"total {human(total)}")
    if not clear:
        out.print(
            "[dim]tokentrail cache --clear deletes the converted models (rebuilt on their next load); the Hugging Face hub cache is separate[/]"
        )
        return
    ours = [r for r in rows if r["path"].parent.name == "gguf"]
    if (
        sys.stdin.isatty()
        and not yes
        and not typer.confirm(f"delete {len(ours)} entries ({human(sum(r['bytes'] for r in ours))})?")
    ):
        out.print("nothing deleted")
        return
    freed = 0
    for row in ours:
        try:
            shutil.rmtree(row["path"]) if row["path"].is_dir() else row["path"].unlink()
        except OSError as exc:
            fail(f"cannot delete {row['path']}: {exc.strerror or exc}")
        freed += row["bytes"]
    out.print(f"freed {human(freed)} ({len(ours)} entries) in {root}")


def verify(
    model: str = typer.Argument(..., help="Bundled name (see `tokentrail models`), hub id, or local folder."),
    text: str = typer.Option(
        "Time flies like an arrow. Fruit flies like a banana.",
        "--text",
        help="The text to run the model on; '-' reads it from standard input.",
    ),
    rtol: float = typer.Option(1e-4, "--rtol", help="Relative tolerance (SPEC: 1e-4, fp32)."),
    layer: list[int] = typer.Option(
        [],
        "--layer",
        "-l",
        help="Layers whose value/key/query spaces are checked (repeatable; default: first, middle, last).",
    ),
    sample: int = typer.Option(32, "--sample", help="Vocabulary ids compared row by row in the space checks."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Check every SPEC identity on your model and a text: tokentrail's numbers against the framework's."""
    say = (lambda m: None) if quiet else (lambda m: err.print(f"[dim]… {m}[/]"))
    try:
        text = read_text(text)
        check_text(text)  # before the (slow) model load
        if not rtol > 0:
            fail(f"--rtol must be positive, got {rtol}")
        if sample < 1:
            fail(f"--sample must be at least 1, got {sample}")
        say(f"loading {model}")
        loaded = tt.load(model, allow_pickle=allow_pickle, progress=say)
        result = tt.verify(loaded, text, rtol=rtol, layers=list(layer) or None, sample=sample, progress=say)
    except TokentrailError as exc:
        fail(str(exc))
    _print_verification(result)
    if not result.passed:
        raise typer.Exit(1)


def _print_verification(result) -> None:
    table = Table("identity", "result", "max |Δ|", "max rel", "tolerance", "worst at", box=None, pad_edge=False)
    for row in result.rows:
        mark = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]", "n/a": "[dim]n/a[/]"}[row.status]
        if row.passed is None:
            table.add_row(row.identity, mark, "", "", "", row.note)
        else:
            table.add_row(
                row.identity,
                mark,
                f"{row.max_abs:.2e}",
                f"{row.max_rel:.2e}",
                f"rtol {row.rtol:.0e}, atol {row.atol:.2e}",
                row.where,
            )
    out.print(f"{result.model} ({result.family}), {result.n_tokens} tokens, {'causal' if result.causal else 'no'} mask")
    out.print(table)
    if result.passed:
        held = f"[green]all {sum(r.passed is True for r in result.rows)} identities hold[/]"
        skipped = [r for r in result.rows if r.passed is None]  # e.g. the lens of a checkpoint without a head
        if skipped:
            held += "; not checked: " + "; ".join(f"{r.identity} ({r.note})" for r in skipped)
        out.print(held)
        return
    names = ", ".join(r.identity for r in result.failed)
    out.print(f"[bold red]{len(result.failed)} identit{'y' if len(result.failed) == 1 else 'ies'} failed:[/] {names}")


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Only this machine by default."),
    port: int = typer.Option(7860, help="Port to listen on."),
    share: bool = typer.Option(False, "--share", help="Create a public Gradio share link (off by default)."),
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Preload a model and offer it in the page (repeatable; hub ids and local folders allowed here, never from the page).",
    ),
    max_queue: int = typer.Option(
        16, "--max-queue", min=1, help="Requests waiting at most; beyond it users see a busy message."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto: where the app's models run."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (approximate)."
    ),
    studies: Path | None = typer.Option(
        None,
        "--studies",
        help="A folder of corpus studies (`tokentrail study --out DIR/NAME`) the Study tab may open; the page offers only these.",
    ),
    translators: Path | None = typer.Option(
        None,
        "--translators",
        help="A folder of fitted translators (`tokentrail fit ... --out DIR/NAME`) the page offers; only these.",
    ),
) -> None:
    """Start the web app."""
    if studies is not None and not studies.is_dir():
        fail(f"--studies {studies}: not a folder (give the folder your studies were written into)")
    if translators is not None and not translators.is_dir():
        fail(f"--translators {translators}: not a folder (give the folder your translators were written into)")
    try:
        web.launch  # noqa: B018 (imports gradio here, so that a missing extra is one line)
    except ImportError as exc:
        fail(f"the web app needs gradio: pip install 'tokentrail[app]' ({exc})")
    try:
        tt.set_defaults(device=tt.resolve_device(device), dtype=tt.resolve_dtype(dtype))
        web.launch(
            host=host,
            port=port,
            share=share,
            models=list(model) or None,
            preload=tuple(model),
            max_queue=max_queue,
            studies=None if studies is None else str(studies),
            translators=None if translators is None else str(translators),
        )
    except TokentrailError as exc:
        fail(str(exc))
