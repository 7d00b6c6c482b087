"""From the library's ``progress(...)`` callbacks to one progress display in the terminal.

The library reports progress as plain callbacks: ``models.load(progress=fn(message))``
(which also carries the GGUF conversion's messages) and ``analysis``'s
``progress(fraction, message)``. :class:`TerminalProgress` turns both into

- on a terminal: one live ``rich`` line per phase (spinner, what is happening, a bar with
  step counts, elapsed time and, for the analysis, the time left), updated in place;
- elsewhere (a pipe, a log file): one plain line per *new* message, never the same line
  twice in a row;
- with ``quiet``: nothing.

:class:`Steps` is the one home of that translation (a loading message; an analysis
fraction as *done/total* steps); :class:`TerminalProgress` draws it in a terminal,
:class:`CallbackProgress` hands it to any display (the web app's progress bar).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from tokentrail.spec.steps import analysis_steps  # noqa: F401 - the displays' name for it


class _Counted(ProgressColumn):
    """A column drawn only for a phase with a known number of steps: a loading phase (a
    message, no total) shows its spinner, message and elapsed time, never ``0/?`` or an
    ETA it cannot know."""

    def __init__(self, column: ProgressColumn):
        super().__init__()
        self.column = column

    def render(self, task: Task):
        return Text("") if task.total is None else self.column.render(task)


class Steps:
    """The library's progress callbacks as one kind of event, ``report(message, done,
    total)``: ``done``/``total`` are analysis steps (see :func:`analysis_steps`), or None
    while loading (a message only). Subclasses say where the events go."""

    _steps = 1

    def report(self, message: str, completed: int | None = None, total: int | None = None) -> None:
        raise NotImplementedError

    def loading(self, message: str) -> None:
        """``models.load(progress=...)``: messages only (a spinner and the elapsed time)."""
        self.report(message.rstrip("…. "))

    def start_analysis(self, steps: int) -> None:
        """The analysis is about to start and will report ``steps`` equal steps."""
        self._steps = max(int(steps), 1)

    def analysis(self, fraction: float, message: str) -> None:
        """``analysis.Progress``: a fraction of ``steps`` done and what runs now."""
        done = min(self._steps, round(fraction * self._steps))
        self.report(message, done, self._steps)


class CallbackProgress(Steps):
    """Progress events to a function ``fn(message, done, total)`` (the web app's bar)."""

    def __init__(self, fn: Callable[[str, int | None, int | None], None]):
        self.fn = fn

    def report(self, message: str, completed: int | None = None, total: int | None = None) -> None:
        self.fn(message, completed, total)


class TerminalProgress(Steps):
    """A context manager whose :meth:`loading` and :meth:`analysis` are library callbacks."""

    def __init__(self, console: Console, *, quiet: bool = False, live: bool | None = None):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last: str | None = None
        self._steps = 1
        self._start = time.monotonic()

    def __enter__(self) -> TerminalProgress:
        if self.live and not self.quiet:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                _Counted(BarColumn()),
                _Counted(MofNCompleteColumn()),
                TimeElapsedColumn(),
                _Counted(TextColumn("eta")),
                _Counted(TimeRemainingColumn()),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def _say(self, message: str, completed: int | None = None, total: int | None = None) -> None:
        if self.quiet:
            return
        if self._progress is None:
            if message != self._last:
                step = f" ({completed}/{total})" if total and completed is not None and total > 1 else ""
                self.console.print(f"[dim]… {message}{step}[/]", highlight=False)
            self._last = message
            return
        if self._task is None or message != self._last and total is None:
            self._new_task(message, total)
        self._progress.update(self._task, description=message, completed=completed or 0, total=total)
        self._last = message

    def _new_task(self, message: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(message, total=total)

    def note(self, message: str) -> None:
        """A one-off message between phases (printed above the live line)."""
        if not self.quiet:
            self.console.print(f"[dim]… {message}[/]", highlight=False)

    report = _say

    def start_analysis(self, steps: int) -> None:
        super().start_analysis(steps)
        if self._progress is not None:
            self._new_task("running the model", self._steps)
