"""Shared pieces of the benchmarks: device, correctness gates, timing, ceilings, provider availability.

Timing rules: on CUDA every timed call ends with ``torch.cuda.synchronize()`` (or goes through
``triton.testing.do_bench``, median); on the CPU a timed call is a plain ``time.perf_counter`` span.
A ratio between two variants is always taken round by round in one process (``paired_times``), so
drift in the machine's speed cancels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from talan_kernels import launching
from talan_kernels.launching import TRITON_INTERPRETER

# Relative RMS error allowed against the fp32 reference, by activation dtype (SPEC §4 tolerances;
# fp32 on a GPU runs TF32/3xTF32 matmuls, hence the looser GPU value).
TOLERANCE = {
    ("cpu", torch.float32): 1e-5,
    ("cuda", torch.float32): 1e-3,
    ("cpu", torch.float16): 5e-3,
    ("cuda", torch.float16): 5e-3,
    ("cpu", torch.bfloat16): 1e-2,
    ("cuda", torch.bfloat16): 1e-2,
}


def bench_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (what training and serving use), fp32 on the CPU (bf16 CPU matmuls are not
    representative of anything)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in fp64 (0 when both are 0)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = torch.linalg.vector_norm(ref).item()
    err = torch.linalg.vector_norm(out - ref).item()
    return err / denom if denom > 0 else err


def check_close(out: torch.Tensor, ref: torch.Tensor, what: str, tol: float | None = None) -> float:
    """Correctness gate: raise AssertionError unless ``out`` is finite and within ``tol`` (relative
    RMS) of ``ref``. The default tolerance comes from ``TOLERANCE`` by ``out``'s device and dtype."""
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{what}: non-finite values in the output")
    if tol is None:
        tol = TOLERANCE.get((out.device.type, out.dtype), 1e-2)
    err = rel_rms(out, ref)
    if not err <= tol:
        raise AssertionError(f"{what}: relative RMS error {err:.3e} > {tol:.1e}")
    return err


# ----------------------------------------------------------------------------- providers

def interpreting() -> bool:
    """``TRITON_INTERPRET=1``: the Triton kernels run on the CPU, in the interpreter. The benchmarks'
    Triton providers then run too, at the CPU's small shapes: a plumbing check of the GPU-only code
    (their correctness gates, the rows), never a timing anyone should read."""
    return TRITON_INTERPRETER


def _import_status(module: str, device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda" and not interpreting():
        return False, "the Triton kernels are timed on a GPU only (no CUDA device here)"
    try:
        __import__(module)
    except Exception as exc:  # a kernel being written may not import yet: skip it, never crash
        return False, f"{module} does not import: {type(exc).__name__}: {exc}"
    unavailable = launching.GPU_KERNELS_UNAVAILABLE  # read at call time: tests patch it
    if device.type == "cuda" and not interpreting() and unavailable:
        return False, unavailable  # its compiler would abort the process on some kernels
    return True, ""


def lora_triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the fused LoRA/DoRA Triton kernels can be benchmarked here, and why not."""
    return _import_status("talan_kernels.lora.kernels", device)


def side_path_triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton side path can be benchmarked here, and why not."""
    ok, why = _import_status("talan_kernels.side_path.triton_path", device)
    if ok:
        ok, why = _import_status("talan_kernels.side_path.decode", device)
    return ok, why


# ----------------------------------------------------------------------------- timing

def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a device synchronisation, so a host timer around it measures the work."""
    if device.type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize(device)

    return call


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one synchronised call."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(fn: Callable[[], object], device: torch.device, rounds: int = 5) -> float:
    """Median seconds of ``fn``: ``triton.testing.do_bench`` on CUDA, else ``rounds`` timed calls
    after one warm-up."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    fn()
    return statistics.median(time_once(fn, device) for _ in range(max(1, rounds)))


def paired_times(fns: dict[str, Callable[[], object]], rounds: int, device: torch.device | None = None,
                 baseline: str | None = None, warmup: int = 1,
                 timer: Callable[[Callable[[], object]], float] | None = None) -> dict:
    """Time several variants round by round, rotating their order each round. Returns the median
    seconds of each (``"<name>_s"``) and, when ``baseline`` is given, the median of the per-round
    ratios ``name / baseline`` (``"ratio_<name>"``) and their lists (``"ratios_<name>"``).
    ``timer(fn)`` gives the seconds of one measurement (default: one synchronised call; ``measure``
    for kernels too short to time one call at a time)."""
    device = device or torch.device("cpu")
    timer = timer or (lambda fn: time_once(fn, device))
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            times[name].append(timer(fns[name]))
    out: dict = {f"{name}_s": statistics.median(t) for name, t in times.items()}
    if baseline is not None:
        for name in names:
            if name != baseline:
                ratios = [a / b for a, b in zip(times[name], times[baseline])]
                out[f"ratio_{name}"] = statistics.median(ratios)
                out[f"ratios_{name}"] = ratios
    return out


def paired_ratio(fn_base, fn_talan, rounds: int, device: torch.device | None = None) -> dict:
    """Two variants timed alternately: ``{"base_s", "talan_s", "ratio", "ratios"}`` with the ratio
    ``talan / base`` taken per round (median), so drift in the machine's speed cancels."""
    res = paired_times({"base": fn_base, "talan": fn_talan}, rounds, device, baseline="base")
    return {"base_s": res["base_s"], "talan_s": res["talan_s"], "ratio": res["ratio_talan"],
            "ratios": res["ratios_talan"]}


# ----------------------------------------------------------------------------- ceilings

@dataclass
class Ceilings:
    """What this device achieves: bandwidth of a big copy and the rate of a big matmul."""

    bandwidth_gbps: float
    matmul_tflops: float
    matmul_dtype: str
    detail: dict = field(default_factory=dict)


def measure_ceilings(device: torch.device) -> Ceilings:
    """Measure the copy bandwidth (read + write bytes) and the matmul rate once. CUDA: a 2 GiB bf16
    copy and an 8192^3 bf16 cuBLAS GEMM; CPU: a 128 MiB copy and a 2048^3 fp32 matmul."""
    if device.type == "cuda":
        n_copy, n_mm, dtype = 1 << 30, 8192, torch.bfloat16
    else:
        n_copy, n_mm, dtype = 1 << 25, 2048, torch.float32
    t_copy, bytes_moved = _copy_time(n_copy, dtype, device)
    a = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
    b = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
    t_mm = measure(lambda: a @ b, device)
    return Ceilings(bandwidth_gbps=bytes_moved / t_copy / 1e9, matmul_tflops=2 * n_mm ** 3 / t_mm / 1e12,
                    matmul_dtype=str(dtype).replace("torch.", ""),
                    detail={"copy_bytes": bytes_moved, "copy_s": t_copy, "matmul_n": n_mm, "matmul_s": t_mm})


def _copy_time(numel: int, dtype, device) -> tuple[float, int]:
    src = torch.ones(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device), 2 * src.numel() * src.element_size()


def rate_info(seconds: float, bytes_moved: float, flops: float, ceilings: Ceilings | None) -> dict:
    """GB/s and TFLOP/s of one call (and their fractions of the measured ceilings)."""
    info = {"median_ms": seconds * 1e3, "GB/s": bytes_moved / seconds / 1e9, "TFLOP/s": flops / seconds / 1e12}
    if ceilings is not None:
        info["bw_fraction"] = info["GB/s"] / ceilings.bandwidth_gbps
        info["flop_fraction"] = info["TFLOP/s"] / ceilings.matmul_tflops
        info["ceiling_GB/s"] = ceilings.bandwidth_gbps
        info["ceiling_TFLOP/s"] = ceilings.matmul_tflops
    return info
