"""Host side of the Triton side path: launchers, the private autograd Function, ``side_path_triton``.

What runs where (SPEC §4.1):

- Inference prefill (no gradient needed: grad mode off, or neither ``h`` nor a parameter requires
  one): ``side_path_infer``, kernels only for every d-wide stage (``fused.py``): the shrink kernel
  (RMSNorm and the ``W_in``/``W_k``/``W_v``/``W_q`` projections in one read of ``h``), the chunked
  slot scan, the mlp/glu mixer tail in PyTorch on ``[N, R]``, and the expand kernel (``W_out``, the
  writeback, the active mask and the residual add in one write of ``h'``).
- Training (a gradient is needed): the shrink and expand kernels forward and low-rank GEMMs backward
  for the d-wide stages (``fused_train.py``); the r -> r projections and the mlp/glu tail in PyTorch
  on ``[N, R]`` (autograd); Triton (``kernels.py``) for the chunked causal slot scan fused with the
  mixer's read of the memory (attn softmax over the slots, or the linear combination), forward and
  backward, so the ``[B, T, M, R]`` memory never reaches HBM.
- Decode (one token, no gradient): the one-launch decode kernel (``decode.py``), all three stages.

The kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..launching import COMPILE_OPTIONS, as_fp32, cdiv, dot_tile, interpreter_slice
from . import ops  # registers torch.ops.talan.*; ops.resolve picks op or implementation
from .decode import side_path_decode
from .fused_train import ExpandFunction, ShrinkFunction
from .kernels import (
    _slot_carry_bwd_kernel,
    _slot_scan_bwd_kernel,
    _slot_scan_fwd_kernel,
    _slot_state_bwd_kernel,
    _slot_state_fwd_kernel,
)
from .precision import dot_precision
from .reference import scale_grad

# Slots per program of the two state kernels (grid (B, cdiv(M, BM))), and per step of the carry kernel's loop.
STATE_BLOCK_M = 16
# Tokens per chunk. 16 keeps the backward chunk kernel free of register spills at R = 64 with fp32
# (3xTF32) matmuls on sm_80/sm_90 (at 32 it spills 32-500 bytes; see tests/test_side_path_compile.py).
# Under the interpreter it also makes tiny test sequences span several chunks.
DEFAULT_CHUNK = 16


def chunk_kernel_configs(r: int, m: int, chunk_size: int, device_type: str) -> dict[str, dict]:
    """Meta-parameters of each chunk kernel as the launchers use them (the compile tests read them).
    fp32 matmuls run as 3xTF32 on tensor cores (fp32 accuracy; ``precision.py``); the interpreter is IEEE."""
    prec = dot_precision(device_type)
    br, bm = dot_tile(r), min(STATE_BLOCK_M, dot_tile(m))
    if device_type != "cuda":
        bk_state = bk_carry = interpreter_slice(br)
    elif br >= 256:
        # The products over R (k q^T, v g1^T) from 32- and 16-wide slices read from memory (BK < BR): as
        # whole [16, 256] dot operands, held by every warp, they spilled up to 11 KB
        bk_state, bk_carry = 32, 16
    else:
        bk_state = bk_carry = br
    # 2 warps: ptxas spills a few bytes in state_fwd and scan_fwd at 4 warps (it stops at 128 registers);
    # at R = 256 everything but state_bwd needs 8 (fewer spill 0.3-11 KB, 16 cap the registers at 128)
    fwd_warps, bwd_warps = (8, 8) if device_type == "cuda" and br >= 256 else (2, 4)
    return {
        "state_fwd": dict(BT=chunk_size, BM=bm, BR=br, BK=bk_state, DOT_PREC=prec, num_warps=fwd_warps),
        "scan_fwd": dict(BT=chunk_size, BR=br, DOT_PREC=prec, num_warps=fwd_warps),
        "scan_bwd": dict(BT=chunk_size, BR=br, DOT_PREC=prec, num_warps=bwd_warps),
        "state_bwd": dict(BT=chunk_size, BM=bm, BR=br, num_warps=4),
        "carry_bwd": dict(BT=chunk_size, BM=bm, BR=br, BK=bk_carry, DOT_PREC=prec, num_warps=bwd_warps),
    }


def new_output(shape, device) -> torch.Tensor:
    """fp32 buffer for a kernel to fill. On the CPU (the interpreter, a test path) it starts as NaN
    so an element a kernel forgets to write fails the tests; on a GPU it is left uninitialised."""
    if torch.device(device).type == "cpu":
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)


def slot_scan_fwd(k, v, slot_queries, mix, active, resets, s0, n0, cap: float, attn: bool, chunk_size: int):
    """Launch the forward scan. Returns ``c [B,T,R]``, ``lse [B,T]`` (``[B,0]`` for linear), the
    state entering every chunk ``cs [B,NC,M]``, ``cn [B,NC,M,R]`` and the final ``(S [B,M], N [B,M,R])``."""
    b, t, r = k.shape
    m = slot_queries.shape[0]
    nc = cdiv(t, chunk_size)
    dev = k.device
    cs, cn = new_output((b, nc, m), dev), new_output((b, nc, m, r), dev)
    s_out, n_out = new_output((b, m), dev), new_output((b, m, r), dev)
    c, lse = new_output((b, t, r), dev), new_output((b, t if attn else 0), dev)
    has_resets, has_state = resets is not None, s0 is not None
    cfg = chunk_kernel_configs(r, m, chunk_size, dev.type)
    res = resets if has_resets else active  # never read without HAS_RESETS
    _slot_state_fwd_kernel[(b, cdiv(m, cfg["state_fwd"]["BM"]))](
        k, v, slot_queries, active, res, s0 if has_state else k, n0 if has_state else k, cs, cn, s_out, n_out,
        t, m, r, nc, 1.0 / math.sqrt(r), cap, HAS_RESETS=has_resets, HAS_STATE=has_state, **cfg["state_fwd"],
        **COMPILE_OPTIONS)
    _slot_scan_fwd_kernel[(nc, b)](
        k, v, slot_queries, mix, active, res, cs, cn, c, lse if attn else c, t, m, r, nc, 1.0 / math.sqrt(r), cap,
        ATTN=attn, HAS_RESETS=has_resets, **cfg["scan_fwd"], **COMPILE_OPTIONS)
    return c, lse, cs, cn, s_out, n_out


def slot_scan_bwd(k, v, slot_queries, mix, active, resets, cs, cn, c, lse, dc, cap: float, attn: bool,
                  chunk_size: int):
    """Launch the backward scan (SPEC §1 reverse sums). Returns ``dk, dv [B,T,R]``,
    ``dslot_queries [M,R]`` and ``dmix`` (``dquery [B,T,R]`` for attn, ``dbeta [M]`` for linear)."""
    b, t, r = k.shape
    m = slot_queries.shape[0]
    nc = cdiv(t, chunk_size)
    dev = k.device
    dk, dv = new_output((b, t, r), dev), new_output((b, t, r), dev)
    dquery = new_output((b, t, r), dev) if attn else dk
    dqs, dbeta = new_output((b, nc, m, r), dev), new_output((b, nc, m), dev)
    d1, d2 = new_output((b, nc, m, r), dev), new_output((b, nc, m), dev)
    g1, g2 = new_output((b, nc, m, r), dev), new_output((b, nc, m), dev)
    has_resets = resets is not None
    res = resets if has_resets else active
    scale = 1.0 / math.sqrt(r)
    cfg = chunk_kernel_configs(r, m, chunk_size, dev.type)
    _slot_scan_bwd_kernel[(nc, b)](
        k, v, slot_queries, mix, active, res, cs, cn, c, lse if attn else c, dc, dk, dv, dquery, dqs,
        dbeta, d1, d2, t, m, r, nc, scale, cap, ATTN=attn, HAS_RESETS=has_resets, **cfg["scan_bwd"], **COMPILE_OPTIONS)
    _slot_state_bwd_kernel[(b, cdiv(m, cfg["state_bwd"]["BM"]))](
        res, d1, d2, g1, g2, t, m, r, nc, HAS_RESETS=has_resets, **cfg["state_bwd"], **COMPILE_OPTIONS)
    _slot_carry_bwd_kernel[(nc, b)](
        k, v, slot_queries, active, res, g1, g2, dk, dv, dqs, t, m, r, nc, scale, cap,
        HAS_RESETS=has_resets, **cfg["carry_bwd"], **COMPILE_OPTIONS)
    dmix = dquery if attn else dbeta.sum((0, 1))
    return dk, dv, dqs.sum((0, 1)), dmix


class _SlotScanFunction(torch.autograd.Function):
    """``(k, v, slot_queries, mix) -> (read [B,T,R], S, N)``: the slot scan and the mixer's read.
    No gradient reaches the carried state or flows out of the final one."""

    @staticmethod
    def forward(ctx, k, v, slot_queries, mix, active, resets, s0, n0, cap, attn, chunk_size):
        c, lse, cs, cn, s, n = ops.resolve("slot_scan_fwd")(k, v, slot_queries, mix, active, resets, s0, n0,
                                                             cap, attn, chunk_size)
        ctx.save_for_backward(k, v, slot_queries, mix, active, resets, cs, cn, c, lse)
        ctx.cap, ctx.attn, ctx.chunk_size = cap, attn, chunk_size
        ctx.mark_non_differentiable(s, n)
        return c, s, n

    @staticmethod
    def backward(ctx, dc, _ds, _dn):
        k, v, slot_queries, mix, active, resets, cs, cn, c, lse = ctx.saved_tensors
        dc = torch.zeros_like(c) if dc is None else dc.contiguous()
        dk, dv, dqs, dmix = ops.resolve("slot_scan_bwd")(k, v, slot_queries, mix, active, resets, cs, cn, c, lse,
                                                          dc, ctx.cap, ctx.attn, ctx.chunk_size)
        return dk, dv, dqs, dmix, None, None, None, None, None, None, None


def _mixer_tail(z, read, p, mixer):
    """The part of the mlp/glu mixers after the attention read: r x r GEMMs on ``[B, T, R]``."""
    if mixer == "mlp":
        return F.silu(torch.cat([z, read], -1) @ p["w_1"]) @ p["w_2"]
    if mixer == "glu":
        return torch.sigmoid(z @ p["w_glu"]) * read
    return read


def side_path_infer(h, params, act, res, s0, n0, *, mixer, writeback, cap, zero_add_scale, norm_cap_ratio,
                    chunk_size):
    """The prefill without autograd on kernels only (``fused.py``): the shrink kernel (one read of
    ``h`` -> ``z, k, v, q``), the slot scan with the mixer read, the mlp/glu tail in PyTorch on
    ``[N, R]``, the expand kernel (``u = c W_out``, writeback, mask, residual add, one write of
    ``h'``). ``act [B, T]`` fp32, ``res [B, T]`` int8 or None, ``s0 [B, M]``/``n0 [B, M, R]`` fp32 or
    None. Returns ``(h' [B, T, D] in h.dtype, (S [B, M], N [B, M, R]))``."""
    b, t, d = h.shape
    p = {name: as_fp32(x) for name, x in params.items()}
    r = p["w_in"].shape[1]
    hf = h.detach().reshape(b * t, d).contiguous()
    has_gate, need_hnorm = writeback == "token_gate", writeback == "norm_cap"
    z, k, v, q, logit, hnorm = ops.resolve("side_path_shrink")(
        hf, p["norm_weight"], p["w_in"], p["w_k"], p["w_v"], None if mixer == "linear" else p["w_q"],
        p["gate_weight"] if has_gate else None, p["gate_bias"] if has_gate else None, mixer in ("mlp", "glu"),
        need_hnorm)
    mix = p["mix_weights"] if mixer == "linear" else q.view(b, t, r)
    read, _lse, _cs, _cn, s, n = ops.resolve("slot_scan_fwd")(
        k.view(b, t, r), v.view(b, t, r), p["slot_queries"], mix, act, res, s0, n0, float(cap), mixer != "linear",
        chunk_size)
    c = _mixer_tail(z, read.view(b * t, r), p, mixer).contiguous()  # [N, R]
    out = ops.resolve("side_path_expand")(
        hf, c, p["w_out"], act.reshape(b * t), p["gate"] if writeback == "tanh_gate" else None,
        logit if has_gate else None, hnorm if need_hnorm else None, writeback, float(zero_add_scale),
        float(norm_cap_ratio))
    return out.view(b, t, d), (s, n)


def side_path_triton(h, params, active=None, resets=None, state=None, *, mixer="attn", writeback="tanh_gate",
                     cap=15.0, zero_add_scale=1.0, norm_cap_ratio=1e-2, grad_scale=1.0, chunk_size=None):
    """The TALAN block on the Triton kernels; same arguments and results as ``side_path_ref``.

    ``h [B, T, D]`` in any float dtype (computed in fp32, returned in ``h.dtype``); ``active``,
    ``resets`` ``[B, T]``; ``state`` ``(S [B, M], N [B, M, R])`` fp32. With no gradient needed
    (grad mode off, or neither ``h`` nor a parameter requires one) a single token takes the decode
    kernel and longer inputs ``side_path_infer`` (kernels only); otherwise autograd runs through the
    PyTorch stages around the slot-scan Function. ``chunk_size`` (tokens per chunk, a power of 2
    >= 16) defaults to ``DEFAULT_CHUNK``. Returns ``(h' [B, T, D], (S [B, M], N [B, M, R]))``.
    """
    b, t, _ = h.shape
    kwargs = dict(mixer=mixer, writeback=writeback, cap=cap, zero_add_scale=zero_add_scale,
                  norm_cap_ratio=norm_cap_ratio)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or any(x.requires_grad for x in params.values()))
    if t == 1 and not needs_grad:
        return side_path_decode(h, params, active, resets, state, **kwargs)
    chunk_size = chunk_size or DEFAULT_CHUNK
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of 2 >= 16; got {chunk_size}")
    act = torch.ones(b, t, device=h.device) if active is None else active.float().contiguous()
    res = None if resets is None else resets.to(torch.int8).contiguous()
    s0, n0 = (None, None) if state is None else (as_fp32(state[0]), as_fp32(state[1]))
    if not needs_grad:
        return side_path_infer(h, params, act, res, s0, n0, chunk_size=chunk_size, **kwargs)
    p = {name: x.float().contiguous() for name, x in params.items()}
    d, r = h.shape[2], p["w_in"].shape[1]
    hf = h.reshape(b * t, d).contiguous()
    has_gate = writeback == "token_gate"
    # the side path's own use of h takes the scaled gradient; the residual (expand's h) the plain one
    z, k, v, q, logit, hnorm = ShrinkFunction.apply(
        scale_grad(hf, grad_scale), p["norm_weight"], p["w_in"], p["w_k"], p["w_v"],
        None if mixer == "linear" else p["w_q"], p["gate_weight"] if has_gate else None,
        p["gate_bias"] if has_gate else None)
    z = z.view(b, t, r)
    mix = p["mix_weights"] if mixer == "linear" else q.view(b, t, r)
    read, s, n = _SlotScanFunction.apply(k.view(b, t, r), v.view(b, t, r), p["slot_queries"], mix, act, res, s0, n0,
                                         float(cap), mixer != "linear", chunk_size)
    c = _mixer_tail(z, read, p, mixer).reshape(b * t, r).contiguous()
    out = ExpandFunction.apply(hf, c, p["w_out"], act.reshape(b * t), p["gate"] if writeback == "tanh_gate" else None,
                               logit if has_gate else None, hnorm if writeback == "norm_cap" else None, writeback,
                               float(zero_add_scale), float(norm_cap_ratio))
    return out.view(b, t, d), (s, n)
