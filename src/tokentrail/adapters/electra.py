"""ELECTRA: BERT's post-LN layout, with an embedding stage that may be narrower than the
residual stream.

Layout (transformers 5, ``ElectraModel`` / ``ElectraForMaskedLM`` / ``ElectraForPreTraining``;
the base model at ``model.electra``): ``embeddings`` as BERT's, ``embedding_size`` wide, and,
when ``embedding_size != hidden_size``, ``embeddings_project`` (an ``nn.Linear``) into the
residual stream; then BERT's encoder layers. So::

    Emb(v, p) = P LN_emb(W_E[v] + W_P[p] + W_T[0]) + b_P     (P, b_P: embeddings_project)
    Emb(v, p) = LN_emb(W_E[v] + W_P[p] + W_T[0])             (no projection)

The generator (``ElectraForMaskedLM``) has a masked-LM head, ``generator_lm_head(
generator_predictions(h))``; the discriminator (``ElectraForPreTraining``) scores
replaced tokens, not a vocabulary, so it has no logit lens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tokentrail.adapters.bert import BertAdapter


class ElectraAdapter(BertAdapter):
    family = "electra"
    head_key_prefixes = ("generator_predictions.", "generator_lm_head.")

    def embedding_projection(self) -> tuple[Tensor, Tensor | None] | None:
        proj = getattr(self.base, "embeddings_project", None)
        if proj is None:
            return None
        return proj.weight.detach().float(), None if proj.bias is None else proj.bias.detach().float()

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        m = self.model
        if getattr(m, "generator_lm_head", None) is None:
            return None

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) -> (n, V): the generator's own head
            return m.generator_lm_head(m.generator_predictions(h.to(m.generator_lm_head.weight.dtype))).float()

        return apply

    def lens_unavailable_reason(self) -> str:
        return (
            "this ELECTRA checkpoint has no masked-LM head (a discriminator scores replaced tokens, "
            "not a vocabulary; only the generator has a logit lens)"
        )
