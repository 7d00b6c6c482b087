"""What every decoder-only family shares: the causal-mask toggle and the output head.

The causal toggle (transformers 5): each decoder's ``forward`` builds its mask with
``masking_utils.create_causal_mask`` (or ``create_sliding_window_causal_mask``), and
``_preprocess_mask_arguments`` returns a 4-D ``attention_mask`` *as is* ("already
prepared, or custom"). Eager attention then only adds that mask to the scores
(``attn_weights + attention_mask``): GPT-2 no longer keeps a causal ``bias`` buffer, and
``module.is_causal`` is read only by the SDPA and flash kernels. So an all-zero float
mask of shape ``(1, 1, n, n)`` gives true bidirectional attention under eager, and
nothing re-causalises it. The flash kernels *would* (they take ``is_causal`` from the
module), which is one more reason the adapters insist on eager attention; SDPA honours
an explicit mask too, but does not return attention probabilities.

With ``causal=True`` we pass the plain 2-D padding mask and let the model build its own
(causal, or sliding-window causal where a window is set) mask on top of it; with
``causal=False`` the 4-D mask we pass hides only the padding keys.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tokentrail.adapters.base import Adapter
from tokentrail.spec.errors import ModelError

#: the per-layer attention kinds (``config.layer_types``) whose masks the adapters model
MODELLED_LAYER_TYPES = ("full_attention", "sliding_attention")


class DecoderAdapter(Adapter):
    """Pre-norm decoder-only LMs: a base model, a final norm and an LM head."""

    is_decoder = True
    norm_placement = "pre"
    head_key_prefixes: tuple[str, ...] = ("lm_head.",)
    head_tied_to_embedding = True
    #: whether this family's model reads ``config.sliding_window`` / ``layer_types`` (Mistral,
    #: Qwen2, Qwen3, Phi-3, Gemma 2/3); the others ignore them, so a stray key in a config.json
    #: means nothing
    windowed: bool = False
    #: whether the window masks every layer and ``layer_types`` is ignored (Mistral, Phi-3: the
    #: model builds one sliding mask from ``config.sliding_window`` for all its layers)
    window_every_layer: bool = False

    def __init__(self, model: nn.Module):
        super().__init__(model)
        # refused before any work: a per-layer mask we do not recompute would make the
        # walkthrough and verify disagree with the model without a word (Mistral's and Phi-3's
        # masks ignore layer_types, but transformers reads them elsewhere: a "chunked_attention"
        # there fails inside the model, so it is refused here too)
        kinds = (getattr(self.config, "layer_types", None) or ()) if self.windowed else ()
        other = sorted({k for k in kinds if k not in MODELLED_LAYER_TYPES})
        if other:
            raise ModelError(
                f"{self.family}: layer type {other[0]!r} is not modelled (tokentrail knows "
                f"{', '.join(MODELLED_LAYER_TYPES)})"
            )
        if getattr(self.config, "use_bidirectional_attention", False):
            raise ModelError(f"{self.family}: use_bidirectional_attention=True is not modelled")

    def attention_window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` as the model's own mask builds it: with
        ``config.layer_types`` (Qwen2/Qwen3's ``use_sliding_window`` + ``max_window_layers``,
        Gemma 2/3's alternating layers) only its ``sliding_attention`` layers slide; without them,
        or where the model ignores them (Mistral, Phi-3), ``config.sliding_window`` applies to every
        layer (transformers' ``sliding_window_overlay``: key ``s`` is seen by query ``t`` when
        ``s > t - window``)."""
        window = getattr(self.config, "sliding_window", None) if self.windowed else None
        kinds = self._layer_types()
        if window is None or (kinds is not None and kinds[layer] != "sliding_attention"):
            return None
        return int(window)

    def _layer_types(self) -> list[str] | None:
        """``config.layer_types`` where this family's model reads them (None where it does not)."""
        if not self.windowed or self.window_every_layer:
            return None
        return getattr(self.config, "layer_types", None)

    def base_model(self) -> nn.Module:
        """The transformer without its head (``transformer`` / ``model``)."""
        return self.model.base_model

    @abstractmethod
    def final_norm(self) -> nn.Module:
        """The norm between the last layer and the LM head (``ln_f`` / ``norm``)."""

    def output_head(self) -> nn.Module | None:
        """The LM head (``lm_head``), or None when the model was loaded without one."""
        return getattr(self.model, "lm_head", None)

    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # GPT-2 and the Llama family both count from 0 (arange(n) for one unpadded text);
        # with padding, transformers' generate() counts real tokens (cumsum(mask) - 1), so a
        # left-padded text still starts at 0; padding slots get 1 as there (never read)
        if attention_mask is None:
            n = input_ids.shape[-1]
            return torch.arange(n, dtype=torch.long, device=input_ids.device).expand_as(input_ids).contiguous()
        mask = attention_mask.long()
        return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = True,
        hidden_states: bool = True,
    ):
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl != "eager":
            raise ModelError(
                f"{self.family}: tokentrail needs eager attention (got {impl!r}): it reads attention "
                "probabilities and sets its own mask; load the model with attn_implementation='eager'"
            )
        if causal:
            mask = attention_mask  # (B, n); the model builds causal + padding from it
        else:
            b, n = input_ids.shape
            dtype = next(self.base_model().parameters()).dtype
            # (B, 1, n, n) additive, used as given (see the module docstring): 0 = attend,
            # dtype's min on a padding key, for every query
            pad = (attention_mask == 0)[:, None, None, :].expand(b, 1, n, n)
            mask = torch.zeros(b, 1, n, n, dtype=dtype, device=input_ids.device).masked_fill(
                pad, torch.finfo(dtype).min
            )
        return self.base_model()(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=hidden_states,
            output_attentions=True,
        )

    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        """Final norm then LM head, the model's own modules, in float32.

        Takes the *pre-norm* residual: capture's ``layer_out[L-1]`` is the last layer's
        module output, whereas the framework's ``hidden_states[L]`` is already normed.
        """
        head = self.output_head()
        if head is None:
            return None
        norm = self.final_norm()
        # Gemma 2/3 soft-cap their logits: c * tanh(logits / c), in the head's dtype as the model does
        cap = getattr(self.config, "final_logit_softcapping", None)

        @torch.no_grad()
        def apply(h: Tensor) -> Tensor:
            # (n, d) -> (n, V)
            dtype = head.weight.dtype
            logits = head(norm(h.to(dtype)))
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return logits.float()

        return apply

    def lens_unavailable_reason(self) -> str:
        return (
            f"this checkpoint has no output head (a bare {self.family} model saved without lm_head, its embeddings "
            "not tied): there is no logit lens"
        )
