"""Gemma: a Llama-shaped pre-RMSNorm decoder with three twists, folded into the canonical layout.

Layout (transformers 5, ``GemmaForCausalLM``): as Llama (``model.embed_tokens``,
``input_layernorm`` -> ``self_attn`` with RoPE -> residual -> ``post_attention_layernorm``
-> ``mlp`` -> residual, final ``model.norm``, ``lm_head`` tied to the embedding), except:

* **RMSNorm scales by (1 + w)**: ``GemmaRMSNorm`` stores ``w`` (initialised to 0) and
  computes ``x / rms(x) * (1 + w)``. The adapter hands :class:`~.base.Norm` the weight
  ``1 + w``, so spaces and checks use the same one formula as every other family.
* **Embeddings scaled by sqrt(d)**: ``GemmaTextScaledWordEmbedding`` returns
  ``W[v] * sqrt(d)`` (the scale rounded to the weight's dtype, as the module does). The
  canonical embedding table is that *scaled* table, so ``Emb(v, p) = W_E[v]`` equals
  hidden state 0 and the ``embeddings`` space holds what the embedding module outputs.
  (Cosine neighbours do not change; euclidean distances are in the residual stream's units.)
  The LM head keeps the raw, unscaled tied weight: the lens uses the model's own modules.
* **head_dim is its own setting** (``config.head_dim``, 256 in Gemma-2B/7B, not d / H);
  multi-query attention (Gemma-2B has one KV head) is grouped-query attention with
  ``H_kv = 1``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from tokentrail.adapters.base import HeadNorm, HeadProjection, HookPoints, Norm
from tokentrail.adapters.llama import LlamaAdapter, RotaryFromModel


def _gemma_rmsnorm(norm: nn.Module) -> Norm:
    # GemmaRMSNorm: x.float() / rms * (1 + w.float()); the (1 + w) is the canonical gamma
    return Norm("rmsnorm", 1.0 + norm.weight.detach().float(), None, float(norm.eps))


class GemmaAdapter(LlamaAdapter):
    family = "gemma"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._scaled_table: Tensor | None = None

    @property
    def vocab_size(self) -> int:
        return self.base.embed_tokens.weight.shape[0]

    def embedding_table(self) -> Tensor:
        # built once: a V x d copy (the raw table stays the model's, for its tied head)
        if self._scaled_table is None:
            emb = self.base.embed_tokens
            w = emb.weight.detach()
            self._scaled_table = w * emb.embed_scale.to(w.dtype)
        return self._scaled_table

    def attn_input_norm(self, layer: int) -> Norm:
        return _gemma_rmsnorm(self.layers[layer].input_layernorm)


class Gemma2Adapter(GemmaAdapter):
    """Gemma 2 (``Gemma2ForCausalLM``): Gemma's layout plus

    * **sandwich norms**: ``post_attention_layernorm`` normalises the attention output
      *before* the residual add, and the FFN sits between ``pre_feedforward_layernorm`` and
      ``post_feedforward_layernorm``. So ``attn_l = RMSNorm(concat_h(z) W_O)`` (read at the
      post-attention norm's output; heads no longer add up linearly), ``mlp_out`` is the
      post-FFN norm's output and ``attn_resid`` (= ``attn_resid_ln``) is what the pre-FFN
      norm receives;
    * **query pre-scaling**: scores are multiplied by ``query_pre_attn_scalar ** -0.5``,
      not ``d_head ** -0.5``;
    * **soft-capping**: the scaled scores become ``c * tanh(s / c)`` with
      ``c = attn_logit_softcapping``, before the mask (the walkthrough and verify recompute
      exactly that, so the pattern is not ``softmax(q k / s)``), and the logits
      ``c' * tanh(logits / c')`` with ``c' = final_logit_softcapping`` (the lens applies it:
      :meth:`~.decoder.DecoderAdapter.lens_head`);
    * **alternating local/global layers**: ``layer_types`` says which layers slide a
      ``sliding_window`` (:meth:`~.decoder.DecoderAdapter.attention_window`).

    The key/query spaces hold the rotated q/k rows themselves: scale and cap act on the
    scores, after them, so the spaces factorise as Gemma's do.
    """

    family = "gemma2"
    windowed = True

    def attention_scale(self, layer: int) -> float:
        return float(self.config.query_pre_attn_scalar) ** -0.5

    def attention_softcap(self, layer: int) -> float | None:
        cap = getattr(self.config, "attn_logit_softcapping", None)
        return None if cap is None else float(cap)

    def attn_out_norm(self, layer: int) -> Norm:
        return _gemma_rmsnorm(self.layers[layer].post_attention_layernorm)

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        return HookPoints(
            layer=lay,
            attn_out_proj=lay.self_attn.o_proj,  # its input: the concatenated z
            attn_out=lay.post_attention_layernorm,  # its output: attn_l, what the residual adds
            ffn_input=None,
            mlp_out=lay.post_feedforward_layernorm,
            ffn_norm=lay.pre_feedforward_layernorm,
        )


class _LayerTypeRope(nn.Module):
    """Gemma 3's rotary module seen for one layer type, as :class:`~.llama.RotaryFromModel`
    reads a rotary module: ``inv_freq``, ``attention_scaling`` and ``(x, position_ids) -> (cos, sin)``
    (``Gemma3RotaryEmbedding`` keeps ``{layer_type}_inv_freq`` and takes the type as an argument)."""

    def __init__(self, rotary_emb: nn.Module, layer_type: str):
        super().__init__()
        self.shared = rotary_emb
        self.layer_type = layer_type

    @property
    def inv_freq(self) -> Tensor:
        return getattr(self.shared, f"{self.layer_type}_inv_freq")

    @property
    def attention_scaling(self) -> float:
        return float(getattr(self.shared, f"{self.layer_type}_attention_scaling"))

    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.shared(x, position_ids, self.layer_type)


class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3 text (``Gemma3ForCausalLM``, ``model_type="gemma3_text"``): Gemma 2's layout
    (sandwich norms, ``query_pre_attn_scalar``, the final logits' soft-capping where the
    config sets it, ``layer_types``: five sliding layers to one global by default; the
    attention scores are *not* capped: the model ignores ``attn_logit_softcapping``) plus

    * **QK-norm**: ``q_norm``/``k_norm``, a ``(1 + w)`` RMSNorm over each head's ``d_head``
      dims of the projected q and k, before RoPE: ``q_t = RoPE(RMSNorm_q(W_Q x_t + b_Q))``
      (the key/query spaces keep those normed rows made; see :mod:`tokentrail.engine.spaces`);
    * **a RoPE per layer type**: sliding layers rotate with ``rope_parameters
      ["sliding_attention"]`` (base 10k), global ones with ``["full_attention"]`` (base 1M,
      linear scaling in the 4B+ checkpoints); each layer's rotary is its type's.
    """

    family = "gemma3"

    def _model_rotary(self) -> RotaryFromModel:
        return RotaryFromModel(_LayerTypeRope(self.base.rotary_emb, "full_attention"))

    def __init__(self, model: nn.Module):
        super().__init__(model)
        kinds = list(self.config.layer_types)
        self._rotaries = {k: RotaryFromModel(_LayerTypeRope(self.base.rotary_emb, k)) for k in sorted(set(kinds))}

    def rotary(self, layer: int) -> RotaryFromModel:
        return self._rotaries[self.config.layer_types[layer]]

    def attention_softcap(self, layer: int) -> None:
        # Gemma3Attention keeps config.attn_logit_softcapping but never passes it to its
        # attention function (transformers 5): the scores are not capped, so neither are ours
        return None

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        proj = super().projection(layer, which)
        if which == "v":
            return proj
        att = self.layers[layer].self_attn
        norm = att.q_norm if which == "q" else att.k_norm
        return HeadProjection(proj.weight, proj.bias, HeadNorm(_gemma_rmsnorm(norm)))
