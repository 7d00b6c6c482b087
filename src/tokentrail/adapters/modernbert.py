"""ModernBERT: a pre-norm encoder with RoPE, alternating global and local attention, no
biases by default, a GeGLU MLP and a final norm.

Layout (transformers 5, ``ModernBertModel`` / ``ModernBertForMaskedLM``; the base model at
``model.model``): ``embeddings.tok_embeddings`` -> ``embeddings.norm`` (a LayerNorm, bias
only under ``norm_bias``), no position table. Per layer ``layers[i]``::

    a     = h + Wo(Attn(attn_norm(h)))          attn_norm: Identity in layer 0, a LayerNorm after
    h_l+1 = a + mlp(mlp_norm(a))                mlp: Wo(act(input) * gate), [input, gate] = Wi(x)

``attn.Wqkv`` is one ``nn.Linear`` whose rows are ``[q | k | v]``, each ``H * d_head``
rows grouped head by head. RoPE rotates q and k with each layer type's own frequencies
(``rope_parameters["full_attention" | "sliding_attention"]``: a global and a local theta).
``layer_types`` says which layers are local (``sliding_attention``): a query at index i
sees keys j with ``|i - j| <= local_attention // 2`` (``create_bidirectional_sliding_window_mask``),
the others see every key. Eager attention runs on the padded batch (transformers 5 no
longer unpads), so the captured vectors are the model's own. ``final_norm`` follows the
last layer; the framework's last hidden state is after it, and the masked-LM head reads it::

    logits = decoder(head(final_norm(h_L)))     head: norm(act(dense(x)))

So ``Emb(v, p) = LN_emb(W_E[v])``: position enters only through RoPE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import Adapter, HeadProjection, HookPoints, Norm
from tokentrail.adapters.llama import RotaryFromModel
from tokentrail.spec.errors import ModelError


def _norm(ln: nn.Module) -> Norm | None:
    if not isinstance(ln, nn.LayerNorm):
        return None  # layer 0's attn_norm is an Identity
    bias = None if ln.bias is None else ln.bias.detach().float()
    return Norm("layernorm", ln.weight.detach().float(), bias, ln.eps)


class _TypedRope(nn.Module):
    """One layer type's view of ModernBERT's rotary module, in the shape
    :class:`~tokentrail.adapters.llama.RotaryFromModel` reads (``inv_freq``, ``(x, positions)``)."""

    def __init__(self, rotary_emb: nn.Module, layer_type: str):
        super().__init__()
        self.rope, self.layer_type = rotary_emb, layer_type
        self.inv_freq = getattr(rotary_emb, f"{layer_type}_inv_freq")
        #: RoPE's scale for this layer type (1 for the default RoPE), as a Llama module names it
        self.attention_scaling = float(getattr(rotary_emb, f"{layer_type}_attention_scaling", 1.0))

    def forward(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return self.rope(x, positions, self.layer_type)


class ModernBertAdapter(Adapter):
    family = "modernbert"
    norm_placement = "pre"
    # the decoder's bias marks a masked-LM checkpoint; "head." alone does not (a sequence
    # classifier has a prediction head too, trained for its labels, not the vocabulary)
    head_key_prefixes = ("decoder.",)
    # positions are arange(n) whatever the padding, and the local window counts indices:
    # only right padding keeps every real token where it is alone
    padding_sides = ("right",)

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.base = model.base_model
        self.layers = self.base.layers
        self._rotary = {t: RotaryFromModel(_TypedRope(self.base.rotary_emb, t)) for t in set(self.config.layer_types)}

    @property
    def max_tokens(self) -> int:
        return self.config.max_position_embeddings

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        n = input_ids.shape[-1]
        return torch.arange(n, dtype=torch.long, device=input_ids.device).expand_as(input_ids).contiguous()

    # ---- the embedding stage ----------------------------------------------
    def embedding_table(self) -> Tensor:
        return self.base.embeddings.tok_embeddings.weight.detach()

    def position_offset(self, position_ids: Tensor) -> None:
        return None  # position enters only through RoPE

    def embedding_norm(self) -> Norm | None:
        return _norm(self.base.embeddings.norm)

    # ---- layers --------------------------------------------------------------
    def layer_type(self, layer: int) -> str:
        return self.config.layer_types[layer]

    def attn_input_norm(self, layer: int) -> Norm | None:
        return _norm(self.layers[layer].attn_norm)

    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        wqkv = self.layers[layer].attn.Wqkv
        i = "qkv".index(which)
        # (3 * H * dh, d): rows [q | k | v], each grouped head by head (qkv.view(..., 3, H, dh))
        w = wqkv.weight.detach().float().view(3, self.n_heads, self.d_head, self.d_model)[i]
        b = None if wqkv.bias is None else wqkv.bias.detach().float().view(3, self.n_heads, self.d_head)[i]
        return HeadProjection(w, b)

    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        wo = self.layers[layer].attn.Wo
        w_o = wo.weight.detach().float().T.reshape(self.n_heads, self.d_head, self.d_model)
        return w_o, None if wo.bias is None else wo.bias.detach().float()

    def rotary(self, layer: int) -> RotaryFromModel:
        return self._rotary[self.layer_type(layer)]

    def local_window(self, layer: int) -> int | None:
        """How far a local layer's query sees (``|i - j| <= window``); None for a global layer."""
        return self.config.sliding_window if self.layer_type(layer) == "sliding_attention" else None

    def attention_bias(self, layer: int, n: int) -> Tensor | None:
        """(H, n, n): -inf where a local layer's window hides the key, None for a global layer."""
        window = self.local_window(layer)
        if window is None:
            return None
        idx = torch.arange(n, device=self.device)
        outside = (idx[:, None] - idx[None, :]).abs() > window
        bias = torch.zeros(n, n, device=self.device).masked_fill(outside, float("-inf"))
        return bias.expand(self.n_heads, n, n)

    def attention_bias_name(self) -> str:
        return f"local window mask (-inf where |i - j| > {self.config.sliding_window})"

    def hook_points(self, layer: int) -> HookPoints:
        lay = self.layers[layer]
        return HookPoints(layer=lay, attn_out_proj=lay.attn.Wo, ffn_input=None, mlp_out=lay.mlp, ffn_norm=lay.mlp_norm)

    def final_norm(self) -> nn.Module:
        return self.base.final_norm

    # ---- running ---------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl != "eager":
            raise ModelError(
                f"{self.family}: tokentrail needs eager attention (got {impl!r}) to read attention probabilities"
            )
        return self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    # ---- output head (logit lens) -----------------------------------------------
    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        m = self.model
        if getattr(m, "decoder", None) is None or getattr(m, "head", None) is None:
            return None
        norm = self.final_norm()

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) pre-final-norm residual -> (n, V): final norm, prediction head, decoder
            return m.decoder(m.head(norm(h.to(m.decoder.weight.dtype)))).float()

        return apply

    def lens_unavailable_reason(self) -> str:
        return "this ModernBERT checkpoint has no masked-LM head (it was loaded as a bare encoder), so there is no logit lens"
