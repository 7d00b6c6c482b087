"""The Llama family (Llama, SmolLM, Mistral, Qwen2): pre-RMSNorm decoders with RoPE.

Layout (transformers 5, ``*ForCausalLM``): ``model.embed_tokens``; per layer
``model.layers[i]`` = ``input_layernorm`` -> ``self_attn`` (``q_proj``/``k_proj``/
``v_proj``, RoPE on q and k, ``o_proj``) -> residual -> ``post_attention_layernorm`` ->
``mlp`` -> residual; final ``model.norm``; ``lm_head``. All projections are
``nn.Linear`` (``x @ W.T + b``; q/k/v biases only where the config has them, e.g.
Qwen2). Grouped-query attention: ``k_proj``/``v_proj`` have ``H_kv`` heads, query head
``h`` reads KV head ``h // (H / H_kv)`` (``repeat_kv``).

``Emb(v, p) = W_E[v]``: position enters only through the rotary embedding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.decoder import DecoderAdapter


def _rmsnorm(norm: nn.Module) -> Norm:
    return Norm("rmsnorm", norm.weight.detach().float(), None, float(norm.variance_epsilon))


def _rotate_half(x: Tensor) -> Tensor:
    # the model's convention: pairs are (i, i + dh/2), not interleaved neighbours
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class RotaryFromModel:
    """The model's own RoPE as a :class:`~tokentrail.adapters.base.Rotary`.

    cos/sin come from the model's ``rotary_emb`` module (so scaled RoPE variants and
    ``attention_scaling`` follow the checkpoint). Forward: ``x cos + rotate_half(x) sin``,
    as ``apply_rotary_pos_emb``. ``inverse=True`` applies the transpose,
    ``x cos - rotate_half(x) sin`` (rotation by ``-angle``): what a dot product with a
    rotated row needs, ``(R_p u) . r == u . (R_p^T r)``. The module's cos/sin carry its
    ``attention_scaling`` (``scale``: YaRN's, LongRoPE's; 1 for the others), so both
    directions are ``scale`` times a rotation; ``scaled=False`` divides it out, leaving the
    pure rotation (and ``inverse=True`` then its exact inverse).

    Partial rotary (GPT-NeoX ``rotary_pct``, Phi ``partial_rotary_factor``): the module's
    cos/sin are only ``rotary_dim`` wide; the first ``rotary_dim`` dims of each head
    rotate and the rest pass through, as those models' ``apply_rotary_pos_emb`` does.
    """

    def __init__(self, rotary_emb: nn.Module):
        self.rotary_emb = rotary_emb
        #: how many leading dims of a head rotate (the rest pass through unrotated)
        self.rotary_dim = 2 * int(rotary_emb.inv_freq.shape[-1])

    @property
    def scale(self) -> float:
        """RoPE's ``attention_scaling``: what the model multiplies cos and sin by."""
        return float(getattr(self.rotary_emb, "attention_scaling", 1.0))

    @torch.no_grad()
    def __call__(self, x: Tensor, positions: Tensor, inverse: bool = False, scaled: bool = True) -> Tensor:
        # x: (n, G, dh); positions: (n,)
        x = x.float()
        cos, sin = self.rotary_emb(x, positions.long()[None])  # (1, n, rotary_dim) each
        cos, sin = cos[0].float()[:, None, :], sin[0].float()[:, None, :]  # (n, 1, rotary_dim)
        if not scaled and self.scale != 1.0:
            cos, sin = cos / self.scale, sin / self.scale
        if inverse:
            sin = -sin
        rot, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1] :]
        return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


class LlamaAdapter(DecoderAdapter):
    family = "llama"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.base = model.model if hasattr(model, "model") else model
        self.layers = self.base.layers
        self._rotary = self._model_rotary()

    def _model_rotary(self) -> RotaryFromModel:
        """The model's one RoPE (Gemma 3 has one per layer type: see adapters/gemma.py)."""
        return RotaryFromModel(self.base.rotary_emb)

    def base_model(self) -> nn.Module:
        return self.base

    def final_norm(self) -> nn.Module:
        return self.base.norm

    @property
    def max_tokens(self) -> int | None:
        # RoPE has no table to run off, but the model was never trained past this. LongRoPE
        # switches every position's frequencies once a text passes its original length (and
        # dynamic RoPE once it passes max_position_embeddings): below that, a position's
        # rotation is the same in every text, which the key/query spaces rely on
        cap = getattr(self.config, "max_position_embeddings", None)
        rope = getattr(self.config, "rope_parameters", None) or {}
        original = rope.get("original_max_position_embeddings") if rope.get("rope_type") == "longrope" else None
        return cap if original is None or cap is None else min(cap, int(original))

    # ---- the embedding stage ----------------------------------------------
    def embedding_table(self) -> Tensor:
        return self.base.embed_tokens.weight.detach()

    def position_offset(self, position_ids: Tensor) -> None:
        return None  # position enters only through RoPE

    def embedding_norm(self) -> None:
        return None

    # ---- layers --------------------------------------------------------------
    def attn_input_norm(self, layer: int) -> Norm:
        return _rmsnorm(self.layers[layer].input_layernorm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].self_attn
        linear = {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which]
        groups = self.n_heads if which == "q" else self.n_kv_heads
        # nn.Linear stores (out, in) = (G*dh, d): already W @ x, rows grouped head by head
        w = linear.weight.detach().float().view(groups, self.d_head, self.d_model)
        b = None if linear.bias is None else linear.bias.detach().float().view(groups, self.d_head)
        return HeadProjection(w, b)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        o_proj = self.layers[layer].self_attn.o_proj
        # x @ W.T with x the concatenated heads: W.T is (H*dh, d) -> (H, dh, d)
        w_o = o_proj.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if o_proj.bias is None else o_proj.bias.detach().float()

    def rotary(self, layer: int) -> RotaryFromModel:
        return self._rotary

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.o_proj,
            ffn_input=None,
            mlp_out=lay.mlp,
            ffn_norm=lay.post_attention_layernorm,
        )


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    windowed = True
    window_every_layer = True  # MistralModel masks every layer with config.sliding_window


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    windowed = True
