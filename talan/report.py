"""Parameter budget: how many parameters the backbone, the adapter and TALAN hold (SPEC §3, §5).

`parameter_report` counts distinct parameters (``model.parameters()`` yields a tied embedding once)
and works on meta-device models, so `budget_table` can size the published Qwen3 and Llama
configurations without allocating their weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .block import TalanBlock
from .config import TalanConfig

# Public hyper-parameters of the official config.json files (Hugging Face Hub, Qwen/* and
# meta-llama/*). Only what decides the parameter count and the architecture is kept here.
MODEL_PRESETS: dict[str, dict] = {
    "Qwen3-0.6B": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                       tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=40960,
                       rms_norm_eps=1e-6),
    "Qwen3-1.7B": dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=6144,
                       tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=40960,
                       rms_norm_eps=1e-6),
    "Qwen3-4B": dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=9728,
                     tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=40960,
                     rms_norm_eps=1e-6),
    "Qwen3-8B": dict(model_type="qwen3", vocab_size=151936, hidden_size=4096, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=12288,
                     tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=40960,
                     rms_norm_eps=1e-6),
    "Llama-3.2-1B": dict(model_type="llama", vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, intermediate_size=8192,
                         tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=131072,
                         rms_norm_eps=1e-5,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192)),
}


def _adapter_modules(model: nn.Module) -> Iterable[nn.Module]:
    """Modules that own peft adapter weights: tuner layers (LoRA, DoRA, ...) and peft's auxiliary
    wrappers (``modules_to_save`` copies, trainable tokens), whose extra weights belong to the
    adapter checkpoint too. peft is imported lazily: a model without peft has no adapter."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    kinds: tuple[type, ...] = (BaseTunerLayer,)
    try:
        from peft.utils.other import AuxiliaryTrainingWrapper

        kinds += (AuxiliaryTrainingWrapper,)
    except ImportError:  # older peft: no auxiliary wrappers to count
        pass
    return [m for m in model.modules() if isinstance(m, kinds)]


def _adapter_param_ids(model: nn.Module) -> set[int]:
    ids = set()
    for module in _adapter_modules(model):
        # adapter_layer_names lists the attributes (ModuleDict / ParameterDict / Parameter) that hold
        # the adapter's trainable weights; DoRA appends lora_magnitude_vector to it per instance.
        # The wrapped base_layer is never among them, so the frozen backbone weight stays backbone.
        # (older peft, e.g. 0.17, gives its ModulesToSaveWrapper no adapter_layer_names: its copies sit in
        # the modules_to_save ModuleDict)
        for name in getattr(module, "adapter_layer_names", None) or ("modules_to_save",):
            holder = getattr(module, name, None)
            if isinstance(holder, nn.Parameter):
                ids.add(id(holder))
            elif isinstance(holder, nn.Module):
                ids.update(id(p) for p in holder.parameters())
    return ids


def _logical_numel(p: torch.Tensor) -> int:
    """How many weights a parameter stands for. A bitsandbytes 4-bit weight (QLoRA) is stored packed,
    two values a byte or more in a wider ``quant_storage``, so its own ``numel`` undercounts: its quant
    state keeps the shape it was quantised from. (An 8-bit weight holds one value per element.)"""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def parameter_report(model: nn.Module) -> dict:
    """Counts of distinct parameters by owner, and TALAN / trainable as a percent of the backbone.
    A bitsandbytes 4-bit weight counts as the weights it was quantised from, as transformers'
    ``num_parameters`` counts it.

    Returns ``{"backbone", "adapter", "talan", "trainable"}`` (ints; ``backbone`` excludes the adapter
    and TALAN) and ``{"talan_percent", "trainable_percent"}`` (floats on a 0-100 scale, of ``backbone``).
    """
    talan_ids = {id(p) for m in model.modules() if isinstance(m, TalanBlock) for p in m.parameters()}
    adapter_ids = _adapter_param_ids(model) - talan_ids
    counts = {"backbone": 0, "adapter": 0, "talan": 0, "trainable": 0}
    for p in model.parameters():  # distinct: a tied embedding is yielded once
        owner = "talan" if id(p) in talan_ids else "adapter" if id(p) in adapter_ids else "backbone"
        numel = _logical_numel(p)
        counts[owner] += numel
        if p.requires_grad:
            counts["trainable"] += numel
    backbone = counts["backbone"]
    return {**counts,
            "talan_percent": 100.0 * counts["talan"] / backbone if backbone else 0.0,
            "trainable_percent": 100.0 * counts["trainable"] / backbone if backbone else 0.0}


def preset_config(name: str):
    """The transformers config of a `MODEL_PRESETS` entry."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
    from transformers import AutoConfig

    kwargs = dict(MODEL_PRESETS[name])
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def budget_table(config: TalanConfig | None = None, lora_rank: int = 16,
                 presets: Sequence[str] | None = None) -> list[dict]:
    """`parameter_report` of each preset with peft LoRA (rank ``lora_rank``, all linear layers) and TALAN.

    Each model is built on the meta device, so no weight is allocated; a few seconds per preset.
    Returns one dict per preset: ``{"model": name, "hidden_size", "num_layers", **parameter_report}``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from . import patch

    config = TalanConfig() if config is None else config
    rows = []
    for name in presets if presets is not None else MODEL_PRESETS:
        hf_config = preset_config(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                     target_modules="all-linear"))
            patch(model, config)
        rows.append({"model": name, "hidden_size": hf_config.hidden_size,
                     "num_layers": hf_config.num_hidden_layers, **parameter_report(model)})
        del model
    return rows


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_report(report: dict) -> str:
    """One model's `parameter_report` as a few aligned lines."""
    b = report["backbone"]
    pct = lambda n: f"{100.0 * n / b:.4f} % of backbone" if b else "n/a"
    return "\n".join([
        f"  backbone   {report['backbone']:>14,d}  ({_human(report['backbone'])})",
        f"  adapter    {report['adapter']:>14,d}  ({pct(report['adapter'])})",
        f"  TALAN      {report['talan']:>14,d}  ({report['talan_percent']:.4f} % of backbone)",
        f"  trainable  {report['trainable']:>14,d}  ({report['trainable_percent']:.4f} % of backbone)",
    ])


def format_budget_table(rows: Sequence[dict], config: TalanConfig | None = None, lora_rank: int | None = None) -> str:
    """`budget_table` rows as a Markdown table (it renders in a terminal and in the README)."""
    lines = []
    if config is not None:
        layers = config.layer if isinstance(config.layer, tuple) else (config.layer,)
        lines.append(f"TALAN: layer={', '.join(map(str, layers))}, site={config.site}, "
                     f"num_slots={config.num_slots}, latent_dim={config.latent_dim}, mixer={config.mixer}, "
                     f"writeback={config.writeback}" + (f"; peft LoRA r={lora_rank}, all-linear" if lora_rank else ""))
        lines.append("")
    lines.append("| model | d | layers | backbone | LoRA | TALAN | TALAN % | trainable % |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lines.append(f"| {row['model']} | {row['hidden_size']} | {row['num_layers']} | {row['backbone']:,d} "
                     f"| {row['adapter']:,d} | {row['talan']:,d} | {row['talan_percent']:.4f} "
                     f"| {row['trainable_percent']:.3f} |")
    return "\n".join(lines)
