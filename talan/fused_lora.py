"""Run peft's LoRA / DoRA / rsLoRA linear layers on the fused kernels of ``talan_kernels.lora``.

``enable_fused_lora(model)`` replaces ``forward`` on each covered peft ``lora.Linear`` *instance*
(never on peft's classes) with a wrapper that checks, at every call, whether the fused op covers
the layer's current state; when it does not, the wrapper calls peft's own forward unchanged.
Parameters, buffers and ``state_dict`` keys are untouched, so peft checkpoints and
``merge_and_unload`` work as before. ``disable_fused_lora(model)`` puts the original forwards back.

Covered at call time: exactly one active adapter, plain LoRA (any scaling, so rsLoRA too) or
DoRA, no ``lora_bias``, adapters not merged or disabled, dropout inactive (p = 0, or eval mode),
no extra forward arguments (``adapter_names``), and x in the base weight's dtype, or any float x under
a bf16/fp16 autocast: then the op runs in the autocast dtype on x, W, bias, A and B cast to it, as
autocast runs peft's matmuls (the DoRA magnitude stays in its own dtype).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from talan_kernels.lora import DoraNormCache, dora_linear, lora_linear
from talan_kernels.lora.interface import MAX_TRITON_RANK

_BACKENDS = ("auto", "torch", "triton")
_STATE = "_talan_fused_lora"


@dataclass
class FusedLoraReport:
    """What ``enable_fused_lora`` did: ``fused`` layer names (their forward is wrapped; they still
    fall back to peft's forward while uncovered, e.g. dropout in training) and ``skipped``: layer
    name -> why peft's forward is kept for good."""

    backend: str
    fused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _FusedState:
    backend: str
    had_instance_forward: bool
    original_forward: Any
    norm_cache: DoraNormCache


_PEFT_CLASSES: Optional[tuple] = None


def _peft_classes():
    """peft's ``(LoraLayer, lora.Linear, DoraLinearVariant)``, imported on first use. Cached in a plain
    global, not ``functools.cache``: the forward calls it, and dynamo warns on every compile that traces
    through an lru_cache wrapper (it ignores the cache)."""
    global _PEFT_CLASSES
    if _PEFT_CLASSES is None:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer
        from peft.tuners.lora.variants import DoraLinearVariant

        _PEFT_CLASSES = (LoraLayer, LoraLinear, DoraLinearVariant)
    return _PEFT_CLASSES


def _static_reason(layer) -> Optional[str]:
    """Why the layer can never run fused (None when it can, at least in some state)."""
    _, LoraLinear, DoraLinearVariant = _peft_classes()
    # The base first: peft wraps a quantised base (QLoRA's bitsandbytes Linear4bit, ...) or an embedding in
    # a LoRA class of its own, and the base is what the report should name.
    base = layer.get_base_layer()
    if type(base) is not nn.Linear:
        return f"base layer {type(base).__module__}.{type(base).__name__} is not torch.nn.Linear"
    if type(layer) is not LoraLinear:
        return f"{type(layer).__module__}.{type(layer).__name__} is not peft's lora.Linear"
    if getattr(layer, "fan_in_fan_out", False):
        return "fan_in_fan_out weights (Conv1D layout)"
    reasons = []
    for name in layer.lora_A:
        variant = layer.lora_variant.get(name)
        if variant is not None and type(variant) is not DoraLinearVariant:
            reasons.append(f"adapter {name!r}: variant {type(variant).__name__} is not LoRA or DoRA")
        elif layer.lora_bias.get(name, False):
            reasons.append(f"adapter {name!r}: lora_bias=True")
        elif layer.r[name] > MAX_TRITON_RANK:
            reasons.append(f"adapter {name!r}: rank {layer.r[name]} > {MAX_TRITON_RANK}")
    if reasons and len(reasons) == len(layer.lora_A):
        return "; ".join(reasons)
    return None


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class _Call:
    """What ``_covered_adapter`` found for one call, so the forward looks nothing up twice."""

    name: str
    dtype: torch.dtype
    autocast: bool
    base: nn.Linear
    lora_A: torch.Tensor
    lora_B: torch.Tensor


def _covered_adapter(layer, x, args, kwargs) -> Optional[_Call]:
    """The active adapter the fused op can run for this call, the dtype it runs in and whether that
    comes from autocast, with the tensors it needs; None to use peft's forward. Runs on every call of
    every adapted layer (a decode step pays it ~200 times in a 28-layer model), hence the direct
    ``_modules`` look-ups instead of nn.Module's attribute fallback."""
    if args or kwargs or not isinstance(x, torch.Tensor) or layer.disable_adapters or layer.merged:
        return None
    modules = layer._modules
    lora_As = modules["lora_A"]
    active = [name for name in layer.active_adapters if name in lora_As]
    if len(active) != 1:
        return None
    name = active[0]
    variant = layer.lora_variant.get(name)
    if variant is not None and type(variant) is not _peft_classes()[2]:
        return None
    if layer.lora_bias.get(name, False) or layer.r[name] > MAX_TRITON_RANK:
        return None
    dropout = modules["lora_dropout"][name]
    if not isinstance(dropout, nn.Identity):
        if not isinstance(dropout, nn.Dropout) or (dropout.training and dropout.p > 0):
            return None
    base = layer.get_base_layer()
    if base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__:
        return None  # e.g. accelerate's offload hooks: peft's path runs them, ours would not
    weight = base.weight
    lora_A, lora_B = lora_As[name].weight, modules["lora_B"][name].weight
    if not (x.device == weight.device == lora_A.device == lora_B.device):
        return None
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if dtype not in (torch.float16, torch.bfloat16) or x.dtype not in _FLOATS or weight.dtype not in _FLOATS:
            return None
        return _Call(name, dtype, True, base, lora_A, lora_B)
    if x.dtype != weight.dtype or x.dtype not in _FLOATS:
        return None
    return _Call(name, x.dtype, False, base, lora_A, lora_B)


def _call_original(layer, state: _FusedState, x, args, kwargs):
    if state.had_instance_forward:
        return state.original_forward(x, *args, **kwargs)
    return type(layer).forward(layer, x, *args, **kwargs)


def _fused_forward(self, x, *args, **kwargs):
    state: _FusedState = self.__dict__[_STATE]
    call = _covered_adapter(self, x, args, kwargs)
    if call is None:
        return _call_original(self, state, x, args, kwargs)
    if not call.autocast:
        return _run_fused(self, state, call, x, call.base.weight, call.lora_A, call.lora_B, call.base.bias,
                          state.norm_cache)
    # What autocast does to peft's linear layers: every operand in the autocast dtype. The casts are
    # differentiable, so the fp32 adapter weights get their gradients; the norm cache is keyed by
    # storage and version, which fresh cast copies would defeat (or, reusing freed storage, fool).
    dtype, weight, bias = call.dtype, call.base.weight, call.base.bias
    norm_cache = None if any(t.dtype != dtype for t in (weight, call.lora_A, call.lora_B)) else state.norm_cache
    x, weight, lora_A, lora_B = (t.to(dtype) for t in (x, weight, call.lora_A, call.lora_B))
    with torch.autocast(x.device.type, enabled=False):
        return _run_fused(self, state, call, x, weight, lora_A, lora_B, None if bias is None else bias.to(dtype),
                          norm_cache)


def _run_fused(layer, state: _FusedState, call: _Call, x, weight, lora_A, lora_B, bias, norm_cache):
    scaling = layer.scaling[call.name]
    if call.name in layer.lora_variant:  # DoRA (the only variant _covered_adapter lets through)
        magnitude = layer._modules["lora_magnitude_vector"][call.name].weight
        return dora_linear(x, weight, lora_A, lora_B, magnitude, scaling, bias, backend=state.backend,
                           norm_cache=norm_cache)
    return lora_linear(x, weight, lora_A, lora_B, scaling, bias, backend=state.backend)


def enable_fused_lora(model: nn.Module, backend: str = "auto") -> FusedLoraReport:
    """Run every covered peft ``lora.Linear`` of ``model`` on the fused LoRA / DoRA kernels.

    Args:
        model: a peft model (or any module containing peft LoRA layers).
        backend: "auto" (kernels on CUDA tensors, the PyTorch reference otherwise), "torch" or
            "triton" (kernels; CPU tensors only under TRITON_INTERPRET=1).

    Returns:
        a ``FusedLoraReport``. Calling it again on a fused model only updates the backend.

    Raises:
        ValueError: an unknown ``backend``, or a model without peft LoRA layers.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    LoraLayer, _, _ = _peft_classes()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError(f"enable_fused_lora: {type(model).__name__} contains no peft LoRA layer "
                         f"(wrap it with peft.get_peft_model first)")
    report = FusedLoraReport(backend=backend)
    for name, layer in layers:
        reason = _static_reason(layer)
        if reason is not None:
            report.skipped[name] = reason
            continue
        state = getattr(layer, _STATE, None)
        if state is not None:
            state.backend = backend
        else:
            had = "forward" in layer.__dict__
            setattr(layer, _STATE, _FusedState(backend=backend, had_instance_forward=had,
                                               original_forward=layer.__dict__.get("forward"),
                                               norm_cache=DoraNormCache()))
            # A bound method (not a closure): deepcopy re-binds it to the copied layer.
            layer.forward = types.MethodType(_fused_forward, layer)
        report.fused.append(name)
    return report


def disable_fused_lora(model: nn.Module) -> list[str]:
    """Restore the original forward of every layer ``enable_fused_lora`` wrapped; returns their names."""
    restored = []
    for name, layer in model.named_modules():
        state = getattr(layer, _STATE, None)
        if state is None:
            continue
        if state.had_instance_forward:
            layer.forward = state.original_forward
        else:
            del layer.forward
        delattr(layer, _STATE)
        restored.append(name)
    return restored
