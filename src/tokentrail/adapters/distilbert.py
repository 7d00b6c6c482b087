"""DistilBERT: BERT's post-LN encoder with renamed modules and no token types.

Layout (transformers 5, ``DistilBertModel`` / ``DistilBertForMaskedLM``; the base model at
``model.distilbert``): ``embeddings.{word,position}_embeddings`` -> ``embeddings.LayerNorm``
(the position table holds fixed sinusoids under ``sinusoidal_pos_embds``: a table either
way, read as it is); per layer ``transformer.layer[i]`` = ``attention.{q,k,v}_lin`` ->
``attention.out_lin`` -> ``sa_layer_norm(attn + h)`` -> ``ffn.lin1`` -> activation ->
``ffn.lin2`` -> ``output_layer_norm(ffn + a)``. So::

    Emb(v, p) = LN_emb(W_E[v] + W_P[p])

The masked-LM head (``DistilBertForMaskedLM`` only): ``vocab_projector(vocab_layer_norm(
act(vocab_transform(h))))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import Adapter, HeadProjection, HookPoints, Norm
from tokentrail.adapters.bert import BertAdapter, _norm, _split_heads


class DistilBertAdapter(BertAdapter):
    family = "distilbert"
    head_key_prefixes = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.")

    def __init__(self, model: nn.Module):
        Adapter.__init__(self, model)  # BERT's own __init__ looks for base.encoder
        self.base = model.base_model
        self.emb = self.base.embeddings
        self.layers = self.base.transformer.layer

    def position_offset(self, position_ids: Tensor) -> Tensor:
        return self.emb.position_embeddings.weight.detach()[position_ids].float()  # no token types

    def attn_resid_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].sa_layer_norm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].attention
        return _split_heads({"q": att.q_lin, "k": att.k_lin, "v": att.v_lin}[which], self.n_heads)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor]:
        out = self.layers[layer].attention.out_lin
        w_o = out.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, out.bias.detach().float()

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # lin1 reads sa_layer_norm(h + attn) (attn_resid_ln); lin2's output is the FFN's
        return HookPoints(layer=lay, attn_out_proj=lay.attention.out_lin, ffn_input=lay.ffn.lin1, mlp_out=lay.ffn.lin2)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        return self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        m = self.model
        if getattr(m, "vocab_projector", None) is None:
            return None

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) -> (n, V): the model's own head modules, in its order
            x = m.vocab_layer_norm(m.activation(m.vocab_transform(h.to(m.vocab_transform.weight.dtype))))
            return m.vocab_projector(x).float()

        return apply
