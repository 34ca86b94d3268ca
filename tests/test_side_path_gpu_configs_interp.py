"""The side-path kernels at their GPU launch configurations, run by the interpreter.

The launchers pick other tiles on CUDA tensors than on the CPU (``fused_kernel_configs``: 32- or
16-token tiles, 32/64-channel steps, 16/32-column k/v/q tiles, 4 x BD channels per expand program;
``decode_config``: whole r x r tiles up to R = 64, 32-row steps above). The other interpreter tests
run the CPU tiles; here the launchers are handed the CUDA ones (with IEEE products: the interpreter
computes fp32 anyway), so the masking and the loop bounds of the tiles a GPU runs are checked
before any GPU run (``chunk_kernel_configs`` too). Shapes: D = 300 is not a multiple of any channel step or
expand program; R = 40 pads to 64 and R = 128 takes the decode kernel's row loop; M = 40 at R = 128 its loop
over 32-slot blocks; R = 200 pads to 256, where the products over R read their operands in slices.
"""

import pytest
import torch
from test_side_path_kernels_interp import TOL, ZERO_ADD_SCALE, _check_every_gradient, needs_interpreter

from talan_kernels.side_path import side_path, side_path_ref
from talan_kernels.side_path.fused import fused_kernel_configs
from talan_kernels.side_path.triton_path import side_path_triton
from talan_kernels.testing import assert_rel_rms
from talan_kernels.testing import random_side_path_inputs as make_inputs
from talan_kernels.testing import random_side_path_params as make_params

pytestmark = [pytest.mark.interpreter, needs_interpreter]


@pytest.fixture
def cuda_tiles(monkeypatch):
    """The launchers' CUDA configurations for CPU tensors; returns the configs they were handed."""
    from talan_kernels.side_path import decode, fused, triton_path

    fused_configs, decode_config = fused.fused_kernel_configs, decode.decode_config
    chunk_configs = triton_path.chunk_kernel_configs
    handed = []

    def fused_on_cuda(d, r, writeback, device_type):
        cfg = fused_configs(d, r, writeback, "cuda")
        handed.append(cfg)
        return {stage: {**c, "DOT_PREC": "ieee"} for stage, c in cfg.items()}

    def chunk_on_cuda(r, m, chunk_size, device_type):
        cfg = chunk_configs(r, m, chunk_size, "cuda")
        handed.append(cfg)
        return {stage: {**c, "DOT_PREC": "ieee"} if "DOT_PREC" in c else c for stage, c in cfg.items()}

    def decode_on_cuda(d, m, r, device_type="cuda"):
        handed.append(decode_config(d, m, r, "cuda"))
        return handed[-1]

    monkeypatch.setattr(fused, "fused_kernel_configs", fused_on_cuda)
    monkeypatch.setattr(triton_path, "chunk_kernel_configs", chunk_on_cuda)
    monkeypatch.setattr(decode, "decode_config", decode_on_cuda)
    return handed


# More slots than one decode block holds at R = 128 (32), so the decode kernel runs its slot loop.
MANY_SLOTS = 40
# The widest tiles: R = 200 pads to 256, whose products over R read 32- and 16-wide slices, the last partial.
WIDE = 200
# (mixer, writeback, B, T, D, M, R)
CASES = [("attn", "tanh_gate", 2, 45, 300, 7, 40), ("glu", "token_gate", 2, 37, 300, 5, 128),
         ("mlp", "norm_cap", 1, 33, 300, 4, 64), ("linear", "zero_add", 2, 20, 300, 3, 128),
         ("attn", "tanh_gate", 1, 20, 300, MANY_SLOTS, 128), ("attn", "norm_cap", 2, 21, 300, 3, WIDE)]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-M{c[-2]}-R{c[-1]}" for c in CASES])
def test_prefill_and_decode_on_gpu_tiles_match_the_reference(case, cuda_tiles):
    _check_prefill_and_decode(case, cuda_tiles)


def _check_prefill_and_decode(case, cuda_tiles) -> list[dict]:
    """Prefill then one-token steps against the reference; returns the decode configs the launches got."""
    mixer, writeback, b, t, d, m, r = case
    prefill = t - 3
    params = make_params(d, r, m, mixer, writeback, seed=11)
    h, active, resets, state = make_inputs(b, t, d, m, r, pad=5, reset_at=(3, prefill + 1), seed=12)
    kw = dict(mixer=mixer, writeback=writeback, norm_cap_ratio=0.05, zero_add_scale=ZERO_ADD_SCALE)
    with torch.no_grad():
        ref, (s_ref, n_ref) = side_path_ref(h, params, active, resets, state, **kw)
        out, step_state = side_path(h[:, :prefill], params, active[:, :prefill], resets[:, :prefill], state,
                                    backend="triton", **kw)
        outs = [out]
        for i in range(prefill, t):
            step, step_state = side_path(h[:, i:i + 1], params, active[:, i:i + 1], resets[:, i:i + 1], step_state,
                                         backend="triton", **kw)
            outs.append(step)
    assert_rel_rms(torch.cat(outs, 1) - h, ref - h, TOL, "perturbation")
    assert_rel_rms(step_state[0], s_ref, TOL, "S")
    assert_rel_rms(step_state[1], n_ref, TOL, "N")
    shrink_tiles = [c["shrink"] for c in cuda_tiles if "shrink" in c]
    assert shrink_tiles and all(c == fused_kernel_configs(d, r, writeback, "cuda")["shrink"] for c in shrink_tiles), \
        "the prefill must have run on the CUDA shrink tiles"
    assert (shrink_tiles[0]["BK"] < shrink_tiles[0]["BR"]) == (r == WIDE), "z read back in slices at R = 256 only"
    decode_tiles = [c for c in cuda_tiles if "SLOT_LOOP" in c]
    assert [c["BK"] for c in decode_tiles] == [32 if r >= 128 else 64] * 3, "one decode launch a step"
    if m == MANY_SLOTS:
        assert all(c["SLOT_LOOP"] for c in decode_tiles), "the case must run the decode kernel's slot loop"
    return decode_tiles


# (stages, programs a sequence): the benchmarks' three variants, split 3 ways so that D = 300 ends in a partial share
STAGES_PROGRAMS = [(3, 1), (1, 3), (3, 3)]


@pytest.mark.parametrize("stages,programs", STAGES_PROGRAMS, ids=[f"stages{s}-programs{p}" for s, p in STAGES_PROGRAMS])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4]],
                         ids=["glu-token_gate", "mlp-norm_cap", "attn-slot-loop"])
def test_decode_variants_on_gpu_tiles_match_the_reference(case, stages, programs, cuda_tiles):
    """The benchmarks' triton_pipelined / triton_split / triton_split_pipelined providers: the decode kernel's
    loops over D as tl.range(num_stages=3); its last pass split between 3 programs a sequence (D = 300: two
    whole 128-channel shares and one of 44; only program 0 stores the state, which the memory check holds
    every other program to)."""
    from talan_kernels.side_path.decode import decode_pipeline_stages, decode_programs_per_sequence

    with decode_pipeline_stages(stages), decode_programs_per_sequence(programs):
        decode_tiles = _check_prefill_and_decode(case, cuda_tiles)
    assert [c["D_STAGES"] for c in decode_tiles] == [stages] * 3
    assert [c["D_PER_PROG"] for c in decode_tiles] == [128 if programs == 3 else 0] * 3


@pytest.mark.parametrize("mixer,writeback,r", [("attn", "norm_cap", 40), ("glu", "tanh_gate", 128),
                                               ("linear", "token_gate", WIDE)])
def test_training_forward_and_gradients_on_gpu_tiles_match_the_reference(mixer, writeback, r, cuda_tiles):
    """The training path's forward runs the same shrink/expand kernels (fused_train.py), the backward the
    chunk kernels at their CUDA tiles (at R = 256 the state and carry kernels' products over R in slices)."""
    d, m = 300, 5
    h, active, _, _ = make_inputs(2, 35, d, m, r, pad=4, reset_at=())
    h.requires_grad_()
    params = {k: v.requires_grad_() for k, v in make_params(d, r, m, mixer, writeback, seed=13).items()}
    kw = dict(mixer=mixer, writeback=writeback, norm_cap_ratio=0.05, zero_add_scale=ZERO_ADD_SCALE)
    out, _ = side_path_triton(h, params, active, **kw)
    ref, _ = side_path_ref(h, params, active, **kw)
    assert_rel_rms(out, ref, TOL, "h'")
    _check_every_gradient(out, ref, h, params)
    assert any("expand" in c for c in cuda_tiles), "the training forward must have run on the CUDA tiles"
    carry_tiles = [c["carry_bwd"] for c in cuda_tiles if "carry_bwd" in c]
    assert carry_tiles and (carry_tiles[-1]["BK"] < carry_tiles[-1]["BR"]) == (r == WIDE)
