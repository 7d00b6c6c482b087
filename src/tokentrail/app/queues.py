"""Who runs model work when: a queue per model, so long analyses of one model never take
the places another model's users need (issue 11, point 18).

Two levels:

- **Gradio's workers**: every event of the page shares one concurrency id with
  ``WORKERS`` slots (:data:`EVENTS`, the keyword arguments each event is registered
  with); beyond them events wait in Gradio's queue (``max_queue``), and beyond that
  Gradio answers "Queue is full".
- **Per model**: model work (loading, a forward pass, a layer's heads, the lens, the
  walkthrough) runs inside :func:`concurrency_for` ``(model)``: at most ``PER_MODEL``
  at once per model, at most ``WAITING_PER_MODEL`` more waiting for it; a further
  request for that model is refused at once with a "busy" message. Pure re-renders of
  a cached result (a token click on the layers tab) take no model slot at all.

So one model's users hold at most ``PER_MODEL + WAITING_PER_MODEL`` workers; with
``WORKERS`` above that times the models loaded at once (``tokentrail.MAX_LOADED``), users of
another model, and clicks, always find a worker. Before this, two SmolLM2 analyses held
both of two slots (one waiting for the other's model lock) and every other page stalled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import tokentrail as tt
from tokentrail.spec.errors import InputError

PER_MODEL = 1  # model work at once per model (a model's lock serialises its passes anyway)
WAITING_PER_MODEL = 4  # more requests that may wait for one model; beyond: "busy"
WORKERS = (PER_MODEL + WAITING_PER_MODEL) * tt.MAX_LOADED + 2  # Gradio's slots for every event
EVENTS: dict[str, Any] = dict(concurrency_id="tokentrail", concurrency_limit=WORKERS)  # every event's queue


class ModelBusy(InputError):
    """A model already has as many requests as it may hold (running and waiting)."""


class _ModelQueue:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.waiting = 0
        self.holders: set[int] = set()  # threads inside (nested model work re-enters)


_queues: dict[str, _ModelQueue] = {}
_queues_lock = threading.Lock()


def _queue(model: str) -> _ModelQueue:
    with _queues_lock:
        return _queues.setdefault(model, _ModelQueue())


@contextmanager
def concurrency_for(*models: str) -> Iterator[None]:
    """Run the body as one request of each of ``models`` (names as ``tokentrail.load`` takes
    them): wait while ``PER_MODEL`` others run, or raise :class:`ModelBusy` (a message
    for the page) when ``WAITING_PER_MODEL`` already wait. Re-entrant within a thread;
    other models are never waited for. Several models (a comparison) are taken in one
    fixed order, so two requests never wait for each other.

    Every tab wraps its model work in it (``with concurrency_for(session.model): ...``)
    and registers its events with ``**EVENTS``.
    """
    with ExitStack() as stack:
        for name in sorted({str(m) for m in models}):
            stack.enter_context(_one(name))
        yield


@contextmanager
def _one(model: str) -> Iterator[None]:
    q = _queue(model)
    me = threading.get_ident()
    with q.cond:
        if me in q.holders:  # nested model work of the same request
            nested = True
        else:
            nested = False
            if q.running >= PER_MODEL and q.waiting >= WAITING_PER_MODEL:
                raise ModelBusy(
                    f"{model} is busy with {q.running + q.waiting} requests from other pages; "
                    "try again in a few seconds (other models are not affected)"
                )
            q.waiting += 1
            try:
                while q.running >= PER_MODEL:
                    q.cond.wait()
            finally:
                q.waiting -= 1
            q.running += 1
            q.holders.add(me)
    try:
        yield
    finally:
        if not nested:
            with q.cond:
                q.running -= 1
                q.holders.discard(me)
                q.cond.notify()


def load(model: str) -> tuple[int, int]:
    """(running, waiting) requests of ``model`` now (for tests and the server log)."""
    q = _queue(str(model))
    with q.cond:
        return q.running, q.waiting
