"""mBART: BART's embedding stage and attention layout, pre-norm, each stack ending in a
final ``layer_norm`` (issue 23).

Layout (transformers 5, ``MBartForConditionalGeneration``; the base model at
``model.model``): per stack ``embed_tokens`` (``W[v] * embed_scale``) + ``embed_positions``
(learned, row ``p + 2``) -> ``layernorm_embedding``, so, as BART::

    Emb(v, p) = LN_emb(W_E[v] * embed_scale + W_P[p + 2])

Encoder layer (pre-norm)::

    a     = h_l + SelfAttn(self_attn_layer_norm(h_l))                     -> attn_resid (== attn_resid_ln)
    h_l+1 = a + fc2(act(fc1(final_layer_norm(a))))                       -> layer_out

Decoder layer (pre-norm)::

    a     = h_l + SelfAttn(self_attn_layer_norm(h_l))      (causal)      -> attn_resid
    c     = a + CrossAttn(q from encoder_attn_layer_norm(a),
                          k/v from the encoder output)                   -> cross_resid
    h_l+1 = c + fc2(act(fc1(final_layer_norm(c))))                       -> layer_out

Each stack's ``layer_norm`` follows its last layer (the framework's last hidden state, and
the encoder output cross-attention reads, are after it). The output head:
``lm_head(layer_norm(h_L)) + final_logits_bias``. The teacher-forcing input is mBART's own
``shift_tokens_right``: the target's last token (its language code) wrapped to the front.

Head spaces read ``LN_l(LN_emb(W_E[v] * s + W_P[p + 2]))``: two LayerNorms around a
position-dependent sum, which :class:`tokentrail.engine.spaces.DoubleNormSpace` factorises.
"""

from __future__ import annotations

from torch import Tensor, nn

from tokentrail.adapters.bart import BartDecoderAdapter, BartEncoderAdapter, _norm
from tokentrail.adapters.base import HookPoints, Norm
from tokentrail.adapters.seq2seq import CrossPoints


class MBartEncoderAdapter(BartEncoderAdapter):
    family = "mbart"
    norm_placement = "pre"

    def attn_input_norm(self, layer: int) -> Norm | None:
        return _norm(self.layers[layer].self_attn_layer_norm)

    def attn_resid_norm(self, layer: int) -> None:
        return None  # pre-norm: attn_resid_ln == attn_resid

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # pre-norm: the FFN's own norm reads attn_resid; fc2's output is the FFN's
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.out_proj,
            ffn_input=None,
            mlp_out=lay.fc2,
            ffn_norm=lay.final_layer_norm,
        )

    def final_norm(self) -> nn.Module:
        return self.stack_module.layer_norm

    def decoder_input(self, target_ids: Tensor) -> Tensor:
        """mBART's own teacher-forcing input (``shift_tokens_right`` on an unpadded target):
        the last token (the target language code) first, then the rest."""
        ids = target_ids.long().reshape(-1)
        if ids.numel() < 2:
            return super().decoder_input(ids)
        return ids.roll(1)

    def make_decoder(self) -> MBartDecoderAdapter:
        return MBartDecoderAdapter(self.model)


class MBartDecoderAdapter(BartDecoderAdapter):
    family = "mbart"
    norm_placement = "pre"

    def attn_input_norm(self, layer: int) -> Norm | None:
        return _norm(self.layers[layer].self_attn_layer_norm)

    def attn_resid_norm(self, layer: int) -> None:
        return None

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        # attn_resid (== attn_resid_ln, pre-norm) is what cross-attention's norm reads
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.out_proj,
            ffn_input=None,
            mlp_out=lay.fc2,
            ffn_norm=lay.encoder_attn_layer_norm,
        )

    def cross_points(self, layer: int) -> CrossPoints:
        lay = self.layers[layer]
        # pre-norm: the FFN's own norm reads cross_resid as it is
        return CrossPoints(out_proj=lay.encoder_attn.out_proj, receiver=lay.final_layer_norm, receiver_norm=None)

    def cross_query_norm(self, layer: int) -> Norm | None:
        return _norm(self.layers[layer].encoder_attn_layer_norm)

    def final_norm(self) -> nn.Module:
        return self.stack_module.layer_norm
