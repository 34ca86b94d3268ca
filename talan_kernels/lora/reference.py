"""Plain PyTorch references for the fused LoRA / DoRA linear (fp32 compute, or fp64 when given fp64).

Notation (SPEC §4.2): ``x [M, K]`` tokens, ``W [N, K]`` frozen base weight, ``A [R, K]``,
``B [N, R]``, ``s`` the scaling (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA),
``S = x Aᵀ [M, R]``, ``Z = x Wᵀ + s S Bᵀ [M, N]`` (the un-scaled adapter output) and, for DoRA,
``g = m / ||W + s B A||_row [N]`` (a per-output-column scale, norm detached).

``y = g ⊙ Z + bias`` (``g = 1`` for plain LoRA). This equals peft's DoRA
``base + (g - 1)(base - bias) + g s lora``.

* ``lora_linear_ref`` / ``dora_linear_ref``: differentiable through autograd (the parity target
  for the kernels and the object of gradcheck).
* ``lora_fwd_ref`` / ``lora_bwd_ref``: the explicit forward and the hand-written backward of
  SPEC §4.2, the torch backend of the custom ops; they use only rank-r intermediates.
* ``dora_weight_norm_ref`` (low-rank identity) and ``dora_weight_norm_oracle`` (forms ``B @ A``,
  for tiny shapes only).
"""

from __future__ import annotations

from typing import Optional

import torch


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # fp32 compute for fp16/bf16/fp32 inputs; fp64 stays fp64 so gradcheck can run on the reference.
    return torch.promote_types(t.dtype, torch.float32)


def lora_linear_ref(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                    scaling: float, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y = x Wᵀ + s (x Aᵀ) Bᵀ (+ bias)`` for ``x [..., K]``; returns ``[..., N]`` in ``x.dtype``."""
    cd = _compute_dtype(x)
    xf = x.to(cd)
    y = xf @ weight.to(cd).t() + scaling * ((xf @ lora_A.to(cd).t()) @ lora_B.to(cd).t())
    if bias is not None:
        y = y + bias.to(cd)
    return y.to(x.dtype)


def dora_weight_norm_ref(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                         scaling: float) -> torch.Tensor:
    """Row norms ``||W_i + s (B A)_i||`` [N] from the low-rank identity
    ``||W_i||² + 2 s <W_i Aᵀ, B_i> + s² B_i (A Aᵀ) B_iᵀ`` without forming ``B @ A``. Detached, fp32."""
    with torch.no_grad():
        cd = _compute_dtype(weight)
        w, a, b = weight.to(cd), lora_A.to(cd), lora_B.to(cd)
        wa = w @ a.t()                                   # [N, R]
        gram = a @ a.t()                                 # [R, R]
        sq = (w * w).sum(1) + 2.0 * scaling * (wa * b).sum(1) + scaling * scaling * ((b @ gram) * b).sum(1)
        return sq.clamp_min(0.0).sqrt()


def dora_weight_norm_oracle(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                            scaling: float) -> torch.Tensor:
    """The same row norms by forming ``W + s B A`` explicitly (tiny shapes only)."""
    cd = _compute_dtype(weight)
    full = weight.to(cd) + scaling * (lora_B.to(cd) @ lora_A.to(cd))
    return torch.linalg.vector_norm(full, dim=1).detach()


def dora_linear_ref(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                    magnitude: torch.Tensor, scaling: float, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DoRA: ``y = (m / ||W + s B A||_row) ⊙ (x Wᵀ + s (x Aᵀ) Bᵀ) (+ bias)``, norm detached."""
    cd = _compute_dtype(x)
    norm = dora_weight_norm_ref(weight, lora_A, lora_B, scaling).to(cd)
    g = magnitude.to(cd) / norm
    z = lora_linear_ref(x.to(cd), weight, lora_A, lora_B, scaling)
    y = g * z
    if bias is not None:
        y = y + bias.to(cd)
    return y.to(x.dtype)


def lora_fwd_ref(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                 bias: Optional[torch.Tensor], col_scale: Optional[torch.Tensor], scaling: float,
                 save_s: bool, save_z: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Explicit forward for 2-D ``x [M, K]``: returns ``y [M, N]`` (x.dtype), ``S [M, R]`` (fp32,
    or fp64 for an fp64 ``x``; empty unless ``save_s``) and ``Z [M, N]`` (x.dtype, empty unless ``save_z``)."""
    cd = _compute_dtype(x)
    xf = x.to(cd)
    s = xf @ lora_A.to(cd).t()                                       # [M, R]
    z = xf @ weight.to(cd).t() + scaling * (s @ lora_B.to(cd).t())   # [M, N]
    y = z if col_scale is None else z * col_scale.to(cd)
    if bias is not None:
        y = y + bias.to(cd)
    s_out = s if save_s else x.new_empty(0, dtype=cd)  # fp32, or fp64 for fp64, even when empty
    z_out = z.to(x.dtype, copy=True) if save_z else x.new_empty(0)  # never alias y
    return y.to(x.dtype), s_out, z_out


def lora_bwd_ref(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor,
                 lora_B: torch.Tensor, s: torch.Tensor, z: torch.Tensor, col_scale: Optional[torch.Tensor],
                 scaling: float, need_dx: bool, need_dA: bool, need_dB: bool,
                 need_dscale: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPEC §4.2 backward with ``dY' = dY ⊙ g``: ``dS = s dY' B``, ``dB = s dY'ᵀ S``,
    ``dA = dSᵀ x``, ``dx = [dY' | dS] [W ; A]`` (one GEMM over the concatenated K) and
    ``dg = Σ_m dY ⊙ Z``. Unrequested gradients come back as empty tensors."""
    cd = _compute_dtype(dy)
    dyf = dy.to(cd)
    dys = dyf if col_scale is None else dyf * col_scale.to(cd)        # [M, N]
    # Custom-op outputs may not alias each other: every unrequested output is its own empty tensor.
    def empty():
        return dy.new_empty(0)

    ds = None
    if need_dx or need_dA:
        ds = scaling * (dys @ lora_B.to(cd))                            # [M, R]
    dx = empty()
    if need_dx:
        # [dY' | dS] @ [W ; A]: one product over the concatenated reduction axis N + R.
        dx = (torch.cat([dys, ds], 1) @ torch.cat([weight.to(cd), lora_A.to(cd)], 0)).to(x.dtype)
    da = (ds.t() @ x.to(cd)).to(lora_A.dtype) if need_dA else empty()
    db = (scaling * (dys.t() @ s.to(cd))).to(lora_B.dtype) if need_dB else empty()
    dg = (dyf * z.to(cd)).sum(0) if need_dscale else dy.new_empty(0, dtype=cd)  # fp32, or fp64 for fp64
    return dx, da, db, dg
