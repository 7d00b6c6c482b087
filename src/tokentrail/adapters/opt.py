"""OPT: pre-LN decoders with learned positions (offset 2), biases everywhere and ReLU.

Layout (transformers 5, ``OPTForCausalLM``): ``model.decoder.embed_tokens`` and
``model.decoder.embed_positions`` (an ``nn.Embedding`` read at ``position_id + 2``, the
offset OPT keeps for its padding rule); per layer ``model.decoder.layers[i]`` =
``self_attn_layer_norm`` -> ``self_attn`` (``q_proj``/``k_proj``/``v_proj``/``out_proj``,
biases; the model scales q by ``d_head^-1/2`` before the product, the same scores as
scaling ``q . k``) -> residual -> ``final_layer_norm`` -> ``fc1`` -> ReLU -> ``fc2`` ->
residual; final ``model.decoder.final_layer_norm``; ``lm_head`` (tied to the token table).

``Emb(v, p) = W_E[v] + W_pos[p + 2]``, no norm. Refused in one line: the post-LN variant
(``do_layer_norm_before=False``, OPT-350m) and a ``word_embed_proj_dim`` other than
``hidden_size`` (``project_in``/``project_out``, also OPT-350m).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.decoder import DecoderAdapter
from tokentrail.spec.errors import ModelError


def _norm(ln: nn.LayerNorm, device: torch.device) -> Norm:
    """A LayerNorm as plain tensors (``layer_norm_elementwise_affine=False``: scale 1, no bias)."""
    weight = torch.ones(ln.normalized_shape[0], device=device) if ln.weight is None else ln.weight.detach().float()
    return Norm("layernorm", weight, None if ln.bias is None else ln.bias.detach().float(), ln.eps)


def _check(config) -> None:
    """The configurations this adapter does not model, refused before any work."""
    if not getattr(config, "do_layer_norm_before", True):
        raise ModelError("opt with do_layer_norm_before=False (post-LN, e.g. OPT-350m) is not supported")
    proj = getattr(config, "word_embed_proj_dim", None)
    if proj is not None and proj != config.hidden_size:
        raise ModelError(
            f"opt with word_embed_proj_dim={proj} != hidden_size={config.hidden_size} "
            "(project_in/project_out, e.g. OPT-350m) is not supported"
        )


class OPTAdapter(DecoderAdapter):
    family = "opt"
    #: what OPT adds to a position id before reading its table
    position_offset_rows = 2

    def __init__(self, model: nn.Module):
        _check(model.config)
        super().__init__(model)
        self.base = model.model if hasattr(model, "model") else model
        self.decoder = self.base.decoder
        self.layers = self.decoder.layers

    def base_model(self) -> nn.Module:
        return self.base

    def final_norm(self) -> nn.Module:
        # OPT's _remove_final_layer_norm (old checkpoints) leaves none
        return self.decoder.final_layer_norm if self.decoder.final_layer_norm is not None else nn.Identity()

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings  # learned position table: a hard limit

    # ---- the embedding stage ----------------------------------------------
    def embedding_table(self) -> Tensor:
        return self.decoder.embed_tokens.weight.detach()

    def position_offset(self, position_ids: Tensor) -> Tensor:
        return self.decoder.embed_positions.weight.detach()[position_ids + self.position_offset_rows].float()

    def embedding_norm(self) -> None:
        return None

    # ---- layers --------------------------------------------------------------
    def attn_input_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].self_attn_layer_norm, self.device)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].self_attn
        linear = {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which]
        w = linear.weight.detach().float().view(self.n_heads, self.d_head, self.d_model)
        b = None if linear.bias is None else linear.bias.detach().float().view(self.n_heads, self.d_head)
        return HeadProjection(w, b)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        out = self.layers[layer].self_attn.out_proj
        w_o = out.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if out.bias is None else out.bias.detach().float()

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # OPT's FFN is inline in the layer (fc1 -> ReLU -> fc2): fc2's output is mlp_out
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.out_proj,
            ffn_input=None,
            mlp_out=lay.fc2,
            ffn_norm=lay.final_layer_norm,
        )
