"""The fused LoRA / DoRA kernels on a CUDA device in bf16 (tensor-core products on bf16 tiles):
outputs and the gradients of x, A, B (and m for DoRA) against an fp64 reference, each with an
error at most 2x PyTorch's own bf16 error (peft's eager layer in bf16 against the same fp64
reference) plus a small floor; fp32 inputs (IEEE products) against peft's fp32 eager at 1e-5.
Skipped without CUDA."""

import copy

import pytest
import torch

from talan_kernels.lora import interface
from talan_kernels.testing import assert_rel_rms, rel_rms

peft = pytest.importorskip("peft")
from lora_layers import layer_params, make_peft_layer, run_fused  # noqa: E402

pytest.importorskip("triton")

NAMES = ["y", "dx", "dA", "dB", "dm"]


def _out_grads(fn, layer, x, dy):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    return [y.detach()] + list(torch.autograd.grad(y, [x] + layer_params(layer), dy))


def check_low_precision(layer, x, dy, dtype, adapter_dtype, backend="triton"):
    """Kernel error <= 2 x PyTorch's own error in ``dtype`` + eps/8, every output and gradient, all
    against peft's layer in fp64. ``adapter_dtype`` is the dtype of A, B (and m): ``dtype`` (peft
    then rounds S and dS as the kernels do) or fp32 (peft's default ``autocast_adapter_dtype``,
    where the kernels still round the adapter operands to ``dtype`` for the tensor cores)."""
    ref_layer = copy.deepcopy(layer).double()
    want = _out_grads(ref_layer, ref_layer, x.double(), dy.double())
    torch_layer = copy.deepcopy(layer).to(dtype)
    torch_err = [rel_rms(o, e) for o, e in zip(_out_grads(torch_layer, torch_layer, x.to(dtype), dy.to(dtype)), want)]
    ours = copy.deepcopy(layer).to(dtype)
    for p in layer_params(ours):
        p.data = p.data.to(adapter_dtype)
    got = _out_grads(lambda t: run_fused(ours, t, backend), ours, x.to(dtype), dy.to(dtype))
    floor = torch.finfo(dtype).eps / 8
    for o, e, t_err, n in zip(got, want, torch_err, NAMES):
        assert_rel_rms(o, e, 2 * t_err + floor, f"{n} (PyTorch's own {dtype} error {t_err:.2e})")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# (M, N, K, r): a prefill shape off the 128-tile grid, a decode shape, and a wide rank.
SHAPES = [(300, 384, 520, 16), (5, 384, 520, 16), (257, 320, 448, 64)]


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("M,N,K,r", SHAPES)
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("adapter_dtype", [torch.bfloat16, torch.float32], ids=["bf16-adapters", "fp32-adapters"])
def test_bf16_kernels_within_twice_pytorch_bf16_error(M, N, K, r, dora, adapter_dtype, monkeypatch):
    monkeypatch.setattr(interface, "POISON_OUTPUTS", True)
    layer = make_peft_layer(K, N, r, bias=True, dora=dora, device="cuda", seed=M).train()
    x = torch.randn(M, K, device="cuda")
    dy = torch.randn(M, N, device="cuda")
    check_low_precision(layer, x, dy, torch.bfloat16, adapter_dtype)


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fp32_kernels_match_peft_fp32(dora, monkeypatch):
    # fp32 inputs take IEEE fp32 products (no TF32), as PyTorch's default fp32 matmul does.
    monkeypatch.setattr(interface, "POISON_OUTPUTS", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    layer = make_peft_layer(520, 384, 16, bias=True, dora=dora, device="cuda", seed=3).train()
    x, dy = torch.randn(300, 520, device="cuda"), torch.randn(300, 384, device="cuda")
    want = _out_grads(layer, layer, x, dy)
    got = _out_grads(lambda t: run_fused(layer, t, "triton"), layer, x, dy)
    for o, e, n in zip(got, want, NAMES):
        assert_rel_rms(o, e, 1e-5, n)
