"""``tokentrail fit``: a translator fitted exactly from a corpus (issue 26), inputs and
resumption as ``tokentrail study``'s."""

from __future__ import annotations

from pathlib import Path

import typer

import tokentrail as tt
from tokentrail.cli.common import err, one_line
from tokentrail.cli.study import _StudyProgress
from tokentrail.spec.errors import InputError, TokentrailError
from tokentrail.spec.fileio import CORPUS_FILES, check_input_file
from tokentrail.spec.options import RESIDUAL_SITES, expand_choice


def fit(
    source: Path = typer.Argument(
        ..., help="The corpus: text (one per line), .conllu, .csv/.tsv or .parquet (with --column)."
    ),
    model: str = typer.Option(
        "minilm", "--model", "-m", help="Bundled name (see `tokentrail models`), hub id, or local folder."
    ),
    out_dir: Path = typer.Option(
        Path("translator"), "--out", "-o", help="Folder for the translator (safetensors + JSON) and its checkpoint."
    ),
    kind: str = typer.Option(
        "identity",
        "--kind",
        help="identity (each site -> the token's own original encoding) or prediction (-> the last layer's residual: a fitted lens).",
    ),
    site: str = typer.Option(
        "attn_resid", "--site", help="Residual sites, comma-separated (layer_out for a prediction lens), or 'all'."
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Fit only these layers (e.g. 0,3,5 or 2-4): less memory. Default: every layer."
    ),
    ridge: str = typer.Option(
        "1e-3",
        "--ridge",
        help="Relative ridge λ (times the mean variance per dimension); several, comma-separated: chosen on --holdout.",
    ),
    holdout: float = typer.Option(0.0, "--holdout", help="Share of the texts held out to choose among --ridge values."),
    special: bool = typer.Option(False, "--special", help="Fit on special tokens ([CLS], <s>, ...) too."),
    batch: int = typer.Option(32, "--batch", min=1, help="Texts per batch."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Fit on at most this many texts."),
    column: str | None = typer.Option(None, "--column", help="CSV/Parquet: the column holding the texts."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split."),
    causal: bool | None = typer.Option(None, "--causal/--no-causal", help="Decoders: keep or disable the causal mask."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fit in --out from its checkpoint."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad record instead of skipping it."),
    engine: str = typer.Option("local", "--engine", help="local, or ray (batches as tasks on actors)."),
    address: str | None = typer.Option(None, "--address", help="With --engine ray: an existing cluster's address."),
    workers: int = typer.Option(1, "--workers", min=1, help="With --engine ray and no GPU: CPU actors to start."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps or auto."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) weights (trusted only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fit a translator on a corpus: per layer, the affine map (ridge least squares, exact
    float64 sums in one pass) from a site to the original encodings or to the last layer."""
    bar = _StudyProgress(err, quiet, verb="fitting")
    try:
        check_input_file(source, CORPUS_FILES)
        ridges = _floats(ridge, "--ridge")
        chosen = None if layers is None else _layers(layers)

        def memory(nbytes: int) -> None:
            if not quiet:
                err.print(f"the fit holds {tt.human_bytes(nbytes)} of float64 sums")

        with bar:
            t = tt.fit(
                source,
                model,
                out_dir,
                kind=kind,
                sites=expand_choice(site, RESIDUAL_SITES),
                layers=chosen,
                ridge=ridges,
                holdout=holdout,
                special=special,
                batch=batch,
                limit=limit,
                column=column,
                seed=seed,
                causal=causal,
                resume=resume,
                strict=strict,
                engine=engine,
                address=address,
                workers=workers,
                allow_pickle=allow_pickle,
                device=device,
                progress=bar.update,
                on_start=bar.start,
                on_load=bar.loading,
                on_memory=memory,
            )
    except (TokentrailError, OSError) as exc:  # ours, and what the checks could not foresee: one line
        one_line(exc)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted:[/] the sums so far are kept in {out_dir}; rerun with --resume to continue")
        raise typer.Exit(130) from None
    chosen_ridges = sorted({f["ridge"] for f in t.meta["fit"].values()})
    article = "an" if t.kind == "identity" else "a"
    err.print(
        f"wrote {out_dir}: {article} {t.kind} translator of {', '.join(t.sites)} at {len(t.meta['layers'])} layers, "
        f"from {t.meta['tokens']:,} tokens of {t.meta['texts']:,} texts (ridge {', '.join(map(str, chosen_ridges))})"
    )


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} takes numbers, comma-separated, not {text!r}") from None


def _layers(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise InputError(f"--layers: a range goes up (2-4), not {part.strip()!r}")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise InputError(f"--layers takes layer numbers (0,3,5 or 2-4), not {text!r}") from None
    return out
