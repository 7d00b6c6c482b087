"""BART / mBART-style encoder stack (the encoder half of issue 12's encoder-decoder work).

Layout (transformers 5, ``BartModel`` / ``BartForConditionalGeneration``, encoder at
``model.get_encoder()``): ``embed_tokens`` (``BartScaledWordEmbedding``: ``W[v] *
embed_scale``, ``sqrt(d)`` when ``config.scale_embedding``) + ``embed_positions``
(``BartLearnedPositionalEmbedding``: row ``p + 2`` for position ``p``, the offset of
fairseq's padding convention) -> ``layernorm_embedding``; per layer ``self_attn``
(``q_proj``/``k_proj``/``v_proj``/``out_proj``, ``nn.Linear`` with biases) -> residual ->
``self_attn_layer_norm`` (post-LN) -> ``fc1`` -> activation -> ``fc2`` -> residual ->
``final_layer_norm``. So::

    Emb(v, p) = LN_emb(W_E[v] * embed_scale + W_P[p + 2])

with the canonical table already scaled (as Gemma's) and ``position_offset(p)`` reading
row ``p + 2``. Position ids are the model's own: ``0..n-1`` (the encoder numbers tokens
itself and takes no ``position_ids``).

This adapter traces the encoder stack alone with every SPEC site (post-LN, as BERT). It
is not in the registry: a ``bart`` checkpoint should trace both stacks and the decoder's
cross-attention, which needs a capture of its own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import InputError, ModelError
from .base import Adapter, HeadProjection, HookPoints, Norm


def _norm(ln: nn.LayerNorm) -> Norm:
    return Norm("layernorm", ln.weight.detach().float(), ln.bias.detach().float(), ln.eps)


class BartEncoderAdapter(Adapter):
    family = "bart-encoder"
    norm_placement = "post"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
        self.layers = self.encoder.layers
        self._scaled_table: Tensor | None = None

    # ---- sizes (BART names them per stack) ----------------------------------------
    @property
    def n_layers(self) -> int:
        return self.config.encoder_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_heads(self) -> int:
        return self.config.encoder_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return self.n_heads

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        return self.encoder.embed_tokens.weight.shape[0]

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings

    # ---- the embedding stage ----------------------------------------------
    # the encoder numbers positions 0..n-1 itself, whatever the padding: right padding only
    padding_sides = ("right",)

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n = input_ids.shape[-1]
        return torch.arange(n, dtype=torch.long, device=input_ids.device).expand_as(input_ids).contiguous()

    def embedding_table(self) -> Tensor:
        if self._scaled_table is None:
            emb = self.encoder.embed_tokens
            w = emb.weight.detach()
            self._scaled_table = w * torch.as_tensor(emb.embed_scale, dtype=w.dtype)
        return self._scaled_table

    def position_offset(self, position_ids: Tensor) -> Tensor:
        pos = self.encoder.embed_positions
        return pos.weight.detach()[position_ids + pos.offset].float()

    def embedding_norm(self) -> Norm:
        return _norm(self.encoder.layernorm_embedding)

    # ---- layers --------------------------------------------------------------
    def attn_input_norm(self, layer: int) -> None:
        return None

    def attn_resid_norm(self, layer: int) -> Norm:
        return _norm(self.layers[layer].self_attn_layer_norm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        att = self.layers[layer].self_attn
        linear = {"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which]
        # nn.Linear (H*dh, d) = W @ x, rows grouped head by head
        w = linear.weight.detach().float().view(self.n_heads, self.d_head, self.d_model)
        b = None if linear.bias is None else linear.bias.detach().float().view(self.n_heads, self.d_head)
        return HeadProjection(w, b)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        out = self.layers[layer].self_attn.out_proj
        w_o = out.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if out.bias is None else out.bias.detach().float()

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # fc1's input is self_attn_layer_norm(h + attn): attn_resid_ln; fc2's output is the FFN's
        return HookPoints(layer=lay, attn_out_proj=lay.self_attn.out_proj, ffn_input=lay.fc1, mlp_out=lay.fc2)

    # ---- running ---------------------------------------------------------------
    def forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor, causal: bool = False):
        if not torch.equal(position_ids, self.position_ids(input_ids)):
            raise InputError("the BART encoder numbers its positions itself (0..n-1); other position ids cannot be passed")
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl != "eager":
            raise ModelError(f"bart: tokentrail needs eager attention (got {impl!r}) to read attention probabilities")
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)

    def lens_unavailable_reason(self) -> str:
        return "the BART encoder's output feeds the decoder's cross-attention, not a vocabulary head: no logit lens here"


class BartDecoderAdapter:
    """The BART decoder stack's facts in canonical layout, cross-attention included.

    Per layer (post-LN)::

        a     = h_l + SelfAttn(h_l)               (causal)        -> attn_resid
        a_ln  = LN_self(a)                                        -> attn_resid_ln (cross-attention's query input)
        c     = a_ln + CrossAttn(q from a_ln, k/v from the encoder output)  -> cross_resid
        c_ln  = LN_cross(c)                                       -> cross_resid_ln (the FFN's input)
        h_l+1 = LN_final(c_ln + FFN(c_ln))                        -> layer_out

    A cross-attention head's key/value "vocabulary" is the encoder output tokens of this
    input (``W_K[h] e_s + b_K[h]`` for each encoder token ``s``), not the model's vocabulary.
    The decoder's embedding stage is the encoder's: the shared scaled table, its own
    position table (offset 2) and ``layernorm_embedding``.
    """

    family = "bart"

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.config = model.config
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.model.decoder
        self.decoder = base
        self.layers = base.layers
        self.encoder = BartEncoderAdapter(model)

    @property
    def n_layers(self) -> int:
        return self.config.decoder_layers

    @property
    def n_heads(self) -> int:
        return self.config.decoder_attention_heads

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def embed(self, decoder_ids: Tensor) -> Tensor:
        """Emb(y_t, t) of the decoder: (n,) -> (n, d)."""
        emb = self.decoder.embed_tokens  # BartScaledWordEmbedding: W[v] * embed_scale
        table = emb.weight.detach() * torch.as_tensor(emb.embed_scale, dtype=emb.weight.dtype)
        pos = self.decoder.embed_positions
        x = table[decoder_ids].float() + pos.weight.detach()[torch.arange(decoder_ids.shape[0]) + pos.offset].float()
        return _norm(self.decoder.layernorm_embedding)(x)

    def _split(self, linear: nn.Linear) -> HeadProjection:
        w = linear.weight.detach().float().view(self.n_heads, self.d_head, self.d_model)
        b = None if linear.bias is None else linear.bias.detach().float().view(self.n_heads, self.d_head)
        return HeadProjection(w, b)

    def projection(self, layer: int, which: Literal["q", "k", "v"], *, cross: bool = False) -> HeadProjection:
        """Self-attention (or, ``cross=True``, cross-attention) q/k/v maps. Cross: q reads the
        decoder's ``attn_resid_ln``, k and v read the encoder output."""
        att = self.layers[layer].encoder_attn if cross else self.layers[layer].self_attn
        return self._split({"q": att.q_proj, "k": att.k_proj, "v": att.v_proj}[which])

    def output_projection(self, layer: int, *, cross: bool = False) -> tuple[Tensor, Tensor | None]:
        att = self.layers[layer].encoder_attn if cross else self.layers[layer].self_attn
        out = att.out_proj
        w_o = out.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if out.bias is None else out.bias.detach().float()

    def norms(self, layer: int) -> dict[str, Norm]:
        """The layer's post-LN norms: ``self`` (after self-attention), ``cross``, ``final``."""
        lay = self.layers[layer]
        return {"self": _norm(lay.self_attn_layer_norm), "cross": _norm(lay.encoder_attn_layer_norm), "final": _norm(lay.final_layer_norm)}
