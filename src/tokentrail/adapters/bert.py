"""Post-LN encoders: BERT and the RoBERTa family (RoBERTa, XLM-R, CamemBERT).

Layout (transformers 5): ``base.embeddings.{word,position,token_type}_embeddings`` +
``LayerNorm``; per layer ``attention.self.{query,key,value}`` (``nn.Linear``: weight is
``(out, in)``, applied as ``x @ W.T + b``), ``attention.output.dense`` then
``attention.output.LayerNorm(dense + residual)``, then ``intermediate`` (the FFN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import Adapter, HeadProjection, HookPoints, Norm


def _norm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


def _split_heads(linear: nn.Linear, n_heads: int) -> HeadProjection:
    # nn.Linear stores (out, in) and computes x @ W.T + b; rows of W are output units,
    # grouped head by head, so (H*dh, d) -> (H, dh, d) is already "W @ x" per head.
    w = linear.weight.detach().float()
    b = None if linear.bias is None else linear.bias.detach().float().view(n_heads, -1)
    return HeadProjection(w.view(n_heads, -1, w.shape[1]), b)


class BertAdapter(Adapter):
    family = "bert"
    norm_placement = "post"
    head_key_prefixes: tuple[str, ...] = ("cls.predictions.",)
    unread_key_prefixes = ("pooler.", "cls.seq_relationship.")  # the pooler and the next-sentence head

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.base = model.base_model
        self.emb = self.base.embeddings
        self.layers = self.base.encoder.layer

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings

    # BERT's own rule is arange(n) whatever the padding, so only right padding keeps every
    # real token at the position it has alone
    padding_sides: tuple[str, ...] = ("right",)

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n = input_ids.shape[-1]
        return torch.arange(n, dtype=torch.long, device=input_ids.device).expand_as(input_ids).contiguous()

    def embedding_table(self) -> Tensor:
        return self.emb.word_embeddings.weight.detach()

    def position_offset(self, position_ids: Tensor) -> Tensor:
        # token type 0 everywhere: that is what the model uses for a single text
        pos = self.emb.position_embeddings.weight.detach()[position_ids].float()
        return pos + self.emb.token_type_embeddings.weight.detach()[0].float()

    def embedding_norm(self) -> Norm:
        return _norm(self.emb.LayerNorm)

    def attn_input_norm(self, layer: int) -> None:
        return None

    def attn_resid_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].attention.output.LayerNorm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].attention.self
        linear = {"q": att.query, "k": att.key, "v": att.value}[which]
        return _split_heads(linear, self.n_heads)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor]:
        dense = self.layers[layer].attention.output.dense
        # x @ W.T with x the concatenated heads: W.T is (H*dh, d) -> (H, dh, d)
        w_o = dense.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, dense.bias.detach().float()

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # the FFN is intermediate -> output.dense, then output.LayerNorm(dense + residual):
        # output.dense's output is the FFN sublayer's output before the residual add
        return HookPoints(
            layer=lay, attn_out_proj=lay.attention.output.dense, ffn_input=lay.intermediate, mlp_out=lay.output.dense
        )

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        return self.base(
            input_ids=input_ids,  # (B, n)
            attention_mask=attention_mask,  # (B, n): the model hides padding keys itself
            token_type_ids=torch.zeros_like(input_ids),
            position_ids=position_ids,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        cls = getattr(self.model, "cls", None)
        if cls is None:
            return None
        return lambda h: cls(h.float())

    def lens_unavailable_reason(self) -> str:
        return (
            "this checkpoint has no output head (no masked-LM head: it was loaded as a bare encoder, e.g. a "
            "sentence-embedding model such as all-MiniLM-L6-v2), so there is no logit lens"
        )


class RobertaAdapter(BertAdapter):
    family = "roberta"
    head_key_prefixes = ("lm_head.",)

    # the model's own rule skips padding ids, so left padding keeps positions too
    padding_sides = ("left", "right")

    @property
    def pad_id(self) -> int:
        return int(self.emb.padding_idx)

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # RoBERTa counts non-padding tokens from padding_idx + 1 and gives padding ids
        # padding_idx: the model's own rule, which reads the ids (not the mask)
        emb = self.emb
        rows = input_ids.reshape(-1, input_ids.shape[-1])
        return emb.create_position_ids_from_input_ids(rows, emb.padding_idx).view_as(input_ids)

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings - self.emb.padding_idx - 1

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        head = getattr(self.model, "lm_head", None)
        if head is None:
            return None
        return lambda h: head(h.float())
