"""``tokentrail compare``: one word in two contexts, two tokens of a text, or two models.

A thin layer over :func:`tokentrail.compare`; :mod:`tokentrail.cli.commands` registers it.
Everything that needs no model is checked first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

import tokentrail as tt
from tokentrail.cli.common import check_model_option, check_output, err, one_line_errors, out, read_text
from tokentrail.present.progress import TerminalProgress
from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import write_csv
from tokentrail.spec.options import HEADS_ACROSS_MODELS, check_compare_options, check_index, parse_correction
from tokentrail.spec.text import check_text


def compare(
    text_a: str = typer.Argument(..., help="The (first) text; '-' reads it from standard input."),
    text_b: str | None = typer.Argument(
        None,
        help="A second text: the same word in another context. Leave out to compare two tokens of one text, or one text in two models.",
    ),
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Model (bundled name, hub id or folder); twice for two models on one text. Default: minilm.",
    ),
    token: list[str] = typer.Option(
        [],
        "--token",
        "-t",
        help="Token: index, text, or TEXT:N (N-th occurrence from 0). Once for both sides; twice for side a and side b (--token flies:0 --token flies:1).",
    ),
    site: str = typer.Option(
        "attn_resid", help="One site: attn_resid, attn_resid_ln, layer_out, resid_pre, mlp_out or heads."
    ),
    space: str | None = typer.Option(
        None, help="encodings (default) or embeddings; for heads value (default), key or query."
    ),
    similarity: str = typer.Option("cosine", help="Similarity for self_sim, rank and neighbours: cosine or euclidean."),
    k: int = typer.Option(15, "-k", min=1, help="Separating neighbours kept per side and layer."),
    overlap_k: int | None = typer.Option(
        None,
        "--overlap-k",
        min=1,
        help="Size of the two neighbour sets compared: default 100 (or the vocabulary, if smaller).",
    ),
    show: int = typer.Option(5, "--show", min=0, help="Separating neighbours printed per side and layer in the table."),
    head: int | None = typer.Option(
        None, "--head", help="With --site heads: print this head's layer table instead of the layer × head cosines."
    ),
    causal: bool | None = typer.Option(
        None, "--causal/--no-causal", help="Decoders only: keep (default) or disable the causal mask."
    ),
    correct: str | None = typer.Option(
        None,
        "--correct",
        help="Geometry correction (center, zscore, rogue:D, abtt:D; residual sites, one model): each side as a trace, the cosine under the map fitted to both texts.",
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", help="table, csv, json or parquet (the tidy frame with a side column)."
    ),
    out_path: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the export here (written atomically; the format follows the suffix unless --format says).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (approximate)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display (what loads, what runs)."),
) -> None:
    """Compare two occurrences layer by layer: cosine, self-similarity, rank, shared and separating neighbours."""
    with one_line_errors():
        text_a = read_text(text_a)
        check_text(text_a)
        if text_b is not None:
            check_text(text_b)
        fmt, out_path = check_output(fmt, out_path, force)
        space = _check_compare(text_b, model, token, site, space, similarity, k, overlap_k, correct, head)
        two_models = len(model) == 2
        device, dtype = tt.resolve_device(device), tt.resolve_dtype(dtype)
        with TerminalProgress(err, quiet=quiet) as bar:
            result = tt.compare(
                text_a,
                text_b,
                model=model[0] if model else "minilm",
                model_b=model[1] if two_models else None,
                token=token[0] if token else None,
                token_b=token[1] if len(token) > 1 else None,
                site=site,
                space=space,
                similarity=similarity,
                k=k,
                overlap_k=overlap_k,
                causal=causal,
                correct=correct,
                device=device,
                dtype=dtype,
                progress=bar.loading,
            )
        if head is not None:
            check_index(head, result.a.n_heads, "head", f"the model has {result.a.n_heads} heads")
        if fmt != "table":
            _export(result, fmt, out_path)
            return
        print_comparison(result, show=show, head=head)


def _check_compare(
    text_b: str | None,
    model: list[str],
    token: list[str],
    site: str,
    space: str | None,
    similarity: str,
    k: int,
    overlap_k: int | None,
    correct: str | None,
    head: int | None,
) -> str:
    """The options' checks that need no model (after the texts' and the output's), in the
    command's order; returns the checked space."""
    if len(model) > 2:
        raise InputError(f"compare takes one or two --model, not {len(model)}")
    if len(token) > 2:
        raise InputError(f"compare takes one or two --token (side a, side b), not {len(token)}")
    for m in model:
        check_model_option(m)
    two_models = len(model) == 2
    if text_b is None and not two_models and len(token) < 2:
        raise InputError(
            "one text and one model: give two tokens (--token flies:0 --token flies:1), a second text, or a second --model"
        )
    if two_models and site == "heads":
        raise InputError(HEADS_ACROSS_MODELS)
    if not token and not two_models:
        raise InputError("give the token to compare with --token (an index, its text, or TEXT:N)")
    space = check_compare_options(site, space, similarity, k, overlap_k)
    if correct is not None:
        parse_correction(correct)
        if site == "heads" or two_models:
            raise InputError("--correct applies to residual sites of one model (two contexts or two tokens)")
    if head is not None and site != "heads":
        raise InputError("--head selects a head of the heads site: add --site heads (or leave out --head)")
    for m in model:
        tt.check_model_name(m)  # a misspelt short name never goes to the hub (after the options)
    return space


def _export(result, fmt: str, out_path: Path | None) -> None:
    """The comparison as a file (``out_path``) or, without one, CSV or JSON on standard output."""
    if out_path is None:
        if fmt == "csv":
            write_csv(result.frame(), sys.stdout)
        else:
            sys.stdout.write(result.to_json() + "\n")
        return
    path = result.export(out_path, fmt)
    err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


def print_comparison(c, *, show: int = 5, head: int | None = None) -> None:
    """The comparison as terminal tables (what ``tokentrail compare`` prints)."""
    for s in c.sides:
        where = "all tokens (mean self_sim, median rank)" if s.token is None else f"token {s.token} {s.token_str!r}"
        out.print(f"[bold]{s.name}[/]: {s.model}, {where} of {s.text!r}", highlight=False)
    corrected = f"; correction {c.correct} (the cosine under the map fitted to both texts)" if c.correct else ""
    out.print(
        f"site {c.site}, space {c.space}, similarity {c.similarity}; neighbour sets of {c.overlap_k}{corrected}",
        highlight=False,
    )
    if not c.same_model:
        _print_models(c, show)
        return
    if c.per_head and head is None:
        L, H = c.cosine.shape
        out.print("cosine between the two occurrences, per layer and head:")
        per_block = max(1, (out.width - 7) // 7)  # "layer " then one 7-cell column per head
        for start in range(0, H, per_block):
            heads = range(start, min(H, start + per_block))
            table = Table("layer", *[f"h{h}" for h in heads], box=None, pad_edge=False)
            for col in table.columns:
                col.no_wrap = True
            for layer in range(L):
                table.add_row(str(layer), *[f"{c.cosine[layer, h]:.3f}" for h in heads])
            out.print(table)
    else:
        _print_layers(c, show, head)
    layer, h = c.diverge
    at = f"layer {layer}" + ("" if h is None else f", head {h}")
    value = c.cosine[layer] if h is None else c.cosine[layer, h]
    out.print(f"they diverge most at {at} (cosine {value:.4f})")


def _print_layers(c, show: int, head: int | None) -> None:
    """The per-layer numbers in one table, then each layer's separating neighbours as
    lines that wrap between neighbours, never inside one (readable at 80 columns)."""
    cell = (lambda a, l: a[l, head]) if c.per_head else (lambda a, l: a[l])
    table = Table("layer", "cosine", "self_sim a", "self_sim b", "rank a", "rank b", "shared", box=None, pad_edge=False)
    for col in table.columns:
        col.no_wrap = True
    for layer in range(c.a.n_layers):
        table.add_row(
            str(layer),
            f"{cell(c.cosine, layer):.4f}",
            f"{cell(c.a.self_sim, layer):.3f}",
            f"{cell(c.b.self_sim, layer):.3f}",
            str(int(cell(c.a.rank, layer))),
            str(int(cell(c.b.rank, layer))),
            f"{int(cell(c.overlap, layer))}/{c.overlap_k}",
        )
    if c.per_head:
        out.print(f"head {head}:")
    out.print(table)
    if not show:
        return
    out.print(f"separating neighbours (in one side's {c.overlap_k} nearest, not the other's; similarity):")
    width = len(str(c.a.n_layers - 1))
    for layer in range(c.a.n_layers):
        for side in ("a", "b"):
            lead = f"{layer:>{width}} {side}  " if side == "a" else f"{'':>{width}} {side}  "
            out.print(_wrapped(lead, _items(c.separating(side, layer, head), show), out.width), highlight=False)


def _items(frame, n: int) -> list[str]:
    return [f"{t} {s:.2f}" for t, s in zip(frame["token"][:n], frame["similarity"][:n])]


def _wrapped(lead: str, items: list[str], width: int) -> Text:
    """``lead`` then the items joined by ", ", broken only between items (a line's
    continuation indented under the first); an item longer than a line stays whole."""
    from rich.cells import cell_len

    if not items:
        return Text(lead + "none")
    lines, line = [], lead
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line.strip() and line != lead and cell_len(line) + 1 + cell_len(piece) > width:
            lines.append(line)
            line = " " * cell_len(lead) + piece
        else:
            line = line + ("" if line == lead else " ") + piece
    lines.append(line)
    return Text("\n".join(lines), no_wrap=True, overflow="fold")


def _print_models(c, show: int) -> None:
    if c.alignment is not None and c.a.token is not None:
        b_tokens = ", ".join(f"{j} {c.b.tokens[j]!r}" for j in c.alignment[c.a.token])
        out.print(
            f"a token {c.a.token} {c.a.token_str!r} spans characters {c.a.span}; b tokens over them: {b_tokens}; b follows token {c.b.token}",
            highlight=False,
        )
    for s in c.sides:
        cols = ["layer", "depth", "self_sim", "rank"] + (["nearest"] if s.token is not None and show else [])
        table = Table(*cols, box=None, pad_edge=False, title=f"{s.name}: {s.model}", title_justify="left")
        for layer in range(s.n_layers):
            row = [str(layer), f"{s.depth[layer]:.2f}", f"{s.self_sim[layer]:.3f}", f"{float(s.rank[layer]):g}"]
            if len(cols) == 5:
                row.append(", ".join(s.labels.get(int(i), str(int(i))) for i in s.top_ids[layer][:show]))
            table.add_row(*row)
        out.print(table)
