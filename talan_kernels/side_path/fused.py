"""The side path's inference (no-autograd) prefill on kernels only: shrink, slot scan, expand.

HBM bytes per token of the d-wide stages (``D`` hidden size, ``e`` bytes per element of ``h``: 2 for
bf16/fp16, 4 for fp32; weights are L2-resident and left out):

- **floor** ``2 e D``: one read of ``h`` and one write of ``h'`` (bf16: ``4 D``).
- **PyTorch stages** (the autograd path, which inference also took before these kernels), bf16,
  tanh_gate: ``3 e D + 76 D = 82 D`` (20x the floor): ``h.float()`` twice (``e D`` read + ``4 D``
  written each), RMSNorm as four passes over fp32 ``[N, D]`` (pow, mean, * rstd, * weight: 28 D), the
  ``x @ W_in`` read (4 D), the ``c @ W_out`` write (4 D), ``tanh(gate) * u`` (8 D), the active mask
  (8 D), ``h32 + delta`` (12 D), ``.to(h.dtype)`` (4 D + ``e D``). token_gate/norm_cap add 4-8 D.
- **this path** ``3 e D`` (bf16: 6 D, 1.5x the floor): the shrink reads ``h``, the expand reads it
  again and writes ``h'``. The scan needs every token's ``k, v`` before any ``c``, so ``h`` is read
  twice; the second read is served by L2 when ``N D e`` fits (8 MB at 4096 x 1024 in bf16).
  Plus r-wide fp32 traffic (``R`` latent width, ``M`` slots, 16-token chunks), attn mixer: the shrink
  writes ``k, v, q`` (12 R), the state kernel reads ``k, v`` (8 R) and writes the chunk states
  (``M R / 4``), the scan kernel reads ``k, v, q`` and the chunk states and writes ``c`` (16 R + ``M R
  / 4``), the expand reads ``c`` (4 R): about ``48 R`` at M = 16, i.e. ~0.75x the bf16 floor at
  R = 64, D = 1024 (mlp/glu add ``z`` and the PyTorch tail on ``[N, R]``). Recomputing ``k, v, q``
  from ``z`` inside the scan kernels would save about ``20 R`` (not done). At R = 256 (``BK < BR``) the
  shrink always writes ``z`` (4 R more) and reads it back in slices, once for each of k, v, q per BC
  output columns, and the expand reads ``c`` in slices once per BD channels: re-reads of a program's own
  recent rows, which L1/L2 should serve (not measured).

The kernels are in ``fused_kernels.py``; ``triton_path.side_path_infer`` chains them with the scan.
"""

from __future__ import annotations

import torch

from ..launching import COMPILE_OPTIONS, cdiv, dot_tile, interpreter_slice
from . import ops  # noqa: F401  (registers torch.ops.talan.*)
from .decode import WRITEBACK_IDS
from .fused_kernels import _side_path_expand_kernel, _side_path_shrink_kernel
from .precision import dot_precision
from .reference import RMS_EPS


def fused_kernel_configs(d: int, r: int, writeback: str, device_type: str) -> dict[str, dict]:
    """Meta-parameters of the shrink and expand kernels as the launchers use them (the compile tests
    read them). fp32 matmuls run as 3xTF32 on tensor cores (fp32 accuracy, as the chunk kernels;
    ``precision.py``).
    On the CPU (the interpreter) tiles are small, so that tiny test shapes span several of them.
    ``D_PER_PROG``: hidden channels per expand program; norm_cap's programs own whole rows."""
    br = dot_tile(r)
    if device_type != "cuda":
        bk = interpreter_slice(br)
        return {"shrink": dict(BT=16, BD=32, BR=br, BC=16, BK=bk, DOT_PREC="ieee", num_warps=4, num_stages=1),
                "expand": dict(BT=16, BD=32, BR=br, BK=bk, DOT_PREC="ieee", num_warps=4, num_stages=1,
                               D_PER_PROG=d if writeback == "norm_cap" else 64)}
    # Spill-free on sm_80/sm_90 with 3xTF32 (tests/test_side_path_compile.py), with the newest Triton
    # and with 3.6 (torch 2.11's); 4 warps, or 32-token tiles at R = 128, spill, and so does the
    # 32-token shrink with 64-channel steps (255 registers; Triton 3.6 spills). At R = 256 z and c go
    # through memory in 32-wide slices (BK < BR): as whole dot operands they spilled 9-10 KB (shrink) and
    # 0.2-0.6 KB (expand). Untuned for speed: a GPU measurement has to settle BT (tokens per re-read of
    # W_in/W_out from L2) against the number of programs.
    prec = dot_precision(device_type)
    if br >= 256:
        shrink = dict(BT=16, BD=32, BR=br, BC=32, BK=32, DOT_PREC=prec, num_warps=8, num_stages=2)
        expand = dict(BT=16, BD=64, BR=br, BK=32, DOT_PREC=prec, num_warps=8, num_stages=2)
    elif br >= 128:
        shrink = dict(BT=16, BD=64, BR=br, BC=32, BK=br, DOT_PREC=prec, num_warps=8, num_stages=2)
        expand = dict(BT=16, BD=32, BR=br, BK=br, DOT_PREC=prec, num_warps=8, num_stages=2)
    else:
        shrink = dict(BT=32, BD=32, BR=br, BC=16, BK=br, DOT_PREC=prec, num_warps=8, num_stages=2)
        expand = dict(BT=32, BD=64, BR=br, BK=br, DOT_PREC=prec, num_warps=8, num_stages=2)
    expand["D_PER_PROG"] = d if writeback == "norm_cap" else 4 * expand["BD"]
    return {"shrink": shrink, "expand": expand}


def _launch_opts(cfg: dict) -> tuple[dict, dict]:
    """Split a config into the kernel's constexprs and the launch options."""
    consts = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages", "D_PER_PROG")}
    return consts, {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"], **COMPILE_OPTIONS}


def _new(shape, dtype, device) -> torch.Tensor:
    """A buffer for a kernel to fill: NaN on the CPU (the interpreter), so an unwritten element fails
    the tests; uninitialised on a GPU."""
    if torch.device(device).type == "cpu":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def shrink_launch(h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias, need_z: bool, need_hnorm: bool):
    """``h [N, D]`` (any float dtype) -> ``z, k, v, q [N, R]``, ``logit, hnorm [N]`` fp32. ``z`` is
    ``[N, 0]`` unless ``need_z``; ``q`` ``[N, 0]`` without ``w_q``; ``logit`` ``[0]`` without
    ``gate_weight``; ``hnorm`` ``[0]`` unless ``need_hnorm``. Parameters: fp32, contiguous."""
    n, d = h.shape
    r = w_in.shape[1]
    dev = h.device
    has_q, has_gate = w_q is not None, gate_weight is not None
    consts, launch = _launch_opts(fused_kernel_configs(d, r, "", dev.type)["shrink"])
    store_z = need_z or consts["BK"] < consts["BR"]  # wide blocks read z back in slices for k, v, q
    z = _new((n, r if store_z else 0), torch.float32, dev)
    k, v = _new((n, r), torch.float32, dev), _new((n, r), torch.float32, dev)
    q = _new((n, r if has_q else 0), torch.float32, dev)
    logit = _new((n if has_gate else 0,), torch.float32, dev)
    hnorm = _new((n if need_hnorm else 0,), torch.float32, dev)
    _side_path_shrink_kernel[(cdiv(n, consts["BT"]),)](
        h, norm_weight, w_in, w_k, w_v, w_q if has_q else w_k, gate_weight if has_gate else norm_weight,
        gate_bias if has_gate else norm_weight, z if store_z else k, k, v, q if has_q else k,
        logit if has_gate else k, hnorm if need_hnorm else k, n, d, r, RMS_EPS,
        STORE_Z=store_z, HAS_Q=has_q, HAS_GATE=has_gate, HAS_HNORM=need_hnorm, **consts, **launch)
    return (z if need_z else z.new_empty((n, 0))), k, v, q, logit, hnorm


def expand_launch(h, c, w_out, active, gate, logit, hnorm, writeback: str, zero_add_scale: float,
                  norm_cap_ratio: float):
    """``h' = h + a * writeback(c W_out)``: ``h [N, D]``, ``c [N, R]`` fp32, ``w_out [R, D]``,
    ``active [N]`` fp32; ``gate`` ``[D]`` or ``[1]`` (tanh_gate), ``logit [N]`` (token_gate),
    ``hnorm [N]`` (norm_cap), None otherwise. Returns ``h' [N, D]`` in ``h.dtype``."""
    n, d = h.shape
    r = c.shape[1]
    out = _new((n, d), h.dtype, h.device)
    cfg = fused_kernel_configs(d, r, writeback, h.device.type)["expand"]
    consts, launch = _launch_opts(cfg)
    per_prog = cfg["D_PER_PROG"]
    _side_path_expand_kernel[(cdiv(n, consts["BT"]), cdiv(d, per_prog))](
        h, c, w_out, active, gate if gate is not None else c, logit if logit is not None else c,
        hnorm if hnorm is not None else c, out, n, d, r, per_prog, zero_add_scale, norm_cap_ratio,
        WRITEBACK=WRITEBACK_IDS[writeback], GATE_PER_CHANNEL=gate is not None and gate.numel() == d,
        **consts, **launch)
    return out
