"""The fused-LoRA ``torch.library`` ops under ``torch.library.opcheck``: schema, autograd registration and,
above all, that each fake implementation (what torch.compile traces with) gives every output the shape and
dtype the real one returns, for every combination of the optional inputs and the outputs asked for. Found
wrong before: an unrequested ``dg`` came back empty in ``dy``'s dtype (bf16, fp16) where the fake said fp32,
and fp64 inputs got an fp64 ``S`` and ``dg`` where it said fp32.

The reference path (``use_triton=False``) runs in the CPU suite, the interpreted kernels in the interpreter
suite (fp32 and fp16: the kernel path refuses fp64 and the interpreter computes bf16 wrongly)."""

import itertools
import os

import pytest
import torch

from talan_kernels.lora import ops as lora_ops

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
M, K, N, R = 5, 24, 20, 4
FLAGS = [False, True]


def _operands(dtype):
    g = torch.Generator().manual_seed(0)
    x, weight, lora_a, lora_b, bias, dy = (torch.randn(*shape, generator=g).to(dtype)
                                            for shape in ((M, K), (N, K), (R, K), (N, R), (N,), (M, N)))
    col_scale = torch.rand(N, generator=g) + 0.5  # DoRA's column scale is fp32 whatever the layer's dtype
    return x, weight, lora_a, lora_b, bias, col_scale, dy


def _opcheck(op, args, every_check):
    # Every check where all optional inputs are given and all outputs asked for; elsewhere the schema and the
    # fake-vs-real comparison only (the aot_dispatch checks, which compile, take most of opcheck's time).
    utils = {} if every_check else {"test_utils": ("test_schema", "test_faketensor")}
    torch.library.opcheck(op, args, **utils)


def _check_every_combination(dtype, use_triton):
    x, weight, lora_a, lora_b, bias, col_scale, dy = _operands(dtype)
    for flags in itertools.product(FLAGS, repeat=4):
        save_s, save_z, with_bias, with_scale = flags
        _opcheck(torch.ops.talan.lora_linear_fwd.default, (
            x, weight, lora_a, lora_b, bias if with_bias else None, col_scale if with_scale else None, 0.5,
            save_s, save_z, use_triton), every_check=all(flags))
    _, s, z = lora_ops.lora_linear_fwd(x, weight, lora_a, lora_b, None, col_scale, 0.5, True, True, use_triton)
    for flags in itertools.product(FLAGS, repeat=5):
        need_dx, need_da, need_db, need_dscale, with_scale = flags
        _opcheck(torch.ops.talan.lora_linear_bwd.default, (
            dy, x, weight, lora_a, lora_b, s, z, col_scale if with_scale else None, 0.5,
            need_dx, need_da, need_db, need_dscale, use_triton), every_check=all(flags))
    _opcheck(torch.ops.talan.dora_weight_norm.default, (weight, lora_a, lora_b, 0.5, use_triton), every_check=True)


@pytest.mark.skipif(INTERPRETER, reason="the reference path; the interpreter suite checks the kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_reference_ops_match_their_fakes(dtype):
    _check_every_combination(dtype, use_triton=False)


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERPRETER, reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_kernel_ops_match_their_fakes(dtype):
    pytest.importorskip("triton")
    _check_every_combination(dtype, use_triton=True)
