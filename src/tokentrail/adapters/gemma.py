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

from tokentrail.adapters.base import Norm
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
