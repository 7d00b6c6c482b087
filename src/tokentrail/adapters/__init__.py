"""Architecture adapters and the registry that picks one for a loaded model."""

from __future__ import annotations

from torch import nn

from tokentrail.adapters.bart import BartEncoderAdapter, MarianEncoderAdapter
from tokentrail.adapters.base import Adapter, HeadProjection, HookPoints, Norm
from tokentrail.adapters.bert import BertAdapter, RobertaAdapter
from tokentrail.adapters.decoder import DecoderAdapter
from tokentrail.adapters.distilbert import DistilBertAdapter
from tokentrail.adapters.electra import ElectraAdapter
from tokentrail.adapters.gemma import Gemma2Adapter, Gemma3Adapter, GemmaAdapter
from tokentrail.adapters.gpt2 import GPT2Adapter
from tokentrail.adapters.gpt_neox import GPTNeoXAdapter
from tokentrail.adapters.llama import LlamaAdapter, MistralAdapter, Qwen2Adapter
from tokentrail.adapters.mbart import MBartEncoderAdapter
from tokentrail.adapters.modernbert import ModernBertAdapter
from tokentrail.adapters.olmo2 import Olmo2Adapter
from tokentrail.adapters.opt import OPTAdapter
from tokentrail.adapters.phi import PhiAdapter
from tokentrail.adapters.phi3 import Phi3Adapter
from tokentrail.adapters.qwen3 import Qwen3Adapter
from tokentrail.adapters.seq2seq import DecoderStack, EncoderStack
from tokentrail.adapters.t5 import T5EncoderAdapter
from tokentrail.spec.errors import ModelError

#: config.model_type -> adapter class
REGISTRY: dict[str, type[Adapter]] = {
    "bert": BertAdapter,
    "roberta": RobertaAdapter,
    "xlm-roberta": RobertaAdapter,
    "camembert": RobertaAdapter,
    "gpt2": GPT2Adapter,
    "llama": LlamaAdapter,
    "mistral": MistralAdapter,
    "qwen2": Qwen2Adapter,
    "gpt_neox": GPTNeoXAdapter,
    "gemma": GemmaAdapter,
    "phi": PhiAdapter,
    "qwen3": Qwen3Adapter,
    "olmo2": Olmo2Adapter,
    "phi3": Phi3Adapter,
    "opt": OPTAdapter,
    "gemma2": Gemma2Adapter,
    "gemma3_text": Gemma3Adapter,
    # encoder-decoders: the encoder stack is the primary adapter, the decoder its decoder_stack()
    "bart": BartEncoderAdapter,
    "marian": MarianEncoderAdapter,
    "t5": T5EncoderAdapter,
    # more encoders, and mBART (an encoder-decoder like BART)
    "distilbert": DistilBertAdapter,
    "electra": ElectraAdapter,
    "modernbert": ModernBertAdapter,
    "mbart": MBartEncoderAdapter,
}


def supported_model_types() -> list[str]:
    return sorted(REGISTRY)


def decoder_model_types() -> list[str]:
    """Model types whose adapter is a decoder-only LM (loaded with a causal-LM head)."""
    return sorted(t for t, cls in REGISTRY.items() if cls.is_decoder)


def seq2seq_model_types() -> list[str]:
    """Model types whose adapter is an encoder-decoder (loaded with a sequence-to-sequence LM head)."""
    return sorted(t for t, cls in REGISTRY.items() if cls.is_seq2seq)


def lens_head_prefixes(model_type: str) -> tuple[str, ...]:
    """Checkpoint tensor-name prefixes of an encoder's masked-LM head (so we know it is real)."""
    cls = REGISTRY.get(model_type)
    return getattr(cls, "head_key_prefixes", ()) if cls else ()


def adapter_class(model_type: str) -> type[Adapter] | None:
    """The adapter class for a config's ``model_type`` (its facts before any model is built), or None."""
    return REGISTRY.get(model_type)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a loaded transformers model, or a clear error."""
    model_type = getattr(model.config, "model_type", None)
    cls = REGISTRY.get(model_type)
    if cls is None:
        raise ModelError(
            f"unsupported model type {model_type!r}: tokentrail knows {', '.join(supported_model_types())}"
        )
    return cls(model)


__all__ = [
    "Adapter",
    "DecoderAdapter",
    "DecoderStack",
    "EncoderStack",
    "HeadProjection",
    "HookPoints",
    "Norm",
    "REGISTRY",
    "adapter_class",
    "adapter_for",
    "decoder_model_types",
    "lens_head_prefixes",
    "seq2seq_model_types",
    "supported_model_types",
]
