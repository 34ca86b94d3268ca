"""3xTF32 or one-pass TF32 for the side-path kernels' fp32 dot products: the accuracy half of the
choice, on a CPU (the speed half needs a GPU: ``bench_side_path.py``'s ``triton_tf32`` provider).

Every matrix product of the PyTorch reference (forward and backward: aten ``mm``/``bmm``/``addmm``/``mv``)
is replaced by its emulation on tensor-core inputs: operands rounded to TF32 (10 mantissa bits,
round to nearest, as ``cvt.rna.tf32.f32``), products exact, sums in fp32; 3xTF32 adds the two
cross terms of the operands' TF32 remainders (``a_hi b_hi + a_hi b_lo + a_lo b_hi``). The errors of
the outputs, the final state and every gradient against an fp64 reference are then compared with the
bound of the GPU parity test (``test_gpu_kernels_error_vs_fp64_within_twice_torchs_own``: 2x the
IEEE fp32 reference's own error + 1e-6), at that test's shapes. It over-counts: on a GPU only the
Triton kernels' dots take the chosen precision (the training path's r-wide GEMMs run in PyTorch).

    python -m benchmarks.tf32_emulation [--dtype float32|bfloat16] [--quick]
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from talan_kernels.side_path import side_path_ref
from talan_kernels.testing import random_side_path_inputs, random_side_path_params, rel_rms

ATEN = torch.ops.aten
CASES = [("attn", "tanh_gate"), ("linear", "zero_add"), ("mlp", "token_gate"), ("glu", "norm_cap")]


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> the nearest TF32 value (ties away from zero), kept in fp32. Finite inputs only."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def emulated_product(a: torch.Tensor, b: torch.Tensor, product, precision: str) -> torch.Tensor:
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        return product(a, b)
    a_hi, b_hi = round_to_tf32(a), round_to_tf32(b)
    if precision == "tf32":
        return product(a_hi, b_hi)
    a_lo, b_lo = round_to_tf32(a - a_hi), round_to_tf32(b - b_hi)
    return product(a_lo, b_hi) + product(a_hi, b_lo) + product(a_hi, b_hi)


class TensorCoreProducts(TorchDispatchMode):
    """Inside it, fp32 ``mm``/``bmm``/``addmm``/``mv`` take ``precision`` ("tf32" or "tf32x3") numerics."""

    def __init__(self, precision: str):
        super().__init__()
        if precision not in ("tf32", "tf32x3"):
            raise ValueError(f"precision must be 'tf32' or 'tf32x3', got {precision!r}")
        self.precision = precision

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (ATEN.mm.default, ATEN.bmm.default) and not kwargs:
            return emulated_product(args[0], args[1], func, self.precision)
        if func is ATEN.addmm.default and not kwargs:
            return args[0] + emulated_product(args[1], args[2], ATEN.mm.default, self.precision)
        if func is ATEN.mv.default and not kwargs:
            return emulated_product(args[0], args[1].unsqueeze(1), ATEN.mm.default, self.precision).squeeze(1)
        if func in (ATEN.baddbmm.default, ATEN.addbmm.default, ATEN.addmv.default, ATEN.dot.default):
            raise NotImplementedError(f"{func} is not emulated")  # never silently left in IEEE fp32
        return func(*args, **kwargs)


def _inputs(mixer: str, writeback: str, quick: bool, seed: int = 0):
    b, t, d, m, r = (2, 40, 32, 4, 16) if quick else (3, 300, 256, 16, 64)  # the GPU parity test's shapes
    params = random_side_path_params(d, r, m, mixer, writeback, seed=seed)
    h, active, resets, state = random_side_path_inputs(b, t, d, m, r, pad=5 if quick else 17,
                                                       reset_at=(5, 30 if quick else 130))
    return h, params, active, resets, state


def errors(mixer: str, writeback: str, dtype: torch.dtype, quick: bool = False) -> dict[str, list[dict]]:
    """Per tensor (h', S, N, dh, d<param>): the error against fp64 of the IEEE fp32 reference and of
    each emulated precision, and the parity test's bound."""
    h, params, active, resets, state = _inputs(mixer, writeback, quick)
    h = h.to(dtype)
    weight = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(mixer=mixer, writeback=writeback, grad_scale=0.7)

    def run(hx, px, precision=None):
        hx = hx.detach().requires_grad_()
        px = {k: v.detach().requires_grad_() for k, v in px.items()}
        st = tuple(s.to(torch.float64) if hx.dtype == torch.float64 else s for s in state)
        mode = TensorCoreProducts(precision) if precision else None
        with mode if mode else torch.enable_grad():
            out, final = side_path_ref(hx, px, active, resets, st, **kw)
            grads = torch.autograd.grad((out.double() * weight).sum(), [hx, *px.values()])
        return [out, *final, *grads]

    gold = run(h.double(), {k: v.double() for k, v in params.items()})
    ieee = run(h, params)
    emulated = {p: run(h, params, p) for p in ("tf32x3", "tf32")}
    names = ["h'", "S", "N", "dh", *(f"d{n}" for n in params)]
    table = []
    for i, name in enumerate(names):
        own = rel_rms(ieee[i], gold[i])
        row = {"tensor": name, "ieee": own, "bound": 2 * own + 1e-6}
        row.update({p: rel_rms(e[i], gold[i]) for p, e in emulated.items()})
        table.append(row)
    return {"rows": table}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a plumbing check)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    print(f"residual stream {args.dtype}; error vs fp64 as a multiple of the GPU parity test's bound "
          "(> 1 fails); worst tensor of each case")
    print("| mixer, writeback | 3xTF32 | worst tensor | one-pass TF32 | worst tensor |")
    print("|---|---:|---|---:|---|")
    for mixer, writeback in CASES:
        rows = errors(mixer, writeback, dtype, args.quick)["rows"]
        worst = {p: max(rows, key=lambda r, p=p: r[p] / r["bound"]) for p in ("tf32x3", "tf32")}
        cells = [f"{worst[p][p] / worst[p]['bound']:.2f} | {worst[p]['tensor']}" for p in ("tf32x3", "tf32")]
        print(f"| {mixer}, {writeback} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
