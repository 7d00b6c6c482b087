"""GPT-2: pre-LN decoder with learned absolute positions.

Layout (transformers 5, ``GPT2LMHeadModel``): ``transformer.wte`` / ``transformer.wpe``;
per layer ``transformer.h[i]`` = ``ln_1`` -> ``attn`` (fused ``c_attn`` for q|k|v, then
``c_proj``) -> residual -> ``ln_2`` -> ``mlp`` -> residual; final ``transformer.ln_f``;
``lm_head`` (tied to ``wte``). ``Emb(v, p) = W_E[v] + W_P[p]`` with no norm.

Every projection is an HF ``Conv1D``: it stores its weight as ``(in, out)`` and computes
``x @ W + b`` -- the transpose of ``nn.Linear``. Each read below says how it is turned
into the canonical ``W @ x`` layout.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.decoder import DecoderAdapter


def _norm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


class GPT2Adapter(DecoderAdapter):
    family = "gpt2"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.base = model.transformer if hasattr(model, "transformer") else model
        self.layers = self.base.h

    def base_model(self) -> nn.Module:
        return self.base

    def final_norm(self) -> nn.Module:
        return self.base.ln_f

    @property
    def max_tokens(self) -> int:
        return self.config.n_positions  # learned position table: a hard limit

    # ---- the embedding stage ----------------------------------------------
    def embedding_table(self) -> Tensor:
        return self.base.wte.weight.detach()

    def position_offset(self, position_ids: Tensor) -> Tensor:
        return self.base.wpe.weight.detach()[position_ids].float()

    def embedding_norm(self) -> None:
        return None

    # ---- layers --------------------------------------------------------------
    def attn_input_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].ln_1)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        c_attn = self.layers[layer].attn.c_attn
        d = self.d_model
        # Conv1D: weight (d, 3d) applied as x @ W; its transpose (3d, d) is W @ x, with
        # output rows ordered q | k | v and, inside each, head by head.
        i = "qkv".index(which)
        w = c_attn.weight.detach().float().T[i * d : (i + 1) * d]  # (d, d): rows = H*dh outputs
        b = c_attn.bias.detach().float()[i * d : (i + 1) * d]
        return HeadProjection(w.reshape(self.n_heads, self.d_head, d), b.view(self.n_heads, self.d_head))

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor]:
        c_proj = self.layers[layer].attn.c_proj
        # Conv1D: concat_h(z) @ W with W (H*dh, d): already (H, dh, d) per head, no transpose
        w_o = c_proj.weight.detach().float().reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, c_proj.bias.detach().float()

    def attention_scale(self, layer: int) -> float:
        # GPT2Attention.scaling: 1/sqrt(d_head) unless scale_attn_weights=False, then divided by
        # layer + 1 under scale_attn_by_inverse_layer_idx. reorder_and_upcast_attn computes the
        # same product in float32 (baddbmm with alpha = scaling): nothing else to model
        scale = self.d_head**-0.5 if getattr(self.config, "scale_attn_weights", True) else 1.0
        if getattr(self.config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer + 1)
        return scale

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # c_proj's input is the concatenated per-head z; its output is attn_l before resid_dropout
        return HookPoints(layer=lay, attn_out_proj=lay.attn.c_proj, ffn_input=None, mlp_out=lay.mlp, ffn_norm=lay.ln_2)
