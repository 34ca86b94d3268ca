"""Which Hugging Face models TALAN can patch, and where their decoder stack lives."""

from __future__ import annotations

from torch import nn

# The model families TALAN patches. Qwen3 and Llama are the paper's hosts. Qwen3-MoE, Qwen2 (Qwen2.5),
# Mistral and Mixtral have the same decoder layer, which is all the hooks rely on: ``input_layernorm`` then
# ``self_attn`` added to the residual, a normed MLP (or mixture of experts) added to it, and the stack passing
# its kwargs on to each layer (tests/test_hosts.py runs every site on each).
FAMILIES = ("Qwen3", "Llama", "Qwen3Moe", "Qwen2", "Mistral", "Mixtral")
# The bare decoder stack and the models around it: the language-model head, and the task heads that peft
# fine-tunes too (task_type SEQ_CLS, TOKEN_CLS, QUESTION_ANS) over the same stack.
HEADS = ("ForCausalLM", "Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def _supported_classes() -> tuple[type, ...]:
    import transformers

    return tuple(getattr(transformers, family + head) for family in FAMILIES for head in HEADS)


def _wrapper_chain(model: nn.Module) -> list[nn.Module]:
    """``model`` and every module inside the wrappers that keep its modules as they are (peft's ``PeftModel``,
    ``torch.compile``'s ``OptimizedModule``, ``DistributedDataParallel``, in any nesting), outermost first."""
    from torch.nn.parallel import DistributedDataParallel

    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for plain transformers models
        PeftModel = ()
    chain = [model]
    while True:
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile(model)
            model = model._orig_mod
        else:
            return chain
        chain.append(model)


def unwrap_host(model: nn.Module) -> nn.Module:
    """The transformers model inside the wrappers that keep its modules as they are: peft's ``PeftModel``,
    ``torch.compile``'s ``OptimizedModule`` and ``DistributedDataParallel``, in any nesting (or the model
    itself)."""
    return _wrapper_chain(model)[-1]


# peft methods that hand the model a cache prefilled with their virtual tokens' keys and values: those tokens
# never pass through the residual stream.
_PREFIX_CACHE_PEFT_TYPES = ("PREFIX_TUNING", "CARTRIDGE")


def peft_adapter_configs(model: nn.Module) -> list[dict]:
    """The ``peft_config`` dicts (adapter name -> config) of every PeftModel around the host. The dict objects
    themselves: peft adds adapters to them in place, and a deep copy or pickle of the model carries them."""
    return [m.peft_config for m in _wrapper_chain(model)[:-1] if isinstance(getattr(m, "peft_config", None), dict)]


def prefix_cache_lengths(peft_configs: list[dict]) -> frozenset[int]:
    """Cache lengths that peft's prefix tuning (or a cartridge) starts a forward with: their adapters'
    ``num_virtual_tokens``."""
    return frozenset(int(cfg.num_virtual_tokens) for configs in peft_configs for cfg in configs.values()
                     if str(getattr(cfg.peft_type, "value", cfg.peft_type)) in _PREFIX_CACHE_PEFT_TYPES)


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module that owns ``layers`` (``Qwen3Model``, ``LlamaModel``, ...) for any supported host.

    Raises ``TypeError`` for an unsupported model, naming its class.
    """
    host = unwrap_host(model)
    supported = _supported_classes()
    if not isinstance(host, supported):
        raise TypeError(f"talan supports the {', '.join(FAMILIES)} models ({', '.join('*' + h for h in HEADS)}; "
                        f"plain, or wrapped by peft, torch.compile or DDP); got {type(model).__name__}"
                        + (f" wrapping {type(host).__name__}" if host is not model else ""))
    stack = host.base_model  # the decoder stack under any head (the stack itself for a bare *Model)
    if not isinstance(getattr(stack, "layers", None), nn.ModuleList):
        raise TypeError(f"{type(host).__name__} has no decoder layer list to patch")
    return stack


def load_local_checkpoint(path, flag: str = "--model", dtype=None, quantization_config=None):
    """A local Hugging Face checkpoint folder and its tokenizer, never from the network; the weights in
    ``dtype`` (default fp32), quantised as they load when a transformers ``quantization_config`` is given.

    Raises ``FileNotFoundError`` for a missing folder or one without ``config.json`` and
    ``ValueError`` for a tokenizer without an eos token (it ends every completion); ``flag`` names
    the command-line option in the messages.
    """
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such directory. Pass a local Hugging Face checkpoint folder "
                                "(config.json, weights and tokenizer files); talan never downloads.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {folder}: no config.json in that folder, so it is not a Hugging Face "
                                "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{flag} {folder}: the tokenizer has no eos token, which ends every completion")
    # only when given: an explicit None makes transformers load a checkpoint saved quantised as unquantised
    quantization = {} if quantization_config is None else {"quantization_config": quantization_config}
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype or torch.float32,
                                                 **quantization)
    return model, tokenizer
