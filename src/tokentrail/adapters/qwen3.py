"""Qwen3: the Llama layout plus QK-norm, an RMSNorm on each head's query and key.

Layout (transformers 5, ``Qwen3ForCausalLM``): as Llama (see :mod:`.llama`), and in
``self_attn`` ``q_norm``/``k_norm``: ``Qwen3RMSNorm(head_dim)``, applied to each head's
projected q and k (``q_norm(q_proj(x).view(..., H, d_head))``) before RoPE; one weight
of ``d_head`` shared by the heads. So ``q_t = RoPE_{p_t}(RMSNorm_q(W_Q x_t))``.

The norm makes a key/query row non-linear in the embedding, but only per token: the
spaces keep the normed rows made (see :mod:`tokentrail.engine.spaces`).

Sliding-window attention (``use_sliding_window``: ``config.layer_types`` marks the layers
from ``max_window_layers`` on as ``sliding_attention``) is modelled, as Qwen2's: those
layers' query ``t`` sees keys ``s > t - sliding_window``
(:meth:`~.decoder.DecoderAdapter.attention_window`), so texts longer than the window trace
and the walkthrough and checks use the model's own mask.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from tokentrail.adapters.base import HeadNorm, HeadProjection
from tokentrail.adapters.llama import LlamaAdapter, _rmsnorm


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    windowed = True

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        proj = super().projection(layer, which)
        if which == "v":
            return proj
        att = self.layers[layer].self_attn
        norm: nn.Module = att.q_norm if which == "q" else att.k_norm
        return HeadProjection(proj.weight, proj.bias, HeadNorm(_rmsnorm(norm)))
