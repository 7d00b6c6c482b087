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
for command in (trace, models, cache, verify, serve, study, report, compare, fit):  # the order --help lists them in
    app.command()(command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
