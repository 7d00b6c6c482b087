"""``tokentrail trace``: one text through one model, as a report, an export and a map.

Everything that needs no model is checked before anything heavy is imported; what needs
the model (its stacks, layers, heads, the tokens of the text) before the analysis runs."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

import tokentrail as tt
from tokentrail.cli.common import check_model_option, check_output, err, one_line_errors, out, read_text
from tokentrail.present.images import check_figure_path, write_figure
from tokentrail.present.maps import NEIGHBOURS, check_method, check_points, head_map, map_points, trajectory_map
from tokentrail.present.progress import TerminalProgress, analysis_steps
from tokentrail.present.report import print_report
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.fileio import check_output_path, write_text
from tokentrail.spec.options import (
    ALL_SITES,
    LENS_COLOURS,
    RESIDUAL_SITES,
    RESIDUAL_SPACES,
    TraceOptions,
    check_index,
    expand_choice,
    site_spaces,
)
from tokentrail.spec.text import check_decoder_input, check_text
from tokentrail.spec.tokens import find_token

STACKS = ("both", "encoder", "decoder")


def trace(
    text: str = typer.Argument(..., help="The text to trace; '-' reads it from standard input (UTF-8)."),
    model: str = typer.Option(
        "minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        "-t",
        help="Token to follow: its index (0 = first), its text (the first occurrence), or TEXT:N for the N-th occurrence from 0 (flies:1 = the second 'flies'). Omitted: a grid of all tokens.",
    ),
    site: str = typer.Option(
        "attn_resid",
        help="attn_resid, attn_resid_ln, layer_out, resid_pre (the layer's input), mlp_out (the FFN's output), heads; encoder-decoders also cross_resid (the decoder's residual after cross-attention) and cross_heads (each cross-attention head against the source tokens); comma-separated or 'all'.",
    ),
    space: str | None = typer.Option(
        None, help="encodings (default), embeddings (residual sites); value (default), key, query (heads); or 'all'."
    ),
    similarity: str = typer.Option("cosine", help="cosine, euclidean, or 'all'."),
    k: int = typer.Option(
        15, "-k", min=1, help="Nearest vocabulary tokens to show per layer (at most the vocabulary size)."
    ),
    overlap_k: int | None = typer.Option(
        None,
        "--overlap-k",
        min=1,
        help="Set size for the layer-to-layer neighbour overlap: default 100 (or the vocabulary size, if smaller); at most the vocabulary size.",
    ),
    layer: int | None = typer.Option(
        None, "--layer", "-l", help="Show only this layer (negative counts from the end)."
    ),
    head: int | None = typer.Option(None, "--head", help="With site heads: show this head's neighbours."),
    lens: bool = typer.Option(
        False,
        "--lens",
        help="Also run the logit lens: the model's own output head on every layer's residual (layer_out unless --lens-site).",
    ),
    lens_site: str = typer.Option(
        "layer_out",
        "--lens-site",
        help="The residual the lens reads: layer_out (h_{l+1}, default) or attn_resid (h_l + attn_l).",
    ),
    causal: bool | None = typer.Option(
        None, "--causal/--no-causal", help="Decoders only: keep (default) or disable the causal mask."
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet (the tidy frame)."),
    out_path: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Write the export here (required for parquet; the format follows the file's suffix unless --format says). Written atomically; CSV text cells starting with = + - @ or reading as missing (nan, NA, null) get a leading apostrophe.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file."),
    truncate: bool = typer.Option(
        False, "--truncate", help="Cut text longer than the model's positions instead of refusing it."
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow pickled (.bin) weights. They can run code: only for sources you trust."
    ),
    revision: str | None = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit); hub ids only."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto (a GPU if there is one)."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (exact, default), bfloat16 or float16 (faster on GPUs; approximate)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display or notes."),
    correct: str | None = typer.Option(
        None,
        "--correct",
        help="Correct the geometry of residual sites before comparing (applied to the vector and every vocabulary row; exact): zscore, center, rogue:D (drop the D dimensions that dominate cosine), abtt:D (remove the top D principal components). Fitted per layer to the text's own vectors, or to a study with --correct-from.",
    ),
    correct_from: Path | None = typer.Option(
        None,
        "--correct-from",
        help="Fit --correct to a corpus study of the same model (the folder `tokentrail study` wrote) instead of the text: its per-layer mean and std over every token, its sample for rogue:D and abtt:D.",
    ),
    map_path: Path | None = typer.Option(
        None,
        "--map",
        help="Also write a 2-D map of the token paths through the layers (HTML, plotly) here; atomically.",
    ),
    map_method: str = typer.Option(
        "pca", "--map-method", help="pca (exact, default), tsne (scikit-learn) or umap (umap-learn)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Encoder-decoders (BART, Marian, T5): the decoder's input, read as the model reads a target while it learns (its decoder start token, then this text's tokens). Omitted: the model's own greedy output for TEXT.",
    ),
    max_new_tokens: int | None = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="Encoder-decoders without --target: at most this many greedy tokens (default 20).",
    ),
    stack: str = typer.Option(
        "both",
        "--stack",
        help="Encoder-decoders: show the encoder, the decoder or both (default) stacks; --token follows a token of one stack.",
    ),
    beside: str = typer.Option(
        "auto",
        "--beside",
        help="A corrected view beside the raw one (residual sites, with --token): auto (default: when a few dimensions dominate the raw cosine, the correction that removes them, e.g. rogue:2), off, or a correction (zscore, center, rogue:D, abtt:D). Example: tokentrail trace 'Time flies like an arrow.' -m smollm2 --token flies --beside zscore",
    ),
    plot_path: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw the logit lens (needs --lens) as layers x positions, the top prediction in each cell, coloured by --lens-color, into FILE.html, .png or .svg (atomically). Example: tokentrail trace 'Time flies like an arrow.' -m smollm2 --lens --plot lens.png",
    ),
    lens_color: str = typer.Option(
        "prob",
        "--lens-color",
        help="What colours a --plot cell: prob (the top token's probability), entropy, kl (KL divergence from the final layer), rank (of the actual next token; encoders: of the token itself).",
    ),
    plot_attention: Path | None = typer.Option(
        None,
        "--plot-attention",
        help="Also draw an attention pattern (query x key tokens) into FILE.html, .png or .svg: head --head of layer --layer (default the last layer; no --head: every head as small multiples), with a layer/head picker in HTML. Encoder-decoders: --stack decoder for the decoder's self-attention, --attention-kind cross for cross-attention. Example: tokentrail trace 'The bank by the river.' --plot-attention heads.png --layer 2",
    ),
    attention_kind: str = typer.Option(
        "self",
        "--attention-kind",
        help="With --plot-attention: self, or cross (an encoder-decoder's decoder over the source).",
    ),
    translator: Path | None = typer.Option(
        None,
        "--translator",
        help="A translator of this model (the folder `tokentrail fit` wrote): adds the <site>_translated views (identity) or the fitted lens (prediction).",
    ),
    map_head: str | None = typer.Option(
        None,
        "--map-head",
        help="With --map: draw the query and key vectors of one head instead, as LAYER.HEAD (2.5 = layer 2, head 5; negative counts from the end).",
    ),
) -> None:
    """Trace a text: self-similarity, rank and nearest vocabulary tokens per layer."""
    with one_line_errors():
        # everything that needs no model, before the (slow) load
        text = read_text(text)
        fmt, out_path = check_output(fmt, out_path, force)
        model = check_model_option(model, revision)
        options = _trace_options(
            site=site,
            space=space,
            similarity=similarity,
            k=k,
            overlap_k=overlap_k,
            lens=lens,
            lens_site=lens_site,
            causal=causal,
            truncate=truncate,
            correct=correct,
            correct_from=correct_from,
            quiet=quiet,
        )
        if plot_attention is None:
            _check_head_option(head, options.sites)
        map_path = _check_map(map_path, map_method, options.sites, force, map_head)
        beside = _check_beside(beside, correct)
        plot_path, plot_attention = _check_plots(plot_path, lens_color, lens, plot_attention, attention_kind, force)
        head_at = None if map_head is None else _parse_map_head(map_head)
        check_text(text)
        seq2seq_asked = _check_seq2seq_options(target, max_new_tokens, stack, token)
        if correct_from is not None:
            _check_study(correct_from, options.sites)  # a study of these sites: read before loading
        fitted = None if translator is None else tt.load_translator(translator)  # its files, before the weights
        tt.check_model_name(model)  # a misspelt short name never goes to the hub (after the options)
        device, dtype = tt.resolve_device(device), tt.resolve_dtype(dtype)
        with TerminalProgress(err, quiet=quiet) as bar:
            # what config.json and the tokenizer tell, before the weights (none: after the load)
            bar.loading(f"reading the config of {model}")
            facts = tt.model_facts(model, revision=revision)
            if facts is not None:
                _check_before_weights(facts, text, causal, stack, seq2seq_asked, token, layer, head, truncate)
                if options.lens and facts.lens_unavailable:
                    raise ModelError(facts.lens_unavailable)  # a checkpoint without an output head
            loaded = tt.load(
                model, device=device, dtype=dtype, allow_pickle=allow_pickle, revision=revision, progress=bar.loading
            )
            # what needs the model, before the analysis
            stacks = _check_stack_options(loaded, causal, stack, seq2seq_asked, token, layer, head)
            enc = loaded.encode(text, truncate=truncate)
            followed: str | int | None = token  # a decoder's token is found in its own tokens, by the report
            if token is not None and stacks[0].name != "decoder":
                followed = _pick_token(enc.tokens, token, quiet)
            _check_map_size(loaded, len(enc.ids), map_path, map_method, head_at)
            if loaded.dtype != "float32" and not quiet:
                bar.note(f"{loaded.dtype} runs the model approximately; float32 is the exact reference")
            bar.start_analysis(analysis_steps(options.pairs(), loaded.n_layers))
            bar.analysis(0.0, "running the model")
            run = loaded.run(text, options, encoded=enc, target=target, max_new_tokens=max_new_tokens)
            trail = run.trail(progress=bar.analysis)
            if fitted is not None:
                trail = tt.translate(run, trail, fitted)
            # the corrected columns sit in a token's journey (the grid has no room for them)
            fixed = None if fmt != "table" or token is None else _beside_trail(run, options, beside)
            if map_path is not None:
                chosen = followed if isinstance(followed, int) else None  # drawn bold on the map
                _write_map(run, map_path, map_method, options.sites, options.spaces, head_at, chosen)
            if plot_path is not None:
                write_figure(tt.plots.lens_heatmap(trail, lens_color), plot_path)
            if plot_attention is not None:
                _write_attention(run, plot_attention, attention_kind, stack, layer, head, loaded.is_seq2seq)
        _notes(run, trail, options, map_path, quiet)
        if fixed is not None and not quiet:
            err.print(
                f"[dim]the corrected view ({fixed.info.options.correct}) is beside the raw one; --beside off hides it[/]"
            )
        for written in (plot_path, plot_attention):
            if written is not None and not quiet:
                err.print(f"wrote {written}")
        if fmt != "table":
            _export(trail, fmt, out_path, quiet)
            return
        print_report(
            out, trail, token=followed, layer=layer, head=head, stack=None if stack == "both" else stack, beside=fixed
        )


def _trace_options(*, site: str, space: str | None, quiet: bool, correct_from: Path | None, **values) -> TraceOptions:
    """The command line's one TraceOptions: residual sites default to encodings and the
    heads site to value (:func:`~tokentrail.spec.options.site_spaces`, which may say a note)."""
    sites = expand_choice(site, ALL_SITES)
    spaces, note = site_spaces(sites, space)
    if note and not quiet:
        err.print(f"[yellow]note:[/] {note}")
    return TraceOptions.make(site=sites, space=spaces, correct_from=correct_from, **values)


def _check_study(folder: Path, sites) -> None:
    """--correct-from: a study that holds these residual sites (layer 0 is enough to say so)."""
    stats = tt.read_stats(folder)
    for s in sites:
        if s != "heads":
            stats.get(s, 0)


def _check_map(path: Path | None, method: str, sites, force: bool, head: str | None = None) -> Path | None:
    """The --map file and method, checked before the model is loaded."""
    if path is None:
        if head is not None:
            raise InputError("--map-head says which head --map draws: add --map out.html")
        return None
    check_method(method)
    if head is None and not any(s in RESIDUAL_SITES for s in sites):
        raise InputError("--map draws a residual site (attn_resid, layer_out, ...): add one to --site")
    return check_output_path(path, force=force, formats=("html",))[0]


def _check_beside(beside: str, correct: str | None) -> str:
    """--beside: auto, off or a correction (checked by the rule every correction goes through)."""
    beside = beside.strip().lower()
    if beside in ("auto", "off"):
        return beside
    if correct is not None:
        raise InputError(
            "--beside shows a corrected view beside the raw one; with --correct there is no raw view: leave one out"
        )
    TraceOptions.make(correct=beside)  # an unknown correction is refused here, before the model loads
    return beside


def _beside_trail(run, options: TraceOptions, beside: str) -> tt.Trail | None:
    """The same text under a correction, for the report's second set of columns: the one
    asked for, or (auto) the one that removes the dimensions dominating the raw cosine."""
    if beside == "off" or options.correct is not None or run.model.is_seq2seq:
        return None
    site = next((s for s in options.sites if s in RESIDUAL_SITES), None)
    if site is None:
        return None
    spec = beside
    if beside == "auto":
        spec = tt.geometry.suggested_correction(tt.geometry.diagnose_run(run, site))
        if spec is None:
            return None
    return run.trail(correct=spec)


def _check_plots(
    plot_path: Path | None, color: str, lens: bool, attention: Path | None, kind: str, force: bool
) -> tuple[Path | None, Path | None]:
    """--plot and --plot-attention: their files (and kaleido for images), the lens colour and
    the attention kind, before the model loads."""
    if plot_path is not None:
        if not lens:
            raise InputError(
                "--plot draws the logit lens: add --lens (or --plot-attention FILE for attention patterns)"
            )
        if color not in LENS_COLOURS:
            raise InputError(f"unknown --lens-color {color!r}: choose from {', '.join(LENS_COLOURS)}")
        plot_path = check_figure_path(plot_path, force=force, option="--plot")
    if attention is not None:
        if kind not in ("self", "cross"):
            raise InputError(f"unknown --attention-kind {kind!r}: choose self or cross")
        attention = check_figure_path(attention, force=force, option="--plot-attention")
        if plot_path is not None and attention.resolve() == plot_path.resolve():
            raise InputError("--plot and --plot-attention name the same file: give each its own")
    return plot_path, attention


def _write_attention(
    run, path: Path, kind: str, stack: str, layer: int | None, head: int | None, seq2seq: bool
) -> None:
    """--plot-attention: the pattern of --layer (default the last) and --head (default every head)."""
    if kind == "cross" and not seq2seq:
        raise InputError(
            "--attention-kind cross is for encoder-decoders (BART, Marian, T5): this model has self-attention only"
        )
    which = None
    if seq2seq:
        which = "decoder" if kind == "cross" or stack == "decoder" else "encoder"
    fig = tt.plots.attention_pattern(run, -1 if layer is None else layer, head, kind=kind, stack=which)
    write_figure(fig, path)


def _parse_map_head(value: str) -> tuple[int, int]:
    """``"2.5"`` -> (2, 5): --map-head's LAYER.HEAD (each may be negative)."""
    layer, sep, head = value.strip().partition(".")
    try:
        if not sep:
            raise ValueError
        return int(layer), int(head)
    except ValueError:
        raise InputError(f"--map-head takes LAYER.HEAD, e.g. 2.5 for layer 2, head 5 (got {value!r})") from None


def _check_head_option(head: int | None, sites) -> None:
    if head is not None and "heads" not in sites and "cross_heads" not in sites:
        raise InputError(
            "--head selects a head of the heads site (or cross_heads): add --site heads (or leave out --head)"
        )


def _check_seq2seq_options(target: str | None, max_new_tokens: int | None, stack: str, token: str | None) -> bool:
    """The encoder-decoder options, checked before the model loads; True when any was given."""
    if stack not in STACKS:
        raise InputError(f"unknown stack {stack!r}: choose from {', '.join(STACKS)}")
    check_decoder_input(target, max_new_tokens, names=("--target", "--max-new-tokens"))
    return target is not None or max_new_tokens is not None or stack != "both"


def _check_stack_options(loaded, causal: bool | None, stack: str, seq2seq_asked: bool, token, layer, head) -> list:
    """--causal, --stack, --token, --layer and --head against the loaded model; the stacks shown."""
    _check_causal_option(causal, loaded)
    stacks = _stacks_shown(loaded, stack, seq2seq_asked)
    if token is not None and len(stacks) > 1:
        raise InputError("--token follows a token of one stack: add --stack encoder (the source) or --stack decoder")
    for s in stacks:
        name = f"the {s.name} has" if s.name else "the model has"
        if layer is not None:
            check_index(layer, s.n_layers, "layer", f"{name} {s.n_layers} layers")
        if head is not None:
            check_index(head, s.n_heads, "head", f"{name} {s.n_heads} heads")
    return stacks


def _check_before_weights(
    facts, text: str, causal: bool | None, stack: str, seq2seq_asked: bool, token, layer, head, truncate: bool
) -> None:
    """The checks of :func:`_check_stack_options`, the text's length and --token, run on
    :func:`tokentrail.model_facts` (config.json and the tokenizer) before the weights load;
    the same checks after the load then pass, or run alone where there are no facts."""
    stacks = _check_stack_options(facts, causal, stack, seq2seq_asked, token, layer, head)
    enc = facts.encode(text, truncate=truncate)  # an over-long text is refused here
    if enc is not None and token is not None and stacks[0].name != "decoder":
        find_token(enc.tokens, token)  # which occurrence is said after the load (_pick_token)


def _stacks_shown(loaded, stack: str, seq2seq_asked: bool) -> list:
    """The stacks whose rows the report shows (one for single-stack models)."""
    if not loaded.is_seq2seq:
        if seq2seq_asked:
            raise InputError(
                f"--target, --max-new-tokens and --stack are for encoder-decoder models; this {loaded.family} model has one stack"
            )
        return list(loaded.stacks)
    both = list(loaded.stacks)
    return both if stack == "both" else [s for s in both if s.name == stack]


def _check_causal_option(causal: bool | None, loaded) -> None:
    if causal is not None and loaded.is_seq2seq:
        raise InputError(f"--causal/--no-causal: the {loaded.family} decoder is always causal and its encoder never is")
    if causal is not None and not loaded.is_decoder:
        flag = "--causal" if causal else "--no-causal"
        raise InputError(
            f"{flag} is for decoders; {loaded.family} is an encoder (it attends both ways and has no causal mask)"
        )


def _pick_token(tokens, token: str, quiet: bool) -> int:
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


def _check_map_size(loaded, tokens: int, map_path: Path | None, method: str, head_at: tuple[int, int] | None) -> None:
    """--map-head's head exists; an iterative map is not too big to draw."""
    if head_at is not None:
        check_index(head_at[0], loaded.n_layers, "--map-head layer", f"the model has {loaded.n_layers} layers")
        check_index(head_at[1], loaded.n_heads, "--map-head head", f"the model has {loaded.n_heads} heads")
    elif map_path is not None:
        check_points(method, map_points(tokens, loaded.n_layers, NEIGHBOURS))


def _write_map(
    run, path: Path, method: str, sites, spaces, head_at: tuple[int, int] | None = None, token: int | None = None
) -> None:
    if head_at is not None:
        fig, _ = head_map(run, head_at[0], head_at[1], method=method)
    else:
        site = next(s for s in sites if s in RESIDUAL_SITES)
        space = next((s for s in spaces if s in RESIDUAL_SPACES), "encodings")
        fig, _ = trajectory_map(run, site=site, space=space, method=method, highlight=token)
    write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


def _notes(run, trail, options: TraceOptions, map_path: Path | None, quiet: bool) -> None:
    """What the run wrote besides its report, and what a reader should know about it."""
    if quiet:
        return
    if map_path is not None:
        err.print(f"wrote the map to {map_path}")
    if options.correct is None:
        _rogue_notes(run, options.sites)
    if trail.info.truncated_from is not None:
        err.print(
            f"[yellow]note:[/] the text was {trail.info.truncated_from} tokens; kept the first {trail.n_tokens} (--truncate)"
        )


def _rogue_notes(run, sites) -> None:
    """Say when one dimension carries most of the cosine of a residual site (issue 9)."""
    for site in sites:
        if site in RESIDUAL_SITES:
            line = tt.geometry.rogue_layers(tt.geometry.diagnose_run(run, site))
            if line:
                err.print(f"[yellow]note:[/] {escape(line)}")


def _export(trail, fmt: str, out_path: Path | None, quiet: bool = False) -> None:
    if out_path is None:
        if fmt == "csv":
            trail.to_csv(sys.stdout)
        else:
            sys.stdout.write(trail.to_json() + "\n")
    else:
        path = trail.export(out_path, fmt)
        err.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if not quiet:
        _say_attention_left_out(trail)


def _say_attention_left_out(trail) -> None:
    if trail.attentions is not None and not tt.attention_included(trail):
        err.print(
            f"note: the attention table ({trail.attentions.size:,} rows, layers × heads × tokens²) is left out above "
            f"{tt.MAX_ATTENTION_ROWS:,} rows; from Python, trail.export(path, attention=True) includes it",
            highlight=False,
        )
