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
from .options import RESIDUAL_SITES as SITES


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
    mlp_out: Tensor  # (L, n, d): the FFN sublayer's output, before the residual add
    causal: bool = False  # the mask the pass ran with (decoders; False for encoders)

    @property
    def layer_in(self) -> Tensor:
        """(L, n, d): h_l, the input of each layer."""
        return torch.cat([self.embedded[None], self.layer_out[:-1]], dim=0)

    @property
    def attn_resid(self) -> Tensor:
        """(L, n, d): h_l + attn_l."""
        return self.layer_in + self.attn

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
def _hooks(adapter: Adapter) -> Iterator[dict[str, list]]:
    store: dict[str, list] = {"z": [], "attn": [], "out": [], "ffn_in": [], "mlp": []}
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
    input_ids = input_ids.long().to(adapter.device)
    position_ids = adapter.position_ids(input_ids).to(adapter.device)
    causal = adapter.resolve_causal(causal)
    with _hooks(adapter) as store:
        out = adapter.forward(input_ids, position_ids, causal=causal)
    n_layers, n = adapter.n_layers, input_ids.shape[0]
    if len(store["out"]) != n_layers or len(store["z"]) != n_layers:
        raise RuntimeError(f"capture saw {len(store['out'])} layers, expected {n_layers}")
    layer_out = torch.stack(store["out"])
    attn = torch.stack(store["attn"])
    z = torch.stack(store["z"]).view(n_layers, n, adapter.n_heads, adapter.d_head)
    attn_resid = torch.cat([out.hidden_states[0][0].float()[None], layer_out[:-1]]) + attn
    if adapter.norm_placement == "post":
        attn_resid_ln = torch.stack(store["ffn_in"])
    else:
        attn_resid_ln = attn_resid  # SPEC: pre-LN models have no norm between attention and FFN input
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
        mlp_out=torch.stack(store["mlp"]),
        causal=causal,
    )


def head_vectors(adapter: Adapter, acts: Activations, kind: str, layer: int) -> Tensor:
    """Per-head vectors compared with a head space: (n, H, d_head).

    value: z, the head's post-attention vector (SPEC ``heads`` site); key/query: the
    token's own key/query vector at this head (RoPE applied at its position), so each is
    compared with the vocabulary projected the same way. Under grouped-query attention a
    query head's key is its KV head's.
    """
    if kind == "value":
        return acts.z[layer]
    which = "k" if kind == "key" else "q"
    vec = head_qkv(adapter, acts, layer, which)  # (n, G, dh)
    return vec[:, adapter.kv_heads().to(vec.device)] if which == "k" else vec


def head_qkv(adapter: Adapter, acts: Activations, layer: int, which: str) -> Tensor:
    """The model's own q, k or v of every token at ``layer``: (n, G, d_head), G = its heads.

    Recomputed from the captured layer input through the adapter's canonical projection,
    with the layer's input norm in front (pre-norm models) and RoPE at each token's
    position for q and k. The one home of this recomputation: head views and the
    attention walkthrough both call it."""
    norm = adapter.attn_input_norm(layer)
    h = acts.layer_in[layer]
    x = h if norm is None else norm(h)
    vec = adapter.projection(layer, which)(x)  # (n, G, dh)
    rot = adapter.rotary(layer)
    if rot is not None and which in ("q", "k"):
        vec = rot(vec, acts.position_ids, inverse=False)
    return vec
