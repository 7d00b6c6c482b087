"""One forward pass with scoped hooks -> every site's vectors. No metrics here.

The model's own outputs are used where it exposes them (``hidden_states``,
``attentions``); hooks read only what it does not: the concatenated per-head vectors
entering the attention output projection, that projection's output, each layer's
output, and (post-LN) the FFN's input.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from .adapters import Adapter

SITES = ("attn_resid", "attn_resid_ln", "layer_out")
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
        raise KeyError(name)


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _hooks(adapter: Adapter) -> Iterator[dict[str, list]]:
    store: dict[str, list] = {"z": [], "attn": [], "out": [], "ffn_in": []}
    handles = []

    def keep(key: str, from_input: bool):
        def hook(module, args, output=None):
            store[key].append(_first(args if from_input else output).detach()[0].float())

        return hook

    try:
        for layer in range(adapter.n_layers):
            hp = adapter.hook_points(layer)
            handles.append(hp.attn_out_proj.register_forward_pre_hook(keep("z", True)))
            handles.append(hp.attn_out_proj.register_forward_hook(keep("attn", False)))
            handles.append(hp.layer.register_forward_hook(keep("out", False)))
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
    input_ids = input_ids.long()
    position_ids = adapter.position_ids(input_ids)
    with _hooks(adapter) as store:
        out = adapter.forward(input_ids, position_ids, causal=adapter.is_decoder if causal is None else causal)
    n_layers, n = adapter.n_layers, input_ids.shape[0]
    if len(store["out"]) != n_layers or len(store["z"]) != n_layers:
        raise RuntimeError(f"capture saw {len(store['out'])} layers, expected {n_layers}")
    layer_out = torch.stack(store["out"])
    attn = torch.stack(store["attn"])
    z = torch.stack(store["z"]).view(n_layers, n, adapter.n_heads, adapter.d_head)
    attn_resid = torch.cat([out.hidden_states[0][0].float()[None], layer_out[:-1]]) + attn
    if store["ffn_in"]:
        # post-LN: the FFN reads LN(h_l + attn_l); parallel residual: it reads its norm of h_l
        attn_resid_ln = torch.stack(store["ffn_in"])
    else:
        attn_resid_ln = attn_resid  # SPEC: sequential pre-LN models have no norm between attention and FFN input
    attentions = torch.stack([a[0].float() for a in out.attentions])
    return Activations(
        input_ids=input_ids,
        position_ids=position_ids,
        embedded=out.hidden_states[0][0].float(),
        layer_out=layer_out,
        attn=attn,
        z=z,
        attn_resid_ln=attn_resid_ln,
        attentions=attentions,
        hidden_states=tuple(h[0].float() for h in out.hidden_states),
    )
