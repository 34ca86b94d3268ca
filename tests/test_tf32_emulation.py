"""benchmarks/tf32_emulation.py: its TF32 rounding and tensor-core product emulation, and the
accuracy finding it records (3xTF32 within the GPU parity test's bound, one-pass TF32 far outside it
for an fp32 residual stream), at tiny shapes."""

import pytest
import torch

from benchmarks.tf32_emulation import TensorCoreProducts, emulated_product, errors, round_to_tf32


def test_round_to_tf32_keeps_ten_mantissa_bits_to_nearest():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 1e3
    t = round_to_tf32(x)
    assert (t.view(torch.int32) & 0x1FFF == 0).all(), "the 13 low mantissa bits must be zero"
    assert ((t - x).abs() <= x.abs() * 2.0 ** -11).all(), "round to nearest: at most half a TF32 ulp"
    assert torch.equal(round_to_tf32(t), t)
    assert round_to_tf32(torch.tensor([1.0 + 2.0 ** -11])).item() == 1.0 + 2.0 ** -10  # a tie rounds away


def test_three_products_recover_fp32_accuracy_and_one_does_not():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 48, generator=g)
    exact = a.double() @ b.double()

    def err(y):
        return ((y.double() - exact).norm() / exact.norm()).item()

    assert err(emulated_product(a, b, torch.mm, "tf32")) > 1e-4
    assert err(emulated_product(a, b, torch.mm, "tf32x3")) < 1e-6
    assert err(emulated_product(a, b, torch.mm, "tf32x3")) < 3 * err(a @ b) + 1e-7


def test_the_mode_emulates_every_product_it_meets_or_refuses():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with TensorCoreProducts("tf32"):
        got = a @ b
        with pytest.raises(NotImplementedError, match="addmv"):
            torch.addmv(torch.zeros(8), a, torch.randn(16))
    assert torch.equal(got, round_to_tf32(a) @ round_to_tf32(b))
    with pytest.raises(ValueError, match="precision"):
        TensorCoreProducts("fp16")


def test_fp32_stream_within_the_bound_with_3xtf32_and_outside_it_with_tf32():
    rows = errors("attn", "tanh_gate", torch.float32, quick=True)["rows"]
    assert len(rows) >= 10
    assert all(r["tf32x3"] <= r["bound"] for r in rows), rows
    assert max(r["tf32"] / r["bound"] for r in rows) > 10, rows
