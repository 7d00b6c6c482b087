"""Qwen3: the Llama layout plus QK-norm, an RMSNorm on each head's query and key.

Layout (transformers 5, ``Qwen3ForCausalLM``): as Llama (see :mod:`.llama`), and in
``self_attn`` ``q_norm``/``k_norm``: ``Qwen3RMSNorm(head_dim)``, applied to each head's
projected q and k (``q_norm(q_proj(x).view(..., H, d_head))``) before RoPE; one weight
of ``d_head`` shared by the heads. So ``q_t = RoPE_{p_t}(RMSNorm_q(W_Q x_t))``.

The norm makes a key/query row non-linear in the embedding, but only per token: the
spaces keep the normed rows made (see :mod:`tokentrail.engine.spaces`).

Sliding-window attention (``use_sliding_window``: the layers from ``max_window_layers``
on) changes nothing for a text no longer than the window: :func:`window_cap` caps the
text length there, so the plain causal mask the walkthrough and checks assume is the
model's own.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from tokentrail.adapters.base import HeadNorm, HeadProjection
from tokentrail.adapters.llama import LlamaAdapter, _rmsnorm


def window_cap(config, cap: int | None) -> int | None:
    """``cap`` lowered to the sliding window where any layer has one: a text of at most
    ``sliding_window`` tokens sees every earlier token in every layer (HF keeps key ``s``
    for query ``t`` when ``t - s < sliding_window``), so its mask is the plain causal one."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return cap
    if types is None and getattr(config, "use_sliding_window", True) is False:
        return cap
    return int(window) if cap is None else min(cap, int(window))


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"

    @property
    def max_tokens(self) -> int | None:
        return window_cap(self.config, super().max_tokens)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        proj = super().projection(layer, which)
        if which == "v":
            return proj
        att = self.layers[layer].self_attn
        norm: nn.Module = att.q_norm if which == "q" else att.k_norm
        return HeadProjection(proj.weight, proj.bias, HeadNorm(_rmsnorm(norm)))
