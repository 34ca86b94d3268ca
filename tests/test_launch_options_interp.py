"""Every Triton kernel of talan_kernels is launched with ``launching.COMPILE_OPTIONS`` (FMA contraction on,
the setting the configurations were tuned and compile-tested with), whatever default the installed Triton
has. Under TRITON_INTERPRET=1 the launches are recorded in the interpreter; the options only take
effect in a GPU compile, but a launch site that drops them is caught here, on the CPU."""

import os

import pytest
import torch
from conftest import record_calls

from talan_kernels.launching import COMPILE_OPTIONS
from talan_kernels.testing import random_side_path_inputs, random_side_path_params

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"),
]


def _kernels() -> set[str]:
    """The names of every launchable kernel (``@triton.jit`` objects named ``*_kernel``)."""
    from talan_kernels.lora import kernels as lora_kernels
    from talan_kernels.side_path import fused_kernels, kernels

    names = set()
    for module in (lora_kernels, kernels, fused_kernels):
        for name, obj in vars(module).items():
            if name.endswith("_kernel") and callable(getattr(obj, "fn", None)):  # JITFunction, InterpretedFunction
                names.add(name)
    return names


def _run_every_kernel():
    from talan_kernels.lora import dora_linear, lora_linear
    from talan_kernels.lora.interface import base_linear_triton
    from talan_kernels.side_path.decode import side_path_decode
    from talan_kernels.side_path.triton_path import side_path_triton

    # side path: prefill with gradients (shrink, chunk scan, expand; forward and backward), then a decode step
    b, t, d, m, r = 2, 20, 32, 3, 16
    params = {k: v.requires_grad_() for k, v in random_side_path_params(d, r, m, "attn", "tanh_gate").items()}
    h, active, resets, _ = random_side_path_inputs(b, t, d, m, r, pad=2, reset_at=(5,))
    h.requires_grad_()
    out, state = side_path_triton(h, params, active, resets)
    out.sum().backward()
    with torch.no_grad():
        side_path_decode(h[:, -1:].detach(), params, active[:, -1:], state=state)

    # LoRA and DoRA with every gradient (forward, dx, weight gradients, the DoRA norm), and the base GEMM
    x = torch.randn(5, 24, requires_grad=True)
    weight, bias = torch.randn(20, 24), torch.randn(20)
    lora_A, lora_B = torch.randn(8, 24, requires_grad=True), torch.randn(20, 8, requires_grad=True)
    magnitude = torch.rand(20, requires_grad=True)
    lora_linear(x, weight, lora_A, lora_B, 0.5, bias, backend="triton").sum().backward()
    dora_linear(x, weight, lora_A, lora_B, magnitude, 0.5, bias, backend="triton").sum().backward()
    base_linear_triton(x.detach(), weight, bias)


def test_every_kernel_is_launched_with_the_compile_options(monkeypatch):
    # Every interpreted launch, from Triton 3.0 on, ends in a GridExecutor call with the launch's keywords.
    from triton.runtime.interpreter import GridExecutor

    launches = record_calls(monkeypatch, GridExecutor, "__call__", lambda executor, *args, **kwargs: (
        executor.fn.__name__, {k: kwargs.get(k) for k in COMPILE_OPTIONS}))
    _run_every_kernel()
    launched = {name for name, _ in launches}
    assert launched == _kernels(), f"not launched here: {sorted(_kernels() - launched)}"
    wrong = sorted({name for name, options in launches if options != COMPILE_OPTIONS})
    assert not wrong, f"launched without {COMPILE_OPTIONS}: {wrong}"
