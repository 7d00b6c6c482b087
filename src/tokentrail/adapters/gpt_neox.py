"""GPT-NeoX / Pythia: pre-LN decoders with a fused, head-interleaved QKV, partial RoPE and
(usually) parallel attention + MLP.

Layout (transformers 5, ``GPTNeoXForCausalLM``): ``gpt_neox.embed_in``; per layer
``gpt_neox.layers[i]`` = ``input_layernorm`` -> ``attention`` (fused ``query_key_value``,
RoPE on the first ``rotary_pct * d_head`` dims of q and k, ``dense``) and
``post_attention_layernorm`` -> ``mlp``; final ``gpt_neox.final_layer_norm``; an untied
``lm_head`` (``embed_out`` in the original checkpoints). Every projection is ``nn.Linear`` with a bias.

The fused projection is *interleaved per head*: its output is viewed as
``(H, 3 * d_head)`` and each head's slice is ``q_h | k_h | v_h`` (not GPT-2's
``q | k | v`` blocks). So the weight ``(3 d, d)`` reads as ``(H, 3, d_head, d)``.

Parallel residual (``use_parallel_residual``, the Pythia default)::

    h_{l+1} = h_l + attn_l(LN_1(h_l)) + mlp_l(LN_2(h_l))

Both sublayers read ``h_l``; neither sees the other's output. SPEC's sites then mean:

* ``attn_resid`` = ``h_l + attn_l``, as for every family: the residual stream with the
  attention sublayer's contribution added and the MLP's not yet. No module of the model
  reads this vector (the MLP reads ``h_l``); it is the attention half of the layer's update.
* ``attn_resid_ln`` = what the FFN receives, ``LN_2(h_l)``: SPEC defines this site as the
  FFN's real input, and under parallel residual that is the MLP's normed input, not a
  function of the attention output. (Sequential pre-LN models keep SPEC's rule,
  ``attn_resid_ln == attn_resid``, the input of the FFN's norm.)

With ``use_parallel_residual=False`` the layer is an ordinary sequential pre-LN block.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.decoder import DecoderAdapter
from tokentrail.adapters.llama import RotaryFromModel


def _norm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


class GPTNeoXAdapter(DecoderAdapter):
    family = "gpt_neox"
    head_key_prefixes = ("lm_head.", "embed_out.")  # embed_out in the original checkpoints

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.base = model.gpt_neox if hasattr(model, "gpt_neox") else model
        self.layers = self.base.layers
        self.parallel = bool(self.config.use_parallel_residual)
        self._rotary = RotaryFromModel(self.base.rotary_emb)

    def base_model(self) -> nn.Module:
        return self.base

    def final_norm(self) -> nn.Module:
        return self.base.final_layer_norm

    def output_head(self) -> nn.Module | None:
        # transformers 5 names the untied head lm_head; older releases called it embed_out
        head = getattr(self.model, "lm_head", None)
        return head if head is not None else getattr(self.model, "embed_out", None)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads  # GPTNeoXAttention.head_size

    @property
    def max_tokens(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    # ---- the embedding stage ----------------------------------------------
    def embedding_table(self) -> Tensor:
        return self.base.embed_in.weight.detach()

    def position_offset(self, position_ids: Tensor) -> None:
        return None  # position enters only through RoPE

    def embedding_norm(self) -> None:
        return None

    # ---- layers --------------------------------------------------------------
    def attn_input_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].input_layernorm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        qkv = self.layers[layer].attention.query_key_value
        H, dh, d = self.n_heads, self.d_head, self.d_model
        i = "qkv".index(which)
        # nn.Linear (3d, d) = W @ x; output viewed as (H, 3 * dh): head h's rows are q_h | k_h | v_h
        w = qkv.weight.detach().float().view(H, 3, dh, d)[:, i]
        b = None if qkv.bias is None else qkv.bias.detach().float().view(H, 3, dh)[:, i]
        return HeadProjection(w.contiguous(), None if b is None else b.contiguous())

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        dense = self.layers[layer].attention.dense
        # x @ W.T with x the concatenated heads: W.T is (H*dh, d) -> (H, dh, d)
        w_o = dense.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if dense.bias is None else dense.bias.detach().float()

    def rotary(self, layer: int) -> RotaryFromModel:
        return self._rotary

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        if self.parallel:
            # the MLP's input is LN_2(h_l): attn_resid_ln (see the module docstring)
            return HookPoints(layer=lay, attn_out_proj=lay.attention.dense, ffn_input=lay.mlp, mlp_out=lay.mlp)
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.attention.dense,
            ffn_input=None,
            mlp_out=lay.mlp,
            ffn_norm=lay.post_attention_layernorm,
        )
