"""Triton kernels of the side path's d-wide stages for inference (SPEC §1, §4.1). ``@triton.jit`` only.

Shapes: ``N = B * T`` tokens (flattened), ``D`` hidden size, ``R`` latent width. ``h`` and ``out``
are in the residual stream's dtype (tiles are cast to fp32 on load); everything else is fp32.

- ``_side_path_shrink_kernel``  grid (cdiv(N, BT),): stage 1's d -> r half. One read of ``h`` per
  token block: RMSNorm, ``z = x W_in`` (the RMS scale is a per-token scalar, applied after the loop
  over D), then ``k = z W_k``, ``v = z W_v`` and the attention query ``q = z W_q`` on-chip; writes only
  r-wide outputs, plus one scalar per token for token_gate (the gate logit) and norm_cap (``||h||``).
- ``_side_path_expand_kernel``  grid (cdiv(N, BT), cdiv(D, D_PER_PROG)): stage 3. ``u = c W_out``
  tile by tile, the writeback rule, the active mask and the residual add in fp32, ``h'`` stored once
  in ``h``'s dtype. norm_cap needs the whole row's ``||u||`` first: its programs own whole rows
  (``D_PER_PROG >= D``) and make two passes over D, the first computing ``u`` only for its norm.
"""

import triton
import triton.language as tl

from .kernels import _sliced_matmul, _tanh


@triton.jit
def _side_path_shrink_kernel(
    h_ptr, norm_ptr, w_in_ptr, w_k_ptr, w_v_ptr, w_q_ptr,  # [N,D] any float dtype, [D], [D,R], [R,R] x3
    gate_w_ptr, gate_b_ptr,  # token_gate: [D], [1]
    z_ptr, k_ptr, v_ptr, q_ptr,  # [N,R] fp32 each (z only with STORE_Z, q only with HAS_Q)
    logit_ptr, hnorm_ptr,  # [N] fp32: token_gate logit x.w_g + b_g; ||h|| for norm_cap
    N, D, R, eps,
    STORE_Z: tl.constexpr, HAS_Q: tl.constexpr, HAS_GATE: tl.constexpr, HAS_HNORM: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    o_t = tl.program_id(0) * BT + tl.arange(0, BT)
    t_mask = o_t < N
    rows = o_t.to(tl.int64)
    o_d = tl.arange(0, BD)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    sq = tl.zeros([BT], dtype=tl.float32)  # sum of h^2
    z = tl.zeros([BT, BR], dtype=tl.float32)  # (h * norm_weight) W_in, before the RMS scale
    gate_dot = tl.zeros([BT], dtype=tl.float32)
    for d0 in range(0, D, BD):
        d = d0 + o_d
        d_mask = d < D
        ht = tl.load(h_ptr + rows[:, None] * D + d[None, :], mask=t_mask[:, None] & d_mask[None, :],
                     other=0.0).to(tl.float32)  # [BT, BD]
        hw = ht * tl.load(norm_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        sq += tl.sum(ht * ht, 1)
        w_in = tl.load(w_in_ptr + d[:, None] * R + o_r[None, :], mask=d_mask[:, None] & r_mask[None, :],
                       other=0.0).to(tl.float32)  # [BD, BR]
        z += tl.dot(hw, w_in, input_precision=DOT_PREC)
        if HAS_GATE:
            gate_dot += tl.sum(hw * tl.load(gate_w_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :], 1)
    rstd = 1.0 / tl.sqrt(sq / D + eps)  # [BT]
    z = z * rstd[:, None]  # [BT, BR] = RMSNorm(h) W_in
    tr_mask = t_mask[:, None] & r_mask[None, :]
    if STORE_Z:
        tl.store(z_ptr + rows[:, None] * R + o_r[None, :], z.to(z_ptr.dtype.element_ty), mask=tr_mask)
    if BK < BR:
        # Wide blocks (R = 256): z as a whole [BT, BR] dot operand would be held by every warp (with 3xTF32's
        # two halves, about 256 registers a thread), so it goes through memory (STORE_Z is set; the
        # barrier makes this program's stores visible to all its threads) and k, v, q are summed over
        # BK-wide slices of z.
        tl.debug_barrier()
        for c0 in range(0, R, BC):
            o_c = c0 + tl.arange(0, BC)
            c_mask = o_c < R
            tc_off = rows[:, None] * R + o_c[None, :]
            tc_mask = t_mask[:, None] & c_mask[None, :]
            k = _sliced_matmul(z_ptr, rows, t_mask, w_k_ptr, R, o_c, c_mask, R, BT, BC, BK, DOT_PREC)
            tl.store(k_ptr + tc_off, k.to(k_ptr.dtype.element_ty), mask=tc_mask)
            v = _sliced_matmul(z_ptr, rows, t_mask, w_v_ptr, R, o_c, c_mask, R, BT, BC, BK, DOT_PREC)
            tl.store(v_ptr + tc_off, v.to(v_ptr.dtype.element_ty), mask=tc_mask)
            if HAS_Q:
                q = _sliced_matmul(z_ptr, rows, t_mask, w_q_ptr, R, o_c, c_mask, R, BT, BC, BK, DOT_PREC)
                tl.store(q_ptr + tc_off, q.to(q_ptr.dtype.element_ty), mask=tc_mask)
    else:
        # k, v, q by BC output columns at a time: [BR, BC] weight tiles keep the registers in bounds.
        for c0 in range(0, R, BC):
            o_c = c0 + tl.arange(0, BC)
            c_mask = o_c < R
            rc_off = o_r[:, None] * R + o_c[None, :]
            rc_mask = r_mask[:, None] & c_mask[None, :]
            tc_off = rows[:, None] * R + o_c[None, :]
            tc_mask = t_mask[:, None] & c_mask[None, :]
            w = tl.load(w_k_ptr + rc_off, mask=rc_mask, other=0.0).to(tl.float32)  # [BR, BC]
            tl.store(k_ptr + tc_off, tl.dot(z, w, input_precision=DOT_PREC).to(k_ptr.dtype.element_ty), mask=tc_mask)
            w = tl.load(w_v_ptr + rc_off, mask=rc_mask, other=0.0).to(tl.float32)
            tl.store(v_ptr + tc_off, tl.dot(z, w, input_precision=DOT_PREC).to(v_ptr.dtype.element_ty), mask=tc_mask)
            if HAS_Q:
                w = tl.load(w_q_ptr + rc_off, mask=rc_mask, other=0.0).to(tl.float32)
                tl.store(q_ptr + tc_off, tl.dot(z, w, input_precision=DOT_PREC).to(q_ptr.dtype.element_ty),
                         mask=tc_mask)
    if HAS_GATE:
        logit = gate_dot * rstd + tl.load(gate_b_ptr).to(tl.float32)
        tl.store(logit_ptr + rows, logit.to(logit_ptr.dtype.element_ty), mask=t_mask)
    if HAS_HNORM:
        tl.store(hnorm_ptr + rows, tl.sqrt(sq).to(hnorm_ptr.dtype.element_ty), mask=t_mask)


@triton.jit
def _latent_times(c, c_ptr, rows, t_mask, w_ptr, d, d_mask, R, D, BT: tl.constexpr, BD: tl.constexpr,
                  BR: tl.constexpr, BK: tl.constexpr, DOT_PREC: tl.constexpr):
    """``c W[:, d]`` for the tokens ``rows``, ``[BT, BD]``: from ``c [BT, BR]`` held in registers or, for
    wide blocks (``BK < BR``), from BK-wide slices of ``c`` read from ``c_ptr`` ([N, R] fp32)."""
    if BK < BR:
        u = _sliced_matmul(c_ptr, rows, t_mask, w_ptr, D, d, d_mask, R, BT, BD, BK, DOT_PREC)
    else:
        o_r = tl.arange(0, BR)
        w = tl.load(w_ptr + o_r[:, None] * D + d[None, :], mask=(o_r < R)[:, None] & d_mask[None, :],
                    other=0.0).to(tl.float32)  # [BR, BD]
        u = tl.dot(c, w, input_precision=DOT_PREC)
    return u


@triton.jit
def _side_path_expand_kernel(
    h_ptr, c_ptr, w_out_ptr, active_ptr,  # [N,D] residual dtype, [N,R] fp32, [R,D], [N] fp32
    gate_ptr, logit_ptr, hnorm_ptr,  # tanh_gate: gate [D] or [1]; token_gate: logit [N]; norm_cap: ||h|| [N]
    out_ptr,  # [N,D] in h's dtype
    N, D, R, D_PER_PROG, zero_add_scale, norm_cap_ratio,
    WRITEBACK: tl.constexpr, GATE_PER_CHANNEL: tl.constexpr,
    BT: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """WRITEBACK: 0 zero_add, 1 tanh_gate, 2 token_gate, 3 norm_cap (as ``decode.WRITEBACK_IDS``)."""
    o_t = tl.program_id(0) * BT + tl.arange(0, BT)
    t_mask = o_t < N
    rows = o_t.to(tl.int64)
    d_start = tl.program_id(1) * D_PER_PROG
    d_end = tl.minimum(d_start + D_PER_PROG, D)
    o_d = tl.arange(0, BD)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    if BK < BR:
        c = tl.zeros([BT, BK], dtype=tl.float32)  # unused: wide blocks read c in BK-wide slices (_latent_times)
    else:
        c = tl.load(c_ptr + rows[:, None] * R + o_r[None, :], mask=t_mask[:, None] & r_mask[None, :],
                    other=0.0).to(tl.float32)  # [BT, BR]
    factor = tl.load(active_ptr + rows, mask=t_mask, other=0.0).to(tl.float32)  # [BT] a_t * token scale
    if WRITEBACK == 0:
        factor = factor * zero_add_scale
    elif WRITEBACK == 2:
        logit = tl.load(logit_ptr + rows, mask=t_mask, other=0.0).to(tl.float32)
        factor = factor / (1.0 + tl.exp(-logit))
    elif WRITEBACK == 3:
        # First pass: ||u_t|| over the whole row (u is recomputed in the second pass, never stored).
        usq = tl.zeros([BT], dtype=tl.float32)
        for d0 in range(d_start, d_end, BD):
            d = d0 + o_d
            u = _latent_times(c, c_ptr, rows, t_mask, w_out_ptr, d, d < D, R, D, BT, BD, BR, BK, DOT_PREC)  # [BT, BD]
            usq += tl.sum(u * u, 1)
        limit = norm_cap_ratio * tl.load(hnorm_ptr + rows, mask=t_mask, other=0.0).to(tl.float32)
        factor = factor * limit / tl.maximum(tl.maximum(tl.sqrt(usq), limit), 1.1754943508222875e-38)
    for d0 in range(d_start, d_end, BD):
        d = d0 + o_d
        d_mask = d < D
        u = _latent_times(c, c_ptr, rows, t_mask, w_out_ptr, d, d_mask, R, D, BT, BD, BR, BK, DOT_PREC)  # [BT, BD]
        if WRITEBACK == 1:
            if GATE_PER_CHANNEL:
                gate = tl.load(gate_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
            else:
                gate = tl.load(gate_ptr).to(tl.float32)
            u = u * _tanh(gate)
        td_off = rows[:, None] * D + d[None, :]
        td_mask = t_mask[:, None] & d_mask[None, :]
        ht = tl.load(h_ptr + td_off, mask=td_mask, other=0.0).to(tl.float32)  # [BT, BD]
        tl.store(out_ptr + td_off, (ht + factor[:, None] * u).to(out_ptr.dtype.element_ty), mask=td_mask)
