"""Helpers shared by the kernel tests: error metrics, random side-path inputs and compile-for-GPU
checks without a GPU.

Nothing here runs at import time beyond importing torch; triton is imported lazily so that
`import talan_kernels` works on a machine without it.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .launching import COMPILE_OPTIONS


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error ``||out - ref|| / ||ref||`` computed in fp64 (0 when both are 0)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    num = torch.linalg.vector_norm(out64 - ref64).item()
    den = torch.linalg.vector_norm(ref64).item()
    if den == 0.0:
        return num
    return num / den


def assert_rel_rms(out: torch.Tensor, ref: torch.Tensor, tol: float, name: str = "output") -> None:
    """Fail with the measured error when ``rel_rms(out, ref) > tol`` or ``out`` holds NaN/inf."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten or overflowed elements)"
    err = rel_rms(out, ref)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > {tol:.1e}"


# Largest dynamic shared memory one block may use: A100 (sm_80) 163 KiB, H100/H200 (sm_90) 227 KiB. A
# kernel over it compiles but fails at launch ("out of resource: shared memory").
SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}


@dataclass
class CompiledKernelInfo:
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    ptxas_log: str
    shared_bytes: int  # what Triton allocated (compiled.metadata.shared)
    ptx: str  # what Triton handed ptxas: the tests read its tensor-core instructions


def random_side_path_params(d: int, r: int, m: int, mixer: str, writeback: str, seed: int = 0,
                            dtype: torch.dtype = torch.float32, scalar_gate: bool = False) -> dict[str, torch.Tensor]:
    """Random side-path block parameters for the kernel and reference tests (not the init: there the zero
    ``W_out`` and gates would hide gradients). ``W_k``, ``W_v`` sit near the identity, so keys and values
    keep the shrunk token's scale."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    eye = torch.eye(r)
    p = {"norm_weight": 1 + 0.1 * rnd(d), "w_in": rnd(d, r, scale=d ** -0.5),
         "w_k": eye + rnd(r, r, scale=0.3 * r ** -0.5), "w_v": eye + rnd(r, r, scale=0.3 * r ** -0.5),
         "slot_queries": rnd(m, r), "w_out": rnd(r, d, scale=r ** -0.5)}
    if mixer != "linear":
        p["w_q"] = rnd(r, r, scale=r ** -0.5)
    if mixer == "linear":
        p["mix_weights"] = 1.0 / m + 0.2 * rnd(m)
    if mixer == "mlp":
        p["w_1"], p["w_2"] = rnd(2 * r, r, scale=(2 * r) ** -0.5), rnd(r, r, scale=r ** -0.5)
    if mixer == "glu":
        p["w_glu"] = rnd(r, r, scale=r ** -0.5)
    if writeback == "tanh_gate":
        p["gate"] = rnd(1 if scalar_gate else d, scale=0.5)
    if writeback == "token_gate":
        p["gate_weight"], p["gate_bias"] = rnd(d, scale=d ** -0.5), torch.tensor([0.5])
    return {name: value.to(dtype) for name, value in p.items()}


def random_side_path_inputs(b: int, t: int, d: int, m: int, r: int, pad: int, reset_at, seed: int = 1):
    """``h``, a left-padded ``active`` mask (row 1 padded by ``pad``), ``resets`` True at ``reset_at`` in
    row 0 (None when empty) and a random carried ``(S, N)`` state."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g)
    active = torch.ones(b, t, dtype=torch.bool)
    if b > 1:
        active[1, :pad] = False
    resets = None
    if reset_at:
        resets = torch.zeros(b, t, dtype=torch.bool)
        resets[0, list(reset_at)] = True
    state = (torch.rand(b, m, generator=g) * 3, torch.randn(b, m, r, generator=g))
    return h, active, resets, state


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def triton_ptxas(arch: int) -> str:
    """The path of the ptxas that this Triton compiles ``sm_<arch>`` with."""
    from triton.backends.nvidia import compiler

    if not hasattr(compiler, "get_ptxas"):  # Triton < 3.3: one ptxas for every arch, a (path, version) tuple
        return compiler._path_to_binary("ptxas")[0]
    # Triton 3.3 and >= 3.6 pick a ptxas per arch; 3.4 and 3.5 have one (get_ptxas() takes no argument)
    takes_arch = bool(inspect.signature(compiler.get_ptxas).parameters)
    ptxas = compiler.get_ptxas(arch) if takes_arch else compiler.get_ptxas()
    return ptxas.path if hasattr(ptxas, "path") else ptxas[0]  # Triton < 3.4: a (path, version) tuple


def compile_for_gpu(kernel, signature: dict, constexprs: dict, arch: int, num_warps: int = 4,
                    num_stages: int = 2, maxnreg: int | None = None, attrs: dict | None = None) -> CompiledKernelInfo:
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` with no GPU present and report what
    Triton's own ptxas (``-v``) says about registers and spills, and the shared memory Triton allocated.

    ``signature`` maps every argument name to a Triton type string (``"*fp32"``, ``"i32"``,
    ``"fp32"``) or ``"constexpr"``; ``constexprs`` gives the constexpr values; ``maxnreg`` as a launch gives it;
    ``attrs`` the specialisations a real launch gives its arguments (``{(index,): [["tt.divisibility", 16]]}``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, **COMPILE_OPTIONS,
                                       **({"maxnreg": maxnreg} if maxnreg is not None else {})})
    ptx = compiled.asm["ptx"]
    ptxas = triton_ptxas(arch)
    gpu_name = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = Path(tmp) / "kernel.ptx"
        ptx_path.write_text(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={gpu_name}", str(ptx_path), "-o",
                               str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True)
    log = proc.stdout + proc.stderr
    regs = [int(m) for m in _REGS.findall(log)]
    spills = _SPILL.findall(log)
    if not regs:
        raise RuntimeError(f"could not read the register count from ptxas output:\n{log}")
    return CompiledKernelInfo(arch=arch, registers=max(regs),
                              spill_stores=sum(int(s) for s, _ in spills),
                              spill_loads=sum(int(ld) for _, ld in spills), ptxas_log=log,
                              shared_bytes=compiled.metadata.shared, ptx=ptx)
