"""Host side of the fused LoRA / DoRA linear: launch configurations, launchers, the autograd
``Function`` and the public ``lora_linear`` / ``dora_linear``.

The Function calls the ``torch.ops.talan.*`` custom ops (ops.py), whose implementations are the
launchers below (backend "triton") or reference.py (backend "torch"), so ``torch.compile`` sees
one opaque op per direction and never graph-breaks.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..launching import COMPILE_OPTIONS, TRITON_INTERPRETER, cdiv, dot_tile, use_kernels
from . import ops  # ops.resolve: the registered op while tracing, its implementation in eager mode

_BACKENDS = ("auto", "torch", "triton")
_DECODE_MAX_TOKENS = 16
MAX_TRITON_RANK = 128


# About one program per SM (H100/H200: 132 SMs, A100: 108): the grouping below never leaves fewer.
_MIN_PROGRAMS = 128
_MAX_GROUP = 8


def _group(other_tiles: int, grouped_tiles: int) -> int:
    """Tiles per program along the grouped axis: the largest power of two <= _MAX_GROUP that still
    leaves ``other_tiles * cdiv(grouped_tiles, group) >= _MIN_PROGRAMS`` programs. Grouping divides
    the recomputation of the rank-r product (S in the forward, dS in dx) by the group size."""
    group = 1
    while group < _MAX_GROUP and other_tiles * -(-grouped_tiles // (2 * group)) >= _MIN_PROGRAMS:
        group *= 2
    return group


@functools.lru_cache(maxsize=1024)  # pure; looked up on every launch
def fwd_config(M: int, N: int, K: int, R: int, dot_in_fp32: bool) -> dict:
    """Tiles of ``_lora_fwd_kernel``. Decode (M <= 16 tokens) is a stream over W: a 16-row tile (a
    64-row tile would waste 3/4 of every MMA), narrow N tiles for enough programs and long K steps
    for enough bytes in flight. bf16/fp16 prefill uses 128x128 tiles (fp32 accumulators of
    64 + BR/2 registers a thread over 8 warps; 64 rows for r > 32); the fp32 (IEEE, CUDA-core)
    path keeps 64x64 tiles."""
    br = dot_tile(R)
    if M <= _DECODE_MAX_TOKENS:
        if dot_in_fp32:
            cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64 if br <= 64 else 32, num_warps=4, num_stages=3)
        else:
            cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=256 if br <= 32 else 128, num_warps=4, num_stages=3)
    elif dot_in_fp32:
        # 16-deep K steps: 32 spill on sm_90 with Triton 3.6's ptxas (it settles on 128 registers)
        cfg = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=3)
    else:
        # 128 x 128 x 32: the largest tile whose two accumulators and 64-bit addresses fit 255
        # registers without a spill on both sm_80 and sm_90 (checked by test_lora_compile.py).
        cfg = dict(BLOCK_M=128 if br <= 32 else 64, BLOCK_N=128, BLOCK_K=32, num_warps=8,
                   num_stages=4 if br <= 32 else 3)
    m_tiles = -(-M // cfg["BLOCK_M"])
    return dict(cfg, BLOCK_R=br, GROUP_N=_group(m_tiles, -(-N // cfg["BLOCK_N"])))


@functools.lru_cache(maxsize=1024)  # pure; looked up on every launch
def bwd_dx_config(M: int, N: int, K: int, R: int, dot_in_fp32: bool) -> dict:
    """Tiles of ``_lora_bwd_dx_kernel`` (``BLOCK_K`` is the dx column tile, ``BLOCK_N`` the reduction
    step; the same decode rule as the forward)."""
    br = dot_tile(R)
    if M <= _DECODE_MAX_TOKENS:
        # 8 warps at r > 64: with 4, Triton 3.6's ptxas settles on 72 registers and spills on sm_90
        cfg = dict(BLOCK_M=16, BLOCK_N=32 if br <= 64 else 16, BLOCK_K=64, num_warps=4 if br <= 64 else 8,
                   num_stages=3)
    elif dot_in_fp32:
        cfg = dict(BLOCK_M=64, BLOCK_N=32 if br <= 64 else 16, BLOCK_K=64, num_warps=8, num_stages=2)
    else:
        cfg = dict(BLOCK_M=128 if br <= 64 else 64, BLOCK_N=32, BLOCK_K=64 if br == 64 else 128, num_warps=8,
                   num_stages=3)
    m_tiles = -(-M // cfg["BLOCK_M"])
    return dict(cfg, BLOCK_R=br, GROUP_K=_group(m_tiles, -(-K // cfg["BLOCK_K"])))


@functools.lru_cache(maxsize=1024)  # pure; looked up on every launch
def wgrad_config(M: int, P: int, R: int, dot_in_fp32: bool) -> dict:
    """Tiles of ``_lora_wgrad_kernel`` (one program per BLOCK_P rows of the [P, R] result, each
    reducing over all M; bf16/fp16 uses 32-row P tiles so a 4096-wide layer still gets 128 programs)."""
    br = dot_tile(R)
    bm = 16 if M <= _DECODE_MAX_TOKENS else (32 if dot_in_fp32 else 64)
    if dot_in_fp32:
        bp = 64 if br <= 64 else 32
    else:
        bp = 32
    return dict(BLOCK_M=bm, BLOCK_P=bp, BLOCK_R=br, num_warps=4, num_stages=3)


@functools.lru_cache(maxsize=1024)  # pure; looked up on every launch
def norm_config(N: int, K: int, R: int, dot_in_fp32: bool) -> dict:
    """Tiles of ``_dora_norm_kernel`` (the norm is computed once per weight update, so small
    tiles that never spill matter more than its speed)."""
    br = dot_tile(R)
    return dict(BLOCK_N=32 if br <= 64 else 16, BLOCK_K=32 if dot_in_fp32 else 64, BLOCK_R=br, BLOCK_C=16,
                num_warps=4, num_stages=2 if dot_in_fp32 else 3)


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The kernels' ``DOT_IN_FP32`` for operands rounded to ``dtype``, decided at launch time: fp32
    inputs keep IEEE fp32 products; under TRITON_INTERPRET=1 every tile is cast to fp32 (the
    interpreter computes bf16 wrongly) unless a test sets ``INTERPRETER_NATIVE_FP16_DOTS`` and the
    dtype is fp16 (the interpreter multiplies fp16 tiles exactly, with an fp32 result, as a tensor
    core does), so the native-dtype path is testable on the CPU."""
    if dtype == torch.float32:
        return True
    if TRITON_INTERPRETER:
        return not (INTERPRETER_NATIVE_FP16_DOTS and dtype == torch.float16)
    return False


# Tests set this to True (monkeypatch) to run the fp16 native-dtype dot path under the interpreter.
INTERPRETER_NATIVE_FP16_DOTS = False

# Tests set this to True (monkeypatch) so every kernel output starts as NaN: an element a kernel
# fails to write then fails the comparison instead of passing on leftover memory.
POISON_OUTPUTS = False


def _empty(shape, device, dtype) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def _split(cfg: dict) -> tuple[dict, dict]:
    meta = {k: v for k, v in cfg.items() if k.startswith(("BLOCK_", "GROUP_"))}
    launch = {**{k: cfg[k] for k in ("num_warps", "num_stages")}, **COMPILE_OPTIONS}
    return meta, launch


# ----------------------------------------------------------------------------- launchers

def lora_fwd_triton(x, weight, lora_A, lora_B, bias, col_scale, scaling: float, save_s: bool, save_z: bool):
    """Launch ``_lora_fwd_kernel`` on 2-D ``x [M, K]``; returns ``(y, S, Z)`` as ``lora_fwd_ref``."""

    from .kernels import _lora_fwd_kernel

    M, K = x.shape
    N, R = lora_B.shape
    y = _empty((M, N), x.device, x.dtype)
    s_out = _empty((M, R) if save_s else (0,), x.device, torch.float32)
    z_out = _empty((M, N) if save_z else (0,), x.device, x.dtype)
    if M == 0:
        return y, s_out, z_out
    fp32_dots = dot_in_fp32(x.dtype)
    meta, launch = _split(fwd_config(M, N, K, R, fp32_dots))
    grid = (cdiv(M, meta["BLOCK_M"]), cdiv(cdiv(N, meta["BLOCK_N"]), meta["GROUP_N"]))
    _lora_fwd_kernel[grid](
        x, weight, lora_A, lora_B, bias, col_scale, y, s_out, z_out,
        M, N, K, R,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        lora_A.stride(0), lora_A.stride(1), lora_B.stride(0), lora_B.stride(1),
        float(scaling),
        HAS_BIAS=bias is not None, HAS_SCALE=col_scale is not None, SAVE_S=save_s, SAVE_Z=save_z,
        DOT_IN_FP32=fp32_dots, HAS_LORA=True, **meta, **launch,
    )
    return y, s_out, z_out


def base_linear_triton(x, weight, bias=None, *, rank: int = 16):
    """``x Wᵀ (+ bias)`` on 2-D ``x [M, K]`` by ``_lora_fwd_kernel`` with ``HAS_LORA=False``: the
    fused kernel's own main loop, tiles, grid and precision (``fwd_config`` at ``rank``, default
    SPEC §5's r=16) without the adapter term. Private, forward only (no autograd): used by the
    benchmarks to split the fused-vs-cuBLAS ratio into the LoRA term and the Triton GEMM, and by
    the tests."""

    from .kernels import _lora_fwd_kernel

    M, K = x.shape
    N = weight.shape[0]
    y = _empty((M, N), x.device, x.dtype)
    if M == 0:
        return y
    fp32_dots = dot_in_fp32(x.dtype)
    meta, launch = _split(fwd_config(M, N, K, rank, fp32_dots))
    grid = (cdiv(M, meta["BLOCK_M"]), cdiv(cdiv(N, meta["BLOCK_N"]), meta["GROUP_N"]))
    _lora_fwd_kernel[grid](
        x, weight, None, None, bias, None, y, None, None,
        M, N, K, 0,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), 0, 0, 0, 0,
        1.0,
        HAS_BIAS=bias is not None, HAS_SCALE=False, SAVE_S=False, SAVE_Z=False,
        DOT_IN_FP32=fp32_dots, HAS_LORA=False, **meta, **launch,
    )
    return y


def lora_bwd_triton(dy, x, weight, lora_A, lora_B, s, z, col_scale, scaling: float, need_dx: bool,
                    need_dA: bool, need_dB: bool, need_dscale: bool):
    """Launch the backward kernels; returns ``(dx, dA, dB, dg)`` as ``lora_bwd_ref``."""

    from .kernels import _lora_bwd_dx_kernel, _lora_wgrad_kernel

    M, K = x.shape
    N, R = lora_B.shape
    # Custom-op outputs may not alias each other: every unrequested output is its own empty tensor.
    def empty():
        return dy.new_empty(0)

    dx, da, db, dg = empty(), empty(), empty(), dy.new_empty(0, dtype=torch.float32)  # dg: fp32 even when empty
    if M == 0:
        return (torch.zeros_like(x) if need_dx else dx, torch.zeros_like(lora_A) if need_dA else da,
                torch.zeros_like(lora_B) if need_dB else db,
                torch.zeros(N, device=dy.device, dtype=torch.float32) if need_dscale else dg)
    if need_dx or need_dA:
        ds = _empty((M, R), dy.device, torch.float32) if need_dA else empty()
        dx = _empty((M, K), x.device, x.dtype) if need_dx else empty()
        meta, launch = _split(bwd_dx_config(M, N, K, R, dot_in_fp32(dy.dtype)))
        k_groups = cdiv(cdiv(K, meta["BLOCK_K"]), meta["GROUP_K"])
        grid = (cdiv(M, meta["BLOCK_M"]), k_groups if need_dx else 1)
        _lora_bwd_dx_kernel[grid](
            dy, weight, lora_A, lora_B, col_scale, dx, ds,
            M, N, K, R,
            dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1),
            lora_A.stride(0), lora_A.stride(1), lora_B.stride(0), lora_B.stride(1),
            float(scaling),
            HAS_SCALE=col_scale is not None, HAS_DX=need_dx, SAVE_DS=need_dA, DOT_IN_FP32=dot_in_fp32(dy.dtype),
            **meta, **launch,
        )
        if need_dA:
            da = _empty((R, K), lora_A.device, lora_A.dtype)
            meta, launch = _split(wgrad_config(M, K, R, dot_in_fp32(x.dtype)))
            # dAᵀ [K, R] = xᵀ dS: the P axis of the kernel is K, written to dA transposed.
            _lora_wgrad_kernel[(cdiv(K, meta["BLOCK_P"]),)](
                x, ds, None, None, da, None,
                M, K, R,
                x.stride(0), x.stride(1), ds.stride(0), ds.stride(1), da.stride(1), da.stride(0),
                1.0,
                HAS_SCALE=False, HAS_CSUM=False, DOT_IN_FP32=dot_in_fp32(x.dtype), **meta, **launch,
            )
    if need_dB or need_dscale:
        db = _empty((N, R), lora_B.device, lora_B.dtype)
        dg = _empty((N if need_dscale else 0,), dy.device, torch.float32)
        s_arg = s if need_dB else torch.zeros(M, R, device=dy.device, dtype=torch.float32)
        meta, launch = _split(wgrad_config(M, N, R, dot_in_fp32(dy.dtype)))
        _lora_wgrad_kernel[(cdiv(N, meta["BLOCK_P"]),)](
            dy, s_arg, z if need_dscale else None, col_scale, db, dg if need_dscale else None,
            M, N, R,
            dy.stride(0), dy.stride(1), s_arg.stride(0), s_arg.stride(1), db.stride(0), db.stride(1),
            float(scaling),
            HAS_SCALE=col_scale is not None, HAS_CSUM=need_dscale, DOT_IN_FP32=dot_in_fp32(dy.dtype),
            **meta, **launch,
        )
        if not need_dB:
            db = empty()
    return dx, da, db, dg


def dora_norm_triton(weight, lora_A, lora_B, scaling: float) -> torch.Tensor:
    """Launch ``_dora_norm_kernel``; returns the fp32 row norms ``[N]``."""

    from .kernels import _dora_norm_kernel, _lora_wgrad_kernel

    N, K = weight.shape
    R = lora_A.shape[0]
    norm = _empty((N,), weight.device, torch.float32)
    if N == 0:
        return norm
    # G = A Aᵀ [R, R] once, with the rank-r reduction kernel (reduction axis K, P = R).
    gram = _empty((R, R), weight.device, torch.float32)
    meta, launch = _split(wgrad_config(K, R, R, dot_in_fp32(lora_A.dtype)))
    _lora_wgrad_kernel[(cdiv(R, meta["BLOCK_P"]),)](
        lora_A, lora_A, None, None, gram, None,
        K, R, R,
        lora_A.stride(1), lora_A.stride(0), lora_A.stride(1), lora_A.stride(0), gram.stride(0), gram.stride(1),
        1.0,
        HAS_SCALE=False, HAS_CSUM=False, DOT_IN_FP32=dot_in_fp32(lora_A.dtype), **meta, **launch,
    )
    fp32_dots = dot_in_fp32(weight.dtype)
    meta, launch = _split(norm_config(N, K, R, fp32_dots))
    _dora_norm_kernel[(cdiv(N, meta["BLOCK_N"]),)](
        weight, lora_A, lora_B, gram, norm, N, K, R,
        weight.stride(0), weight.stride(1), lora_A.stride(0), lora_A.stride(1),
        lora_B.stride(0), lora_B.stride(1), float(scaling), DOT_IN_FP32=fp32_dots, **meta, **launch,
    )
    return norm


# ----------------------------------------------------------------------------- autograd

class _LoraLinearFunction(torch.autograd.Function):
    """``y = g ⊙ (x Wᵀ + s (x Aᵀ) Bᵀ) + bias`` on 2-D x; ``g`` (DoRA's column scale) may be None."""

    @staticmethod
    def forward(ctx, x, weight, lora_A, lora_B, bias, col_scale, scaling, save_s, save_z, use_triton):
        y, s, z = ops.resolve("lora_linear_fwd")(x, weight, lora_A, lora_B, bias, col_scale, scaling,
                                                   save_s, save_z, use_triton)
        ctx.save_for_backward(x, weight, lora_A, lora_B, s, z, col_scale)
        ctx.scaling = scaling
        ctx.use_triton = use_triton
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_A, lora_B, s, z, col_scale = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, da, db, dg = ops.resolve("lora_linear_bwd")(
            dy, x, weight, lora_A, lora_B, s, z, col_scale, ctx.scaling,
            need[0], need[2], need[3], need[5], ctx.use_triton)
        dw = dbias = None
        if need[1]:
            # The base weight is frozen under peft; a caller who trains it gets the plain product.
            dys = dy if col_scale is None else dy * col_scale.to(dy.dtype)
            dw = (dys.t().to(torch.float32) @ x.to(torch.float32)).to(weight.dtype)
        if need[4]:
            dbias = dy.to(torch.float32).sum(0).to(dy.dtype)
        return (dx if need[0] else None, dw, da if need[2] else None, db if need[3] else None, dbias,
                dg.to(col_scale.dtype) if need[5] else None, None, None, None, None)


# ----------------------------------------------------------------------------- public API

def _use_triton(backend: str, device: torch.device) -> bool:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    return use_kernels(backend, device)


def _check(x, weight, lora_A, lora_B, bias, extra: dict, use_triton: bool) -> None:
    if x.dim() < 1:
        raise ValueError("x must have shape [..., in_features]; got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features]; got shape {tuple(weight.shape)}")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x must be [..., {K}] (in_features of weight); got shape {tuple(x.shape)}")
    if lora_A.dim() != 2 or lora_A.shape[1] != K:
        raise ValueError(f"lora_A must be [r, {K}]; got shape {tuple(lora_A.shape)}")
    R = lora_A.shape[0]
    if R < 1 or (use_triton and R > MAX_TRITON_RANK):
        raise ValueError(f"lora_A rank r must be >= 1 (and <= {MAX_TRITON_RANK} for the Triton kernels, "
                         f"which hold the whole rank in one register tile); got r={R}")
    if tuple(lora_B.shape) != (N, R):
        raise ValueError(f"lora_B must be [{N}, {R}] ([out_features, r]); got shape {tuple(lora_B.shape)}")
    tensors = {"x": x, "weight": weight, "lora_A": lora_A, "lora_B": lora_B, **extra}
    if bias is not None:
        tensors["bias"] = bias
    for name, t in extra.items():
        if tuple(t.shape) != (N,):
            raise ValueError(f"{name} must be [{N}] ([out_features]); got shape {tuple(t.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must be [{N}] ([out_features]); got shape {tuple(bias.shape)}")
    allowed = (torch.float16, torch.bfloat16, torch.float32) + (() if use_triton else (torch.float64,))
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{name} must be on {x.device} like x; got {t.device}")
        if t.dtype not in allowed:
            raise ValueError(f"{name} must have a dtype in {allowed}; got {t.dtype}")


def _apply(x, weight, lora_A, lora_B, bias, col_scale, scaling: float, use_triton: bool) -> torch.Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    grad = torch.is_grad_enabled()
    need_ab = grad and (lora_A.requires_grad or lora_B.requires_grad)
    need_any = grad and any(t is not None and t.requires_grad
                            for t in (x, weight, lora_A, lora_B, bias, col_scale))
    save_z = grad and col_scale is not None and col_scale.requires_grad
    scaling = float(scaling)
    if need_any:
        y = _LoraLinearFunction.apply(x2, weight, lora_A, lora_B, bias, col_scale, scaling,
                                      bool(need_ab), bool(save_z), use_triton)
    else:
        y = ops.resolve("lora_linear_fwd")(x2, weight, lora_A, lora_B, bias, col_scale, scaling,
                                            False, False, use_triton)[0]
    return y.reshape(*lead, weight.shape[0])


def lora_linear(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                scaling: float, bias: Optional[torch.Tensor] = None, *, backend: str = "auto") -> torch.Tensor:
    """Fused LoRA linear ``y = x Wᵀ + s (x Aᵀ) Bᵀ (+ bias)``.

    Args:
        x: ``[..., K]`` activations (fp16, bf16 or fp32; fp64 with backend "torch").
        weight: ``[N, K]`` frozen base weight (a gradient is still returned if it requires one).
        lora_A: ``[R, K]`` down projection (``R <= 128`` on the Triton kernels).
        lora_B: ``[N, R]`` up projection.
        scaling: ``s``; ``alpha / r`` for LoRA, ``alpha / sqrt(r)`` for rsLoRA.
        bias: optional ``[N]``.
        backend: "torch" (reference), "triton" (kernels; CPU tensors only under TRITON_INTERPRET=1),
            "auto" (kernels on CUDA tensors, the reference otherwise).

    Returns:
        ``[..., N]`` in ``x.dtype``, computed with fp32 accumulation. On the Triton kernels, bf16/fp16
        ``x`` multiplies on the tensor cores in ``x.dtype`` (fp32 A, B and the rank-r ``S``, ``dS``
        are rounded to it, as peft rounds ``S`` and ``dS`` in that dtype); fp32 ``x`` uses IEEE fp32
        products (no TF32). The backward never forms ``B @ A`` nor any intermediate wider than ``R``
        columns.
    """
    use_triton = _use_triton(backend, x.device)
    _check(x, weight, lora_A, lora_B, bias, {}, use_triton)
    return _apply(x, weight, lora_A, lora_B, bias, None, scaling, use_triton)


def dora_weight_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, *,
                     backend: str = "auto") -> torch.Tensor:
    """Detached fp32 row norms ``||W_i + s (B A)_i||`` ``[N]`` via the low-rank identity."""
    use_triton = _use_triton(backend, weight.device)
    return ops.resolve("dora_weight_norm")(weight.detach(), lora_A.detach(), lora_B.detach(),
                                            float(scaling), use_triton)


class DoraNormCache:
    """Caches the DoRA row norms for one layer; an entry is valid while the storage and the
    in-place version counters of W, A and B, and the scaling, are unchanged (an optimizer step or
    ``load_state_dict`` bumps the versions, so a stale norm is never reused)."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._norm: Optional[torch.Tensor] = None

    @staticmethod
    def _key_of(weight, lora_A, lora_B, scaling) -> Optional[tuple]:
        try:
            return tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in (weight, lora_A, lora_B)) \
                + (float(scaling),)
        except RuntimeError:  # inference tensors carry no version counter: never cache them
            return None

    def clear(self) -> None:
        self._key, self._norm = None, None

    def get(self, weight, lora_A, lora_B, scaling: float, backend: str) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return dora_weight_norm(weight, lora_A, lora_B, scaling, backend=backend)
        key = self._key_of(weight, lora_A, lora_B, scaling)
        if key is None or key != self._key:
            self._norm = dora_weight_norm(weight, lora_A, lora_B, scaling, backend=backend)
            self._key = key
        return self._norm


def dora_linear(x: torch.Tensor, weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
                magnitude: torch.Tensor, scaling: float, bias: Optional[torch.Tensor] = None, *,
                backend: str = "auto", norm_cache: Optional[DoraNormCache] = None) -> torch.Tensor:
    """Fused DoRA linear ``y = (m / ||W + s B A||_row) ⊙ (x Wᵀ + s (x Aᵀ) Bᵀ) (+ bias)``.

    The norm is detached (as in peft and the DoRA paper §4.3) and computed from the low-rank
    identity without forming ``B @ A``; pass a ``DoraNormCache`` to reuse it while W, A, B are
    unchanged. Gradients flow to x, A, B and the magnitude.

    Args:
        x: ``[..., K]``; weight: ``[N, K]``; lora_A: ``[R, K]``; lora_B: ``[N, R]``;
        magnitude: ``[N]`` (peft's ``lora_magnitude_vector``); scaling: ``s``; bias: optional ``[N]``;
        backend: as in ``lora_linear``.

    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    use_triton = _use_triton(backend, x.device)
    _check(x, weight, lora_A, lora_B, bias, {"magnitude": magnitude}, use_triton)
    if norm_cache is not None:
        norm = norm_cache.get(weight, lora_A, lora_B, scaling, backend)
    else:
        norm = dora_weight_norm(weight, lora_A, lora_B, scaling, backend=backend)
    col_scale = magnitude / norm.to(magnitude.dtype)
    return _apply(x, weight, lora_A, lora_B, bias, col_scale, scaling, use_triton)
