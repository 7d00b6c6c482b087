"""The ``tokentrail`` command: a thin layer over the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # recent typer vendors its own click (typer._click); older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException
Abort = typer.Abort
from rich.table import Table

from tokentrail.spec.errors import TokentrailError
from tokentrail.spec.options import check_index

class _OneLineErrors(TyperGroup):
    """Usage errors as one line (``error: ...``, exit 2), like every other error here,
    instead of click's usage block or typer's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if not standalone_mode:
                raise
            message = exc.format_message()
            if not message.strip():  # no arguments at all: the help was shown
                sys.exit(exc.exit_code)
            where = getattr(getattr(exc, "ctx", None), "command_path", None)
            hint = f" (see `{where} --help`)" if where else ""
            err.print(f"[bold red]error:[/] {escape(message)}{hint}")
            sys.exit(exc.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            err.print("aborted")
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=_OneLineErrors,
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
    text: str = typer.Argument(..., help="The text to trace; '-' reads it from standard input (UTF-8)."),
    model: str = typer.Option("minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."),
    token: Optional[str] = typer.Option(None, "--token", "-t", help="Token to follow: its index (0 = first), its text (the first occurrence), or TEXT:N for the N-th occurrence from 0 (flies:1 = the second 'flies'). Omitted: a grid of all tokens."),
    site: str = typer.Option("attn_resid", help="attn_resid, attn_resid_ln, layer_out, resid_pre (the layer's input), mlp_out (the FFN's output), heads; encoder-decoders also cross_resid (the decoder's residual after cross-attention) and cross_heads (each cross-attention head against the source tokens); comma-separated or 'all'."),
    space: Optional[str] = typer.Option(None, help="encodings (default), embeddings (residual sites); value (default), key, query (heads); or 'all'."),
    similarity: str = typer.Option("cosine", help="cosine, euclidean, or 'all'."),
    k: int = typer.Option(15, "-k", min=1, help="Nearest vocabulary tokens to show per layer (at most the vocabulary size)."),
    overlap_k: Optional[int] = typer.Option(None, "--overlap-k", min=1, help="Set size for the layer-to-layer neighbour overlap: default 100 (or the vocabulary size, if smaller); at most the vocabulary size."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Show only this layer (negative counts from the end)."),
    head: Optional[int] = typer.Option(None, "--head", help="With site heads: show this head's neighbours."),
    lens: bool = typer.Option(False, "--lens", help="Also run the logit lens: the model's own output head on every layer's residual (layer_out unless --lens-site)."),
    lens_site: str = typer.Option("layer_out", "--lens-site", help="The residual the lens reads: layer_out (h_{l+1}, default) or attn_resid (h_l + attn_l)."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Decoders only: keep (default) or disable the causal mask."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet (the tidy frame)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the export here (required for parquet; the format follows the file's suffix unless --format says). Written atomically; CSV text cells starting with = + - @ or reading as missing (nan, NA, null) get a leading apostrophe."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    truncate: bool = typer.Option(False, "--truncate", help="Cut text longer than the model's positions instead of refusing it."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit); hub ids only."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto (a GPU if there is one)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (faster on GPUs; approximate)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display or notes."),
    correct: Optional[str] = typer.Option(None, "--correct", help="Correct the geometry of residual sites before comparing (applied to the vector and every vocabulary row; exact): zscore, center, rogue:D (drop the D dimensions that dominate cosine), abtt:D (remove the top D principal components). Fitted per layer to the text's own vectors, or to a study with --correct-from."),
    correct_from: Optional[Path] = typer.Option(None, "--correct-from", help="Fit --correct to a corpus study of the same model (the folder `tokentrail study` wrote) instead of the text: its per-layer mean and std over every token, its sample for rogue:D and abtt:D."),
    map_path: Optional[Path] = typer.Option(None, "--map", help="Also write a 2-D map of the token paths through the layers (HTML, plotly) here; atomically."),
    map_method: str = typer.Option("pca", "--map-method", help="pca (exact, default), tsne (scikit-learn) or umap (umap-learn)."),
    target: Optional[str] = typer.Option(None, "--target", help="Encoder-decoders (BART, Marian, T5): the decoder's input, read as the model reads a target while it learns (its decoder start token, then this text's tokens). Omitted: the model's own greedy output for TEXT."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Encoder-decoders without --target: at most this many greedy tokens (default 20)."),
    stack: str = typer.Option("both", "--stack", help="Encoder-decoders: show the encoder, the decoder or both (default) stacks; --token follows a token of one stack."),
    map_head: Optional[str] = typer.Option(None, "--map-head", help="With --map: draw the query and key vectors of one head instead, as LAYER.HEAD (2.5 = layer 2, head 5; negative counts from the end)."),
) -> None:
    """Trace a text: self-similarity, rank and nearest vocabulary tokens per layer."""
    from tokentrail.spec.errors import InputError
    from tokentrail.session.inputs import check_text
    from tokentrail.session.models import load, resolve_device, resolve_dtype
    from tokentrail.spec.options import ALL_SITES, expand_choice
    from tokentrail.present.progress import TerminalProgress, analysis_steps
    from tokentrail.spec.tokens import find_token

    try:
        # everything that needs no model, before the (slow) load
        text = _read_text(text)
        fmt, out_path = _check_output(fmt, out_path, force)
        model = _check_model_option(model, revision)
        sites = expand_choice(site, ALL_SITES)
        options = _options(
            site=sites, space=_check_site_space(sites, space, quiet), similarity=similarity, k=k,
            overlap_k=overlap_k, lens=lens, lens_site=lens_site, causal=causal, truncate=truncate, correct=correct,
            correct_from=correct_from,
        )  # fmt: skip
        if correct_from is not None:
            from tokentrail.store.stats import read_stats

            stats = read_stats(correct_from)  # a study, of these sites: checked before loading
            for s in sites:
                if s != "heads":
                    stats.get(s, 0)
        _check_head_option(head, sites)
        map_path = _check_map(map_path, map_method, sites, force, map_head)
        head_at = None if map_head is None else _parse_map_head(map_head)
        check_text(text)
        seq2seq_asked = _check_seq2seq_options(target, max_new_tokens, stack, token)
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        with TerminalProgress(err, quiet=quiet) as bar:
            loaded = load(model, device=device, dtype=dtype, allow_pickle=allow_pickle, revision=revision, progress=bar.loading)
            # what needs the model, before the analysis
            _check_causal_option(causal, loaded.adapter)
            stacks = _stacks_shown(loaded.adapter, stack, seq2seq_asked)
            if token is not None and len(stacks) > 1:
                raise InputError("--token follows a token of one stack: add --stack encoder (the source) or --stack decoder")
            for adapter in stacks:
                name = f"the {adapter.stack} has" if adapter.stack else "the model has"
                if layer is not None:
                    check_index(layer, adapter.n_layers, "layer", f"{name} {adapter.n_layers} layers")
                if head is not None:
                    check_index(head, adapter.n_heads, "head", f"{name} {adapter.n_heads} heads")
            enc = loaded.encode(text, truncate=truncate)
            if token is not None and stacks[0].stack != "decoder":
                token = _pick_token(find_token, enc.tokens, token, quiet)
            if head_at is not None:
                check_index(head_at[0], loaded.adapter.n_layers, "--map-head layer", f"the model has {loaded.adapter.n_layers} layers")
                check_index(head_at[1], loaded.adapter.n_heads, "--map-head head", f"the model has {loaded.adapter.n_heads} heads")
            elif map_path is not None:
                from tokentrail.present.maps import NEIGHBOURS, check_points, map_points

                check_points(map_method, map_points(len(enc.ids), loaded.adapter.n_layers, NEIGHBOURS))
            if loaded.dtype != "float32" and not quiet:
                bar.note(f"{loaded.dtype} runs the model approximately; float32 is the exact reference")
            bar.start_analysis(analysis_steps(options.pairs(), loaded.adapter.n_layers))
            bar.analysis(0.0, "running the model")
            run = loaded.run(text, options, encoded=enc, target=target, max_new_tokens=max_new_tokens)
            trail = run.trail(progress=bar.analysis)
            if map_path is not None:
                _write_map(run, map_path, map_method, sites, options.spaces, head_at)
        if map_path is not None and not quiet:
            err.print(f"wrote the map to {map_path}")
        if not quiet and options.correct is None:
            _rogue_notes(run, sites)
        if trail.info.truncated_from is not None and not quiet:
            err.print(f"[yellow]note:[/] the text was {trail.info.truncated_from} tokens; kept the first {trail.n_tokens} (--truncate)")
        if fmt != "table":
            _export(trail, fmt, out_path, quiet)
            return
        from tokentrail.present.report import print_report

        print_report(out, trail, token=token, layer=layer, head=head, stack=None if stack == "both" else stack)
    except TokentrailError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else ""))


def _check_map(path: Path | None, method: str, sites, force: bool, head: str | None = None) -> Path | None:
    """The --map file and method, checked before the model is loaded."""
    from tokentrail.spec.errors import InputError
    from tokentrail.spec.fileio import check_output_path
    from tokentrail.present.maps import check_method
    from tokentrail.spec.options import RESIDUAL_SITES

    if path is None:
        if head is not None:
            raise InputError("--map-head says which head --map draws: add --map out.html")
        return None
    check_method(method)
    if head is None and not any(s in RESIDUAL_SITES for s in sites):
        raise InputError("--map draws a residual site (attn_resid, layer_out, ...): add one to --site")
    return check_output_path(path, force=force, formats=("html",))[0]


def _parse_map_head(value: str) -> tuple[int, int]:
    """``"2.5"`` -> (2, 5): --map-head's LAYER.HEAD (each may be negative)."""
    from tokentrail.spec.errors import InputError

    layer, sep, head = value.strip().partition(".")
    try:
        if not sep:
            raise ValueError
        return int(layer), int(head)
    except ValueError:
        raise InputError(f"--map-head takes LAYER.HEAD, e.g. 2.5 for layer 2, head 5 (got {value!r})") from None


def _write_map(run, path: Path, method: str, sites, spaces, head_at: tuple[int, int] | None = None) -> None:
    from tokentrail.spec.fileio import write_text
    from tokentrail.present.maps import head_map, trajectory_map
    from tokentrail.spec.options import RESIDUAL_SITES, RESIDUAL_SPACES

    if head_at is not None:
        fig, _ = head_map(run, head_at[0], head_at[1], method=method)
    else:
        site = next(s for s in sites if s in RESIDUAL_SITES)
        space = next((s for s in spaces if s in RESIDUAL_SPACES), "encodings")
        fig, _ = trajectory_map(run, site=site, space=space, method=method)
    write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def _rogue_notes(run, sites) -> None:
    """Say when one dimension carries most of the cosine of a residual site (issue 9)."""
    from tokentrail.engine.geometry import diagnose_run, rogue_layers
    from tokentrail.spec.options import RESIDUAL_SITES

    for site in sites:
        if site in RESIDUAL_SITES:
            line = rogue_layers(diagnose_run(run, site))
            if line:
                err.print(f"[yellow]note:[/] {escape(line)}")


def _options(**values):
    from tokentrail.spec.options import TraceOptions

    return TraceOptions.make(**values)


def _read_text(text: str) -> str:
    """The TEXT argument, or standard input for '-', decoded as UTF-8 whatever the locale."""
    from tokentrail.spec.errors import InputError

    if text != "-":
        return text
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"standard input is not UTF-8 text (byte 0x{data[exc.start]:02X} at offset {exc.start}): pass a text file") from None


def _check_output(fmt: str, out_path: Path | None, force: bool) -> tuple[str, Path | None]:
    """The export format and a checked --out path (parent exists and is writable, not a
    folder, not an existing file unless --force), before any model work."""
    from tokentrail.spec.errors import InputError
    from tokentrail.spec.fileio import check_output_path

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    if out_path is None:
        if fmt == "parquet":
            raise InputError("--format parquet needs --out FILE")
        return fmt, None
    path, fmt = check_output_path(out_path, force=force, formats=FORMATS[1:], fmt=None if fmt == "table" else fmt)
    return fmt, path


def _check_model_option(model: str, revision: str | None) -> str:
    from tokentrail.spec.errors import InputError

    if not model.strip():
        raise InputError("--model is empty: give a bundled name (see `tokentrail models`), a hub id or a local folder")
    if revision is not None and Path(model).expanduser().is_dir():
        raise InputError(f"--revision applies to hub models; {model} is a local folder (check out the revision you want there)")
    return model


def _check_site_space(sites: list[str], space: str | None, quiet: bool) -> list[str]:
    """The spaces to compute. Residual sites default to encodings and the heads site to
    value; an explicit --space the heads site cannot use is an error (or, when other sites
    use it, a stated note)."""
    from tokentrail.spec.errors import InputError
    from tokentrail.spec.options import ALL_SPACES, expand_choice
    from tokentrail.spec.options import HEAD_SPACES as HEAD_SPACE_KINDS

    if space is None:
        return ["encodings"] + (["value"] if "heads" in sites or "cross_heads" in sites else [])
    spaces = list(expand_choice(space, ALL_SPACES))
    if "heads" in sites and not any(s in HEAD_SPACE_KINDS for s in spaces if s in ALL_SPACES):
        if all(s == "heads" for s in sites):
            raise InputError(
                f"--site heads compares each head with its {', '.join(HEAD_SPACE_KINDS)} space; "
                f"--space {space} is for residual sites: use --space value (or key, query)"
            )
        if not quiet:
            err.print(f"[yellow]note:[/] --space {space} applies to the residual sites; the heads site uses its value space")
        spaces.append("value")
    return spaces


def _check_head_option(head: int | None, sites: list[str]) -> None:
    from tokentrail.spec.errors import InputError

    if head is not None and "heads" not in sites and "cross_heads" not in sites:
        raise InputError("--head selects a head of the heads site (or cross_heads): add --site heads (or leave out --head)")


STACKS = ("both", "encoder", "decoder")


def _check_seq2seq_options(target: str | None, max_new_tokens: int | None, stack: str, token: str | None) -> bool:
    """The encoder-decoder options, checked before the model loads; True when any was given."""
    from tokentrail.spec.errors import InputError
    from tokentrail.session.inputs import check_decoder_input

    if stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}: choose from {', '.join(STACKS)}")
    check_decoder_input(target, max_new_tokens, names=("--target", "--max-new-tokens"))
    return target is not None or max_new_tokens is not None or stack != "both"


def _stacks_shown(adapter, stack: str, seq2seq_asked: bool) -> list:
    """The adapters whose rows the report shows (one for single-stack models)."""
    from tokentrail.spec.errors import InputError

    if not adapter.is_seq2seq:
        if seq2seq_asked:
            raise InputError(f"--target, --max-new-tokens and --stack are for encoder-decoder models; this {adapter.family} model has one stack")
        return [adapter]
    both = [adapter, adapter.decoder_stack()]
    return both if stack == "both" else [a for a in both if a.stack == stack]


def _check_causal_option(causal: bool | None, adapter) -> None:
    from tokentrail.spec.errors import InputError

    if causal is not None and adapter.is_seq2seq:
        raise InputError(f"--causal/--no-causal: the {adapter.family} decoder is always causal and its encoder never is")
    if causal is not None and not adapter.is_decoder:
        flag = "--causal" if causal else "--no-causal"
        raise InputError(f"{flag} is for decoders; {adapter.family} is an encoder (it attends both ways and has no causal mask)")


def _pick_token(find_token, tokens, token: str, quiet: bool) -> int:
    """Resolve --token on the tokenised text (before the analysis) and say which occurrence."""
    index, matches = find_token(tokens, token)
    if len(matches) > 1 and not quiet:
        others = ", ".join(f"{i}" for i in matches if i != index)
        which = matches.index(index)
        err.print(
            f"[yellow]note:[/] {token!r} occurs {len(matches)} times; following token {index} "
            f"(occurrence {which}); the others are at {others} (use TEXT:N or an index to choose)",
            highlight=False,
        )
    return index


def _export(trail, fmt: str, out_path: Path | None, quiet: bool = False) -> None:
    if out_path is None:
        if fmt == "csv":
            trail.to_csv(sys.stdout)
        else:
            sys.stdout.write(trail.to_json() + "\n")
        if not quiet:
            _say_attention_left_out(trail)
        return
    path = trail.export(out_path, fmt)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if not quiet:
        _say_attention_left_out(trail)


def _say_attention_left_out(trail) -> None:
    from tokentrail.results.trailio import MAX_ATTENTION_ROWS, attention_included

    if trail.attentions is not None and not attention_included(trail):
        err.print(f"note: the attention table ({trail.attentions.size:,} rows, layers × heads × tokens²) is left out above "
                  f"{MAX_ATTENTION_ROWS:,} rows; from Python, trail.export(path, attention=True) includes it", highlight=False)


@app.command()
def models() -> None:
    """List the models tokentrail can name: bundled, known hub models, and the local hub cache."""
    from tokentrail.session.models import list_models

    table = Table("name", "status", "description", box=None, pad_edge=False)
    for row in list_models():
        table.add_row(row["name"], row["status"], row["description"])
    out.print(table)
    out.print("\nAlso accepted: any hub id (owner/name) of a supported architecture, or a local model folder.")


@app.command()
def cache(
    clear: bool = typer.Option(False, "--clear", help="Delete tokentrail's converted models and temporary folders (rebuilt on the next load)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --clear: do not ask for confirmation in a terminal (it never asks otherwise)."),
) -> None:
    """Show what tokentrail's cache holds (TOKENTRAIL_CACHE or ~/.cache/tokentrail) and its size; --clear frees it."""
    import shutil

    from tokentrail.engine.budget import human
    from tokentrail.session.gguf_cache import cache_entries, cache_root

    root = cache_root()
    rows = cache_entries(root)
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
        out.print("[dim]tokentrail cache --clear deletes the converted models (rebuilt on their next load); the Hugging Face hub cache is separate[/]")
        return
    ours = [r for r in rows if r["path"].parent.name == "gguf"]
    if sys.stdin.isatty() and not yes and not typer.confirm(f"delete {len(ours)} entries ({human(sum(r['bytes'] for r in ours))})?"):
        out.print("nothing deleted")
        return
    freed = 0
    for row in ours:
        try:
            shutil.rmtree(row["path"]) if row["path"].is_dir() else row["path"].unlink()
        except OSError as exc:
            _fail(f"cannot delete {row['path']}: {exc.strerror or exc}")
        freed += row["bytes"]
    out.print(f"freed {human(freed)} ({len(ours)} entries) in {root}")


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
    from tokentrail.session.inputs import check_text
    from tokentrail.session.models import load
    from tokentrail.session.verification import verify as run_verify

    say = (lambda m: None) if quiet else (lambda m: err.print(f"[dim]… {m}[/]"))
    try:
        text = _read_text(text)
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
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto: where the app's models run."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (approximate)."),
    studies: Optional[Path] = typer.Option(None, "--studies", help="A folder of corpus studies (`tokentrail study --out DIR/NAME`) the Study tab may open; the page offers only these."),
) -> None:
    """Start the web app."""
    if studies is not None and not studies.is_dir():
        _fail(f"--studies {studies}: not a folder (give the folder your studies were written into)")
    try:
        from tokentrail.app import launch
    except ImportError as exc:
        _fail(f"the web app needs gradio: pip install 'tokentrail[app]' ({exc})")
    try:
        from tokentrail.session.models import resolve_device, resolve_dtype, set_defaults

        set_defaults(device=resolve_device(device), dtype=resolve_dtype(dtype))
        launch(host=host, port=port, share=share, models=list(model) or None, preload=tuple(model), max_queue=max_queue, studies=None if studies is None else str(studies))
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
    site: str = typer.Option("attn_resid", "--site", help="Residual sites, comma-separated: resid_pre, attn_resid, attn_resid_ln, layer_out, mlp_out, or 'all'."),
    overlap_k: Optional[int] = typer.Option(None, "--overlap-k", min=1, help="Set size for the layer-to-layer neighbour overlap: default 100 (or the vocabulary size, if smaller)."),
    sample: int = typer.Option(2000, "--sample", min=2, help="Tokens in the corpus anisotropy sample."),
    seed: int = typer.Option(0, "--seed", help="Seed of the anisotropy sample."),
    causal: Optional[bool] = typer.Option(None, "--causal/--no-causal", help="Decoders: keep (default) or disable the causal mask."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted study in --out from its last complete batch."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad record (empty, over-long, undecodable) instead of skipping it."),
    engine: str = typer.Option("local", "--engine", help="local, or ray (batches as tasks on actors that hold the model)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: an existing Ray cluster's address (default: start a local one)."),
    workers: int = typer.Option(1, "--workers", min=1, help="With --engine ray and no GPU: CPU actors to start."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto (a GPU if there is one); with --engine ray, each GPU gets an actor."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."),
    frequencies: Optional[Path] = typer.Option(None, "--frequencies", help="TOKEN<TAB>COUNT file (tokens as the tokenizer spells them, or #ID) for the freq_rank column; default: rank by count in this corpus."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Study a corpus: every token x layer x site, written as Parquet while the run goes."""
    from tokentrail.spec.options import RESIDUAL_SITES as SITES, expand_choice
    from tokentrail.corpus import study as run_study

    bar = _StudyProgress(err, quiet)
    try:
        with bar:
            s = run_study(
                source, model, out_dir, sites=expand_choice(site, SITES), batch=batch, limit=limit, column=column,
                overlap_k=overlap_k, sample=sample, seed=seed, causal=causal, resume=resume, strict=strict,
                engine=engine, address=address, workers=workers, allow_pickle=allow_pickle, device=device,
                frequencies=frequencies, progress=bar.update, on_start=bar.start, on_load=bar.loading,
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
    """What loads (the model, Ray's workers: lines like the trace command's), then a rich
    progress bar over texts, with tokens/s and ETA; nothing when quiet. Both come once
    the inputs are checked: an input refused before then leaves its one error line alone
    on stderr."""

    def __init__(self, console, quiet: bool):
        self.console = console
        self.quiet = quiet
        self.task = None  # the bar's task, once it is drawn
        self.loader = None  # a TerminalProgress while the model loads
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
        return self

    def __exit__(self, *exc):
        self._loaded()
        if self.task is not None:
            self.bar.__exit__(*exc)

    def loading(self, message: str) -> None:
        if self.quiet:
            return
        if self.loader is None:
            from tokentrail.present.progress import TerminalProgress

            self.loader = TerminalProgress(self.console).__enter__()
        self.loader.loading(message)

    def _loaded(self) -> None:
        if self.loader is not None:
            self.loader.__exit__(None, None, None)
            self.loader = None

    def start(self, total):
        import time

        self._loaded()
        self.t0 = time.monotonic()
        if not self.quiet:
            self.bar.__enter__()
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
    from tokentrail.corpus import Study

    if out_path.is_dir():
        _fail(f"--out {out_path} is a folder; give a file name")
    try:
        s = Study(study_dir)
        path = s.report(out_path)
        if png is not None:
            from tokentrail.corpus.report import write_pngs

            pngs = write_pngs(s, png)
            err.print(f"wrote {len(pngs)} figures into {png}")
    except TokentrailError as exc:
        _fail(str(exc))
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


from tokentrail.cli.compare import compare as _compare  # noqa: E402

app.command("compare")(_compare)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
