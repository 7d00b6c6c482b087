"""Every page's session together: their cached results stay bounded as a whole, and an
idle page lets go of its own (:class:`SessionPool`)."""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict

import tokentrail as tt
from tokentrail.app.session import Session

TOTAL_BYTES = 3_000_000_000  # every session's cached results together (least recently used dropped)
IDLE_S = 900  # a session unused this long loses its cached results


class SessionPool:
    """Every page's session, so that their cached results stay bounded together.

    :meth:`use` is called at the start of each event and :meth:`settle` after it: a
    session unused for ``idle_s`` loses its cached results, and while all sessions
    together hold more than ``total_bytes``, the least recently used one loses its own
    (never the one being served, nor one busy with an event). Its page says why on its
    next click. Sessions are held weakly: Gradio's state expiry still frees them.
    :meth:`sweep_every` also clears idle sessions when no page sends an event.
    """

    def __init__(self, total_bytes: int = TOTAL_BYTES, idle_s: float = IDLE_S):
        self.total_bytes = int(total_bytes)
        self.idle_s = float(idle_s)
        self._lock = threading.Lock()
        self._sessions: OrderedDict[int, weakref.ref] = OrderedDict()  # least recently used first

    def use(self, session: Session) -> Session:
        session.last_used = time.monotonic()
        with self._lock:
            self._sessions[id(session)] = weakref.ref(session)
            self._sessions.move_to_end(id(session))
        return session

    def sessions(self) -> list[Session]:
        """The live sessions, least recently used first."""
        with self._lock:
            alive = [(key, ref()) for key, ref in self._sessions.items()]
            for key, s in alive:
                if s is None:
                    del self._sessions[key]
        return [s for _, s in alive if s is not None]

    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.sessions())

    def sweep_every(self, seconds: float) -> threading.Event:
        """Clear idle sessions every ``seconds`` from a daemon thread, so that a quiet
        server lets go of idle results too (a click does it as well); returns the Event
        that stops it. The thread holds the pool weakly: it ends with the pool."""
        stop, pool_ref = threading.Event(), weakref.ref(self)

        def sweep() -> None:
            while not stop.wait(seconds):
                pool = pool_ref()
                if pool is None:
                    return
                pool.settle(cap=False)
                del pool

        threading.Thread(target=sweep, name="tokentrail-idle-sweep", daemon=True).start()
        return stop

    def settle(self, current: Session | None = None, *, cap: bool = True) -> list[Session]:
        """Evict idle sessions, then (with ``cap``) least recently used ones while over the
        cap; returns the sessions evicted. Without ``cap`` nothing is measured (cheap
        enough for every click; the cap is checked after each analysis)."""
        now = time.monotonic()
        sessions = [s for s in self.sessions() if s is not current]
        sizes = {id(s): s.nbytes for s in sessions} if cap else {}
        total = sum(sizes.values()) + (current.nbytes if cap and current is not None else 0)
        evicted = []
        for s in sessions:  # least recently used first
            idle = now - s.last_used > self.idle_s
            if not (idle or (cap and total > self.total_bytes)) or s.trail is None and not s._trails:
                continue
            if not s.lock.acquire(blocking=False):  # busy with an event: leave it
                continue
            try:
                why = (
                    f"this page was idle for over {self.idle_s / 60:.0f} minutes and its results were cleared"
                    if idle
                    else f"this page's results were cleared to make room for other users (the server keeps {tt.human_bytes(self.total_bytes)} of results)"
                )
                total -= s.evict(why)
                evicted.append(s)
            finally:
                s.lock.release()
        return evicted
