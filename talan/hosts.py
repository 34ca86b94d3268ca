"""Which Hugging Face models TALAN can patch, and where their decoder stack lives."""

from __future__ import annotations

from torch import nn


def _supported_classes() -> tuple[type, ...]:
    from transformers import LlamaForCausalLM, LlamaModel, Qwen3ForCausalLM, Qwen3Model

    return (Qwen3ForCausalLM, Qwen3Model, LlamaForCausalLM, LlamaModel)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft ``PeftModel`` (or the model itself)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for plain transformers models
        return model
    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns ``layers`` (``Qwen3Model``/``LlamaModel``) for any supported host.

    Raises ``TypeError`` for an unsupported model, naming its class.
    """
    host = unwrap_peft(model)
    supported = _supported_classes()
    if not isinstance(host, supported):
        names = ", ".join(cls.__name__ for cls in supported)
        raise TypeError(f"talan supports {names} (plain or wrapped by peft); got {type(model).__name__}"
                        + (f" wrapping {type(host).__name__}" if host is not model else ""))
    stack = host.model if hasattr(host, "lm_head") else host
    if not isinstance(getattr(stack, "layers", None), nn.ModuleList):
        raise TypeError(f"{type(host).__name__} has no decoder layer list to patch")
    return stack
