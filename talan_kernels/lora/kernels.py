"""Triton kernels of the fused LoRA / DoRA linear (``@triton.jit`` only; launchers in interface.py).

Shapes: ``x [M, K]``, ``W [N, K]``, ``A [R, K]``, ``B [N, R]``, ``S = x Aᵀ [M, R]``,
``Z = x Wᵀ + s S Bᵀ [M, N]``, ``y = g ⊙ Z + bias``; ``BLOCK_R >= R`` holds the whole rank in one
tile. Offsets are int64 so that ``M * K`` beyond 2³¹ elements cannot overflow. Outputs whose
leading dimension is ours (y, Z, S, dS) are contiguous.

Precision (``DOT_IN_FP32``, set by the launcher at launch time):

* False (bf16/fp16 activations on a GPU): every ``tl.dot`` takes tiles in the activation dtype
  (``DOT_T``; fp32 adapter weights are rounded to it) and accumulates in fp32, so the products run
  at the bf16/fp16 tensor-core rate. The rank-r intermediates ``s S`` and ``dS`` are rounded to
  ``DOT_T`` before their product with ``B`` / ``A``, as peft's eager ``lora_B(lora_A(x))`` rounds
  its ``S`` (and autograd its ``dS``) to the input dtype. Element-wise work (bias, the DoRA scale,
  the DoRA norm's ``||W_i||²`` and ``Σ dY ⊙ Z``) stays in fp32.
* True (fp32 activations, or the CPU interpreter, which computes bf16 arithmetic and ``tl.dot`` on
  bf16 wrongly): every tile is cast to fp32 and ``tl.dot`` uses IEEE fp32 products
  (``input_precision="ieee"``, not TF32), matching PyTorch's default fp32 matmul.

``HAS_LORA`` (forward only): False drops the adapter entirely (no ``S = x Aᵀ`` in the K loop, no
``(s S) Bᵀ`` in the epilogue; A, B, S_OUT may be None), leaving the same main loop, tiles and grid:
``y = g ⊙ x Wᵀ + bias``, the Triton GEMM the fused kernel is benchmarked against (SPEC §5).

Work split: the forward gives each program ``GROUP_N`` consecutive N tiles of one row block and
computes ``S`` only in the first, so the rank-r product over K is recomputed ``N / (BLOCK_N GROUP_N)``
times, not ``N / BLOCK_N``; the dx kernel does the same for ``dS`` over ``GROUP_K`` K tiles.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, DOT_IN_FP32: tl.constexpr):
    """``acc + a @ b`` with the fp32 accumulator ``acc``: IEEE fp32 products when DOT_IN_FP32,
    otherwise the operands' own (bf16/fp16) tensor-core product."""
    if DOT_IN_FP32:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _group_first_tile(M, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, GROUP: tl.constexpr):
    """This program's row block and the first of its GROUP consecutive column tiles (y's N tiles in
    the forward, dx's K tiles in the backward): ``(pid_g, offs_m, mask_m, first, offs_c, mask_c)``."""
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    first = pid_g * GROUP
    offs_c = first.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    return pid_g, offs_m, offs_m < M, first, offs_c, offs_c < C


@triton.jit
def _store_rank_rows(OUT, tile, offs_m, mask_m, R, BLOCK_R: tl.constexpr):
    """Rows ``offs_m`` of the contiguous [M, R] matrix OUT (S or dS) from a [BLOCK_M, BLOCK_R] tile."""
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    tl.store(OUT + offs_m[:, None] * R + offs_r[None, :], tile.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & (offs_r < R)[None, :])


@triton.jit
def _fwd_mainloop(
    X, W, A, offs_m, offs_n, mask_m, mask_n, K, R,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak,
    WITH_S: tl.constexpr, DOT_T: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``(x Wᵀ, x Aᵀ)`` for one [BLOCK_M, BLOCK_N] tile; the K loop reads each x tile once and, with
    WITH_S, feeds it to both products (without it the second result is zeros)."""
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    mask_r = offs_r < R
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)     # [BM, BN]  x Wᵀ
    s_acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)   # [BM, BR]  x Aᵀ
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < K
        x = tl.load(X + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(DOT_T)        # [BM, BK]
        w = tl.load(W + offs_n[:, None] * stride_wn + kk[None, :] * stride_wk,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(DOT_T)        # [BN, BK]
        acc = _dot(x, tl.trans(w), acc, DOT_IN_FP32)
        if WITH_S:
            a = tl.load(A + offs_r[:, None] * stride_ar + kk[None, :] * stride_ak,
                        mask=mask_r[:, None] & mask_k[None, :], other=0.0).to(DOT_T)    # [BR, BK]
            s_acc = _dot(x, tl.trans(a), s_acc, DOT_IN_FP32)
    return acc, s_acc


@triton.jit
def _fwd_epilogue(
    acc, s_lo, B, BIAS, SCALE, Y, Z_OUT, offs_m, offs_n, mask_m, mask_n, N, R, stride_bn, stride_br,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, SAVE_Z: tl.constexpr, HAS_LORA: tl.constexpr,
    DOT_T: tl.constexpr, DOT_IN_FP32: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Adds the rank-r update ``(s S) Bᵀ`` into the accumulator (unless not HAS_LORA), then stores Z,
    and y = g ⊙ Z + bias."""
    if HAS_LORA:
        offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
        mask_r = offs_r < R
        b = tl.load(B + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br,
                    mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(DOT_T)        # [BN, BR]
        acc = _dot(s_lo, tl.trans(b), acc, DOT_IN_FP32)                                 # [BM, BN]

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
def _lora_fwd_kernel(
    X, W, A, B, BIAS, SCALE, Y, S_OUT, Z_OUT,
    M, N, K, R,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    scaling,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, SAVE_S: tl.constexpr, SAVE_Z: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, HAS_LORA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    """GROUP_N consecutive [BLOCK_M, BLOCK_N] tiles of y in one row block. The first tile's K loop
    also accumulates ``S = x Aᵀ`` from the same x tiles; every tile then adds ``(s S) Bᵀ`` in its
    epilogue, so the adapter costs no extra pass over x or y and S is computed once per group.
    Without HAS_LORA neither S nor its product is computed (SAVE_S must then be False)."""
    DOT_T: tl.constexpr = tl.float32 if DOT_IN_FP32 else X.dtype.element_ty
    pid_g, offs_m, mask_m, first, offs_n, mask_n = _group_first_tile(M, N, BLOCK_M, BLOCK_N, GROUP_N)
    acc, s_acc = _fwd_mainloop(X, W, A, offs_m, offs_n, mask_m, mask_n, K, R,
                               stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak,
                               HAS_LORA, DOT_T, DOT_IN_FP32, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)
    if SAVE_S:
        # Every group of N tiles computes the same S rows; only the first group stores them.
        if pid_g == 0:
            _store_rank_rows(S_OUT, s_acc, offs_m, mask_m, R, BLOCK_R)
    s_lo = (s_acc * scaling).to(DOT_T)                                                   # [BM, BR]
    _fwd_epilogue(acc, s_lo, B, BIAS, SCALE, Y, Z_OUT, offs_m, offs_n, mask_m, mask_n, N, R,
                  stride_bn, stride_br, HAS_BIAS, HAS_SCALE, SAVE_Z, HAS_LORA, DOT_T, DOT_IN_FP32,
                  BLOCK_R)

    # The other tiles of the group reuse s_lo. Names assigned in this loop are new on purpose: a
    # name defined before the loop would be carried through it and keep a second accumulator live.
    for nb in range(first + 1, tl.minimum(first + GROUP_N, tl.cdiv(N, BLOCK_N))):
        offs_nb = tl.arange(0, BLOCK_N).to(tl.int64) + nb * BLOCK_N   # nb * BLOCK_N < N + BLOCK_N
        mask_nb = offs_nb < N
        acc_nb, _ = _fwd_mainloop(X, W, A, offs_m, offs_nb, mask_m, mask_nb, K, R,
                                  stride_xm, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak,
                                  False, DOT_T, DOT_IN_FP32, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)
        _fwd_epilogue(acc_nb, s_lo, B, BIAS, SCALE, Y, Z_OUT, offs_m, offs_nb, mask_m, mask_nb, N, R,
                      stride_bn, stride_br, HAS_BIAS, HAS_SCALE, SAVE_Z, HAS_LORA, DOT_T, DOT_IN_FP32,
                      BLOCK_R)


@triton.jit
def _dx_mainloop(
    DY, W, B, SCALE, offs_m, offs_k, mask_m, mask_k, N, R,
    stride_dym, stride_dyn, stride_wn, stride_wk, stride_bn, stride_br,
    HAS_SCALE: tl.constexpr, WITH_DX: tl.constexpr, WITH_DS: tl.constexpr,
    DOT_T: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``(dY' W, dY' B)`` for one [BLOCK_M, BLOCK_K] tile of dx, ``dY' = dY ⊙ g``, from the same dY
    tiles (a product not asked for by WITH_DX / WITH_DS comes back as zeros)."""
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    mask_r = offs_r < R
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)      # [BM, BK]  dY' W
    ds = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)       # [BM, BR]  dY' B
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + offs_n
        mask_n = nn < N
        dy = tl.load(DY + offs_m[:, None] * stride_dym + nn[None, :] * stride_dyn,
                     mask=mask_m[:, None] & mask_n[None, :], other=0.0)                 # [BM, BN]
        if HAS_SCALE:
            g = tl.load(SCALE + nn, mask=mask_n, other=0.0).to(tl.float32)              # [BN]
            dy = dy.to(tl.float32) * g[None, :]
        dy = dy.to(DOT_T)
        if WITH_DS:
            b = tl.load(B + nn[:, None] * stride_bn + offs_r[None, :] * stride_br,
                        mask=mask_n[:, None] & mask_r[None, :], other=0.0).to(DOT_T)    # [BN, BR]
            ds = _dot(dy, b, ds, DOT_IN_FP32)
        if WITH_DX:
            w = tl.load(W + nn[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(DOT_T)    # [BN, BK]
            acc = _dot(dy, w, acc, DOT_IN_FP32)
    return acc, ds


@triton.jit
def _dx_epilogue(acc, ds_lo, A, DX, offs_m, offs_k, mask_m, mask_k, K, R, stride_ar, stride_ak,
                 DOT_T: tl.constexpr, DOT_IN_FP32: tl.constexpr, BLOCK_R: tl.constexpr):
    """The R extra columns of the concatenated reduction axis (``dS A``), then the dx store."""
    offs_r = tl.arange(0, BLOCK_R).to(tl.int64)
    a = tl.load(A + offs_r[:, None] * stride_ar + offs_k[None, :] * stride_ak,
                mask=(offs_r < R)[:, None] & mask_k[None, :], other=0.0).to(DOT_T)      # [BR, BK]
    acc = _dot(ds_lo, a, acc, DOT_IN_FP32)
    tl.store(DX + offs_m[:, None] * K + offs_k[None, :], acc.to(DX.dtype.element_ty),
             mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _lora_bwd_dx_kernel(
    DY, W, A, B, SCALE, DX, DS_OUT,
    M, N, K, R,
    stride_dym, stride_dyn, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    scaling,
    HAS_SCALE: tl.constexpr, HAS_DX: tl.constexpr, SAVE_DS: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_K: tl.constexpr,
):
    """GROUP_K consecutive [BLOCK_M, BLOCK_K] tiles of ``dx = [dY' | dS] [W ; A]``, ``dY' = dY ⊙ g``.
    The first tile's loop over N also accumulates ``dS = s dY' B`` from the same dY tiles; every
    tile adds ``dS A`` at the end. Without HAS_DX (x needs no gradient) the grid has one column and
    only dS is produced, for dA."""
    DOT_T: tl.constexpr = tl.float32 if DOT_IN_FP32 else DY.dtype.element_ty
    pid_g, offs_m, mask_m, first, offs_k, mask_k = _group_first_tile(M, K, BLOCK_M, BLOCK_K, GROUP_K)
    acc, ds = _dx_mainloop(DY, W, B, SCALE, offs_m, offs_k, mask_m, mask_k, N, R,
                           stride_dym, stride_dyn, stride_wn, stride_wk, stride_bn, stride_br,
                           HAS_SCALE, HAS_DX, True, DOT_T, DOT_IN_FP32, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)
    ds = ds * scaling
    if SAVE_DS:
        if pid_g == 0:
            _store_rank_rows(DS_OUT, ds, offs_m, mask_m, R, BLOCK_R)
    if HAS_DX:
        ds_lo = ds.to(DOT_T)                                                             # [BM, BR]
        _dx_epilogue(acc, ds_lo, A, DX, offs_m, offs_k, mask_m, mask_k, K, R, stride_ar, stride_ak,
                     DOT_T, DOT_IN_FP32, BLOCK_R)
        # New names in the loop, as in the forward: nothing but ds_lo is carried across K tiles.
        for kb in range(first + 1, tl.minimum(first + GROUP_K, tl.cdiv(K, BLOCK_K))):
            offs_kb = tl.arange(0, BLOCK_K).to(tl.int64) + kb * BLOCK_K   # kb * BLOCK_K < K + BLOCK_K
            mask_kb = offs_kb < K
            acc_kb, _ = _dx_mainloop(DY, W, B, SCALE, offs_m, offs_kb, mask_m, mask_kb, N, R,
                                     stride_dym, stride_dyn, stride_wn, stride_wk, stride_bn, stride_br,
                                     HAS_SCALE, True, False, DOT_T, DOT_IN_FP32,
                                     BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)
            _dx_epilogue(acc_kb, ds_lo, A, DX, offs_m, offs_kb, mask_m, mask_kb, K, R, stride_ar, stride_ak,
                         DOT_T, DOT_IN_FP32, BLOCK_R)


@triton.jit
def _lora_wgrad_kernel(
    X, Y, Z, SCALE, C, CSUM,
    M, P, R,
    stride_xm, stride_xp, stride_ym, stride_yr, stride_cp, stride_cr,
    alpha,
    HAS_SCALE: tl.constexpr, HAS_CSUM: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``C[P, R] = alpha (X ⊙ g)ᵀ Y`` reduced over M, for the rank-r weight gradients:
    ``dB = s dY'ᵀ S`` (X = dY, Y = S) and ``dAᵀ = xᵀ dS`` (X = x, Y = dS, C written transposed).
    With HAS_CSUM it also reduces ``Σ_m X ⊙ Z`` [P] (the DoRA scale gradient, in fp32) from the
    same X tiles. The product operands are in X's dtype (Y, fp32 S or dS, is rounded to it as
    peft's autograd rounds S and dS). Each program owns its rows of C, so the reduction is
    deterministic (no atomics)."""
    DOT_T: tl.constexpr = tl.float32 if DOT_IN_FP32 else X.dtype.element_ty
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
                     mask=mask_m[:, None] & mask_p[None, :], other=0.0)                 # [BM, BP]
        y = tl.load(Y + mm[:, None] * stride_ym + offs_r[None, :] * stride_yr,
                    mask=mask_m[:, None] & mask_r[None, :], other=0.0).to(DOT_T)        # [BM, BR]
        if HAS_CSUM:
            z = tl.load(Z + mm[:, None] * P + offs_p[None, :],
                        mask=mask_m[:, None] & mask_p[None, :], other=0.0).to(tl.float32)  # [BM, BP]
            csum += tl.sum(xt.to(tl.float32) * z, axis=0)
        if HAS_SCALE:
            xt = xt.to(tl.float32) * g[None, :]
        acc = _dot(tl.trans(xt.to(DOT_T)), y, acc, DOT_IN_FP32)

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
    DOT_IN_FP32: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``||W_i + s (B A)_i||`` for BLOCK_N rows from ``||W_i||² + 2 s <W_i Aᵀ, B_i> + s² B_i G B_iᵀ``,
    ``G = A Aᵀ`` [R, R] contiguous fp32 (precomputed once, not per program); ``B @ A`` [N, K] is never
    formed. G is read in BLOCK_C-column chunks so that an [R, R] tile never sits in registers.
    ``W Aᵀ`` takes W's dtype on the tensor cores (A rounded to it) unless DOT_IN_FP32; ``||W_i||²``
    and the small ``B G`` product are always fp32 (IEEE)."""
    DOT_T: tl.constexpr = tl.float32 if DOT_IN_FP32 else W.dtype.element_ty
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
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)                  # [BN, BK]
        a = tl.load(A + offs_r[:, None] * stride_ar + kk[None, :] * stride_ak,
                    mask=mask_r[:, None] & mask_k[None, :], other=0.0).to(DOT_T)        # [BR, BK]
        wf = w.to(tl.float32)
        wsq += tl.sum(wf * wf, axis=1)
        wa = _dot(w.to(DOT_T), tl.trans(a), wa, DOT_IN_FP32)

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
        quad += tl.sum(tl.dot(b, g, input_precision="ieee") * bc, axis=1)
    sq = wsq + 2.0 * scaling * cross + scaling * scaling * quad
    # Rounding can push an (exactly) zero row slightly negative; clamp before the square root.
    norm = tl.sqrt(tl.maximum(sq, 0.0))
    tl.store(NORM + offs_n, norm.to(NORM.dtype.element_ty), mask=mask_n)
