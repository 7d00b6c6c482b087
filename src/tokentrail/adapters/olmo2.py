"""OLMo 2: norms after attention and MLP (inside each branch), and QK-norm over all heads.

Layout (transformers 5, ``Olmo2ForCausalLM``): ``model.embed_tokens``; per layer
``model.layers[i]``: ``self_attn`` reads ``h_l`` itself (no input norm), with
``q_norm``/``k_norm`` = ``Olmo2RMSNorm(H * d_head)`` / ``(H_kv * d_head)`` applied to the
whole projection ``q_proj(x)`` before it is split into heads and rotated; then
``post_attention_layernorm`` on the attention output, the residual add, ``mlp``,
``post_feedforward_layernorm``, the residual add; final ``model.norm``; ``lm_head``::

    r = h + RMSNorm_a(o_proj(attn(h)))        h' = r + RMSNorm_f(mlp(r))

So the sites are: ``attn_l = RMSNorm_a(concat_h(z) W_O)`` (what the branch adds),
``attn_resid = attn_resid_ln = h_l + attn_l`` (what the MLP reads), ``mlp_out =
RMSNorm_f(mlp(r))``. A key/query row is ``RoPE(RMSNorm_all(W x_v))[head g]``: normed over
all heads jointly, but a function of the token alone, so the spaces keep it made.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from tokentrail.adapters.base import HeadNorm, HeadProjection, HookPoints, Norm
from tokentrail.adapters.llama import LlamaAdapter, _rmsnorm


class Olmo2Adapter(LlamaAdapter):
    family = "olmo2"

    def attn_input_norm(self, layer: int) -> None:
        return None  # attention reads h_l as it is

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        proj = super().projection(layer, which)
        if which == "v":
            return proj
        att = self.layers[layer].self_attn
        norm: nn.Module = att.q_norm if which == "q" else att.k_norm
        return HeadProjection(proj.weight, proj.bias, HeadNorm(_rmsnorm(norm), joint=True))

    def attn_out_norm(self, layer: int) -> Norm:
        return _rmsnorm(self.layers[layer].post_attention_layernorm)

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.o_proj,  # input: z
            attn_out=lay.post_attention_layernorm,  # output: attn_l, what the branch adds
            ffn_input=None,
            mlp_out=lay.post_feedforward_layernorm,  # the MLP branch's output, normed
            ffn_norm=lay.mlp,  # the module whose input is attn_resid_ln (no norm in front of it)
        )
