"""The one-token decode step of the TALAN side path: one kernel launch per block and token.

``_side_path_decode_kernel`` does all three stages for ``T = 1``: RMSNorm, the projections, the
``(S, N)`` update, the mixer and the writeback residual add. In PyTorch the same step is about 30
small launches per block, each one a tiny GEMV, so at decode (launch-bound) fusing them is what
keeps the overhead near the 1.01x target of SPEC §5.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from ..launching import COMPILE_OPTIONS, as_fp32, cdiv, dot_tile, next_power_of_2, overridden
from . import ops  # ops.resolve: the registered op while tracing, its implementation in eager mode
from .kernels import _side_path_decode_kernel
from .reference import RMS_EPS

MIXER_IDS = {"attn": 0, "linear": 1, "mlp": 2, "glu": 3}
WRITEBACK_IDS = {"zero_add": 0, "tanh_gate": 1, "token_gate": 2, "norm_cap": 3}
CORE_PARAMS = ("norm_weight", "w_in", "w_k", "w_v", "slot_queries", "w_out")
MIXER_PARAMS = {"attn": ("w_q",), "linear": ("mix_weights",), "mlp": ("w_q", "w_1", "w_2"), "glu": ("w_q", "w_glu")}
WRITEBACK_PARAMS = {"zero_add": (), "tanh_gate": ("gate",), "token_gate": ("gate_weight", "gate_bias"),
                    "norm_cap": ()}


# The decode kernel's loops over D read W_in and W_out ([D, R] fp32, 256 KB each at D = 1024, R = 64) from one
# program per sequence, so at batch 1 one SM streams them, a [BD, BR] tile (16 KB) per iteration: plain loops
# keep one tile in flight (latency-bound: ~16 iterations x ~1 us a pass at D = 1024, a prediction), D_STAGES = s
# keeps s (cp.async into shared memory, 16 KB a stage). Splitting the last pass (u = c W_out, h' written) over
# p programs a sequence puts p SMs on W_out, each recomputing the first pass and the state (the launch stays one).
# Which is faster is for a GPU run to say (benchmarks/bench_side_path.py, providers triton_pipelined,
# triton_split, triton_split_pipelined); the defaults stay one plain program until then.
DECODE_STAGES = (1, 2, 3, 4)
_launch_choices = {"stages": 1, "programs": 1}


@contextlib.contextmanager
def decode_pipeline_stages(stages: int) -> Iterator[None]:
    """Within the block, launch the decode kernel on CUDA tensors with its loops over D software-pipelined
    ``stages`` deep (1: plain loops, the default). Benchmarks use it to time the alternatives."""
    if stages not in DECODE_STAGES:
        raise ValueError(f"stages must be one of {DECODE_STAGES}; got {stages!r}")
    with overridden(_launch_choices, "stages", stages):
        yield


@contextlib.contextmanager
def decode_programs_per_sequence(programs: int) -> Iterator[None]:
    """Within the block, launch the decode kernel on CUDA tensors with its last pass over D split between
    ``programs`` programs a sequence (1: one program, the default). Benchmarks use it to time the alternatives."""
    if not (isinstance(programs, int) and 1 <= programs <= 64):
        raise ValueError(f"programs must be an int in [1, 64]; got {programs!r}")
    with overridden(_launch_choices, "programs", programs):
        yield


def decode_config(d: int, m: int, r: int, device_type: str = "cuda") -> dict:
    """Meta-parameters of the decode kernel (the compile tests read them). [BD, BR] tiles of
    W_in/W_out and [BM, BR] tiles of the state of <= 4096 elements and 8 warps keep every
    mixer/writeback free of register spills on sm_80/sm_90 up to R = 128 (4 warps, or 8192-element
    tiles, spill at R = 64 on sm_80; a whole [128, 128] state tile spills 600 B, [256, 16] 20 B).
    The kernel walks the slots BM <= 64 at a time, so any M fits. Above R = 64 the r x r matvecs
    read BK = 32 rows of their weights at a time (whole [128, 128] tiles spill with Triton 3.6's
    ptxas). On the CPU BK = BM = 16, so the interpreter tests run both loops.
    On the GPU ``maxnreg`` allows every register 8 warps can have: left to itself ptxas stops some
    mixer/writeback pairs at 128 and spills (linear + norm_cap on sm_80, linear + token_gate with 256
    slots on sm_90; Triton 3.9). One program per sequence runs, so a second resident block per SM
    that 128 would allow buys nothing.
    ``D_STAGES``: see ``decode_pipeline_stages``; 1 (plain loops) until a GPU run has timed the others.
    ``D_PER_PROG``: channels of h' a program writes (0: all D), from ``decode_programs_per_sequence``."""
    br = dot_tile(r)
    on_gpu = device_type == "cuda"
    bk = (br if br <= 64 else 32) if on_gpu else 16
    bm = min(dot_tile(m), 64, 4096 // br) if on_gpu else 16
    num_warps = 8
    bd = max(16, min(128, 4096 // br, next_power_of_2(d)))
    programs = _launch_choices["programs"] if on_gpu else 1
    per_prog = cdiv(cdiv(d, programs), bd) * bd if programs > 1 else 0  # whole BD blocks a program
    config = dict(BD=bd, BM=bm, SLOT_LOOP=m > bm, BR=br, BK=bk, num_warps=num_warps,
                  D_STAGES=_launch_choices["stages"] if on_gpu else 1, D_PER_PROG=per_prog)
    if on_gpu and torch.version.hip is None:  # a ptxas option: Triton's AMD backend has no maxnreg
        config["maxnreg"] = min(255, 65536 // (32 * num_warps))  # the register file split over the block
    return config


def decode_launch(h, core, mixer_params, writeback_params, active, resets, s0, n0, mixer: str, writeback: str,
                  cap: float, zero_add_scale: float, norm_cap_ratio: float):
    """Launch the decode kernel: ``h [B, D]`` -> ``(h' [B, D] in h.dtype, S [B, M], N [B, M, R])``.
    ``core``/``mixer_params``/``writeback_params`` are fp32 contiguous tensors in the orders of
    ``CORE_PARAMS``, ``MIXER_PARAMS[mixer]`` and ``WRITEBACK_PARAMS[writeback]``."""
    from .triton_path import new_output

    b, d = h.shape
    m, r = core[4].shape
    out = torch.full_like(h, float("nan")) if h.device.type == "cpu" else torch.empty_like(h)
    s_out, n_out = new_output((b, m), h.device), new_output((b, m, r), h.device)
    mix = list(mixer_params) + [h] * (3 - len(mixer_params))  # unused pointers: never read
    wb = list(writeback_params) + [h] * (2 - len(writeback_params))
    has_state = s0 is not None
    config = decode_config(d, m, r, h.device.type)
    _side_path_decode_kernel[(b, cdiv(d, config["D_PER_PROG"]) if config["D_PER_PROG"] else 1)](
        h, out, *core, *mix, *wb, active, resets if resets is not None else active,
        s0 if has_state else h, n0 if has_state else h, s_out, n_out,
        d, m, r, 1.0 / math.sqrt(r), cap, RMS_EPS, zero_add_scale, norm_cap_ratio,
        MIXER=MIXER_IDS[mixer], WRITEBACK=WRITEBACK_IDS[writeback],
        GATE_PER_CHANNEL=writeback == "tanh_gate" and writeback_params[0].numel() == d,
        HAS_RESETS=resets is not None, HAS_STATE=has_state, **config, **COMPILE_OPTIONS)
    return out, s_out, n_out


def side_path_decode(h, params, active=None, resets=None, state=None, *, mixer="attn", writeback="tanh_gate",
                     cap=15.0, zero_add_scale=1.0, norm_cap_ratio=1e-2):
    """One token per sequence: ``h [B, 1, D]``, ``active``/``resets`` ``[B, 1]``, ``state``
    ``(S [B, M], N [B, M, R])`` fp32 or None. Returns ``(h' [B, 1, D], (S, N))``. No autograd."""
    b, t, d = h.shape
    if t != 1:
        raise ValueError(f"side_path_decode takes one token per sequence, h [B, 1, D]; got T={t}")

    def f32(names):
        return [as_fp32(params[name]) for name in names]

    act = torch.ones(b, device=h.device) if active is None else as_fp32(active.reshape(b))
    res = None if resets is None else resets.reshape(b).to(torch.int8).contiguous()
    s0, n0 = (None, None) if state is None else (as_fp32(state[0]), as_fp32(state[1]))
    out, s, n = ops.resolve("side_path_decode")(
        h.detach().reshape(b, d).contiguous(), f32(CORE_PARAMS), f32(MIXER_PARAMS[mixer]),
        f32(WRITEBACK_PARAMS[writeback]), act, res, s0, n0, mixer, writeback, float(cap), float(zero_add_scale),
        float(norm_cap_ratio))
    return out.view(b, 1, d), (s, n)
