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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor

from .adapters import Adapter
from .errors import InputError

SITES = ("attn_resid", "attn_resid_ln", "layer_out", "resid_pre", "mlp_out")
"""Residual-stream sites (d-dimensional). ``heads`` is per head, ``lens`` in vocab space."""


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

    @property
    def layer_in(self) -> Tensor:
        """(L, n, d): h_l, the input of each layer."""
        return torch.cat([self.embedded[None], self.layer_out[:-1]], dim=0)

    @property
    def attn_resid(self) -> Tensor:
        """(L, n, d): h_l + attn_l."""
        return self.layer_in + self.attn

    def site(self, name: str) -> Tensor:
        """(L, n, d) vectors of a residual-stream site."""
        if name == "attn_resid":
            return self.attn_resid
        if name == "attn_resid_ln":
            return self.attn_resid_ln
        if name == "layer_out":
            return self.layer_out
        if name == "resid_pre":
            return self.layer_in
        if name == "mlp_out":
            return self.mlp_out
        raise KeyError(name)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _hooks(adapter: Adapter) -> Iterator[dict[str, list[Tensor]]]:
    """Per layer, the whole batch's (B, n, ...) tensor at each hooked point."""
    store: dict[str, list[Tensor]] = {"z": [], "attn": [], "out": [], "ffn_in": [], "mlp": []}
    handles = []

    def keep(key: str, from_input: bool):
        def hook(module, args, output=None):
            store[key].append(_first(args if from_input else output).detach().float())

        return hook

    try:
        for layer in range(adapter.n_layers):
            hp = adapter.hook_points(layer)
            handles.append(hp.attn_out_proj.register_forward_pre_hook(keep("z", True)))
            handles.append(hp.attn_out_proj.register_forward_hook(keep("attn", False)))
            handles.append(hp.layer.register_forward_hook(keep("out", False)))
            handles.append(hp.mlp_out.register_forward_hook(keep("mlp", False)))
            if hp.ffn_input is not None:
                handles.append(hp.ffn_input.register_forward_pre_hook(keep("ffn_in", True)))
        yield store
    finally:
        for h in handles:
            h.remove()


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
        raise InputError(f"{adapter.family} batches pad on the {' or '.join(adapter.padding_sides)} only: its position ids would move")
    lengths = [int(t.shape[0]) for t in texts]
    if min(lengths) < 1 or any(t.dim() != 1 for t in texts):
        raise InputError("every text in a batch needs at least one token id, as a 1-D tensor")
    causal = adapter.resolve_causal(causal)
    input_ids, mask, starts = _pad(texts, adapter.pad_id, padding_side)
    position_ids = adapter.position_ids(input_ids, mask)
    with _hooks(adapter) as store:
        out = adapter.forward(input_ids, position_ids, mask, causal=causal)
    n_layers = adapter.n_layers
    if any(len(store[k]) != n_layers for k in ("out", "z", "attn", "mlp")):
        raise RuntimeError(f"capture saw {len(store['out'])} layers, expected {n_layers}")
    layer_out = torch.stack(store["out"], dim=1)  # (B, L, n, d)
    attn = torch.stack(store["attn"], dim=1)
    mlp_out = torch.stack(store["mlp"], dim=1)
    z = torch.stack(store["z"], dim=1)  # (B, L, n, H * d_head)
    ffn_in = torch.stack(store["ffn_in"], dim=1) if adapter.norm_placement == "post" else None
    attentions = torch.stack([a.float() for a in out.attentions], dim=1)  # (B, L, H, n, n)
    hidden = [h.float() for h in out.hidden_states]  # each (B, n, d)
    # a text's tensors are copies, so that one Activations does not keep the batch alive
    own = (lambda x: x.clone()) if len(texts) > 1 else (lambda x: x)
    acts = []
    for b, (start, n) in enumerate(zip(starts, lengths)):
        t = slice(start, start + n)
        embedded = own(hidden[0][b, t])
        lay_out = own(layer_out[b, :, t])
        attn_b = own(attn[b, :, t])
        attn_resid = torch.cat([embedded[None], lay_out[:-1]]) + attn_b
        acts.append(
            Activations(
                input_ids=own(input_ids[b, t]),
                position_ids=own(position_ids[b, t]),
                embedded=embedded,
                layer_out=lay_out,
                attn=attn_b,
                z=own(z[b, :, t]).view(n_layers, n, adapter.n_heads, adapter.d_head),
                # SPEC: pre-LN models have no norm between attention and FFN input
                attn_resid_ln=attn_resid if ffn_in is None else own(ffn_in[b, :, t]),
                mlp_out=own(mlp_out[b, :, t]),
                attentions=own(attentions[b, :, :, t, t]),
                hidden_states=tuple(own(h[b, t]) for h in hidden),
            )
        )
    return acts


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
