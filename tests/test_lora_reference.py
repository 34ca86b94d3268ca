"""The fused-LoRA reference path (backend "torch", through the custom ops and the autograd
Function) against peft's own eager lora.Linear: outputs and the gradients of x, A, B and the DoRA
magnitude; the hand-written backward against autograd; the low-rank DoRA norm against the explicit
one; the norm cache; input validation. No Triton needed."""

import os

import pytest
import torch
from conftest import record_calls

from talan_kernels.lora import (
    DoraNormCache,
    dora_linear,
    dora_linear_ref,
    dora_weight_norm,
    interface,
    lora_linear,
    lora_linear_ref,
)
from talan_kernels.lora.reference import dora_weight_norm_oracle, dora_weight_norm_ref, lora_bwd_ref, lora_fwd_ref
from talan_kernels.testing import assert_rel_rms

peft = pytest.importorskip("peft")
from lora_layers import layer_params, make_peft_layer, run_fused  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def outputs_and_grads(fn, layer, x, dy):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    grads = torch.autograd.grad(y, [x] + layer_params(layer), dy)
    return [y.detach()] + list(grads)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
@pytest.mark.parametrize("r", [1, 8])
@pytest.mark.parametrize("train", [True, False])
def test_torch_backend_matches_peft_eager(variant, r, train):
    layer = make_peft_layer(37, 29, r, dora=variant == "dora", rslora=variant == "rslora", bias=r == 8, alpha=16)
    layer.train(train)
    x = torch.randn(3, 7, 37)
    dy = torch.randn(3, 7, 29)
    ref = outputs_and_grads(layer, layer, x, dy)
    out = outputs_and_grads(lambda t: run_fused(layer, t, "torch"), layer, x, dy)
    names = ["y", "dx", "dA", "dB", "dm"]
    for o, e, n in zip(out, ref, names):
        assert_rel_rms(o, e, TOL[torch.float32], n)


def test_rslora_scaling_is_alpha_over_sqrt_r():
    layer = make_peft_layer(16, 16, 4, rslora=True, alpha=8)
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)


@pytest.mark.parametrize("dora", [False, True])
def test_handwritten_backward_matches_autograd_fp64(dora):
    torch.manual_seed(1)
    M, N, K, R, s = 11, 13, 17, 5, 0.3
    x = torch.randn(M, K, dtype=torch.float64, requires_grad=True)
    W = torch.randn(N, K, dtype=torch.float64)
    A = torch.randn(R, K, dtype=torch.float64, requires_grad=True)
    B = torch.randn(N, R, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(N, dtype=torch.float64) + 0.5).requires_grad_() if dora else None
    bias = torch.randn(N, dtype=torch.float64)
    y_auto = lora_linear_ref(x, W, A, B, s) * (g if dora else 1) + bias
    dy = torch.randn(M, N, dtype=torch.float64)
    wrt = [x, A, B] + ([g] if dora else [])
    want = torch.autograd.grad(y_auto, wrt, dy)
    y, S, Z = lora_fwd_ref(x.detach(), W, A.detach(), B.detach(), bias, g, s, True, dora)
    assert_rel_rms(y, y_auto, 1e-12, "y")
    dx, dA, dB, dg = lora_bwd_ref(dy, x.detach(), W, A.detach(), B.detach(), S, Z, g, s, True, True, True, dora)
    got = [dx, dA, dB] + ([dg] if dora else [])
    for o, e, n in zip(got, want, ["dx", "dA", "dB", "dg"]):
        assert_rel_rms(o, e, 1e-12, n)


def test_gradcheck_through_custom_ops():
    torch.manual_seed(2)
    kw = dict(dtype=torch.float64)
    x = torch.randn(4, 6, **kw, requires_grad=True)
    W = torch.randn(5, 6, **kw)
    A = torch.randn(3, 6, **kw, requires_grad=True)
    B = torch.randn(5, 3, **kw, requires_grad=True)
    m = (torch.rand(5, **kw) + 1).requires_grad_()
    bias = torch.randn(5, **kw, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: lora_linear(t[0], W, t[1], t[2], 0.7, t[3], backend="torch"),
                                    (x, A, B, bias))
    # DoRA's norm is detached by design: check against a norm that is a constant for gradcheck.
    norm = dora_weight_norm_ref(W, A, B, 0.7)

    def dora_fixed_norm(x_, A_, B_, m_):
        return interface._apply(x_, W, A_, B_, None, m_ / norm, 0.7, False)

    assert torch.autograd.gradcheck(dora_fixed_norm, (x, A, B, m))


def test_low_rank_norm_matches_explicit_norm():
    torch.manual_seed(3)
    W, A, B = torch.randn(40, 24, dtype=torch.float64), torch.randn(8, 24, dtype=torch.float64), \
        torch.randn(40, 8, dtype=torch.float64)
    assert_rel_rms(dora_weight_norm_ref(W, A, B, 0.4), dora_weight_norm_oracle(W, A, B, 0.4), 1e-12, "norm")
    assert_rel_rms(dora_weight_norm(W.float(), A.float(), B.float(), 0.4, backend="torch"),
                   dora_weight_norm_oracle(W, A, B, 0.4), 1e-6, "norm fp32")


def test_dora_reference_matches_peft_in_eval():
    layer = make_peft_layer(20, 12, 4, dora=True, alpha=16).eval()
    x = torch.randn(5, 20)
    base = layer.get_base_layer()
    y = dora_linear_ref(x, base.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                        layer.lora_magnitude_vector["default"].weight, layer.scaling["default"], base.bias)
    assert_rel_rms(y, layer(x), 1e-5, "y")


def test_norm_cache_reuses_until_a_weight_changes(monkeypatch):
    calls = record_calls(monkeypatch, interface, "dora_weight_norm")
    W, A, B = torch.randn(6, 5), torch.randn(2, 5), torch.randn(6, 2)
    cache = DoraNormCache()
    n1 = cache.get(W, A, B, 0.5, "torch")
    assert cache.get(W, A, B, 0.5, "torch") is n1 and len(calls) == 1
    B.add_(1.0)  # an in-place update (as an optimizer step does) bumps the version counter
    n2 = cache.get(W, A, B, 0.5, "torch")
    assert len(calls) == 2
    assert_rel_rms(n2, dora_weight_norm_oracle(W, A, B, 0.5), 1e-5, "recomputed norm")
    cache.get(W, A, B, 0.25, "torch")
    assert len(calls) == 3, "a new scaling must recompute the norm"


def test_bad_inputs_raise_clear_errors():
    x, W, A, B = torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 8), torch.randn(4, 2)
    with pytest.raises(ValueError, match="backend"):
        lora_linear(x, W, A, B, 1.0, backend="cuda")
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 8\]"):
        lora_linear(torch.randn(3, 7), W, A, B, 1.0, backend="torch")
    with pytest.raises(ValueError, match=r"lora_B must be \[4, 2\]"):
        lora_linear(x, W, A, B.t(), 1.0, backend="torch")
    with pytest.raises(ValueError, match=r"lora_A must be \[r, 8\]"):
        lora_linear(x, W, A[:, :7], B, 1.0, backend="torch")
    with pytest.raises(ValueError, match=r"bias must be \[4\]"):
        lora_linear(x, W, A, B, 1.0, torch.randn(5), backend="torch")
    with pytest.raises(ValueError, match=r"magnitude must be \[4\]"):
        dora_linear(x, W, A, B, torch.randn(3), 1.0, backend="torch")
    with pytest.raises(ValueError, match="dtype"):
        lora_linear(x.int(), W, A, B, 1.0, backend="torch")
    with pytest.raises(ValueError, match="x must have shape .* got a 0-d tensor"):
        lora_linear(x[0, 0], W, A, B, 1.0, backend="torch")
    with pytest.raises(ValueError, match=r"weight must be \[out_features, in_features\]; got shape \(4, 8, 1\)"):
        lora_linear(x, W[..., None], A, B, 1.0, backend="torch")
    with pytest.raises(ValueError, match="rank r must be >= 1"):
        lora_linear(x, W, A[:0], B[:, :0], 1.0, backend="torch")
    with pytest.raises(ValueError, match="lora_A must be on cpu like x; got meta"):
        lora_linear(x, W, A.to("meta"), B, 1.0, backend="torch")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the non-interpreter error")
def test_triton_backend_on_cpu_without_interpreter_raises():
    x, W, A, B = torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 8), torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        lora_linear(x, W, A, B, 1.0, backend="triton")


def test_auto_backend_on_cpu_uses_reference():
    x, W, A, B = torch.randn(3, 8), torch.randn(4, 8), torch.randn(2, 8), torch.randn(4, 2)
    assert torch.equal(lora_linear(x, W, A, B, 0.5, backend="auto"), lora_linear(x, W, A, B, 0.5, backend="torch"))
