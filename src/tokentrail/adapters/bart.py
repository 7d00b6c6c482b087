"""BART / Marian: post-LN encoder-decoders with absolute positions (issue 12).

Layout (transformers 5, ``BartForConditionalGeneration`` / ``MarianMTModel``; the base
model at ``model.model``): per stack ``embed_tokens`` (BART: ``BartScaledWordEmbedding``,
``W[v] * embed_scale``; Marian: a plain embedding, the stack multiplying by its own
``embed_scale``) + ``embed_positions`` (BART: learned, row ``p + 2`` for position ``p``,
fairseq's padding offset; Marian: fixed sinusoids, row ``p``) -> ``layernorm_embedding``
(BART only). So::

    Emb(v, p) = LN_emb(W_E[v] * embed_scale + W_P[p + offset])        (BART)
    Emb(v, p) = W_E[v] * embed_scale + W_P[p]                         (Marian)

with the canonical table already scaled (as Gemma's). Each stack numbers its positions
``0..n-1`` itself.

Encoder layer (post-LN, as BERT): ``self_attn`` -> residual -> ``self_attn_layer_norm``
-> ``fc1`` -> activation -> ``fc2`` -> residual -> ``final_layer_norm``.

Decoder layer (post-LN)::

    a     = h_l + SelfAttn(h_l)              (causal)               -> attn_resid
    a_ln  = LN_self(a)                                              -> attn_resid_ln (cross-attention's query input)
    c     = a_ln + CrossAttn(q from a_ln, k/v from the encoder output) -> cross_resid
    h_l+1 = LN_final(LN_cross(c) + FFN(LN_cross(c)))               -> layer_out

The output head (decoder only): ``lm_head(h_L) + final_logits_bias``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import HeadProjection, HookPoints, Norm
from tokentrail.adapters.seq2seq import CrossPoints, DecoderStack, EncoderStack


def _norm(ln: nn.LayerNorm | None) -> Norm | None:
    if ln is None:
        return None
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


def _split(linear: nn.Linear, heads: int, d_head: int, d_model: int) -> HeadProjection:
    # nn.Linear (H*dh, d) = W @ x, rows grouped head by head
    w = linear.weight.detach().float().view(heads, d_head, d_model)
    b = None if linear.bias is None else linear.bias.detach().float().view(heads, d_head)
    return HeadProjection(w, b)


def _out(linear: nn.Linear, heads: int, d_head: int, d_model: int) -> tuple[Tensor, Tensor | None]:
    w_o = linear.weight.detach().float().T.reshape(heads, d_head, d_model)
    return w_o, None if linear.bias is None else linear.bias.detach().float()


class _BartStack:
    """What both BART stacks share: the embedding stage and the self-attention layout."""

    config: Any  # from the Adapter this is mixed into
    stack_module: nn.Module  # the encoder or decoder (BartEncoder / BartDecoder)
    layers: nn.ModuleList
    _scaled_table: Tensor | None

    if TYPE_CHECKING:  # each stack's own property (a plain annotation could not be overridden by one)

        @property
        def n_heads(self) -> int: ...

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        return self.stack_module.embed_tokens.weight.shape[0]

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings

    def embedding_table(self) -> Tensor:
        if self._scaled_table is None:
            emb = self.stack_module.embed_tokens
            # BART keeps the scale on its embedding module, Marian on the stack
            scale = getattr(emb, "embed_scale", None)
            scale = getattr(self.stack_module, "embed_scale", 1.0) if scale is None else scale
            w = emb.weight.detach()
            self._scaled_table = w * torch.as_tensor(scale, dtype=w.dtype)
        return self._scaled_table

    def position_offset(self, position_ids: Tensor) -> Tensor:
        pos = self.stack_module.embed_positions
        return pos.weight.detach()[position_ids + getattr(pos, "offset", 0)].float()

    def embedding_norm(self) -> Norm | None:
        return _norm(getattr(self.stack_module, "layernorm_embedding", None))

    def attn_input_norm(self, layer: int) -> Norm | None:
        return None  # post-LN

    def attn_resid_norm(self, layer: int) -> Norm | None:
        return _norm(self.layers[layer].self_attn_layer_norm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].self_attn
        return _split(
            {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which], self.n_heads, self.d_head, self.d_model
        )

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        return _out(self.layers[layer].self_attn.out_proj, self.n_heads, self.d_head, self.d_model)


class BartEncoderAdapter(_BartStack, EncoderStack):
    """The encoder stack of a BART checkpoint (the model's primary adapter: see
    :mod:`tokentrail.adapters.seq2seq`)."""

    family = "bart"
    norm_placement = "post"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.stack_module = self.encoder_module()
        self.layers = self.stack_module.layers
        self._scaled_table = None

    @property
    def n_layers(self) -> int:
        return self.config.encoder_layers

    @property
    def n_heads(self) -> int:
        return self.config.encoder_attention_heads

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # fc1's input is self_attn_layer_norm(h + attn): attn_resid_ln; fc2's output is the FFN's
        return HookPoints(layer=lay, attn_out_proj=lay.self_attn.out_proj, ffn_input=lay.fc1, mlp_out=lay.fc2)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        self._check_positions(input_ids, position_ids)
        self._check_eager()
        return self.stack_module(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    def make_decoder(self) -> BartDecoderAdapter:
        return BartDecoderAdapter(self.model)


class BartDecoderAdapter(_BartStack, DecoderStack):
    """The decoder stack of a BART checkpoint, cross-attention included."""

    family = "bart"
    norm_placement = "post"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.stack_module = self.decoder_module()
        self.layers = self.stack_module.layers
        self._scaled_table = None

    @property
    def n_layers(self) -> int:
        return self.config.decoder_layers

    @property
    def n_heads(self) -> int:
        return self.config.decoder_attention_heads

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # attn_resid_ln = LN_self(attn_resid) is what cross-attention's query map reads
        return HookPoints(
            layer=lay, attn_out_proj=lay.self_attn.out_proj, ffn_input=lay.encoder_attn.q_proj, mlp_out=lay.fc2
        )

    # ---- cross-attention ---------------------------------------------------------------
    def cross_projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].encoder_attn
        return _split(
            {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which], self.n_heads, self.d_head, self.d_model
        )

    def cross_output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        return _out(self.layers[layer].encoder_attn.out_proj, self.n_heads, self.d_head, self.d_model)

    def cross_points(self, layer: int) -> CrossPoints:
        lay = self.layers[layer]
        # post-LN: the FFN's first module reads LN_cross(cross_resid)
        return CrossPoints(
            out_proj=lay.encoder_attn.out_proj, receiver=lay.fc1, receiver_norm=_norm(lay.encoder_attn_layer_norm)
        )

    def cross_query_norm(self, layer: int) -> Norm | None:
        return None  # post-LN: cross-attention's query map reads attn_resid_ln as it is

    # ---- the final norm and the output head ---------------------------------------------
    def final_norm(self) -> nn.Module | None:
        return getattr(self.stack_module, "layer_norm", None)  # mBART-style checkpoints only

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        head = getattr(self.model, "lm_head", None)
        if head is None:
            return None
        norm = self.final_norm()
        bias = getattr(self.model, "final_logits_bias", None)

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) -> (n, V): the model's own head, final_logits_bias included
            x = h.to(head.weight.dtype)
            logits = head(x if norm is None else norm(x)).float()
            return logits if bias is None else logits + bias.float()

        return apply


class MarianEncoderAdapter(BartEncoderAdapter):
    """Marian: BART's layout with fixed sinusoidal positions (no offset) and no embedding norm."""

    family = "marian"

    def make_decoder(self) -> MarianDecoderAdapter:
        return MarianDecoderAdapter(self.model)


class MarianDecoderAdapter(BartDecoderAdapter):
    family = "marian"
