"""The one way a page callback fails: every exception becomes a message in the page.

A :class:`~tokentrail.spec.errors.TokentrailError` is the user's to fix: its one line goes to
the status output and a toast. Anything else is logged with its traceback and the page
keeps serving. Every tab's callbacks (the main views, Compare, Map, Cross-attention,
Study) are wrapped with :func:`guarded`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from tokentrail.app import render
from tokentrail.app.session import Session
from tokentrail.spec.errors import TokentrailError

log = logging.getLogger("tokentrail.app")


def failed(message: str, n_outputs: int, status_at: int) -> tuple:
    """``n_outputs`` outputs left as they are, but the status one says ``message``."""
    out: list[Any] = [gr.skip()] * n_outputs
    out[status_at] = render.error(message)
    return tuple(out)


def guarded(n_outputs: int, status_at: int) -> Callable:
    """Turn every exception of a callback into a message in the page. A callback whose
    first argument is a :class:`Session` runs under its lock (one event at a time per
    session: a click never sees half an analysis)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            lock = args[0].lock if args and isinstance(args[0], Session) else contextlib.nullcontext()
            try:
                with lock:
                    return fn(*args, **kwargs)
            except TokentrailError as exc:
                gr.Warning(str(exc))
                return failed(str(exc), n_outputs, status_at)
            except Exception as exc:  # keep serving; the log has the traceback
                log.exception("callback %s failed", fn.__name__)
                msg = f"internal error ({type(exc).__name__}); the server log has the details. The page keeps working: try again or change the input"
                gr.Warning(msg)
                return failed(msg, n_outputs, status_at)

        return inner

    return wrap
