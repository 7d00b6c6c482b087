"""The ``tokentrail`` command: a thin layer over the public API and ``present/``.

Each command lives in its own module (:mod:`.trace`, :mod:`.compare`, :mod:`.study`,
:mod:`.models`); this one makes them one program whose errors are one line."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from typer.core import TyperGroup

from tokentrail.cli.common import err
from tokentrail.cli.compare import compare
from tokentrail.cli.fit import fit
from tokentrail.cli.models import cache, models, serve, verify
from tokentrail.cli.study import report, study
from tokentrail.cli.trace import trace

try:  # recent typer vendors its own click (typer._click); older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException  # type: ignore[assignment]
Abort = typer.Abort


class _OneLineErrors(TyperGroup):
    """Usage errors as one line (``error: ...``, exit 2), like every other error here,
    instead of click's usage block or typer's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _name_metavars(self)
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


def _name_metavars(group: TyperGroup) -> None:
    """Help shows ``--model MODEL`` and ``TEXT``, not typer's ``<str>`` and ``{text}``."""
    for command in group.commands.values():
        for param in command.params:
            flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
            if param.metavar is None and not flag and param.name:
                param.metavar = param.name.upper()


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Follow every token's encoding through every layer and head of a transformer, "
    "measured against the model's own vocabulary.",
)
#: two or three examples under each command's --help (click keeps a paragraph after \b as written)
EXAMPLES = {
    "trace": [
        ("follow 'flies' through the bundled MiniLM", 'tokentrail trace "Time flies like an arrow." -t flies'),
        (
            "every site and space, with the logit lens",
            'tokentrail trace "The bank of the river" -m smollm2 --site all --lens',
        ),
        ("the logit lens as a picture", 'tokentrail trace "The bank of the river" -m smollm2 --lens --plot lens.html'),
    ],
    "models": [("what can be named", "tokentrail models")],
    "cache": [("what the cache holds", "tokentrail cache"), ("free it", "tokentrail cache --clear --yes")],
    "verify": [
        ("check the bundled decoder", "tokentrail verify smollm2"),
        ("your own checkpoint on your own text", 'tokentrail verify ./my-model --text "A text of yours."'),
    ],
    "serve": [("the page on this machine", "tokentrail serve"), ("with a second model", "tokentrail serve -m smollm2")],
    "study": [
        ("a corpus with gold word classes", "tokentrail study dev.conllu --out study-dev"),
        ("a column of a CSV, every site", "tokentrail study texts.csv --column text --site all --out study-csv"),
        ("pick up where an interrupted run stopped", "tokentrail study dev.conllu --out study-dev --resume"),
    ],
    "report": [
        ("one offline HTML page", "tokentrail report study-dev -o study-dev.html"),
        ("plus every figure as a PNG", "tokentrail report study-dev --png figures/"),
    ],
    "compare": [
        ("one word in two contexts", 'tokentrail compare "Time flies." "Fruit flies." -t flies'),
        ("two occurrences in one text", 'tokentrail compare "By the bank, a bank." -t bank:0 -t bank:1'),
        ("one text in two models", 'tokentrail compare "The bank closed." -m minilm -m smollm2 -t bank'),
    ],
    "fit": [
        ("an identity translator for MiniLM", "tokentrail fit dev.conllu --out fit-minilm"),
        ("a fitted lens for SmolLM2", "tokentrail fit dev.conllu -m smollm2 --kind prediction --out lens-smollm2"),
        ("pick up an interrupted fit", "tokentrail fit dev.conllu --out fit-minilm --resume"),
    ],
}


#: the one line each command gets in `tokentrail --help` (click would cut the docstring's first line)
SUMMARY = {
    "trace": "Trace a text: self-similarity, rank, neighbours per layer.",
    "models": "List the models tokentrail can name.",
    "cache": "Show (or --clear) tokentrail's cache.",
    "verify": "Check every SPEC identity on a model.",
    "serve": "Start the web app.",
    "study": "Study a corpus; written as Parquet while it runs.",
    "report": "Render a study as one offline HTML page.",
    "compare": "Compare two occurrences (or two models) layer by layer.",
    "fit": "Fit translators on a corpus (identity, or a fitted lens).",
}


def _epilog(name: str) -> str:
    lines = [f"  # {what}\n  {command}" for what, command in EXAMPLES[name]]
    return "\b\nExamples:\n" + "\n".join(lines)


for command in (trace, models, cache, verify, serve, study, report, compare, fit):  # the order --help lists them in
    app.command(short_help=SUMMARY[command.__name__], epilog=_epilog(command.__name__))(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
