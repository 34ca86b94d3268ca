"""``torch.library`` custom ops of the fused LoRA / DoRA linear, with fake (meta) implementations
so that ``torch.compile(fullgraph=True)`` traces through them without a graph break.

Each op takes ``use_triton``: True runs the Triton launchers (interface.py), False the PyTorch
reference (reference.py). Unrequested outputs are empty tensors (custom ops return no None).
"""

from typing import Optional

import torch

from ..launching import EagerOps
from . import reference

_OPS = EagerOps()
resolve = _OPS.resolve  # callers: ``ops.resolve("<name>")(...)``


@torch.library.custom_op("talan::lora_linear_fwd", mutates_args=())
@_OPS.keep
def lora_linear_fwd(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                    bias: Optional[torch.Tensor], col_scale: Optional[torch.Tensor], scaling: float,
                    save_s: bool, save_z: bool, use_triton: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> ``y [M, N]``, ``S [M, R]`` fp32 (fp64 for an fp64 ``x``; or empty), ``Z [M, N]`` (or
    empty)."""
    if use_triton:
        from .interface import lora_fwd_triton

        return lora_fwd_triton(x, weight, lora_A, lora_B, bias, col_scale, scaling, save_s, save_z)
    return reference.lora_fwd_ref(x, weight, lora_A, lora_B, bias, col_scale, scaling, save_s, save_z)


@lora_linear_fwd.register_fake
def _(x, weight, lora_A, lora_B, bias, col_scale, scaling, save_s, save_z, use_triton):
    M, N, R = x.shape[0], weight.shape[0], lora_A.shape[0]
    y = x.new_empty(M, N)
    s = x.new_empty((M, R) if save_s else (0,), dtype=torch.promote_types(x.dtype, torch.float32))
    z = x.new_empty((M, N) if save_z else (0,))
    return y, s, z


@torch.library.custom_op("talan::lora_linear_bwd", mutates_args=())
@_OPS.keep
def lora_linear_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor,
                    lora_B: torch.Tensor, s: torch.Tensor, z: torch.Tensor, col_scale: Optional[torch.Tensor],
                    scaling: float, need_dx: bool, need_dA: bool, need_dB: bool, need_dscale: bool,
                    use_triton: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``dx [M, K]``, ``dA [R, K]``, ``dB [N, R]``, ``dg [N]`` fp32 (fp64 for an fp64 ``dy``), each empty
    unless needed (an empty ``dg`` keeps its dtype: the fake implementation's must match)."""
    if use_triton:
        from .interface import lora_bwd_triton

        return lora_bwd_triton(dy, x, weight, lora_A, lora_B, s, z, col_scale, scaling,
                               need_dx, need_dA, need_dB, need_dscale)
    return reference.lora_bwd_ref(dy, x, weight, lora_A, lora_B, s, z, col_scale, scaling,
                                  need_dx, need_dA, need_dB, need_dscale)


@lora_linear_bwd.register_fake
def _(dy, x, weight, lora_A, lora_B, s, z, col_scale, scaling, need_dx, need_dA, need_dB, need_dscale,
      use_triton):
    N, R = lora_B.shape
    dx = x.new_empty(x.shape) if need_dx else dy.new_empty(0)
    da = lora_A.new_empty(lora_A.shape) if need_dA else dy.new_empty(0)
    db = lora_B.new_empty(lora_B.shape) if need_dB else dy.new_empty(0)
    dg = dy.new_empty((N,) if need_dscale else (0,), dtype=torch.promote_types(dy.dtype, torch.float32))
    return dx, da, db, dg


@torch.library.custom_op("talan::dora_weight_norm", mutates_args=())
@_OPS.keep
def dora_weight_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float,
                     use_triton: bool) -> torch.Tensor:
    """Detached fp32 row norms ``||W_i + s (B A)_i||`` [N] from the low-rank identity."""
    if use_triton:
        from .interface import dora_norm_triton

        return dora_norm_triton(weight, lora_A, lora_B, scaling)
    return reference.dora_weight_norm_ref(weight, lora_A, lora_B, scaling).to(torch.float32)


@dora_weight_norm.register_fake
def _(weight, lora_A, lora_B, scaling, use_triton):
    return weight.new_empty((weight.shape[0],), dtype=torch.float32)
