"""Reference vocabularies ("spaces") as exact factorised matrices.

Every space here has rows of one shape, per group ``g`` (a head, or one group for the
residual spaces) and per position ``p``::

    R_g(v, p) = M_g (x_v + y_p) / sigma_v(p) + c_g

* ``x_v`` is the token's embedding row and ``y_p`` the embedding stage's position offset,
  both centred when the norm in front is a LayerNorm;
* ``sigma_v(p) = sqrt(|x_v + y_p|^2 / d + eps)`` for a LayerNorm/RMSNorm, 1 without one;
* ``M_g = W_g diag(gamma)`` and ``c_g = W_g beta + b_g``, with ``W_g``/``b_g`` a head's
  value/key/query map (identity and zero for the residual spaces).

So ``Emb(v, p) = LN(W_E[v] + q_p)`` and ``ValueProj(LN_l(...))`` never need a
``(positions x V x d)`` tensor: a dot product with a query ``r`` is
``(M^T r) . x_v + (M^T r) . y_p`` over sigma, plus ``r . c`` (one ``V x d`` matmul for all
queries), and a squared norm needs ``P = x M^T`` (``V x d``, computed once per space) and
``O(V d)`` work per position (SPEC "Exactness and cost").

Rotary spaces (key/query of RoPE models) rotate the *query* by the inverse rotation at
the row's position instead of rotating every row; rotations keep norms. The model's RoPE
may also scale (its ``attention_scaling``: YaRN, LongRoPE): that factor is folded into
``M`` and ``c``, and the rotation the space applies is the pure one.

QK-norm (Qwen3, OLMo 2: a norm on each head's, or all heads', projected q/k before RoPE)
makes a row a non-linear function of ``x_v``, ``norm(M x_v / sigma_v + c)``; these models
have no position offsets, so the rows never move. Such a space is *made* (``made``):
``P`` holds the normed rows (``sigma`` 1, ``c`` 0), and no product through ``W_E`` can
stand in for it. The rows are made a vocabulary chunk at a time
(:data:`~tokentrail.engine.budget.TABLE_CHUNK_BYTES` of rows): the squared norms at build,
and the products of every call when the space holds no whole table. The whole
``(G, V, k)`` table is kept only when it fits the space cache's budget (a real Qwen3's query
space, 16 x 151,936 x 128 float32 = 1.2 GB a layer, does not), and may be given up like
any head space's; the numbers are the same either way (the table is filled from the same
chunks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from tokentrail.adapters import Adapter, Norm
from tokentrail.adapters.base import HeadNorm
from tokentrail.engine import budget
from tokentrail.engine.scoring import inverse_norms
from tokentrail.engine.space_memory import (
    PositionStats,
    SpaceMemory,
    adapter_memo,
    shared_normed_table,
    shared_sq_norms,
    shared_table,
)
from tokentrail.engine.space_products import factorise, finish_sq, head_products, in_blocks, norm_scales, scale_rows
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import HEAD_SPACES as HEAD_SPACE_KINDS

SpaceKind = Literal["embeddings", "encodings", "value", "key", "query"]
SPACE_KINDS: tuple[str, ...] = ("embeddings", "encodings", "value", "key", "query")


class VocabSpace(SpaceMemory):
    """All V rows of one reference space, at any position, in factorised form."""

    def __init__(
        self,
        name: str,
        adapter: Adapter,
        x: Tensor,
        *,
        norm: Norm | None,
        positional: bool,
        proj_weight: Tensor | None = None,
        proj_bias: Tensor | None = None,
        head_norm: HeadNorm | None = None,
        rotary=None,
        table_bytes: int | None = None,
    ):
        self.name = name
        self._adapter = adapter
        self.norm_kind = None if norm is None else norm.kind
        self.eps = 0.0 if norm is None else norm.eps
        centre = self.norm_kind == "layernorm"
        self.x = x  # (V, d), float32, centred by the caller when centre is True
        self.positional = positional
        self._centre = centre
        self.d = self.x.shape[1]
        gamma = None if norm is None else norm.weight.float()
        beta = None if norm is None or norm.bias is None else norm.bias.float()
        self.rotary = rotary
        #: the rows are made (QK-norm): P is the whole row, never a product through W_E
        self.made = head_norm is not None
        # residual space: gamma, M None, c (1, d), P (1, V, d); head space: M (G, k, d), c (G, k), P (G, V, k)
        self.gamma, self.M, self.c, P = factorise(self.x, gamma, beta, proj_weight, proj_bias, table=not self.made)
        self.x_sq = shared_sq_norms(adapter, self.x)  # (V,)
        scale = 1.0 if rotary is None else rotary.scale
        if head_norm is not None:
            self._make_rows(adapter, head_norm, scale, table_bytes)
        else:
            assert P is not None
            self.P = P
            if scale != 1.0:  # RoPE's attention_scaling multiplies every rotated row
                self.P.mul_(scale)
                self.c = self.c * scale
                self.M = None if self.M is None else self.M * scale
            self.P_sq = torch.linalg.vector_norm(self.P, dim=-1).pow_(2)  # (G, V)
            self.P_c = torch.bmm(self.P, self.c[:, :, None])[..., 0]  # (G, V)
        self.groups, self.dim = self.P_sq.shape[0], self.c.shape[1]
        self.c_sq = self.c.pow(2).sum(-1)  # (G,)
        self._static = None  # position-free norms, kept after the first position_stats call
        self._init_memo()
        self.moves = (
            positional and adapter.position_offset(torch.zeros(1, dtype=torch.long, device=x.device)) is not None
        )
        if self.M is None and not self.moves:
            # residual space whose rows never move: P = x * gamma is a second V x d copy,
            # and queries scaled by gamma against x cost the same, so it is not kept
            self.P = None
        # head spaces keep P (G, V, k): a query then costs V * k instead of V * d, and the
        # query heads of a KV group share their group's table (SpaceCache bounds the memory)

    def _make_rows(self, adapter: Adapter, head_norm: HeadNorm, scale: float, table_bytes: int | None) -> None:
        """Set up a made space (QK-norm): its rows' squared norms, a vocabulary chunk at a
        time (:meth:`made_chunks`), and the whole table ``P`` only when it fits
        ``table_bytes`` (default :data:`~tokentrail.engine.budget.SPACE_CACHE_BYTES`); then
        ``sigma`` and ``c`` become 1 and 0 (the rows hold them)."""
        if adapter.position_offset(torch.zeros(1, dtype=torch.long, device=self.x.device)) is not None:
            raise ModelError(f"{adapter.family}: a QK-norm after position embeddings does not factorise")
        assert self.M is not None
        G, k, _ = self.M.shape
        V = self.vocab_size
        self._row_form = (self.M, self.c, self.norm_kind is not None, self.eps, head_norm, scale)
        limit = budget.SPACE_CACHE_BYTES if table_bytes is None else table_bytes
        table = torch.empty(G, V, k, device=self.x.device) if G * V * k * 4 <= limit else None
        self.P = None
        self.P_sq = torch.empty(G, V, device=self.x.device)
        for lo, hi, rows in self.made_chunks():
            self.P_sq[:, lo:hi] = torch.linalg.vector_norm(rows, dim=-1).pow_(2)
            if table is not None:
                table[:, lo:hi] = rows
        self.P = table
        self.c = torch.zeros_like(self.c)
        self.P_c = torch.zeros_like(self.P_sq)
        self.norm_kind, self.eps = None, 0.0

    def _made_rows(self, x: Tensor, x_sq: Tensor) -> Tensor:
        """The made rows ``scale * norm(M x / sigma + c)`` of (m, d) embedding rows ``x``
        (``x_sq`` their (m,) squared norms): (G, m, k)."""
        M, c, normed, eps, head_norm, scale = self._row_form
        G, k, d = M.shape
        y = (x @ M.reshape(G * k, d).T).view(-1, G, k)  # (m, G, k)
        if normed:
            y.div_((x_sq / d + eps).sqrt()[:, None, None])
        y = head_norm(y.add_(c)).transpose(0, 1)  # norms each (v, all groups)
        return y.mul_(scale) if scale != 1.0 else y

    def made_chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        """A made space's rows, a vocabulary chunk at a time: ``(lo, hi, rows)`` with rows
        (G, hi - lo, k), views of the whole table when the space holds it, else made now
        (about :data:`~tokentrail.engine.budget.TABLE_CHUNK_BYTES` each)."""
        G, k, _ = self._row_form[0].shape
        V = self.vocab_size
        step = max(1, budget.TABLE_CHUNK_BYTES // (4 * G * k))
        table = self.P  # once: the space cache may drop it meanwhile (another session's trace)
        for lo in range(0, V, step):
            hi = min(V, lo + step)
            rows = table[:, lo:hi] if table is not None else self._made_rows(self.x[lo:hi], self.x_sq[lo:hi])
            yield lo, hi, rows

    def same_rows(self, other: VocabSpace) -> bool:
        """Whether ``other`` has this space's rows at every position, computed the same way
        (e.g. ``embeddings`` and ``encodings`` of a model with neither position embeddings
        nor an embedding norm): its scores are then this space's, bit for bit."""
        if other is self:
            return True
        plain = lambda s: s.M is None and not s.moves and s.rotary is None  # noqa: E731
        return (
            plain(self)
            and plain(other)
            and self.x is other.x
            and self.norm_kind == other.norm_kind
            and self.eps == other.eps
            and torch.equal(self.gamma, other.gamma)
            and torch.equal(self.c, other.c)
        )

    @property
    def vocab_size(self) -> int:
        return self.x.shape[0]

    # ---- per position --------------------------------------------------------
    def _offsets(self, positions: Tensor) -> Tensor | None:
        if not self.positional:
            return None
        y = self._adapter.position_offset(positions)
        if y is None:
            return None
        y = y.float()
        return y - y.mean(-1, keepdim=True) if self._centre else y

    def position_stats(self, positions: Tensor) -> PositionStats:
        """Squared norms of every row at each of ``positions`` (P,): O(P V d).

        |R_g(v,p)|^2 = |P_v + M y_p|^2 / sigma^2 + 2 (P_v + M y_p) . c / sigma + |c|^2,
        computed in a contiguous (G, P, V) layout with in-place passes.
        """
        y = self._offsets(positions)
        if y is None:
            return self._static_stats(positions)
        if self.M is None:
            return self._residual_stats(positions, y)
        return self._moving_stats(positions, y)

    def _static_stats(self, positions: Tensor) -> PositionStats:
        """Rows that do not move with position: the norms (and the cosine factors derived
        from them, in memo) are computed on the first call and serve every position after."""
        P_cnt = positions.shape[0]
        if self._static is None:
            sigma1 = (self.x_sq / self.d + self.eps).sqrt()[None] if self.norm_kind else None  # (1, V)
            t = finish_sq(self.P_sq[:, None, :].clone(), self.P_c[:, None, :], sigma1, self.c_sq)  # (G, 1, V)
            self._static = (t.transpose(0, 1), sigma1, {})
        sq, sigma1, memo = self._static
        sigma = None if sigma1 is None else sigma1.expand(P_cnt, -1)
        return PositionStats(positions, None, sigma, sq.expand(P_cnt, -1, -1), None, memo)

    def _moving_stats(self, positions: Tensor, y: Tensor) -> PositionStats:
        """Norms of the rows at each position: two (P x d) @ (d x V) products."""
        sigma = norm_scales(self.x, self.x_sq, y, self.eps) if self.norm_kind else None  # (P, V)
        Pp = self._project(y)  # (P, G, k)
        t = torch.bmm(Pp.transpose(0, 1), self.P.transpose(1, 2))  # (G, P, V): M y_p . P_v
        t.mul_(2).add_(self.P_sq[:, None, :]).add_(Pp.pow(2).sum(-1).T[:, :, None])
        c_term = self.P_c[:, None, :] + torch.einsum("pgk,gk->gp", Pp, self.c)[:, :, None]
        t = finish_sq(t, c_term, sigma, self.c_sq)
        return PositionStats(positions, y, sigma, t.transpose(0, 1).contiguous(), Pp)

    def _residual_stats(self, positions: Tensor, y: Tensor) -> PositionStats:
        """:meth:`position_stats` of a residual space whose rows move with position.

        Each position's norms and cosine factors (``sigma``, ``|row|^2`` and the two factors
        of :meth:`cosine_scales`: up to four V-vectors) are kept once computed, up to
        :data:`~tokentrail.engine.budget.POSITION_MEMO_BYTES` per space, so a warm trace pays the ``O(P V d)`` products
        only for positions it has not seen (texts start at position 0: the first positions
        fill the memo and stay). A position is computed with the other missing ones of its
        call, as without the memo. The memo is one ``(slots, ...)`` tensor per quantity,
        slots taken in the order positions arrive: a call whose positions sit in consecutive
        slots (a text's positions in order, the usual case) gets views of it, no copy."""
        plist = positions.tolist()
        missing = [i for i, p in enumerate(plist) if p not in self._at]
        part = None
        if missing:
            idx = torch.tensor(missing, device=positions.device)
            made = self._moving_stats(positions[idx], y[idx])
            a, b = self.cosine_scales(made)  # (P, G, V) each, b None without a bias term
            part = (made.sigma, made.sq_norm, a, b)
            with self._memo_lock:
                self._remember([plist[i] for i in missing], part)
        sigma, sq, a, b = self._recall(plist, missing, part, positions.device)
        return PositionStats(positions, y, sigma, sq, self._project(y), {"cosine": (a, b)})

    def _project(self, v: Tensor) -> Tensor:
        """(n, d) -> (n, G, k): M v (no bias)."""
        if self.M is None:
            return (v * self.gamma)[:, None, :]
        return torch.einsum("gkd,nd->ngk", self.M, v)

    # ---- dot products ----------------------------------------------------------
    def dots(self, r: Tensor, stats: PositionStats, pidx: Tensor, groups: Tensor | None = None) -> Tensor:
        """Dot products of queries with every row.

        r: (Q, C, k) query vectors, C columns each (C = 1 for residual spaces, heads for
        head spaces); stats from :meth:`position_stats`; pidx: (Q,) index into
        ``stats.positions`` for each query; groups: (C,) the space group each column is
        compared with (default: column c -> group c). Returns (Q, C, V).
        """
        Q, C, k = r.shape
        groups = torch.arange(C, device=r.device) if groups is None else groups
        r = r.float()
        if self.rotary is not None:
            # R_p row . r == row . R_p^T r: rotate the query back instead of every row
            r = self.rotary(r, stats.positions[pidx], inverse=True, scaled=False)
        out, t1 = self._products(r, stats, pidx, groups)
        if t1 is not None:
            out += t1[..., None]
        if stats.sigma is not None:
            out /= stats.sigma[pidx][:, None, :]
        out += torch.einsum("qck,ck->qc", r, self.c[groups])[..., None]
        return out

    def _unit_queries(self, r: Tensor, positions: Tensor) -> Tensor:
        """Queries scaled to unit length and, in a rotary space, rotated back to each row's
        position (``positions``: (Q,) each query's; rotations keep norms): what
        :meth:`cosine_rows` multiplies the rows with."""
        r = r.float()
        r = r * inverse_norms(r.pow(2).sum(-1))[..., None]
        if self.rotary is not None:
            r = self.rotary(r, positions, inverse=True, scaled=False)
        return r

    @property
    def through_embeddings(self) -> bool:
        """Whether a dot product goes through the embedding table ``x`` (``V x d`` work per
        query): a residual space, or a head space without its table (but a made one, whose
        rows are made a chunk at a time instead: :meth:`made_chunks`)."""
        return self.M is None or (self.P is None and not self.made)

    def embedding_queries(self, r: Tensor, positions: Tensor, groups: Tensor) -> Tensor:
        """(Q, C, k) queries at ``positions`` (Q,) -> the (Q * C, d) matrix whose product with ``x.T`` is the matrix
        product of :meth:`cosine_rows` for a space :attr:`through_embeddings`; spaces sharing
        one ``x`` (a model's head spaces of every layer) can stack these into one product
        and hand each its rows as ``ready``."""
        return self._to_embeddings(self._unit_queries(r, positions), groups).reshape(-1, self.d)

    def _to_embeddings(self, r: Tensor, groups: Tensor) -> Tensor:
        """(Q, C, k) -> (Q, C, d): the queries in the embedding table's coordinates."""
        if self.M is None:
            return r * self.gamma
        return torch.einsum("qck,ckd->qcd", r, self.M[groups])

    def cosine_rows(
        self,
        r: Tensor,
        stats: PositionStats,
        pidx: Tensor,
        groups: Tensor | None = None,
        out: Tensor | None = None,
        ready: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Cosine similarities of queries with every row, fused: (Q, C, k) -> rows (Q * C, V) and their order.

        The same quantity as ``dots / (|r| |row|)`` (up to fp32 rounding), in one matrix
        product and one or two in-place passes: queries are scaled to unit length first,
        and per position the factors ``1 / (sigma |row|)`` and ``1 / |row|`` come from
        :meth:`cosine_scales` (computed once per ``stats``). Row ``i`` of the result is
        query ``index[i] // C``, column ``index[i] % C`` (head spaces lay rows out group by
        group, as the matrix product makes them). Queries at one position should be
        contiguous in ``pidx``: each run of equal ``pidx`` is one pass. ``out``: an optional
        flat float32 buffer of at least ``Q * C * V`` elements the block is written into
        (reused across chunks, it saves the page faults of a fresh block each time).
        ``ready``: ``out`` already holds the product of :meth:`embedding_queries` with
        ``x.T`` for these queries (a space :attr:`through_embeddings`), so it is not made again.
        """
        Q, C, k = r.shape
        groups = torch.arange(C, device=r.device) if groups is None else groups
        r = self._unit_queries(r, stats.positions[pidx])
        a, b = self.cosine_scales(stats)  # (P or 1, G, V); b None when the bias term is 0
        out, t1, group_major = self._products(r, stats, pidx, groups, group_major=True, out=out, ready=ready)
        t2 = torch.einsum("qck,ck->qc", r, self.c[groups]) if b is not None else None
        G = a.shape[1]
        blocked = in_blocks(groups, G)
        G, rep = (G, C // G) if blocked else (C, 1)
        V = out.shape[-1]
        # W: (G, Q, rep, V), a view of out whatever its layout
        W = out.view(G, Q, rep, V) if group_major else out.view(Q, G, rep, V).transpose(0, 1)
        scale_rows(W, a, b, t1, t2, pidx, groups, blocked)
        index = torch.arange(Q * C, device=r.device)
        if group_major:  # rows are (g, q, j): query q, column g * rep + j
            index = index.view(Q, G, rep).transpose(0, 1).reshape(-1)
        return out.view(Q * C, V), index

    def cosine_scales(self, stats: PositionStats) -> tuple[Tensor, Tensor | None]:
        """Per-row factors for :meth:`cosine_block`: ``1 / (sigma |row|)`` and ``1 / |row|``.

        Shaped (P, G, V), or (1, G, V) when rows do not move with position; the second is
        None when the bias term ``c`` is zero. Computed once per ``stats``.
        """
        if "cosine" not in stats.memo:
            sq = stats.sq_norm[:1] if stats.y is None else stats.sq_norm  # (P or 1, G, V)
            inv = inverse_norms(sq)
            sigma = stats.sigma
            if sigma is None:
                a = inv
            else:
                sigma = sigma[:1] if stats.y is None else sigma
                a = inv / sigma[:, None, :]
            b = inv if bool(self.c.any()) else None
            stats.memo["cosine"] = (a, b)
        return stats.memo["cosine"]

    def _products(
        self,
        r: Tensor,
        stats: PositionStats,
        pidx: Tensor,
        groups: Tensor,
        group_major: bool = False,
        out: Tensor | None = None,
        ready: bool = False,
    ):
        """The matrix product of :meth:`dots`: (Q, C, V) ``(M x_v) . r`` and the (Q, C) position term (or None).

        With ``group_major`` the product may come back laid out (G, Q, C / G, V) (no
        copy); the third value says whether it did. ``out``: a flat buffer to write it into;
        ``ready``: it already holds the product through ``x`` (see :meth:`embedding_queries`).
        """
        Q, C, k = r.shape
        V = self.vocab_size
        buf = None if out is None else out[: Q * C * V]
        if ready and not (self.through_embeddings and buf is not None):
            raise ValueError(
                "a ready product needs a space that goes through its embedding table, and the buffer holding it"
            )
        if self.made and self.P is None:  # no whole table: the rows a vocabulary chunk at a time
            out, laid_by_group = self._made_products(r, groups, buf, group_major)
            return (out, None, laid_by_group) if group_major else (out, None)
        if self.M is not None and self.P is not None:
            # head spaces: row . r = (P_v + M y_p) . r / sigma + c . r, with P = x M^T kept
            # per group: V * d_head work per query and head instead of V * d
            out, laid_by_group = head_products(r, self.P, groups, buf, group_major)
            t1 = torch.einsum("qck,qck->qc", r, stats.Py[pidx][:, groups]) if stats.Py is not None else None
            return (out, t1, laid_by_group) if group_major else (out, t1)
        u = self._to_embeddings(r, groups)  # (Q, C, d)
        if ready:
            out = buf.view(Q, C, V)
        else:
            out = torch.mm(u.reshape(Q * C, self.d), self.x.T, out=None if buf is None else buf.view(Q * C, V)).view(
                Q, C, V
            )
        t1 = torch.einsum("qcd,qd->qc", u, stats.y[pidx]) if stats.y is not None else None
        return (out, t1, False) if group_major else (out, t1)

    def _made_products(self, r: Tensor, groups: Tensor, buf: Tensor | None, group_major: bool) -> tuple[Tensor, bool]:
        """:func:`head_products` of a made space that holds no whole table: each vocabulary
        chunk's rows are made (:meth:`made_chunks`) and their products written into their
        columns of the (Q, C, V) or (G, Q, C / G, V) block."""
        V = self.vocab_size
        out: Tensor | None = None
        laid_by_group = False
        for lo, hi, rows in self.made_chunks():
            part, laid_by_group = head_products(r, rows, groups, None, group_major)
            if out is None:
                shape = (*part.shape[:-1], V)
                out = torch.empty(shape, device=r.device) if buf is None else buf.view(shape)
            out[..., lo:hi] = part
        assert out is not None
        return out, laid_by_group

    def rows(self, ids: Tensor, position: int) -> Tensor:
        """Explicit rows for a few ids at one position: (m,) -> (m, G, k). For display and checks."""
        x = self.x[ids]
        if self.made:
            table = self.P
            out = (self._made_rows(x, self.x_sq[ids]) if table is None else table[:, ids]).transpose(0, 1)
        else:
            y = self._offsets(torch.tensor([position], device=x.device))
            if y is not None:
                x = x + y
            out = self._project(x)
            if self.norm_kind:
                out = out / (x.pow(2).sum(-1) / self.d + self.eps).sqrt()[:, None, None]
            out = out + self.c
        if self.rotary is not None:
            out = self.rotary(out, torch.full((len(ids),), position, device=x.device), scaled=False)
        return out


class DoubleNormSpace(VocabSpace):
    """A head space behind two LayerNorms around a position-dependent sum (mBART's pre-norm
    layers read ``LN_l(LN_emb(W_E[v] + W_P[p]))``), still exact and factorised.

    With ``c = c_v + c_p`` the centred sum, ``sigma1 = sqrt(|c|^2 / d + eps1)``,
    ``A = centre o diag(gamma1)`` and ``b~ = beta1 - mean(beta1)``, the second norm's centred
    input is ``A c / sigma1 + b~``, so with ``sigma2 = sqrt(|A c / sigma1 + b~|^2 / d + eps2)``::

        R_g(v, p) = M_g (a_v + a_p) / (sigma1 sigma2) + m_g / sigma2 + c_g

    where ``a_v = A c_v`` (one ``V x d`` table per model), ``a_p = A c_p``, ``M_g = W_g
    diag(gamma2)``, ``m_g = M_g b~`` and ``c_g = W_g beta2 + b_g``. That is
    :class:`VocabSpace`'s form over ``a_v`` with ``sigma = sigma1 sigma2`` plus one more
    term, ``m_g / sigma2``; ``sigma1`` and ``sigma2`` need ``O(V d)`` per position
    (``|A c|^2 = |a_v|^2 + 2 a_v . a_p + |a_p|^2``).
    """

    def __init__(self, name: str, adapter: Adapter, emb: Norm, attn_in: Norm, weight: Tensor, bias: Tensor | None):
        memo = adapter_memo(adapter)
        if "emb-centred-scaled" not in memo:
            a = shared_table(adapter, True) * emb.weight.float()
            memo["emb-centred-scaled"] = a - a.mean(-1, keepdim=True)  # (V, d): a_v = A c_v
        self._emb, self._attn_in, self._w, self._b = emb, attn_in, weight.float(), bias
        super().__init__(
            name,
            adapter,
            memo["emb-centred-scaled"],
            norm=attn_in,
            positional=True,
            proj_weight=weight,
            proj_bias=bias,
        )
        self.cx = shared_table(adapter, True)  # (V, d) centred W_E: sigma1's table
        self.cx_sq = shared_sq_norms(adapter, self.cx)
        beta1 = torch.zeros_like(emb.weight.float()) if emb.bias is None else emb.bias.float()
        self.b_t = beta1 - beta1.mean()  # (d,)
        assert self.M is not None and self.P is not None  # a head space (factorise)
        self.m = torch.einsum("gkd,d->gk", self.M, self.b_t)  # (G, k)
        self.a_b = self.x @ self.b_t  # (V,) a_v . b~
        self.P_m = torch.einsum("gvk,gk->gv", self.P, self.m)  # (G, V)

    def position_stats(self, positions: Tensor) -> PositionStats:
        y = self._adapter.position_offset(positions).float()
        cp = y - y.mean(-1, keepdim=True)  # (P, d)
        sigma1 = norm_scales(self.cx, self.cx_sq, cp, self._emb.eps)  # (P, V)
        ap = cp * self._emb.weight.float()
        ap = ap - ap.mean(-1, keepdim=True)  # (P, d): a_p = A c_p
        ac_sq = (ap @ self.x.T).mul_(2).add_(self.x_sq[None]).add_(ap.pow(2).sum(-1, keepdim=True))  # |A c|^2
        ac_b = self.a_b[None] + (ap @ self.b_t)[:, None]  # (P, V): A c . b~
        sigma2 = (ac_sq / sigma1.square() + 2 * ac_b / sigma1 + self.b_t.pow(2).sum()).div_(self.d)
        sigma2 = sigma2.add_(self.eps).sqrt_()  # (P, V)
        S = sigma1 * sigma2
        Py = self._project(ap)  # (P, G, k)
        z_sq = torch.bmm(Py.transpose(0, 1), self.P.transpose(1, 2)).mul_(2)  # (G, P, V): |P_v + Py_p|^2
        z_sq.add_(self.P_sq[:, None, :]).add_(Py.pow(2).sum(-1).T[:, :, None])
        z_m = self.P_m[:, None, :] + torch.einsum("pgk,gk->gp", Py, self.m)[:, :, None]  # (G, P, V)
        z_c = self.P_c[:, None, :] + torch.einsum("pgk,gk->gp", Py, self.c)[:, :, None]
        inv_s, inv2 = S.reciprocal()[None], sigma2.reciprocal()[None]  # (1, P, V)
        m_sq, m_c = self.m.pow(2).sum(-1)[:, None, None], (self.m * self.c).sum(-1)[:, None, None]
        sq = z_sq.mul_(inv_s.square()).addcmul_(z_m * inv_s, inv2, value=2).addcmul_(z_c, inv_s, value=2)
        sq.addcmul_(m_sq, inv2.square()).addcmul_(m_c, inv2, value=2).add_(self.c_sq[:, None, None]).clamp_min_(0)
        stats = PositionStats(positions, ap, S, sq.transpose(0, 1).contiguous(), Py)
        stats.memo["inv_sigma2"] = sigma2.reciprocal()  # (P, V)
        return stats

    def _m_term(self, r: Tensor, stats: PositionStats, pidx: Tensor, groups: Tensor) -> Tensor:
        """(Q, C, V): ``(m_g . r) / sigma2`` for queries ``r`` already in the rows' frame."""
        return torch.einsum("qck,ck->qc", r, self.m[groups])[..., None] * stats.memo["inv_sigma2"][pidx][:, None, :]

    def dots(self, r: Tensor, stats: PositionStats, pidx: Tensor, groups: Tensor | None = None) -> Tensor:
        groups = torch.arange(r.shape[1], device=r.device) if groups is None else groups
        out = super().dots(r, stats, pidx, groups)
        return out.add_(self._m_term(r.float(), stats, pidx, groups))  # no rotary here (position embeddings)

    def cosine_rows(
        self,
        r: Tensor,
        stats: PositionStats,
        pidx: Tensor,
        groups: Tensor | None = None,
        out: Tensor | None = None,
        ready: bool = False,
    ) -> tuple[Tensor, Tensor]:
        Q, C, _ = r.shape
        groups = torch.arange(C, device=r.device) if groups is None else groups
        rows, index = super().cosine_rows(r, stats, pidx, groups, out=out, ready=ready)
        # the m term, over |row| (the unit query's share of the cosine), row i = (query, column) of index[i]
        extra = self._m_term(self._unit_queries(r, stats.positions[pidx]), stats, pidx, groups)  # (Q, C, V)
        inv = inverse_norms(stats.sq_norm[pidx][:, groups])  # (Q, C, V)
        rows.add_(extra.mul_(inv).reshape(Q * C, -1)[index])
        return rows, index

    def rows(self, ids: Tensor, position: int) -> Tensor:
        """Explicit rows, by the definition (both norms, then the head map): (m,) -> (m, G, k)."""
        pos = torch.full((len(ids),), position, dtype=torch.long, device=ids.device)
        raw = shared_table(self._adapter, False)[ids] + self._adapter.position_offset(pos).float()
        x = self._attn_in(self._emb(raw))
        out = torch.einsum("gkd,md->mgk", self._w, x)
        return out if self._b is None else out + self._b


def _input_norm(adapter: Adapter, layer: int | None) -> Norm | None:
    """The one norm between W_E[v] + offset and the space's rows (a double norm is
    refused first, by :func:`space_refusal`)."""
    emb = adapter.embedding_norm()
    if layer is None:
        return emb
    attn_in = adapter.attn_input_norm(layer)
    return emb if attn_in is None else attn_in


def _position_free(adapter: Adapter) -> bool:
    """Whether the embedding stage gives every token one row whatever its position (RoPE models)."""
    return adapter.position_offset(torch.zeros(1, dtype=torch.long, device=adapter.device)) is None


def _layer_refusal(adapter: Adapter, kind: str, layer: int) -> str | None:
    """Why head space ``kind`` of ``layer`` does not factorise, in one line, or None."""
    attn_in = adapter.attn_input_norm(layer)
    if attn_in is None:
        return None
    if adapter.embedding_projection() is not None:
        return (
            f"{adapter.family}: the {kind} space does not factorise (a projected embedding, then the layer's own "
            "norm); the residual spaces and the other sites are exact"
        )
    emb = adapter.embedding_norm()
    if emb is None or _position_free(adapter):
        return None
    if not (emb.kind == attn_in.kind == "layernorm") or adapter.rotary(layer) is not None:
        return (
            f"{adapter.family}: the {kind} space does not factorise (an embedding norm around a position-dependent "
            "sum, then the layer's own norm); the residual spaces and the other sites are exact"
        )
    return None


def space_refusal(adapter: Adapter, kind: str) -> str | None:
    """Why ``kind`` cannot be built for this model (at some layer, for a head space), in one
    line, or None: the one home of these rules (:func:`build_space` raises them)."""
    if kind == "embeddings" and adapter.embedding_projection() is not None:
        return (
            f"{adapter.family}: the embeddings space does not apply to this checkpoint: its embedding table is "
            f"{adapter.embedding_table().shape[1]} wide and its residual stream {adapter.d_model} "
            "(embeddings_project maps one to the other); use the encodings space"
        )
    if kind in HEAD_SPACE_KINDS:
        return next((why for l in range(adapter.n_layers) if (why := _layer_refusal(adapter, kind, l))), None)
    return None


def _space(name: str, adapter: Adapter, norm: Norm | None, **kw) -> VocabSpace:
    table = shared_table(adapter, norm is not None and norm.kind == "layernorm")
    return VocabSpace(name, adapter, table, norm=norm, **kw)


def build_space(adapter: Adapter, kind: str, layer: int | None = None, table_bytes: int | None = None) -> VocabSpace:
    """The reference space ``kind`` (``embeddings``, ``encodings``, ``value``/``key``/``query`` at ``layer``).

    ``table_bytes``: the largest whole table a made (QK-normed) space keeps (default
    :data:`~tokentrail.engine.budget.SPACE_CACHE_BYTES`); a larger one makes its rows a
    vocabulary chunk at a time."""
    emb_proj = adapter.embedding_projection()  # ELECTRA: Emb = W_P norm(...) + b_P
    if kind == "embeddings":
        why = space_refusal(adapter, kind)
        if why:
            raise ModelError(why)
        return _space("embeddings", adapter, None, positional=False)
    if kind == "encodings":
        if emb_proj is not None:  # one group: the projection as a head map
            w, b = emb_proj
            return _space(
                "encodings",
                adapter,
                adapter.embedding_norm(),
                positional=True,
                proj_weight=w[None],
                proj_bias=None if b is None else b[None],
            )
        return _space("encodings", adapter, adapter.embedding_norm(), positional=True)
    if kind not in HEAD_SPACE_KINDS:
        raise InputError(f"unknown space {kind!r}: choose from {', '.join(SPACE_KINDS)}")
    if layer is None or not 0 <= layer < adapter.n_layers:
        raise InputError(f"space {kind!r} needs a layer in 0..{adapter.n_layers - 1}, got {layer}")
    why = _layer_refusal(adapter, kind, layer)
    if why:
        raise ModelError(why)
    letters: dict[str, Literal["q", "k", "v"]] = {"value": "v", "key": "k", "query": "q"}
    which = letters[kind]
    proj = adapter.projection(layer, which)
    rotary = adapter.rotary(layer) if kind in ("key", "query") else None
    weight, bias = proj.weight, proj.bias
    if emb_proj is not None:
        # post-LN (checked above): the head map after the embedding projection, W_h (W_P y + b_P) + b_h
        w_p, b_p = emb_proj
        weight = torch.einsum("gkd,de->gke", proj.weight.float(), w_p)
        if b_p is not None:
            lifted = torch.einsum("gkd,d->gk", proj.weight.float(), b_p)
            bias = lifted if bias is None else bias + lifted
    name = f"{kind}@{layer}"
    emb, attn_in = adapter.embedding_norm(), adapter.attn_input_norm(layer)
    if emb is not None and attn_in is not None and not _position_free(adapter):
        # two LayerNorms around a moving sum (checked above): mBART's pre-norm layers
        return DoubleNormSpace(name, adapter, emb, attn_in, weight, bias)
    if emb is not None and attn_in is not None:
        # position-free: AttnIn_l(norm(W_E[v])) has no position term, so the normed table
        # is one (V, d) matrix per model and the layer's norm factorises over it
        table = shared_normed_table(adapter, emb, attn_in.kind == "layernorm")
        return VocabSpace(
            name,
            adapter,
            table,
            norm=attn_in,
            positional=True,
            proj_weight=weight,
            proj_bias=bias,
            head_norm=proj.norm if kind != "value" else None,
            rotary=rotary,
            table_bytes=table_bytes,
        )
    return _space(
        name,
        adapter,
        _input_norm(adapter, layer),
        positional=True,
        proj_weight=weight,
        proj_bias=bias,
        head_norm=proj.norm if kind != "value" else None,
        rotary=rotary,
        table_bytes=table_bytes,
    )
