"""The built reference spaces of one model (:class:`SpaceCache`): residual spaces stay,
head spaces are kept up to a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tokentrail.adapters import Adapter
from tokentrail.engine.budget import SPACE_CACHE_BYTES
from tokentrail.engine.space_memory import release_scratch, scratch
from tokentrail.engine.spaces import VocabSpace, build_space


class SpaceCache:
    """Built spaces of one model. Residual spaces stay; head spaces are kept up to a byte budget.

    The budget counts everything the head spaces hold (:attr:`nbytes`): their (G, V, k)
    tables and their O(G V) norms and factors. Over it, tables go first: the space just
    built gives up its table (its dots then go through W_E: same numbers, V * d instead of
    V * k work per query), then the least recently used spaces give up theirs, so the
    spaces already kept stay and a repeated everything-trace finds them warm instead of
    evicting and rebuilding them in turn (before, the first warm everything-trace on
    SmolLM2 evicted and rebuilt value spaces on every call); only when the norms alone
    exceed the budget are the least recently used spaces dropped. A QK-normed key/query
    space (its rows made, not a product through W_E) is built with its table only when the
    table fits the room left; without it, it makes its rows a vocabulary chunk at a time.
    """

    def __init__(self, adapter: Adapter, max_bytes: int = SPACE_CACHE_BYTES):
        self.adapter = adapter
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # app sessions share one cache per model
        self._keep: dict[tuple, VocabSpace] = {}
        self._lru: OrderedDict[tuple, VocabSpace] = OrderedDict()

    def get(self, kind: str, layer: int | None = None) -> VocabSpace:
        with self._lock:
            return self._get(kind, layer)

    def _get(self, kind: str, layer: int | None) -> VocabSpace:
        key = (kind, layer)
        if key in self._keep:
            return self._keep[key]
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        # a QK-normed space makes its whole table only into the room left (else its rows a
        # vocabulary chunk at a time): never a table built only to be given up at once
        space = build_space(self.adapter, kind, layer, table_bytes=max(0, self.max_bytes - self.nbytes))
        if layer is None:
            self._keep[key] = space
            return space
        space.settle()  # its position-free norms now, so that the budget sees all it will hold
        self._lru[key] = space
        if self.nbytes > self.max_bytes:
            space.drop_table()
        for older in list(self._lru.values()):
            if self.nbytes <= self.max_bytes:
                break
            older.drop_table()
        while len(self._lru) > 1 and self.nbytes > self.max_bytes:
            self._lru.popitem(last=False)
        return space

    @property
    def nbytes(self) -> int:
        """Everything the head spaces hold (their tables and their O(G V) norms and factors):
        what ``max_bytes`` bounds."""
        with self._lock:
            return sum(s.nbytes for s in self._lru.values())

    def scratch(self):
        """:func:`scratch` of this cache's model: the block every matrix product of a trace writes into."""
        return scratch(self.adapter)

    def release_scratch(self) -> None:
        """:func:`release_scratch` of this cache's model."""
        release_scratch(self.adapter)
