"""Triton kernels of the TALAN side path (SPEC §1, §4.1). ``@triton.jit`` functions only.

Shapes: ``B`` batch, ``T`` tokens, ``NC = cdiv(T, BT)`` chunks, ``M`` slots, ``R`` latent width,
``D`` hidden size. Every tensor is contiguous; ``w``, ``S``, ``N`` and all accumulation are fp32.

The chunked slot scan (stage 1) is split so that no kernel walks the tokens one by one:

- ``_slot_state_fwd_kernel``   grid (B, M-blocks): per-chunk sums of ``w`` and ``w v`` by one matmul
  per chunk, scanned over the chunks (not tokens) into the state at each chunk start.
- ``_slot_scan_fwd_kernel``    grid (NC, B): the state of every token of a chunk by an intra-chunk
  masked matmul plus the carried state, consumed on-chip slot by slot by the mixer read (an online
  softmax over the slots for ``attn``), so ``mem [B, T, M, R]`` never reaches HBM.
- ``_slot_scan_bwd_kernel``    grid (NC, B): recomputes ``mem`` slot by slot, the mixer backward
  gives ``g = dL/dmem``, and the intra-chunk part of the reverse sums ``R1``/``R2`` (SPEC §1).
- ``_slot_state_bwd_kernel``   grid (B, M-blocks): the reverse scan over chunks of what later
  chunks contribute to ``R1``/``R2``.
- ``_slot_carry_bwd_kernel``   grid (NC, B): adds that carried part to ``dk``, ``dv``, ``dq_slots``
  (it is linear in ``R1``/``R2``, so it does not need ``g`` again), a block of slots at a time.

A chunk's tokens split into segments at packed-sequence resets: ``seg`` counts the resets at or
before a token inside its chunk. The carried state enters only the first segment (``seg == 0``);
the state a chunk hands on is that of its last segment.
"""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh from exp(-2|x|), so it never overflows and needs no libdevice (the interpreter has none);
    a short series near 0, where 1 - exp(-2|x|) would cancel (relative error below 1e-6 either way)."""
    e = tl.exp(-2.0 * tl.abs(x))
    th = (1.0 - e) / (1.0 + e)
    th = tl.where(x < 0, -th, th)
    x2 = x * x
    return tl.where(x2 < 1.6e-3, x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0))), th)


@triton.jit
def _capped_weights(logits, a, cap):
    """``th = tanh(logits / cap)`` and ``w = a * exp(cap * th - cap)``."""
    th = _tanh(logits / cap)
    return th, a * tl.exp(cap * th - cap)


@triton.jit
def _chunk_segments(resets_ptr, row, t, t_mask, BT: tl.constexpr):
    """Reset counts of a chunk: ``seg [BT]`` (resets at or before each token) and their total."""
    rs = tl.load(resets_ptr + row + t, mask=t_mask, other=0).to(tl.int32)
    seg = tl.cumsum(rs, 0)
    return seg, tl.sum(rs, 0)


@triton.jit
def _chunk_tile(k_ptr, v_ptr, active_ptr, i_b, i_c, T, R, o_t, o_r, r_mask, BT: tl.constexpr):
    """Chunk ``i_c`` of sequence ``i_b``: token indices ``t`` and mask, the ``[BT, BR]`` offsets and mask
    into ``[B, T, R]`` tensors, and the chunk's ``k, v [BT, BR]`` and active flags ``a [BT]`` in fp32."""
    t = i_c * BT + o_t
    t_mask = t < T
    tr_off = (i_b * T + t[:, None]) * R + o_r[None, :]
    tr_mask = t_mask[:, None] & r_mask[None, :]
    kt = tl.load(k_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)  # [BT, BR]
    vt = tl.load(v_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)  # [BT, BR]
    a = tl.load(active_ptr + i_b * T + t, mask=t_mask, other=0.0).to(tl.float32)  # [BT]
    return t, t_mask, tr_off, tr_mask, kt, vt, a


@triton.jit
def _chunk_causal_mask(resets_ptr, row, t, t_mask, o_t, HAS_RESETS: tl.constexpr, BT: tl.constexpr):
    """``allowed [BT(t), BT(u)]``: u <= t in the same segment; ``first [BT]``: t is in the chunk's first
    segment (the one the carried state enters)."""
    allowed = o_t[:, None] >= o_t[None, :]
    first = o_t >= 0
    if HAS_RESETS:
        seg, _n_resets = _chunk_segments(resets_ptr, row, t, t_mask, BT)
        allowed = allowed & (seg[:, None] == seg[None, :])
        first = seg == 0
    return allowed, first


@triton.jit
def _sliced_matmul(x_ptr, x_rows, x_mask, w_ptr, w_k_stride, w_cols, w_mask, R, BX: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, DOT_PREC: tl.constexpr):
    """``x[x_rows, :R] @ W[:R, cols]``, ``[BX, BN]``, from BK-wide slices read from memory: ``x`` is an
    [*, R] tensor, ``W[k, n]`` lies at ``w_ptr + k * w_k_stride + w_cols[n]`` (``w_mask`` its valid columns).
    For wide blocks (R = 256): a whole [16, 256] operand of a dot over R is held by every warp and spills
    (tests/test_side_path_compile.py)."""
    acc = tl.zeros([BX, BN], dtype=tl.float32)
    for k0 in range(0, R, BK):
        o_k = k0 + tl.arange(0, BK)
        k_mask = o_k < R
        xs = tl.load(x_ptr + x_rows[:, None] * R + o_k[None, :], mask=x_mask[:, None] & k_mask[None, :],
                     other=0.0).to(tl.float32)  # [BX, BK]
        ws = tl.load(w_ptr + o_k[:, None] * w_k_stride + w_cols[None, :], mask=k_mask[:, None] & w_mask[None, :],
                     other=0.0).to(tl.float32)  # [BK, BN]
        acc += tl.dot(xs, ws, input_precision=DOT_PREC)
    return acc


@triton.jit
def _slot_state_fwd_kernel(
    k_ptr, v_ptr, qs_ptr, active_ptr, resets_ptr, s0_ptr, n0_ptr,  # [B,T,R] x2, [M,R], [B,T] x2, [B,M], [B,M,R]
    cs_ptr, cn_ptr, s_out_ptr, n_out_ptr,  # [B,NC,M], [B,NC,M,R], [B,M], [B,M,R]
    T, M, R, NC, scale, cap,
    HAS_RESETS: tl.constexpr, HAS_STATE: tl.constexpr,
    BT: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1)
    o_m = i_m * BM + tl.arange(0, BM)
    o_r = tl.arange(0, BR)
    o_t = tl.arange(0, BT)
    m_mask = o_m < M
    r_mask = o_r < R
    mr_mask = m_mask[:, None] & r_mask[None, :]
    mr_off = o_m[:, None] * R + o_r[None, :]  # [BM, BR]
    qs = tl.load(qs_ptr + mr_off, mask=mr_mask, other=0.0).to(tl.float32)  # [BM, BR]
    if HAS_STATE:
        s = tl.load(s0_ptr + i_b * M + o_m, mask=m_mask, other=0.0).to(tl.float32)  # [BM]
        n = tl.load(n0_ptr + i_b * M * R + mr_off, mask=mr_mask, other=0.0).to(tl.float32)  # [BM, BR]
    else:
        s = tl.zeros([BM], dtype=tl.float32)
        n = tl.zeros([BM, BR], dtype=tl.float32)
    for i_c in range(NC):
        # The state entering chunk i_c (the forward and backward chunk kernels start from it).
        base = (i_b * NC + i_c) * M
        tl.store(cs_ptr + base + o_m, s.to(cs_ptr.dtype.element_ty), mask=m_mask)
        tl.store(cn_ptr + base * R + mr_off, n.to(cn_ptr.dtype.element_ty), mask=mr_mask)
        t, t_mask, _tr_off, _tr_mask, kt, vt, a = _chunk_tile(k_ptr, v_ptr, active_ptr, i_b, i_c, T, R, o_t, o_r,
                                                              r_mask, BT)
        if BK < BR:
            logits = _sliced_matmul(k_ptr, i_b * T + t, t_mask, qs_ptr, 1, o_m * R, m_mask, R, BT, BM, BK, DOT_PREC)
        else:
            logits = tl.dot(kt, tl.trans(qs), input_precision=DOT_PREC)  # [BT, BM]
        _th, w = _capped_weights(logits * scale, a[:, None], cap)
        w = tl.where(m_mask[None, :], w, 0.0)
        if HAS_RESETS:
            seg, n_resets = _chunk_segments(resets_ptr, i_b * T, t, t_mask, BT)
            # Only the last segment reaches the next chunk; a reset drops the carried state.
            w = tl.where((seg == n_resets)[:, None], w, 0.0)
            keep = (n_resets == 0).to(tl.float32)
            s = s * keep
            n = n * keep
        s += tl.sum(w, 0)
        n += tl.dot(tl.trans(w), vt, input_precision=DOT_PREC)  # [BM, BR]
    tl.store(s_out_ptr + i_b * M + o_m, s.to(s_out_ptr.dtype.element_ty), mask=m_mask)
    tl.store(n_out_ptr + i_b * M * R + mr_off, n.to(n_out_ptr.dtype.element_ty), mask=mr_mask)


@triton.jit
def _slot_memory_row(kt, vt, a, allowed, first, qs_ptr, cs_ptr, cn_ptr, m, base, R, o_r, r_mask, scale, cap,
                     HAS_RESETS: tl.constexpr, DOT_PREC: tl.constexpr):
    """Slot ``m`` for every token of a chunk: ``th, w, S [BT]``, ``mem [BT, BR]`` (0 where S = 0)."""
    q_m = tl.load(qs_ptr + m * R + o_r, mask=r_mask, other=0.0).to(tl.float32)  # [BR]
    th, w = _capped_weights(tl.sum(kt * q_m[None, :], 1) * scale, a, cap)  # [BT]
    aw = tl.where(allowed, w[None, :], 0.0)  # [BT(t), BT(u)]
    s0 = tl.load(cs_ptr + base + m)
    n0 = tl.load(cn_ptr + (base + m) * R + o_r, mask=r_mask, other=0.0)  # [BR]
    if HAS_RESETS:
        s0 = tl.where(first, s0, 0.0)  # [BT]
        n0 = tl.where(first[:, None], n0[None, :], 0.0)  # [BT, BR]
    else:
        n0 = n0[None, :]
    S = tl.sum(aw, 1) + s0  # [BT]
    N = tl.dot(aw, vt, input_precision=DOT_PREC) + n0  # [BT, BR]
    pos = S > 0
    inv = tl.where(pos, 1.0 / tl.where(pos, S, 1.0), 0.0)  # [BT]
    return q_m, th, w, inv, N * inv[:, None]


@triton.jit
def _slot_scan_fwd_kernel(
    k_ptr, v_ptr, qs_ptr, mix_ptr, active_ptr, resets_ptr, cs_ptr, cn_ptr,  # mix: query [B,T,R] or beta [M]
    c_ptr, lse_ptr,  # [B,T,R] the mixer read, [B,T] log-sum-exp of the slot softmax (attn)
    T, M, R, NC, scale, cap,
    ATTN: tl.constexpr, HAS_RESETS: tl.constexpr,
    BT: tl.constexpr, BR: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    t, t_mask, tr_off, tr_mask, kt, vt, a = _chunk_tile(k_ptr, v_ptr, active_ptr, i_b, i_c, T, R, o_t, o_r, r_mask,
                                                        BT)
    allowed, first = _chunk_causal_mask(resets_ptr, i_b * T, t, t_mask, o_t, HAS_RESETS, BT)
    base = (i_b * NC + i_c) * M
    acc = tl.zeros([BT, BR], dtype=tl.float32)
    if ATTN:
        query = tl.load(mix_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)  # [BT, BR]
        m_run = tl.full([BT], float("-inf"), dtype=tl.float32)
        l_run = tl.zeros([BT], dtype=tl.float32)
    for m in range(M):
        _q, _th, _w, _inv, mem = _slot_memory_row(kt, vt, a, allowed, first, qs_ptr, cs_ptr, cn_ptr, m, base, R,
                                                  o_r, r_mask, scale, cap, HAS_RESETS, DOT_PREC)
        if ATTN:
            # Online softmax over the slots: mem of one slot at a time stays on-chip.
            score = tl.sum(query * mem, 1) * scale  # [BT]
            m_new = tl.maximum(m_run, score)
            alpha = tl.exp(m_run - m_new)
            p = tl.exp(score - m_new)
            l_run = l_run * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * mem
            m_run = m_new
        else:
            acc += tl.load(mix_ptr + m).to(tl.float32) * mem
    if ATTN:
        acc = acc / l_run[:, None]
        tl.store(lse_ptr + i_b * T + t, (m_run + tl.log(l_run)).to(lse_ptr.dtype.element_ty), mask=t_mask)
    tl.store(c_ptr + tr_off, acc.to(c_ptr.dtype.element_ty), mask=tr_mask)


@triton.jit
def _slot_scan_bwd_kernel(
    k_ptr, v_ptr, qs_ptr, mix_ptr, active_ptr, resets_ptr, cs_ptr, cn_ptr,  # as in the forward
    c_ptr, lse_ptr, dc_ptr,  # [B,T,R], [B,T], [B,T,R]
    dk_ptr, dv_ptr, dquery_ptr,  # [B,T,R] each (dquery only for attn)
    dqs_ptr, dbeta_ptr, d1_ptr, d2_ptr,  # [B,NC,M,R], [B,NC,M], [B,NC,M,R], [B,NC,M] per-chunk partials
    T, M, R, NC, scale, cap,
    ATTN: tl.constexpr, HAS_RESETS: tl.constexpr,
    BT: tl.constexpr, BR: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    t, t_mask, tr_off, tr_mask, kt, vt, a = _chunk_tile(k_ptr, v_ptr, active_ptr, i_b, i_c, T, R, o_t, o_r, r_mask,
                                                        BT)
    dct = tl.load(dc_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)  # [BT, BR]
    allowed, first = _chunk_causal_mask(resets_ptr, i_b * T, t, t_mask, o_t, HAS_RESETS, BT)
    allowed_f = tl.where(allowed, 1.0, 0.0)
    base = (i_b * NC + i_c) * M
    dk = tl.zeros([BT, BR], dtype=tl.float32)
    dv = tl.zeros([BT, BR], dtype=tl.float32)
    if ATTN:
        query = tl.load(mix_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)  # [BT, BR]
        lse = tl.load(lse_ptr + i_b * T + t, mask=t_mask, other=0.0).to(tl.float32)  # [BT]
        ct = tl.load(c_ptr + tr_off, mask=tr_mask, other=0.0).to(tl.float32)
        dc_c = tl.sum(dct * ct, 1)  # [BT] <dc_t, c_t>
        dquery = tl.zeros([BT, BR], dtype=tl.float32)
    for m in range(M):
        q_m, th, w, inv, mem = _slot_memory_row(kt, vt, a, allowed, first, qs_ptr, cs_ptr, cn_ptr, m, base, R,
                                                o_r, r_mask, scale, cap, HAS_RESETS, DOT_PREC)
        # g = dL/dmem for this slot, from the mixer.
        if ATTN:
            p = tl.exp(tl.sum(query * mem, 1) * scale - lse)  # [BT] softmax weight of slot m
            dscore = p * (tl.sum(dct * mem, 1) - dc_c) * scale
            g = p[:, None] * dct + dscore[:, None] * query  # [BT, BR]
            dquery += dscore[:, None] * mem
        else:
            g = tl.load(mix_ptr + m).to(tl.float32) * dct
            tl.store(dbeta_ptr + base + m, tl.sum(tl.sum(dct * mem, 1), 0).to(dbeta_ptr.dtype.element_ty))
        gs = g * inv[:, None]  # [BT, BR] g_t / S_t
        e = tl.sum(g * mem, 1) * inv  # [BT] <g_t, mem_t> / S_t
        # What the first segment owes to the previous chunks (scanned by _slot_state_bwd_kernel).
        tl.store(d1_ptr + (base + m) * R + o_r, tl.sum(tl.where(first[:, None], gs, 0.0), 0)
                 .to(d1_ptr.dtype.element_ty), mask=r_mask)
        tl.store(d2_ptr + base + m, tl.sum(tl.where(first, e, 0.0), 0).to(d2_ptr.dtype.element_ty))
        # Intra-chunk reverse sums over t >= u of the same segment: R1 [BT(u), BR], R2 [BT(u)].
        r1 = tl.dot(tl.trans(allowed_f), gs, input_precision=DOT_PREC)
        r2 = tl.sum(allowed_f * e[:, None], 0)
        dv += w[:, None] * r1
        dlogit = w * (tl.sum(vt * r1, 1) - r2) * (1.0 - th * th) * scale  # [BT] through the soft-cap
        dk += dlogit[:, None] * q_m[None, :]
        tl.store(dqs_ptr + (base + m) * R + o_r, tl.sum(dlogit[:, None] * kt, 0).to(dqs_ptr.dtype.element_ty),
                 mask=r_mask)
    tl.store(dk_ptr + tr_off, dk.to(dk_ptr.dtype.element_ty), mask=tr_mask)
    tl.store(dv_ptr + tr_off, dv.to(dv_ptr.dtype.element_ty), mask=tr_mask)
    if ATTN:
        tl.store(dquery_ptr + tr_off, dquery.to(dquery_ptr.dtype.element_ty), mask=tr_mask)


@triton.jit
def _slot_state_bwd_kernel(
    resets_ptr, d1_ptr, d2_ptr,  # [B,T], [B,NC,M,R], [B,NC,M]
    g1_ptr, g2_ptr,  # [B,NC,M,R], [B,NC,M]: what chunks after i_c add to R1/R2 of i_c's last segment
    T, M, R, NC,
    HAS_RESETS: tl.constexpr, BT: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1)
    o_m = i_m * BM + tl.arange(0, BM)
    o_r = tl.arange(0, BR)
    m_mask = o_m < M
    mr_mask = m_mask[:, None] & (o_r < R)[None, :]
    mr_off = o_m[:, None] * R + o_r[None, :]
    g1 = tl.zeros([BM, BR], dtype=tl.float32)
    g2 = tl.zeros([BM], dtype=tl.float32)
    for i in range(NC):
        i_c = NC - 1 - i
        base = (i_b * NC + i_c) * M
        tl.store(g1_ptr + base * R + mr_off, g1.to(g1_ptr.dtype.element_ty), mask=mr_mask)
        tl.store(g2_ptr + base + o_m, g2.to(g2_ptr.dtype.element_ty), mask=m_mask)
        if HAS_RESETS:
            # A reset inside chunk i_c stops what lies after it from reaching earlier chunks.
            t = i_c * BT + tl.arange(0, BT)
            _seg, n_resets = _chunk_segments(resets_ptr, i_b * T, t, t < T, BT)
            keep = (n_resets == 0).to(tl.float32)
            g1 = g1 * keep
            g2 = g2 * keep
        g1 += tl.load(d1_ptr + base * R + mr_off, mask=mr_mask, other=0.0).to(tl.float32)
        g2 += tl.load(d2_ptr + base + o_m, mask=m_mask, other=0.0).to(tl.float32)


@triton.jit
def _slot_carry_bwd_kernel(
    k_ptr, v_ptr, qs_ptr, active_ptr, resets_ptr, g1_ptr, g2_ptr,  # g1 [B,NC,M,R], g2 [B,NC,M]
    dk_ptr, dv_ptr, dqs_ptr,  # [B,T,R], [B,T,R], [B,NC,M,R]: updated in place (own elements only)
    T, M, R, NC, scale, cap,
    HAS_RESETS: tl.constexpr, BT: tl.constexpr, BM: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    i_c = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    base = (i_b * NC + i_c) * M
    t, t_mask, tr_off, tr_mask, kt, vt, a = _chunk_tile(k_ptr, v_ptr, active_ptr, i_b, i_c, T, R, o_t, o_r, r_mask,
                                                        BT)
    if HAS_RESETS:
        seg, n_resets = _chunk_segments(resets_ptr, i_b * T, t, t_mask, BT)
        last = seg == n_resets  # later chunks see only the last segment
    dv = tl.load(dv_ptr + tr_off, mask=tr_mask, other=0.0)  # [BT, BR]
    dk = tl.load(dk_ptr + tr_off, mask=tr_mask, other=0.0)
    # The correction sums over the slots: BM slots at a time, so the tiles stay the same size for any M.
    for m0 in range(0, M, BM):
        o_m = m0 + tl.arange(0, BM)
        m_mask = o_m < M
        mr_off = o_m[:, None] * R + o_r[None, :]
        mr_mask = m_mask[:, None] & r_mask[None, :]
        qs = tl.load(qs_ptr + mr_off, mask=mr_mask, other=0.0).to(tl.float32)  # [BM, BR]
        g1 = tl.load(g1_ptr + base * R + mr_off, mask=mr_mask, other=0.0).to(tl.float32)  # [BM, BR]
        g2 = tl.load(g2_ptr + base + o_m, mask=m_mask, other=0.0).to(tl.float32)  # [BM]
        if BK < BR:
            logits = _sliced_matmul(k_ptr, i_b * T + t, t_mask, qs_ptr, 1, o_m * R, m_mask, R, BT, BM, BK, DOT_PREC)
            vg1 = _sliced_matmul(v_ptr, i_b * T + t, t_mask, g1_ptr, 1, (base + o_m) * R, m_mask, R, BT, BM, BK,
                                 DOT_PREC)
        else:
            logits = tl.dot(kt, tl.trans(qs), input_precision=DOT_PREC)  # [BT, BM]
            vg1 = tl.dot(vt, tl.trans(g1), input_precision=DOT_PREC)
        th, w = _capped_weights(logits * scale, a[:, None], cap)
        w = tl.where(m_mask[None, :], w, 0.0)  # [BT, BM]
        if HAS_RESETS:
            w = tl.where(last[:, None], w, 0.0)
        dv += tl.dot(w, g1, input_precision=DOT_PREC)  # [BT, BR]
        dw = vg1 - g2[None, :]  # [BT, BM]
        dlogit = w * dw * (1.0 - th * th) * scale
        dk += tl.dot(dlogit, qs, input_precision=DOT_PREC)  # [BT, BR]
        dqs = tl.dot(tl.trans(dlogit), kt, input_precision=DOT_PREC)  # [BM, BR]
        dqs += tl.load(dqs_ptr + base * R + mr_off, mask=mr_mask, other=0.0)
        tl.store(dqs_ptr + base * R + mr_off, dqs.to(dqs_ptr.dtype.element_ty), mask=mr_mask)
    tl.store(dv_ptr + tr_off, dv.to(dv_ptr.dtype.element_ty), mask=tr_mask)
    tl.store(dk_ptr + tr_off, dk.to(dk_ptr.dtype.element_ty), mask=tr_mask)


@triton.jit
def _matvec(x, w_ptr, n_in, n_out, stride, o_in, o_out):
    """``x [BI] @ W[:n_in, :n_out]`` for a row-major matrix with row ``stride``, masked to its size."""
    mask = (o_in < n_in)[:, None] & (o_out < n_out)[None, :]
    w = tl.load(w_ptr + o_in[:, None] * stride + o_out[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.sum(x[:, None] * w, 0)


@triton.jit
def _square_matvec(x, w_ptr, R, o_r, BR: tl.constexpr, BK: tl.constexpr):
    """``x [BR] @ W[:R, :R]`` (row-major, row stride R). With BK < BR it reads BK rows of W at a time
    and picks x's BK entries out of registers with a [BR, BK] select: whole [BR, BR] tiles are 64
    fp32 registers a thread at R = 128 over 8 warps, and the decode kernel's several of them spill."""
    if BK >= BR:
        out = _matvec(x, w_ptr, R, R, R, o_r, o_r)
    else:
        out = tl.zeros([BR], dtype=tl.float32)
        o_k = tl.arange(0, BK)
        for k0 in range(0, R, BK):
            rows = k0 + o_k
            xk = tl.sum(tl.where(o_r[:, None] == rows[None, :], x[:, None], 0.0), 0)  # [BK] = x[k0:k0+BK]
            out += _matvec(xk, w_ptr + k0 * R, R - k0, R, R, o_k, o_r)
    return out


@triton.jit
def _decode_slot_block(m0, c, m_run, l_run, kk, vv, query, a, keep, i_b, qs_ptr, mix1_ptr, s0_ptr, n0_ptr,
                       s_out_ptr, n_out_ptr, M, M_store, R, o_r, r_mask, scale, cap,
                       MIXER: tl.constexpr, HAS_STATE: tl.constexpr, BM: tl.constexpr):
    """Slots ``m0 .. m0 + BM`` of the decode step: their ``(S, N)`` update (stored below ``M_store``: M, or 0
    in a program that leaves the store to another) and their part of the mixer's read ``c [BR]`` (attn:
    with the running softmax max ``m_run`` and sum ``l_run``)."""
    o_m = m0 + tl.arange(0, BM)
    m_mask = o_m < M
    mr_off = o_m[:, None] * R + o_r[None, :]
    mr_mask = m_mask[:, None] & r_mask[None, :]
    qs = tl.load(qs_ptr + mr_off, mask=mr_mask, other=0.0).to(tl.float32)  # [BM, BR]
    _th, w = _capped_weights(tl.sum(qs * kk[None, :], 1) * scale, a, cap)
    w = tl.where(m_mask, w, 0.0)  # [BM]
    s = w
    n = w[:, None] * vv[None, :]  # [BM, BR]
    if HAS_STATE:
        s += keep * tl.load(s0_ptr + i_b * M + o_m, mask=m_mask, other=0.0)
        n += keep * tl.load(n0_ptr + i_b * M * R + mr_off, mask=mr_mask, other=0.0)
    store = o_m < M_store
    tl.store(s_out_ptr + i_b * M + o_m, s, mask=store)
    tl.store(n_out_ptr + i_b * M * R + mr_off, n, mask=store[:, None] & r_mask[None, :])
    pos = s > 0
    mem = n * tl.where(pos, 1.0 / tl.where(pos, s, 1.0), 0.0)[:, None]  # [BM, BR]
    if MIXER == 1:
        beta = tl.load(mix1_ptr + o_m, mask=m_mask, other=0.0).to(tl.float32)
        c += tl.sum(beta[:, None] * mem, 0)
    else:
        score = tl.where(m_mask, tl.sum(mem * query[None, :], 1) * scale, float("-inf"))
        m_new = tl.maximum(m_run, tl.max(score, 0))  # finite: every block has a slot below M
        alpha = tl.exp(m_run - m_new)
        p = tl.exp(score - m_new)
        l_run = l_run * alpha + tl.sum(p, 0)
        c = c * alpha + tl.sum(p[:, None] * mem, 0)
        m_run = m_new
    return c, m_run, l_run


@triton.jit
def _side_path_decode_kernel(
    h_ptr, out_ptr,  # [B, D] in the residual dtype
    norm_ptr, w_in_ptr, w_k_ptr, w_v_ptr, qs_ptr, w_out_ptr,  # [D], [D,R], [R,R], [R,R], [M,R], [R,D]
    mix1_ptr, mix2_ptr, mix3_ptr,  # attn: w_q; linear: beta [M]; mlp: w_q, w_1 [2R,R], w_2; glu: w_q, w_glu
    wb1_ptr, wb2_ptr,  # tanh_gate: gate [D] or [1]; token_gate: gate_weight [D], gate_bias [1]
    active_ptr, resets_ptr, s0_ptr, n0_ptr,  # [B] fp32, [B] int8, [B,M], [B,M,R]
    s_out_ptr, n_out_ptr,  # [B,M], [B,M,R] fp32
    D, M, R, scale, cap, eps, zero_add_scale, norm_cap_ratio,
    MIXER: tl.constexpr, WRITEBACK: tl.constexpr, GATE_PER_CHANNEL: tl.constexpr,
    HAS_RESETS: tl.constexpr, HAS_STATE: tl.constexpr,
    BD: tl.constexpr, BM: tl.constexpr, SLOT_LOOP: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr,
    D_STAGES: tl.constexpr, D_PER_PROG: tl.constexpr,
):
    """One token of one sequence per program: RMSNorm, projections, the state update, the mixer and
    the writeback residual add in one launch. MIXER: 0 attn, 1 linear, 2 mlp, 3 glu. WRITEBACK: 0
    zero_add, 1 tanh_gate, 2 token_gate, 3 norm_cap. D_STAGES > 1 software-pipelines the loops over D
    (cp.async into shared memory): one program streams W_in and W_out alone, so how many of their tiles are
    in flight is what bounds it (``decode.decode_config``). D_PER_PROG > 0 splits the last pass over D
    between programs (grid axis 1): each recomputes z, the state and the mixer's read (program 0 stores
    the state) and writes its D_PER_PROG channels of h'."""
    i_b = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BD)
    o_r = tl.arange(0, BR)
    r_mask = o_r < R
    # Pass 1 over D: sum of squares, z before the RMS scale (a scalar, applied after), token gate logit.
    sq = tl.zeros([BD], dtype=tl.float32)
    z = tl.zeros([BR], dtype=tl.float32)
    gate_dot = tl.zeros([BD], dtype=tl.float32)
    for d0 in tl.range(0, D, BD, num_stages=D_STAGES):
        d = d0 + o_d
        d_mask = d < D
        hd = tl.load(h_ptr + i_b * D + d, mask=d_mask, other=0.0).to(tl.float32)  # [BD]
        hw = hd * tl.load(norm_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        sq += hd * hd
        w_in = tl.load(w_in_ptr + d[:, None] * R + o_r[None, :], mask=d_mask[:, None] & r_mask[None, :],
                       other=0.0).to(tl.float32)  # [BD, BR]
        z += tl.sum(hw[:, None] * w_in, 0)
        if WRITEBACK == 2:
            gate_dot += hw * tl.load(wb1_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    sumsq = tl.sum(sq, 0)
    rstd = 1.0 / tl.sqrt(sumsq / D + eps)
    z = z * rstd  # [BR]
    kk = _square_matvec(z, w_k_ptr, R, o_r, BR, BK)  # [BR]
    vv = _square_matvec(z, w_v_ptr, R, o_r, BR, BK)
    a = tl.load(active_ptr + i_b).to(tl.float32)
    keep = 1.0
    if HAS_STATE:
        if HAS_RESETS:
            keep = (tl.load(resets_ptr + i_b) == 0).to(tl.float32)  # a new sequence drops the state
    query = z  # the linear mixer reads no query
    if MIXER != 1:
        query = _square_matvec(z, mix1_ptr, R, o_r, BR, BK)
    # The state update and the mixer's read of the memory, BM slots at a time, so the tiles do not grow
    # with M; the attn softmax runs online over the blocks (running max and sum as fp32 scalars).
    c = tl.zeros([BR], dtype=tl.float32)
    m_run = tl.full([], float("-inf"), tl.float32)
    l_run = tl.full([], 0.0, tl.float32)
    # M <= BM (no SLOT_LOOP): one block, under a constant bound so that it compiles to straight-line code
    # (ptxas holds a rolled loop to 128 registers and spills at R = 64)
    d_lo = 0
    d_hi = D
    m_store = M
    if D_PER_PROG > 0:
        d_lo = tl.program_id(1) * D_PER_PROG
        d_hi = tl.minimum(D, d_lo + D_PER_PROG)
        m_store = tl.where(tl.program_id(1) == 0, M, 0)
    for m0 in range(0, M if SLOT_LOOP else 1, BM):
        c, m_run, l_run = _decode_slot_block(m0, c, m_run, l_run, kk, vv, query, a, keep, i_b, qs_ptr, mix1_ptr,
                                             s0_ptr, n0_ptr, s_out_ptr, n_out_ptr, M, m_store, R, o_r, r_mask, scale,
                                             cap, MIXER, HAS_STATE, BM)
    if MIXER != 1:
        c = c / l_run  # [BR] the attention read
        if MIXER == 2:
            hidden = _square_matvec(z, mix2_ptr, R, o_r, BR, BK) + _square_matvec(c, mix2_ptr + R * R, R, o_r, BR, BK)
            hidden = hidden / (1.0 + tl.exp(-hidden))  # SiLU
            c = _square_matvec(hidden, mix3_ptr, R, o_r, BR, BK)
        elif MIXER == 3:
            c = c / (1.0 + tl.exp(-_square_matvec(z, mix2_ptr, R, o_r, BR, BK)))
    # Stage 3: u = c W_out, the writeback and the residual add, block by block over D.
    factor = a
    if WRITEBACK == 0:
        factor = a * zero_add_scale
    elif WRITEBACK == 2:
        logit = tl.sum(gate_dot, 0) * rstd + tl.load(wb2_ptr).to(tl.float32)
        factor = a / (1.0 + tl.exp(-logit))
    elif WRITEBACK == 3:
        # norm_cap needs ||u|| before any element is written: a first pass recomputes u's blocks.
        usq = tl.zeros([BD], dtype=tl.float32)
        for d0 in tl.range(0, D, BD, num_stages=D_STAGES):
            d = d0 + o_d
            u = _matvec(c, w_out_ptr + d0, R, D - d0, D, o_r, o_d)
            usq += u * u
        limit = norm_cap_ratio * tl.sqrt(sumsq)
        factor = a * limit / tl.maximum(tl.maximum(tl.sqrt(tl.sum(usq, 0)), limit), 1.1754943508222875e-38)
    for d0 in tl.range(d_lo, d_hi, BD, num_stages=D_STAGES):
        d = d0 + o_d
        d_mask = d < d_hi
        u = _matvec(c, w_out_ptr + d0, R, d_hi - d0, D, o_r, o_d)  # [BD]
        if WRITEBACK == 1:
            if GATE_PER_CHANNEL:
                gate = tl.load(wb1_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
            else:
                gate = tl.load(wb1_ptr).to(tl.float32)
            u = u * _tanh(gate)
        hd = tl.load(h_ptr + i_b * D + d, mask=d_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + i_b * D + d, (hd + factor * u).to(out_ptr.dtype.element_ty), mask=d_mask)
