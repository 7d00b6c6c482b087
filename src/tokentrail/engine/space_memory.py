"""What a reference space keeps in memory, and for how long: the policy beside the exact
maths of :mod:`tokentrail.engine.spaces`.

- :class:`SpaceMemory`, the part of a :class:`~tokentrail.engine.spaces.VocabSpace` that
  decides what it holds: a head space's ``(G, V, k)`` table, given up to the
  :class:`~tokentrail.engine.space_cache.SpaceCache` budget (and rebuilt for one call when
  that pays), and the memo of a moving residual space's per-position norms, up to
  :data:`~tokentrail.engine.budget.POSITION_MEMO_BYTES`;
- the per-model memo of tables every space shares (:func:`adapter_memo`) and the scratch
  block the matrix products of a trace write into (:func:`scratch`).

Every number is the same whatever is kept: the policy changes the work, not the results.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import Tensor

from tokentrail.adapters import Adapter, Norm
from tokentrail.engine import budget

_Space = TypeVar("_Space", bound="SpaceMemory")


@dataclass(frozen=True)
class PositionStats:
    """Per-position quantities of a space, for the unique positions asked for."""

    positions: Tensor  # (P,)
    y: Tensor | None  # (P, d) position offsets (centred if LayerNorm)
    sigma: Tensor | None  # (P, V)
    sq_norm: Tensor  # (P, G, V) squared row norms
    Py: Tensor | None = None  # (P, G, k) M y_p, the projected position offset
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # derived tables (cosine_scales)


class SpaceMemory:
    """The memory policy of a :class:`~tokentrail.engine.spaces.VocabSpace` (a mixin: it
    reads the space's tables ``x``, ``M``, ``P``, its norms and :meth:`position_stats`)."""

    # what the mixin reads from the space it is mixed into (set in VocabSpace.__init__)
    x: Tensor  # (V, d)
    M: Tensor | None  # (G, k, d); None for residual spaces
    P: Tensor | None  # (G, V, k) or (1, V, d); None when not kept
    P_sq: Tensor  # (G, V)
    P_c: Tensor  # (G, V)
    c: Tensor  # (G, k)
    moves: bool
    made: bool  # rows made a vocabulary chunk at a time when no table is held (QK-norm)
    _static: tuple[Tensor, Tensor | None, dict] | None  # position-free (norms, sigma, memo)

    if TYPE_CHECKING:  # VocabSpace's properties and methods, for the type checker only

        @property
        def vocab_size(self) -> int: ...

        @property
        def through_embeddings(self) -> bool: ...

        def position_stats(self, positions: Tensor) -> PositionStats: ...

        def cosine_scales(self, stats: PositionStats) -> tuple[Tensor, Tensor | None]: ...

    def _init_memo(self) -> None:
        """An empty position memo (:meth:`_remember`)."""
        self._at: dict[int, int] = {}  # position -> its memo slot: residual spaces that move (_residual_stats)
        self._slots: tuple | None = None  # the memo: (slots, ...) sigma, |row|^2, cosine factors a and b (or None)
        self._memo_lock = threading.Lock()  # a slot is taken and filled by one trace at a time
        self._at_bytes = 0

    def for_queries(self: _Space, count: int) -> _Space:
        """This space for scoring ``count`` query columns in one call.

        A head space that gave up its ``(G, V, k)`` table (the :class:`~tokentrail.engine.space_cache.SpaceCache` budget)
        scores a query through ``W_E`` (``V x d`` work); when rebuilding the table costs
        less than that for ``count`` columns (``G k d`` against ``count (d - k)`` per row),
        the answer is a copy holding the table for this call only, so many tokens cost
        ``V x k`` each, not ``V x d``. Otherwise the space itself."""
        if not self._table_pays(count):
            return self
        G, k, _ = self.M.shape
        table = torch.empty(G, self.vocab_size, k, device=self.x.device)
        for g in range(G):  # one (V, k) product per group, written in place: no second table
            torch.mm(self.x, self.M[g].T, out=table[g])
        twin = copy.copy(self)
        twin.P = table
        return twin

    def _table_pays(self, count: int) -> bool:
        """Whether a head space without its table should rebuild it for ``count`` columns."""
        if self.P is not None or self.M is None or self.made:
            return False
        G, k, d = self.M.shape
        return count * (d - k) > G * k * d

    def through_embeddings_for(self, count: int) -> bool:
        """Whether ``for_queries(count)`` scores through the embedding table (without making anything)."""
        return self.through_embeddings and not self._table_pays(count)

    def settle(self) -> None:
        """Compute now what a space whose rows never move keeps after its first use (the
        position-free norms and cosine factors), so that :attr:`nbytes` counts it all."""
        if not self.moves:
            self.cosine_scales(self.position_stats(torch.zeros(1, dtype=torch.long, device=self.x.device)))

    def drop_table(self) -> bool:
        """Free the (G, V, k) table when the rows never move (dots then go through W_E; same numbers)."""
        if self.P is None or self.moves:
            return False
        self.P = None
        return True

    @property
    def nbytes(self) -> int:
        """Memory held by this space's own tables (the shared embedding table not counted)."""
        static = () if self._static is None else (self._static[0], self._static[1], *self._static[2].get("cosine", ()))
        held = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (self.P, self.M, self.P_sq, self.P_c, self.c, *static)
            if t is not None
        }
        return self._at_bytes + sum(
            held.values()
        )  # each buffer once (without a norm, the two cosine factors are one tensor)

    def _remember(self, plist: list[int], part: tuple) -> None:
        """Copy the rows of new positions ``plist`` (``part``: sigma, squared norms, cosine
        factors a and b, each (P, ...) or None) into free memo slots, while under the bound."""
        size = sum(t[0].numel() * 4 for t in part if t is not None)  # one position's rows
        if self._slots is None:
            cap = budget.POSITION_MEMO_BYTES // max(size, 1)
            if cap == 0:
                return
            self._slots = tuple(None if t is None else t.new_empty((cap, *t.shape[1:])) for t in part)
        cap = next(t for t in self._slots if t is not None).shape[0]
        for j, p in enumerate(plist):
            if p in self._at:
                continue
            slot = len(self._at)
            if slot >= cap or self._at_bytes + size > budget.POSITION_MEMO_BYTES:
                break
            for store, t in zip(self._slots, part):
                if store is not None:
                    store[slot] = t[j]
            self._at[p] = slot  # after its rows: a reader that finds p finds them whole
            self._at_bytes += size

    def _recall(self, plist: list[int], missing: list[int], part: tuple | None, device) -> tuple:
        """The (sigma, squared norms, cosine factors a and b) of positions ``plist``: the
        memo's rows for those kept, ``part``'s (the rows just computed, or None) for the
        positions at ``missing`` (indices into ``plist``)."""
        if all(p in self._at for p in plist):  # views of the memo when in consecutive slots
            at = _span([self._at[p] for p in plist], device)
            fields = tuple(None if t is None else t[at] for t in self._slots)
        elif len(missing) == len(plist):  # every position new: the call's own tensors
            fields = part
        else:  # some kept, some not (the memo is full): the two parts copied in
            fresh = set(missing)
            old = [i for i in range(len(plist)) if i not in fresh]
            at = _span([self._at[plist[i]] for i in old], device)
            new, old_at = (_span(v, device) for v in (missing, old))
            fields = tuple(
                None if t is None else _joined(len(plist), (new, t), (old_at, kept[at]))
                for t, kept in zip(part, self._slots)
            )
        return fields


def _span(index: list[int], device) -> slice | Tensor:
    """``index`` as a slice when it is a run of consecutive integers (indexing is then a
    view, or one contiguous copy), else as a tensor."""
    start = index[0] if index else 0
    if index == list(range(start, start + len(index))):
        return slice(start, start + len(index))
    return torch.tensor(index, device=device)


def _joined(count: int, *parts: tuple[slice | Tensor, Tensor]) -> Tensor:
    """A (count, ...) tensor whose rows ``where`` are ``rows``, for each ``(where, rows)`` of ``parts``."""
    first = parts[0][1]
    out = first.new_empty((count, *first.shape[1:]))
    for where, rows in parts:
        out[where] = rows
    return out


def adapter_memo(adapter: Adapter) -> dict:
    # per-adapter memo of V x d tables every space shares (the float32 and centred W_E), and
    # the scratch block between traces
    memo = getattr(adapter, "_tokentrail_tables", None)
    if memo is None:
        memo = {}
        adapter._tokentrail_tables = memo
    return memo


def shared_table(adapter: Adapter, centred: bool) -> Tensor:
    """The model's embedding table W_E in float32 (V, d), centred per row for a LayerNorm: one copy per model, shared by every space."""
    memo = adapter_memo(adapter)
    if centred not in memo:
        x = adapter.embedding_table().float()
        memo[centred] = x - x.mean(-1, keepdim=True) if centred else x
    return memo[centred]


def shared_normed_table(adapter: Adapter, norm: Norm, centred: bool) -> Tensor:
    """``norm(W_E)`` in float32 (V, d), centred per row for a LayerNorm after it: the rows of
    a position-free embedding stage that ends in a norm (ModernBERT's ``LN_emb(W_E[v])``),
    which a pre-norm layer's head spaces then read through their own norm. One copy per model."""
    memo = adapter_memo(adapter)
    key = ("normed", centred)
    if key not in memo:
        x = norm(shared_table(adapter, False))
        memo[key] = x - x.mean(-1, keepdim=True) if centred else x
    return memo[key]


def shared_sq_norms(adapter: Adapter, x: Tensor) -> Tensor:
    """(V,) squared row norms of a shared table ``x``, once per table."""
    memo = adapter_memo(adapter)
    key = ("sq", x.data_ptr())
    if key not in memo:
        memo[key] = torch.linalg.vector_norm(x, dim=-1).pow_(2)
    return memo[key]


_scratch_lock = threading.Lock()


@contextmanager
def scratch(adapter: Adapter) -> Iterator[Callable[[int], Tensor]]:
    """Lend the model's scratch block to one trace: ``take(numel)`` gives a flat float32
    buffer of ``numel`` elements, the start of one block of :data:`~tokentrail.engine.budget.BLOCK_BYTES`
    kept from trace to trace, so its pages are already mapped (a fresh 128 MiB block
    costs about 30 ms of page faults on this CPU, in the first matrix product written
    into it). Each ``take`` reuses the block: a buffer taken before is then overwritten.
    A larger ask, or a second trace while the block is lent, gets a buffer of its own."""
    memo = adapter_memo(adapter)
    with _scratch_lock:
        block = memo.pop("scratch", None)
    device = adapter.device

    def take(numel: int) -> Tensor:
        nonlocal block
        if numel * 4 > budget.BLOCK_BYTES:
            return torch.empty(numel, device=device)
        if block is None:
            block = torch.empty(budget.BLOCK_BYTES // 4, device=device)
        return block[:numel]

    try:
        yield take
    finally:
        if block is not None:
            with _scratch_lock:
                memo.setdefault("scratch", block)


def release_scratch(adapter: Adapter) -> None:
    """Let the model's scratch block go (the next trace maps a new one): the logit lens
    does, so that its chunks take the block's place instead of adding to it."""
    with _scratch_lock:
        adapter_memo(adapter).pop("scratch", None)
