"""talan_kernels.launching: the launchers' integer helpers, and when callers go through the
``torch.library`` ops (tracing, dispatch modes) rather than the implementations (plain eager); and the
ops' annotations, as torch 2.4 needs them."""

import inspect
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from talan_kernels.launching import as_fp32, cdiv, dot_tile, next_power_of_2, use_custom_op
from talan_kernels.lora import ops as lora_ops
from talan_kernels.side_path import ops as side_path_ops

triton = pytest.importorskip("triton")


def test_integer_helpers_agree_with_triton():
    for n in [*range(1, 70), 127, 128, 129, 4095, 4096, 4097]:  # n >= 1: sizes (triton gives 0 for 0)
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 64):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
        assert dot_tile(n) == max(16, triton.next_power_of_2(n)), n  # tl.dot takes no dimension under 16


def test_as_fp32_returns_fp32_contiguous_tensors_themselves():
    x = torch.randn(4, 3)
    assert as_fp32(x) is x
    for other in (x.t(), x.double(), x.half()):
        y = as_fp32(other)
        assert y.dtype == torch.float32 and y.is_contiguous() and torch.allclose(y, other.float(), atol=1e-3)
    w = torch.randn(3, requires_grad=True)
    assert as_fp32(w) is w and not as_fp32(w.double()).requires_grad


_OPS_AND_NAMES = [
    (side_path_ops, ("slot_scan_fwd", "slot_scan_bwd", "side_path_decode", "side_path_shrink", "side_path_expand")),
    (lora_ops, ("lora_linear_fwd", "lora_linear_bwd", "dora_weight_norm"))]


@pytest.mark.parametrize("ops, names", _OPS_AND_NAMES)
def test_op_parameters_are_annotated_as_torch_2_4_infers_schemas(ops, names):
    """pyproject's torch floor (2.4) infers a custom op's schema only from typing objects: a string
    annotation (``from __future__ import annotations``) or ``list[Tensor]`` failed every import of talan
    there. This make test's torch accepts both, so the annotations are checked here."""
    for name in names:
        for param, annotation in inspect.signature(ops.resolve(name)).parameters.items():
            assert not isinstance(annotation.annotation, (str, types.GenericAlias)), (name, param)


@pytest.mark.parametrize("ops, names", _OPS_AND_NAMES)
def test_eager_calls_the_implementation_and_a_dispatch_mode_gets_the_op(ops, names):
    assert not use_custom_op()
    for name in names:
        impl = ops.resolve(name)
        assert not isinstance(impl, torch._ops.OpOverloadPacket) and impl.__name__ == name
    with FakeTensorMode():
        assert use_custom_op()
        for name in names:
            assert ops.resolve(name) == getattr(torch.ops.talan, name)


def test_torch_compile_traces_the_op():
    seen = []

    def fn(x):
        seen.append(use_custom_op())  # runs while dynamo traces
        return x + 1

    torch.compile(fn, backend="eager", fullgraph=True)(torch.ones(2))
    assert seen == [True]
    torch._dynamo.reset()


def test_kernels_run_on_a_gpu_only_with_a_triton_whose_compiler_builds_them(monkeypatch):
    """Triton < 3.3 aborts the process compiling some kernels (launching.MIN_GPU_TRITON): there "auto" takes
    the PyTorch path on CUDA tensors and "triton" says why it cannot run. The interpreter runs on any Triton."""
    triton = pytest.importorskip("triton")
    from talan_kernels import launching
    from talan_kernels.lora.interface import _use_triton

    assert launching._installed_triton_version() == triton.__version__  # read without importing it
    reason = launching._gpu_kernels_unavailable("3.2.0")
    assert "Triton 3.2.0 cannot compile" in reason and ">= 3.3" in reason
    assert launching._gpu_kernels_unavailable(None) == "Triton is not installed"
    for version in ("3.3.1", "3.6.0", "3.10.0", "3.4.0+git1234abc"):
        assert launching._gpu_kernels_unavailable(version) is None, version

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(launching, "TRITON_INTERPRETER", False)
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", None)
    assert launching.use_kernels("auto", cuda) and launching.use_kernels("triton", cuda)
    assert not launching.use_kernels("auto", cpu) and not launching.use_kernels("torch", cuda)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        launching.use_kernels("triton", cpu)
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", reason)
    assert not launching.use_kernels("auto", cuda) and not _use_triton("auto", cuda)
    with pytest.raises(RuntimeError, match=r"backend='triton' on CUDA tensors: Triton 3\.2\.0 cannot compile"):
        _use_triton("triton", cuda)
    monkeypatch.setattr(launching, "TRITON_INTERPRETER", True)
    assert launching.use_kernels("triton", cpu) and launching.use_kernels("auto", cuda)


@pytest.mark.parametrize("takes_arch", [True, False])
def test_compile_checks_find_ptxas_with_either_get_ptxas_signature(monkeypatch, takes_arch):
    """Triton 3.3 and >= 3.6 have ``get_ptxas(arch)``; 3.4 and 3.5 ``get_ptxas()``: the compile checks read both
    (they failed every test on 3.4/3.5 with a TypeError before)."""
    compiler = pytest.importorskip("triton.backends.nvidia.compiler")
    from talan_kernels.testing import triton_ptxas

    seen = []

    def with_arch(arch):
        seen.append(arch)
        return types.SimpleNamespace(path=f"/ptxas-for-sm_{arch}")

    def without_arch():
        seen.append(None)
        return types.SimpleNamespace(path="/ptxas")

    monkeypatch.setattr(compiler, "get_ptxas", with_arch if takes_arch else without_arch, raising=False)
    assert triton_ptxas(90) == ("/ptxas-for-sm_90" if takes_arch else "/ptxas")
    assert seen == [90 if takes_arch else None]


def test_auto_runs_a_block_wider_than_the_kernels_take_on_the_pytorch_path(monkeypatch):
    """R > 256 would spill KBs a thread on a GPU: "auto" takes the PyTorch path for such a block,
    "triton" raises a ValueError with the width."""
    from talan_kernels import launching
    from talan_kernels.side_path.interface import use_side_path_kernels

    cuda = torch.device("cuda")  # the decision needs no GPU
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", None)
    assert use_side_path_kernels("auto", cuda, 256) and use_side_path_kernels("triton", cuda, 256)
    assert not use_side_path_kernels("auto", cuda, 257)
    assert not use_side_path_kernels("auto", torch.device("cpu"), 64)
    with pytest.raises(ValueError, match="latent_dim <= 256; got latent_dim=512"):
        use_side_path_kernels("triton", cuda, 512)
