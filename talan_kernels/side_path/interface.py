"""Public entry point of the TALAN side path: validates inputs and picks the implementation."""

from __future__ import annotations

import torch

from ..launching import use_kernels
from .reference import MIXERS, WRITEBACKS, side_path_ref

BACKENDS = ("auto", "torch", "triton")

# The largest latent width the kernels take: each holds [*, R] tiles. Up to it every kernel compiles for
# sm_80/sm_90 within shared memory and spills at most a few hundred bytes a thread (R = 128 and 256; none at
# the default R = 64); from R = 256 on the products over R read their operands in slices from memory (BK in
# the launch configs), and at R = 512 the backward kernels still spill up to 4 KB, so such blocks run on the
# PyTorch path under backend="auto" (tests/test_side_path_compile.py). The number of slots has no limit:
# every kernel walks the slots one at a time or a fixed-size block at a time.
MAX_TRITON_LATENT_DIM = 256


def kernel_size_problem(latent_dim: int) -> str | None:
    """Why the kernels do not take a block of this latent width, or None."""
    if latent_dim > MAX_TRITON_LATENT_DIM:
        return (f"the Triton kernels take latent_dim <= {MAX_TRITON_LATENT_DIM}; got latent_dim={latent_dim} "
                "(backend='auto' runs wider blocks on the PyTorch path)")
    return None


def use_side_path_kernels(backend: str, device, latent_dim: int) -> bool:
    """``launching.use_kernels`` for a block of this latent width: "auto" takes the PyTorch path for a
    block the kernels do not take, "triton" raises a ValueError that names the width."""
    if not use_kernels(backend, device):
        return False
    problem = kernel_size_problem(latent_dim)
    if problem is None:
        return True
    if backend == "triton":
        raise ValueError(f"backend='triton': {problem}")
    return False


def _check_inputs(h, params, active, resets, state, mixer, writeback, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {MIXERS}; got {mixer!r}")
    if writeback not in WRITEBACKS:
        raise ValueError(f"writeback must be one of {WRITEBACKS}; got {writeback!r}")
    if h.dim() != 3 or not h.is_floating_point():
        raise ValueError(f"h must be a floating [B, T, D] tensor; got {h.dtype} of shape {tuple(h.shape)}")
    b, t, d = h.shape
    r = params["w_in"].shape[1]
    m = params["slot_queries"].shape[0]
    if params["w_in"].shape[0] != d:
        raise ValueError(f"w_in must be [D={d}, R]; got {tuple(params['w_in'].shape)}")
    for name, mask in (("active", active), ("resets", resets)):
        if mask is not None and tuple(mask.shape) != (b, t):
            raise ValueError(f"{name} must be [B={b}, T={t}]; got {tuple(mask.shape)}")
    if state is not None:
        s, n = state
        if tuple(s.shape) != (b, m) or tuple(n.shape) != (b, m, r):
            raise ValueError(f"state must be (S [B={b}, M={m}], N [B, M, R={r}]); "
                             f"got {tuple(s.shape)} and {tuple(n.shape)}")


def side_path(h, params, active=None, resets=None, state=None, *, mixer="attn", writeback="tanh_gate",
              cap=15.0, zero_add_scale=1.0, norm_cap_ratio=1e-2, grad_scale=1.0, backend="auto"):
    """The TALAN block: ``h' = h + a * writeback(mixer(slot_memory(h)))``.

    Args:
        h: ``[B, T, D]`` residual stream. params: the block's tensors (see ``side_path_ref``).
        active: ``[B, T]`` 0/1 or None. resets: ``[B, T]`` bool or None (packed-sequence starts).
        state: ``(S [B, M], N [B, M, R])`` fp32 decode state or None.
        backend: ``"torch"`` (reference), ``"triton"`` (kernels; on CPU tensors only under
            ``TRITON_INTERPRET=1``), ``"auto"`` (kernels on CUDA tensors, reference otherwise, on
            a Triton older than ``launching.MIN_GPU_TRITON`` and for R > ``MAX_TRITON_LATENT_DIM``).

    Returns:
        ``h'`` ``[B, T, D]`` in ``h.dtype`` and the final state ``(S [B, M], N [B, M, R])`` fp32.
    """
    _check_inputs(h, params, active, resets, state, mixer, writeback, backend)
    kwargs = dict(mixer=mixer, writeback=writeback, cap=cap, zero_add_scale=zero_add_scale,
                  norm_cap_ratio=norm_cap_ratio, grad_scale=grad_scale)
    if h.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(h.device.type):
        # A mixed-precision forward (Trainer's bf16/fp16, torch.autocast) would run the block's products in the
        # autocast dtype and drift its fp32 state by percents: the block keeps its own fp32 compute and state, and
        # h' comes back in h's dtype, as without autocast. Its backward runs as the caller runs it: in fp32 outside
        # autocast, where Trainer and accelerate call it
        with torch.autocast(h.device.type, enabled=False):
            return _side_path(h, params, active, resets, state, backend, kwargs)
    return _side_path(h, params, active, resets, state, backend, kwargs)


def _side_path(h, params, active, resets, state, backend, kwargs):
    if not use_side_path_kernels(backend, h.device, params["w_in"].shape[1]):
        return side_path_ref(h, params, active, resets, state, **kwargs)
    from .triton_path import side_path_triton

    return side_path_triton(h, params, active, resets, state, **kwargs)


