"""The adapter interface: every architecture fact lives behind it.

An adapter hands the rest of tokentrail one canonical layout (TransformerLens style):

* per-head projections as ``W: (G, d_head, d_model)`` and ``b: (G, d_head)``, applied as
  ``W @ x + b`` whatever the framework stores (``nn.Linear`` keeps ``(out, in)``, GPT-2's
  ``Conv1D`` keeps ``(in, out)``: each adapter transposes where it reads the weight);
* the output projection as ``W_O: (H, d_head, d_model)``, ``b_O: (d_model,)``;
* the embedding stage split into a token table, a per-position offset and an optional
  norm, so that ``Emb(v, p) = norm(W_E[v] + offset(p))`` (SPEC "The original encoding").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from tokentrail.spec.errors import InputError

NormKind = Literal["layernorm", "rmsnorm"]


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (``gamma * (x - mean) / sqrt(var + eps) + beta``) or an RMSNorm
    (``gamma * x / sqrt(mean(x^2) + eps)``), as plain tensors."""

    kind: NormKind
    weight: Tensor  # (d,)
    bias: Tensor | None  # (d,) or None
    eps: float
    # Gemma's RMSNorm scales by (1 + w): its adapter hands over ``weight = 1 + w`` (see
    # adapters/gemma.py), so every family is this one formula.

    def __call__(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class HeadNorm:
    """A norm on a query/key projection's output, before RoPE (QK-norm): over each head's
    ``d_head`` dims (Qwen3, Gemma 3: ``norm.weight`` (d_head,), shared by the heads), or
    over all heads' dims at once (``joint``: OLMo 2, ``norm.weight`` (G * d_head,))."""

    norm: Norm
    joint: bool = False

    def __call__(self, y: Tensor) -> Tensor:
        """y: (..., G, d_head) -> the same shape, normed."""
        if not self.joint:
            return self.norm(y)
        return self.norm(y.flatten(-2)).view(y.shape)


@dataclass(frozen=True)
class HeadProjection:
    """One of a layer's query/key/value maps, split per head: ``W[g] @ x + b[g]``, then the
    model's QK-norm where it has one (``norm``)."""

    weight: Tensor  # (G, d_head, d_model); G = heads, or KV heads under grouped-query attention
    bias: Tensor | None  # (G, d_head)
    norm: HeadNorm | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """x: (..., d_model) -> (..., G, d_head)."""
        y = torch.einsum("gkd,...d->...gk", self.weight, x.float())
        y = y if self.bias is None else y + self.bias
        return y if self.norm is None else self.norm(y)


class Rotary(Protocol):
    """``rotate(x, positions, inverse, scaled)``: x (n, G, d_head), positions (n,) -> x
    rotated by each position's rotary angle (or by its inverse, the transpose), times
    ``scale`` as the model multiplies it (``scaled=True``, the default; RoPE's
    ``attention_scaling``, e.g. YaRN's) or a pure rotation (``scaled=False``: what the
    vocabulary spaces use, which carry the scale in their rows)."""

    @property
    def scale(self) -> float: ...

    def __call__(self, x: Tensor, positions: Tensor, inverse: bool = False, scaled: bool = True) -> Tensor: ...


@dataclass(frozen=True)
class HookPoints:
    """Modules of one layer whose inputs/outputs the capture reads."""

    layer: nn.Module  # output: h_{l+1}
    attn_out_proj: nn.Module  # input: concat of per-head z; output: attn_l (before dropout/residual)
    ffn_input: nn.Module | None  # post-LN and parallel-residual: the FFN's first module (its input is attn_resid_ln)
    mlp_out: nn.Module  # output: the FFN sublayer's output before the residual add (SPEC ``mlp_out``)
    # sequential pre-norm: the FFN's own norm, whose input is attn_resid_ln (for checks; see verify.py)
    ffn_norm: nn.Module | None = None
    # output: attn_l, where a norm follows the output projection inside the attention branch
    # (OLMo 2's and Gemma 2/3's post_attention_layernorm); None: attn_out_proj's output is attn_l
    attn_out: nn.Module | None = None


class Adapter(ABC):
    """Architecture facts for one loaded model, in canonical layout."""

    #: short family name shown in results ("bert", "roberta", "gpt2", "llama", ...)
    family: str
    #: True for decoder-only language models
    is_decoder: bool = False
    #: "post" for post-LN encoders (BERT/RoBERTa), "pre" for pre-norm decoders
    norm_placement: Literal["post", "pre"]
    #: True for both stacks of an encoder-decoder (see adapters/seq2seq.py)
    is_seq2seq: bool = False
    #: "encoder" / "decoder" for an encoder-decoder's stacks; None for single-stack models
    stack: str | None = None
    #: where a batch may put its padding without moving any real token's position id
    padding_sides: tuple[str, ...] = ("left", "right")
    #: checkpoint tensor-name prefixes of the output head (the logit lens reads it): the
    #: loader looks for them among the checkpoint's tensor names before reading any weight,
    #: and loads the bare model (no lens) when none is there and the head is not tied
    head_key_prefixes: tuple[str, ...] = ()
    #: True where a config with ``tie_word_embeddings`` makes the head the embedding table
    #: itself (so a tied checkpoint stores no head tensors); False where the head has
    #: weights of its own (BERT's transform), which only its tensors can supply
    head_tied_to_embedding: bool = False
    #: modules the adapter never reads, whose tensors a checkpoint may lack or carry
    #: without changing any number (BERT's pooler); prefixes below the base model
    unread_key_prefixes: tuple[str, ...] = ()
    #: tokentrail's per-model memo of shared tables (engine/space_memory.py: adapter_memo);
    #: declared only, set on first use
    _tokentrail_tables: dict

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.config = model.config

    # ---- where it lives -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- sizes -------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def n_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.n_heads

    @property
    def d_head(self) -> int:
        return getattr(self.config, "head_dim", None) or self.d_model // self.n_heads

    @property
    def vocab_size(self) -> int:
        return self.embedding_table().shape[0]

    @property
    def max_tokens(self) -> int | None:
        """How many tokens one forward pass can take (None: no hard limit)."""
        return None

    @property
    def pad_id(self) -> int:
        """The id a batch is padded with: masked out of attention, but read by position
        rules that count non-pad tokens (RoBERTa's)."""
        pad = getattr(self.config, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    def kv_heads(self) -> Tensor:
        """(H,) int64: the key/value head each query head reads (the one home of this map)."""
        return torch.arange(self.n_heads) // (self.n_heads // self.n_kv_heads)

    def resolve_causal(self, causal: bool | None) -> bool:
        """The mask a run uses: decoders default to causal, encoders have none.

        ``causal=True`` on an encoder is refused; ``False`` on an encoder is what it does anyway."""
        if not self.is_decoder:
            if causal:
                raise InputError(f"{self.family} is an encoder: it has no causal mask to turn on")
            return False
        return True if causal is None else bool(causal)

    # ---- the embedding stage ----------------------------------------------
    @abstractmethod
    def position_ids(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(..., n) token ids (and their 1/0 attention mask, same shape; None: no padding)
        -> (..., n) the position ids the model itself would use, by its own padding rule."""

    @abstractmethod
    def embedding_table(self) -> Tensor:
        """W_E: (V, d)."""

    @abstractmethod
    def position_offset(self, position_ids: Tensor) -> Tensor | None:
        """(n,) -> (n, d): what the embedding stage adds to W_E[v] at each position
        (None when position enters only through rotary embeddings)."""

    @abstractmethod
    def embedding_norm(self) -> Norm | None:
        """The norm applied to ``W_E[v] + offset`` (None for pre-norm decoders)."""

    def embedding_projection(self) -> tuple[Tensor, Tensor | None] | None:
        """``(W: (d, e), b: (d,) or None)`` mapping the embedding stage's ``e``-wide output into
        the ``d``-wide residual stream (ELECTRA's ``embeddings_project``), or None: then
        ``Emb(v, p) = W norm(W_E[v] + offset(p)) + b``."""
        return None

    # ---- layers --------------------------------------------------------------
    @abstractmethod
    def attn_input_norm(self, layer: int) -> Norm | None:
        """AttnIn_l: None for post-LN models, the layer's input norm for pre-norm ones."""

    @abstractmethod
    def projection(self, layer: int, which: Literal["q", "k", "v"]) -> HeadProjection:
        """Layer ``layer``'s query, key or value map in canonical layout."""

    @abstractmethod
    def output_projection(self, layer: int) -> tuple[Tensor, Tensor | None]:
        """(W_O: (H, d_head, d), b_O: (d,) or None)."""

    def attention_scale(self, layer: int) -> float:
        """What layer ``layer``'s attention scores ``q . k`` are multiplied by before the softmax."""
        return self.d_head**-0.5

    def attention_softcap(self, layer: int) -> float | None:
        """Gemma 2/3's logit soft-capping: the scaled scores become ``c * tanh(s / c)`` (None: no cap)."""
        return None

    def attention_window(self, layer: int) -> int | None:
        """Sliding-window attention: under the causal mask query ``t`` sees only keys ``s`` with
        ``t - s < window`` (None: every earlier key)."""
        return None

    def attention_logits(self, layer: int, scores: Tensor) -> Tensor:
        """Raw ``q . k`` scores -> what the softmax takes before any mask or bias: scaled by
        :meth:`attention_scale`, then soft-capped where the model caps (the one home of both)."""
        scaled = scores * self.attention_scale(layer)
        cap = self.attention_softcap(layer)
        return scaled if cap is None else torch.tanh(scaled / cap) * cap

    def hidden_keys(self, layer: int, n: int, causal: bool, device: torch.device | None = None) -> Tensor:
        """(n, n) bool: True where query ``t`` (row) cannot see key ``s`` (column) in layer
        ``layer``: later keys under the causal mask, and keys a sliding window leaves out."""
        t = torch.arange(n, device=device)
        hidden = torch.zeros(n, n, dtype=torch.bool, device=device)
        if not causal:
            return hidden  # the decoders' bidirectional mode hides padding only (adapters/decoder.py)
        hidden = t[None, :] > t[:, None]
        window = self.attention_window(layer)
        if window is not None:
            hidden |= t[:, None] - t[None, :] >= window
        return hidden

    def attention_bias(self, layer: int, n: int) -> Tensor | None:
        """(H, n, n) added to the scaled scores of ``n`` tokens (T5's relative position bias), or None."""
        return None

    def attention_bias_name(self) -> str:
        """What :meth:`attention_bias` is, for the walkthrough's formula."""
        return "relative position bias"

    def rotary(self, layer: int) -> Rotary | None:
        """The rotary embedding applied to q and k, if the model uses one."""
        return None

    def attn_out_norm(self, layer: int) -> Norm | None:
        """A norm on the attention branch's output before the residual add (OLMo 2, Gemma 2/3), or None:
        ``attn_l = norm(concat_h(z) W_O + b_O)``."""
        return None

    def attn_resid_norm(self, layer: int) -> Norm | None:
        """Post-LN models: the norm after attention + residual (its output feeds the FFN)."""
        return None

    @abstractmethod
    def hook_points(self, layer: int) -> HookPoints:
        """Modules whose inputs/outputs the capture reads for ``layer``."""

    # ---- running ---------------------------------------------------------------
    @abstractmethod
    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        causal: bool = False,
        hidden_states: bool = True,
    ):
        """One forward pass on a padded batch: ids, position ids and 1/0 attention mask all
        (B, n). Returns the framework's output with ``hidden_states`` (unless asked not to:
        they keep every layer's output alive until the pass ends) and ``attentions``.
        Padding keys are hidden from every query; ``causal`` only matters for decoders."""

    # ---- output head (logit lens) -----------------------------------------------
    def lens_head(self) -> Callable[[Tensor], Tensor] | None:
        """(n, d) residual -> (n, V) logits through the model's own output head, or None."""
        return None

    def final_norm(self) -> nn.Module | None:
        """The norm between the last layer and what the framework reports as the last hidden
        state (and the output head), if any."""
        return None

    def model_logits(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """(n,) ids -> (n, V) the model's own logits (what the logit lens' last layer must equal)."""
        return self.model(input_ids=input_ids[None], position_ids=position_ids[None]).logits[0]

    def lens_unavailable_reason(self) -> str:
        return f"this checkpoint has no output head (a bare {self.family} model): there is no logit lens"

    def embed(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        """Emb(x_t, p_t) from canonical parts: (n,) -> (n, d)."""
        x = self.embedding_table()[input_ids].float()
        off = self.position_offset(position_ids)
        if off is not None:
            x = x + off
        norm = self.embedding_norm()
        x = x if norm is None else norm(x)
        proj = self.embedding_projection()
        if proj is None:
            return x
        w, b = proj
        x = x @ w.T
        return x if b is None else x + b
