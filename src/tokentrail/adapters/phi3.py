"""Phi-3 / Phi-4 (``phi3``): the Llama layout with fused projections.

Layout (transformers 5, ``Phi3ForCausalLM``): as Llama (see :mod:`.llama`), but one
``self_attn.qkv_proj`` (no bias) whose output rows are ``q (H d_head) | k (H_kv d_head) |
v (H_kv d_head)``, each head by head, and one ``mlp.gate_up_proj``; RoPE on the first
``partial_rotary_factor * d_head`` dims (Phi-4-mini), LongRoPE on the long-context
checkpoints. ``resid_attn_dropout``/``resid_mlp_dropout`` are identities in eval mode.

A sliding window (Phi-3-mini's 2047) is modelled as Mistral's: ``Phi3Model`` builds one
sliding mask from ``config.sliding_window`` for every layer (query ``t`` sees keys
``s > t - sliding_window``; it has no ``layer_types``). LongRoPE's
``original_max_position_embeddings`` still caps the text (see :mod:`.llama`).
"""

from __future__ import annotations

from typing import Literal

from tokentrail.adapters.base import HeadProjection
from tokentrail.adapters.llama import LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    family = "phi3"
    windowed = True
    window_every_layer = True

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        qkv = self.layers[layer].self_attn.qkv_proj
        dh, d = self.d_head, self.d_model
        sizes = {"q": self.n_heads * dh, "k": self.n_kv_heads * dh, "v": self.n_kv_heads * dh}
        start = {"q": 0, "k": sizes["q"], "v": sizes["q"] + sizes["k"]}[which]
        rows = slice(start, start + sizes[which])
        groups = sizes[which] // dh
        w = qkv.weight.detach().float()[rows].view(groups, dh, d)  # nn.Linear (out, in): W @ x
        b = None if qkv.bias is None else qkv.bias.detach().float()[rows].view(groups, dh)
        return HeadProjection(w, b)
