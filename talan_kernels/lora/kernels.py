"""Triton kernels of the fused LoRA / DoRA linear (``@triton.jit`` only; launchers in interface.py).

Shapes: ``x [M, K]``, ``W [N, K]``, ``A [R, K]``, ``B [N, R]``, ``S = x Aᵀ [M, R]``,
``Z = x Wᵀ + s S Bᵀ [M, N]``, ``y = g ⊙ Z + bias``; ``BLOCK_R >= R`` holds the whole rank in one
tile. Every loaded tile is cast to fp32 before arithmetic (fp32 accumulation; the Triton
interpreter also computes bf16 wrongly otherwise). Offsets are int64 so that ``M * K`` beyond
2³¹ elements cannot overflow. Outputs whose leading dimension is ours (y, Z, S, dS) are contiguous.
"""

import triton
import triton.language as tl


@triton.jit
def _lora_fwd_kernel(
    X, W, A, B, BIAS, SCALE, Y, S_OUT, Z_OUT,
    M, N, K, R,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    scaling,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, SAVE_S: tl.constexpr, SAVE_Z: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of y. The K loop reads each x tile once and feeds both the base
    product and the rank-r product S; the rank-r update ``s S Bᵀ`` is added in the epilogue, so
    the adapter costs no extra pass over x or y."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask_r = offs_r < R

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)     # [BM, BN]  x Wᵀ
    s_acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)   # [BM, BR]  x Aᵀ
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        x = tl.load(X + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BM, BK]
        w = tl.load(W + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BN, BK]
        a = tl.load(A + offs_r[:, None] * stride_ar + kk[None, :] * stride_ak,
                    mask=mask_r[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BR, BK]
        acc += tl.dot(x, tl.trans(w))
        s_acc += tl.dot(x, tl.trans(a))

    if SAVE_S:
        # Every program along N computes the same S rows; only the first column of programs stores.
        if pid_n == 0:
            tl.store(S_OUT + offs_m[:, None] * R + offs_r[None, :],
                     s_acc.to(S_OUT.dtype.element_ty), mask=mask_m[:, None] & mask_r[None, :])

    b = tl.load(B + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
                mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(tl.float32)       # [BN, BR]
    acc += tl.dot(s_acc * scaling, tl.trans(b))

    out_mask = mask_m[:, None] & mask_n[None, :]
    out_off = offs_m[:, None] * N + offs_n[None, :]
    if SAVE_Z:
        tl.store(Z_OUT + out_off, acc.to(Z_OUT.dtype.element_ty), mask=out_mask)
    if HAS_SCALE:
        g = tl.load(SCALE + offs_n, mask=mask_n, other=0.0).to(tl.float32)             # [BN]
        acc = acc * g[None, :]
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)           # [BN]
        acc = acc + bias[None, :]
    tl.store(Y + out_off, acc.to(Y.dtype.element_ty), mask=out_mask)


@triton.jit
def _lora_bwd_dx_kernel(
    DY, W, A, B, SCALE, DX, DS_OUT,
    M, N, K, R,
    stride_dym, stride_dyn, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    scaling,
    HAS_SCALE: tl.constexpr, HAS_DX: tl.constexpr, SAVE_DS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_K] tile of ``dx = [dY' | dS] [W ; A]`` with ``dY' = dY ⊙ g``: the loop over
    N accumulates both ``dY' W`` and ``dS = s dY' B`` from the same dY tiles, then the R extra
    columns of the concatenated reduction axis are one more step. Without HAS_DX (x needs no
    gradient) the grid has one column and only dS is produced, for dA."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_k = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    mask_m = offs_m < M
    mask_k = offs_k < K
    mask_r = offs_r < R

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)      # [BM, BK]  dY' W
    ds = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)       # [BM, BR]  dY' B
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        mask_n = nn < N
        dy = tl.load(DY + offs_m[:, None] * stride_dym + nn[None, :] * stride_dyn,
                     mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)  # [BM, BN]
        if HAS_SCALE:
            g = tl.load(SCALE + nn, mask=mask_n, other=0.0).to(tl.float32)              # [BN]
            dy = dy * g[None, :]
        b = tl.load(B + nn[:, None] * stride_bn + offs_r[None, :] * stride_br,
                    mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(tl.float32)   # [BN, BR]
        ds += tl.dot(dy, b)
        if HAS_DX:
            w = tl.load(W + nn[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)  # [BN, BK]
            acc += tl.dot(dy, w)
    ds = ds * scaling

    if SAVE_DS:
        if pid_k == 0:
            tl.store(DS_OUT + offs_m[:, None] * R + offs_r[None, :], ds.to(DS_OUT.dtype.element_ty),
                     mask=mask_m[:, None] & mask_r[None, :])
    if HAS_DX:
        a = tl.load(A + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                    mask=mask_r[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BR, BK]
        acc += tl.dot(ds, a)
        tl.store(DX + offs_m[:, None] * K + offs_k[None, :], acc.to(DX.dtype.element_ty),
                 mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _lora_wgrad_kernel(
    X, Y, Z, SCALE, C, CSUM,
    M, P, R,
    stride_xm, stride_xp, stride_ym, stride_yr, stride_cp, stride_cr,
    alpha,
    HAS_SCALE: tl.constexpr, HAS_CSUM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``C[P, R] = alpha (X ⊙ g)ᵀ Y`` reduced over M, for the rank-r weight gradients:
    ``dB = s dY'ᵀ S`` (X = dY, Y = S) and ``dAᵀ = xᵀ dS`` (X = x, Y = dS, C written transposed).
    With HAS_CSUM it also reduces ``Σ_m X ⊙ Z`` [P] (the DoRA scale gradient) from the same X tiles.
    Each program owns its rows of C, so the reduction is deterministic (no atomics)."""
    pid_p = tl.program_id(0)
    offs_p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    mask_p = offs_p < P
    mask_r = offs_r < R
    if HAS_SCALE:
        g = tl.load(SCALE + offs_p, mask=mask_p, other=0.0).to(tl.float32)              # [BP]

    acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)      # [BP, BR]
    csum = tl.zeros((BLOCK_P,), dtype=tl.float32)             # [BP]
    for m0 in range(0, M, BLOCK_M):
        mm = m0 + offs_m
        mask_m = mm < M
        xt = tl.load(X + mm[:, None] * stride_xm + offs_p[None, :] * stride_xp,
                     mask=mask_m[:, None] & mask_p[None, :], other=0.0).to(tl.float32)  # [BM, BP]
        y = tl.load(Y + mm[:, None] * stride_ym + offs_r[None, :] * stride_yr,
                    mask=mask_m[:, None] & mask_r[None, :], other=0.0).to(tl.float32)   # [BM, BR]
        if HAS_CSUM:
            z = tl.load(Z + mm[:, None] * P + offs_p[None, :],
                        mask=mask_m[:, None] & mask_p[None, :], other=0.0).to(tl.float32)  # [BM, BP]
            csum += tl.sum(xt * z, axis=0)
        if HAS_SCALE:
            xt = xt * g[None, :]
        acc += tl.dot(tl.trans(xt), y)

    acc = acc * alpha
    tl.store(C + offs_p[:, None] * stride_cp + offs_r[None, :] * stride_cr, acc.to(C.dtype.element_ty),
             mask=mask_p[:, None] & mask_r[None, :])
    if HAS_CSUM:
        tl.store(CSUM + offs_p, csum.to(CSUM.dtype.element_ty), mask=mask_p)


@triton.jit
def _dora_norm_kernel(
    W, A, B, GRAM, NORM,
    N, K, R,
    stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    scaling,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``||W_i + s (B A)_i||`` for BLOCK_N rows from ``||W_i||² + 2 s <W_i Aᵀ, B_i> + s² B_i G B_iᵀ``,
    ``G = A Aᵀ`` [R, R] contiguous fp32 (precomputed once, not per program); ``B @ A`` [N, K] is never
    formed. G is read in BLOCK_C-column chunks so that an [R, R] tile never sits in registers."""
    pid_n = tl.program_id(0)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_n = offs_n < N
    mask_r = offs_r < R

    wsq = tl.zeros((BLOCK_N,), dtype=tl.float32)               # [BN]
    wa = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)        # [BN, BR]  W Aᵀ
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        w = tl.load(W + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BN, BK]
        a = tl.load(A + offs_r[:, None] * stride_ar + kk[None, :] * stride_ak,
                    mask=mask_r[:, None] & mask_k[None, :], other=0.0).to(tl.float32)   # [BR, BK]
        wsq += tl.sum(w * w, axis=1)
        wa += tl.dot(w, tl.trans(a))

    b = tl.load(B + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
                mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(tl.float32)       # [BN, BR]
    cross = tl.sum(wa * b, axis=1)                                                       # [BN]
    quad = tl.zeros((BLOCK_N,), dtype=tl.float32)                                        # [BN]
    for c0 in range(0, R, BLOCK_C):
        cc = c0 + offs_c
        mask_c = cc < R
        g = tl.load(GRAM + offs_r[:, None] * R + cc[None, :],
                    mask=mask_r[:, None] & mask_c[None, :], other=0.0)                  # [BR, BC]
        bc = tl.load(B + offs_n[:, None] * stride_bn + cc[None, :] * stride_br,
                     mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(tl.float32)  # [BN, BC]
        quad += tl.sum(tl.dot(b, g) * bc, axis=1)
    sq = wsq + 2.0 * scaling * cross + scaling * scaling * quad
    # Rounding can push an (exactly) zero row slightly negative; clamp before the square root.
    norm = tl.sqrt(tl.maximum(sq, 0.0))
    tl.store(NORM + offs_n, norm.to(NORM.dtype.element_ty), mask=mask_n)
