"""Phi (Phi-1, Phi-1.5, Phi-2): pre-LN decoders with parallel attention + MLP, partial
RoPE and biases everywhere.

Layout (transformers 5, ``PhiForCausalLM``): ``model.embed_tokens``; per layer
``model.layers[i]`` = one ``input_layernorm`` (LayerNorm with bias) whose output feeds
*both* ``self_attn`` (``q_proj``/``k_proj``/``v_proj`` with biases, RoPE on the first
``partial_rotary_factor * d_head`` dims of q and k, ``dense``) and ``mlp``; final
``model.final_layernorm``; ``lm_head`` with a bias. ``Emb(v, p) = W_E[v]``.

Parallel residual: ``h_{l+1} = h_l + attn_l(LN(h_l)) + mlp_l(LN(h_l))``. As for GPT-NeoX
(see :mod:`.gpt_neox`), ``attn_resid = h_l + attn_l`` (the attention half of the layer's
update; no module reads it) and ``attn_resid_ln`` is what the FFN receives, ``LN(h_l)``:
here the very vector the attention heads read too.

``qk_layernorm=True`` (a per-head LayerNorm on q and k after the projection) is refused:
the key/query spaces would no longer be affine in the embedding.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokentrail.adapters.base import HookPoints, Norm
from tokentrail.adapters.llama import LlamaAdapter
from tokentrail.spec.errors import ModelError


def _norm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


class PhiAdapter(LlamaAdapter):
    family = "phi"

    def __init__(self, model: nn.Module):
        if getattr(model.config, "qk_layernorm", False):
            raise ModelError("phi with qk_layernorm=True is not supported: its key/query spaces do not factorise")
        super().__init__(model)

    def final_norm(self) -> nn.Module:
        return self.base.final_layernorm

    def attn_input_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].input_layernorm)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        dense = self.layers[layer].self_attn.dense
        # x @ W.T with x the concatenated heads: W.T is (H*dh, d) -> (H, dh, d)
        w_o = dense.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, dense.bias.detach().float()

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # the MLP's input is the shared LN(h_l): attn_resid_ln
        return HookPoints(layer=lay, attn_out_proj=lay.self_attn.dense, ffn_input=lay.mlp, mlp_out=lay.mlp)
