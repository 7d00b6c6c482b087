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

from torch import Tensor, nn

from tokentrail.adapters.base import HookPoints, Norm
from tokentrail.adapters.llama import LlamaAdapter


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
