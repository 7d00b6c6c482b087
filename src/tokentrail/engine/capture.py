"""One forward pass with scoped hooks -> every site's vectors. No metrics here.

The model's own outputs are used where it exposes them (``hidden_states``,
``attentions``); hooks read only what it does not: the concatenated per-head vectors
entering the attention output projection, that projection's output, each layer's
output, the FFN sublayer's output and (post-LN) the FFN's input.

A batch of texts runs as one padded forward pass with an attention mask and the model's
own position rule for padding; each text's activations are then cut out of it, so a text
gets what it gets alone (SPEC "Batches"). One text is the batch of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters import Adapter
from tokentrail.spec.errors import InputError
from tokentrail.spec.options import RESIDUAL_SITES as SITES


@dataclass(frozen=True)
class Activations:
    """Everything one forward pass gives, for one text. Shapes use n tokens, L layers."""

    input_ids: Tensor  # (n,)
    position_ids: Tensor  # (n,)
    embedded: Tensor  # (n, d): hidden state 0, the original encodings e_t
    layer_out: Tensor  # (L, n, d): h_{l+1}, before any final norm
    attn: Tensor  # (L, n, d): attn_l, the attention sublayer's projected output
    z: Tensor  # (L, n, H, d_head): per-head post-attention vectors
    attn_resid_ln: Tensor  # (L, n, d)
    mlp_out: Tensor  # (L, n, d): the FFN sublayer's output, before the residual add
    attentions: Tensor  # (L, H, n, n): attention probabilities
    hidden_states: tuple[Tensor, ...]  # the framework's own hidden_states, for checks
    causal: bool = False  # the mask the pass ran with (decoders; False for encoders)
    # a layer of a streamed pass (:func:`stream`) covers one layer: L = 1, ``embedded`` is the
    # input of that layer, and ``attentions`` and ``hidden_states`` are empty
    first_layer: int = 0

    @property
    def layer_in(self) -> Tensor:
        """(L, n, d): h_l, the input of each layer."""
        return torch.cat([self.embedded[None], self.layer_out[:-1]], dim=0)

    def layer_input(self, layer: int) -> Tensor:
        """(n, d): h_l for one layer, without building every layer's (``layer_in[layer]``)."""
        at = layer - self.first_layer
        return self.embedded if at == 0 else self.layer_out[at - 1]

    def head_z(self, layer: int) -> Tensor:
        """(n, H, d_head): the per-head post-attention vectors of one layer."""
        return self.z[layer - self.first_layer]

    @property
    def attn_resid(self) -> Tensor:
        """(L, n, d): h_l + attn_l."""
        kept = self.__dict__.get("_attn_resid")  # see keep_attn_resid
        if kept is not None:
            return kept
        return _attn_resid(self.attn, self.embedded, self.layer_out)

    def keep_attn_resid(self, attn_resid: Tensor) -> Activations:
        """Let ``attn_resid`` answer the site instead of making it on each read (capture, for
        pre-norm models, where it is ``attn_resid_ln`` itself: no memory of its own)."""
        object.__setattr__(self, "_attn_resid", attn_resid)  # a cache, not a field: frozen otherwise
        return self

    @property
    def resid_pre(self) -> Tensor:
        """(L, n, d): h_l, the residual stream entering each layer (SPEC ``resid_pre``)."""
        return self.layer_in

    def site(self, name: str) -> Tensor:
        """(L, n, d) vectors of a residual-stream site."""
        if name not in SITES:
            raise KeyError(name)
        return getattr(self, name)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def recorded(
    points: Iterable[tuple[nn.Module, str, bool]], select: Callable[[Tensor], Tensor] = lambda t: t, batch: int = 1
) -> Iterator[dict[str, list[Tensor]]]:
    """Scoped hooks: for each ``(module, key, from_input)``, every call's input (or output),
    passed through ``select``, is appended to ``store[key]`` in float32. The hooks are
    always removed, also when the forward pass fails. The one hook mechanism of tokentrail.

    A module that sees the batch flattened to ``(batch * n, d)`` (OPT's FFN) is read as
    ``(batch, n, d)``, like every other: ``batch`` is the pass's batch size."""
    store: dict[str, list[Tensor]] = {}
    handles = []

    def keep(key: str, from_input: bool):
        def hook(module, args, output=None):
            t = _first(args if from_input else output).detach()
            if t.dim() == 2:
                t = t.view(batch, -1, t.shape[-1])
            store[key].append(select(t).float())

        return hook

    try:
        for module, key, from_input in points:
            store.setdefault(key, [])
            if from_input:
                handles.append(module.register_forward_pre_hook(keep(key, True)))
            else:
                handles.append(module.register_forward_hook(keep(key, False)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _hooks(adapter: Adapter, batch: int = 1):
    """Per layer, the whole batch's (B, n, ...) tensor at each point the capture reads."""
    points = []
    for layer in range(adapter.n_layers):
        hp = adapter.hook_points(layer)
        points += [
            (hp.attn_out_proj, "z", True),
            (hp.attn_out_proj if hp.attn_out is None else hp.attn_out, "attn", False),
            (hp.layer, "out", False),
            (hp.mlp_out, "mlp", False),
        ]
        if hp.ffn_input is not None:
            points.append((hp.ffn_input, "ffn_in", True))
    return recorded(points, batch=batch)


@torch.no_grad()
def capture(adapter: Adapter, input_ids: Tensor, causal: bool | None = None) -> Activations:
    """Run the model once on ``input_ids`` (n,) and collect every site.

    ``causal``: decoders only; None means the model's own (causal) mask."""
    return capture_batch(adapter, [input_ids], causal=causal)[0]


@torch.no_grad()
def capture_batch(
    adapter: Adapter,
    texts: Sequence[Tensor],
    causal: bool | None = None,
    padding_side: Literal["left", "right"] = "right",
) -> list[Activations]:
    """Run the model once on a padded batch of texts' ids ((n_i,) each) and return each
    text's :class:`Activations`, padding removed: per text what ``capture`` gives alone.

    ``padding_side``: where the padding goes; the adapter says which sides keep its
    position rule exact (BERT's arange: right only). ``causal`` as in :func:`capture`."""
    if not texts:
        raise InputError("the batch is empty: give at least one text")
    if padding_side not in ("left", "right"):
        raise InputError(f"padding side must be left or right, not {padding_side!r}")
    if padding_side not in adapter.padding_sides:
        raise InputError(
            f"{adapter.family} batches pad on the {' or '.join(adapter.padding_sides)} only: its position ids would move"
        )
    lengths = [int(t.shape[0]) for t in texts]
    if min(lengths) < 1 or any(t.dim() != 1 for t in texts):
        raise InputError("every text in a batch needs at least one token id, as a 1-D tensor")
    causal = adapter.resolve_causal(causal)
    input_ids, mask, starts = _pad([t.to(adapter.device) for t in texts], adapter.pad_id, padding_side)
    position_ids = adapter.position_ids(input_ids, mask)
    with _hooks(adapter, batch=len(texts)) as store:
        out = adapter.forward(input_ids, position_ids, mask, causal=causal)
    n_layers = adapter.n_layers
    if any(len(store[k]) != n_layers for k in ("out", "z", "attn", "mlp")):
        raise RuntimeError(f"capture saw {len(store['out'])} layers, expected {n_layers}")
    # the framework's hidden states after layers 0..L-2 are the very tensors the layer hooks
    # read: those become views of the stacked layer_out below instead of a second copy
    hidden = [h.float() for h in out.hidden_states]  # each (B, n, d)
    alias = [l for l in range(n_layers) if l + 1 < len(hidden) and _same_tensor(hidden[l + 1], store["out"][l])]
    for l in alias:
        hidden[l + 1] = None
    # the patterns are O(L H n^2): the model's own tensors are let go as they are copied
    atts = list(out.attentions)
    del out
    # each stacked a layer at a time, the hooked tensors let go as they are copied: never two
    # copies of all layers of one site at once
    layer_out = _stacked(store["out"])  # (B, L, n, d)
    for l in alias:
        hidden[l + 1] = layer_out[:, l]
    attn = _stacked(store["attn"])
    mlp_out = _stacked(store["mlp"])
    z = _stacked(store["z"])  # (B, L, n, H * d_head)
    # what the FFN receives, where the adapter names its input module (post-LN: LN(attn_resid);
    # parallel residual: LN_2(h_l)); SPEC: sequential pre-LN models have no norm in between
    ffn_in = _stacked(store["ffn_in"]) if store.get("ffn_in") else None
    attentions = _stacked(atts)  # (B, L, H, n, n)
    # a text's tensors are copies, so that one Activations does not keep the batch alive
    own = (lambda x: x.clone()) if len(texts) > 1 else (lambda x: x)
    acts = []
    for b, (start, n) in enumerate(zip(starts, lengths)):
        t = slice(start, start + n)
        embedded = own(hidden[0][b, t])
        lay_out = own(layer_out[b, :, t])
        attn_b = own(attn[b, :, t])
        # pre-norm: attn_resid_ln is attn_resid, made here once
        attn_resid = _attn_resid(attn_b, embedded, lay_out) if ffn_in is None else None
        acts.append(
            Activations(
                input_ids=own(input_ids[b, t]),
                position_ids=own(position_ids[b, t]),
                embedded=embedded,
                layer_out=lay_out,
                attn=attn_b,
                z=own(z[b, :, t]).view(n_layers, n, adapter.n_heads, adapter.d_head),
                attn_resid_ln=attn_resid if ffn_in is None else own(ffn_in[b, :, t]),
                mlp_out=own(mlp_out[b, :, t]),
                attentions=own(attentions[b, :, :, t, t]),
                hidden_states=tuple(own(h[b, t]) for h in hidden),
                causal=causal,
            )
        )
        if attn_resid is not None:
            acts[-1].keep_attn_resid(attn_resid)
    return acts


@dataclass(frozen=True)
class Passed:
    """What a streamed pass (:func:`stream`) keeps for the Trail: the ids, positions, the
    attention probabilities (L, H, n, n) and the mask it ran with."""

    input_ids: Tensor
    position_ids: Tensor
    attentions: Tensor
    causal: bool


@torch.no_grad()
def stream(
    adapter: Adapter, input_ids: Tensor, on_layer: Callable[[Activations], None], causal: bool | None = None
) -> Passed:
    """One forward pass over one text that hands each layer's activations to ``on_layer``
    as the layer finishes (an :class:`Activations` of that layer alone, ``first_layer``
    set) and keeps none of them: the activations held at once are one layer's, whatever
    the number of layers. The vectors are the very ones :func:`capture` gives (the same
    hooks on the same pass); the framework's hidden states are not asked for (they would
    keep every layer's output). The vocabulary work runs inside the pass, in ``on_layer``."""
    causal = adapter.resolve_causal(causal)
    ids, mask, _ = _pad([input_ids.to(adapter.device)], adapter.pad_id, "right")
    position_ids = adapter.position_ids(ids, mask)
    n_layers, handles = adapter.n_layers, []
    state: dict[str, object] = {"layer": 0, "h": None}

    def enter(module, args, kwargs):  # layer 0's input: h_0, the original encodings
        if state["h"] is None:
            state["h"] = _first(args if args else [kwargs["hidden_states"]]).detach().float()[0]

    with _hooks(adapter) as store:

        def done(module, args, output):  # after the store's own hooks on the layer (registered first)
            layer, h = state["layer"], state["h"]
            out, attn, mlp = store["out"].pop()[0], store["attn"].pop()[0], store["mlp"].pop()[0]
            z = store["z"].pop()[0].view(-1, adapter.n_heads, adapter.d_head)
            ffn_in = store["ffn_in"].pop()[0] if store.get("ffn_in") else None
            attn_resid = _attn_resid(attn[None], h, out[None]) if ffn_in is None else None
            acts = Activations(
                input_ids=ids[0],
                position_ids=position_ids[0],
                embedded=h,
                layer_out=out[None],
                attn=attn[None],
                z=z[None],
                attn_resid_ln=attn_resid if ffn_in is None else ffn_in[None],
                mlp_out=mlp[None],
                attentions=torch.empty(0),
                hidden_states=(),
                causal=causal,
                first_layer=layer,
            )
            if attn_resid is not None:
                acts.keep_attn_resid(attn_resid)
            on_layer(acts)
            state["layer"], state["h"] = layer + 1, out

        try:
            handles.append(adapter.hook_points(0).layer.register_forward_pre_hook(enter, with_kwargs=True))
            handles += [adapter.hook_points(layer).layer.register_forward_hook(done) for layer in range(n_layers)]
            out = adapter.forward(ids, position_ids, mask, causal=causal, hidden_states=False)
        finally:
            for h in handles:
                h.remove()
    if state["layer"] != n_layers:
        raise RuntimeError(f"the streamed pass saw {state['layer']} layers, expected {n_layers}")
    atts = list(out.attentions)
    del out  # the model's own patterns are let go as they are copied (as in capture_batch)
    attentions = _stacked(atts)[0]  # (L, H, n, n)
    return Passed(input_ids=ids[0], position_ids=position_ids[0], attentions=attentions, causal=causal)


def _attn_resid(attn: Tensor, embedded: Tensor, layer_out: Tensor) -> Tensor:
    """(L, n, d) h_l + attn_l, with h_0 = ``embedded`` and h_l = ``layer_out[l - 1]``: made in
    place in one new tensor (attn_l + h_l, the same sums), not from a stacked copy of every h_l."""
    out = attn.clone()
    out[0] += embedded
    out[1:] += layer_out[:-1]
    return out


def _stacked(parts: list) -> Tensor:
    """``torch.stack(parts, dim=1)`` of (B, ...) tensors in float32, each part let go once copied."""
    out = torch.empty((parts[0].shape[0], len(parts), *parts[0].shape[1:]), dtype=torch.float32, device=parts[0].device)
    for i in range(len(parts)):
        out[:, i] = parts[i]
        parts[i] = None
    return out


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` are the same memory seen the same way (not merely equal)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


def _pad(texts: Sequence[Tensor], pad_id: int, side: str) -> tuple[Tensor, Tensor, list[int]]:
    """(B, n) padded ids, (B, n) 1/0 mask, and where each text starts in its row."""
    n = max(int(t.shape[0]) for t in texts)
    device = texts[0].device
    ids = torch.full((len(texts), n), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(texts), n), dtype=torch.long, device=device)
    starts = []
    for b, t in enumerate(texts):
        start = n - t.shape[0] if side == "left" else 0
        ids[b, start : start + t.shape[0]] = t.long()
        mask[b, start : start + t.shape[0]] = 1
        starts.append(start)
    return ids, mask, starts


def head_vectors(adapter: Adapter, acts: Activations, kind: str, layer: int) -> Tensor:
    """Per-head vectors compared with a head space: (n, H, d_head).

    value: z, the head's post-attention vector (SPEC ``heads`` site); key/query: the
    token's own key/query vector at this head (RoPE applied at its position), so each is
    compared with the vocabulary projected the same way. Under grouped-query attention a
    query head's key is its KV head's.
    """
    if kind == "value":
        return acts.head_z(layer)
    which: Literal["k", "q"] = "k" if kind == "key" else "q"
    vec = head_qkv(adapter, acts, layer, which)  # (n, G, dh)
    return vec[:, adapter.kv_heads().to(vec.device)] if which == "k" else vec


def head_qkv(adapter: Adapter, acts: Activations, layer: int, which: Literal["q", "k", "v"]) -> Tensor:
    """The model's own q, k or v of every token at ``layer``: (n, G, d_head), G = its heads.

    Recomputed from the captured layer input through the adapter's canonical projection,
    with the layer's input norm in front (pre-norm models) and RoPE at each token's
    position for q and k. The one home of this recomputation: head views and the
    attention walkthrough both call it."""
    norm = adapter.attn_input_norm(layer)
    h = acts.layer_input(layer)
    x = h if norm is None else norm(h)
    vec = adapter.projection(layer, which)(x)  # (n, G, dh)
    rot = adapter.rotary(layer)
    if rot is not None and which in ("q", "k"):
        vec = rot(vec, acts.position_ids, inverse=False)
    return vec
