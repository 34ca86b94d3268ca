"""Fused LoRA / DoRA / rsLoRA linear: ``lora_linear`` and ``dora_linear`` (SPEC §4.2).

Importing registers the ``talan::lora_linear_fwd``, ``talan::lora_linear_bwd`` and
``talan::dora_weight_norm`` custom ops; triton is imported only when a kernel is launched.
"""

from . import ops  # noqa: F401  (registers the custom ops)
from .interface import DoraNormCache, dora_linear, dora_weight_norm, lora_linear
from .reference import dora_linear_ref, dora_weight_norm_ref, lora_linear_ref

__all__ = ["DoraNormCache", "dora_linear", "dora_linear_ref", "dora_weight_norm", "dora_weight_norm_ref",
           "lora_linear", "lora_linear_ref"]
