"""Host-side helpers every launcher uses: when to go through the ``torch.library`` ops, and the
integer arithmetic of grids and tiles.

Both are about the CPU time of a launch, which a one-token decode step pays per block and per
adapted linear layer: in eager mode a ``torch.ops.talan.*`` call spends tens of µs in the
dispatcher before the implementation runs (about 75 µs for the decode op on the 2-core development
VM, against 46 µs for its implementation with the kernel launch stubbed out), and in Triton >= 3.4
``triton.cdiv`` / ``triton.next_power_of_2`` are constexpr-function objects that take ~2.5 µs a call
from Python, against ~0.05 µs for the plain arithmetic.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterator
from typing import Optional

import torch

# Whether Triton runs its kernels in the interpreter (on CPU tensors). Triton reads TRITON_INTERPRET when a
# kernel is defined, at import, so a later change of the variable would not take effect anyway; reading it
# once here also keeps os.environ out of the code that torch.compile traces (torch 2.4's dynamo cannot).
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

# The oldest Triton whose compiler builds every kernel here for sm_80 and sm_90. Older ones abort the whole
# process with an LLVM error on some of them (seen compiling for both archs without a GPU: 3.0 and 3.1 on the
# chunk scans' 3xTF32 products, 3.2 on those and on the LoRA forward and dx kernels at r >= 64 for sm_90). Below it the
# kernels never launch on a GPU: backend "auto" takes the PyTorch path there and "triton" raises. The
# interpreter (TRITON_INTERPRET=1, CPU tensors) runs them on any Triton >= 3.0.
MIN_GPU_TRITON = (3, 3)


def _installed_triton_version() -> Optional[str]:
    """The installed Triton's version without importing it (an import costs ~0.3 s of ``import talan``,
    which CPU users of the PyTorch path never need): from the package metadata of the distributions that
    ship the ``triton`` module, importing it only when none has any."""
    for dist in ("triton", "pytorch-triton", "pytorch-triton-rocm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def _gpu_kernels_unavailable(version: Optional[str]) -> Optional[str]:
    if version is None:
        return "Triton is not installed"
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_GPU_TRITON:
        return (f"Triton {version} cannot compile every kernel (its compiler aborts on some); they "
                f"need Triton >= {'.'.join(map(str, MIN_GPU_TRITON))}, as torch >= 2.7 installs")
    return None


# Why the kernels cannot run on a GPU with this install, or None. Read once at import, like
# TRITON_INTERPRETER, so that the per-call backend choice stays a constant for torch.compile.
GPU_KERNELS_UNAVAILABLE = _gpu_kernels_unavailable(_installed_triton_version())

# Compile options that every launch passes, and that the compile tests compile with. FMA contraction is
# on, as every Triton up to 3.9 defaults to and as the kernels' configurations were tuned (registers,
# spills) and checked with. Triton 3.9 warns on each process whose launches leave it unset, and 3.10
# turns the default off. TRITON_FORCE_DISABLE_FP_FUSION=1 still overrides it.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def use_kernels(backend: str, device: torch.device) -> bool:
    """Whether a call with a valid ``backend`` ("auto", "torch" or "triton") on tensors on ``device`` runs
    the Triton kernels: "auto" on CUDA tensors where the kernels compile; "triton" always, or a
    RuntimeError that says why they cannot run there."""
    if backend == "torch":
        return False
    on_cuda = device.type == "cuda"
    gpu_problem = None if TRITON_INTERPRETER else GPU_KERNELS_UNAVAILABLE
    if backend == "auto":
        return on_cuda and gpu_problem is None
    if on_cuda and gpu_problem is not None:
        raise RuntimeError(f"backend='triton' on CUDA tensors: {gpu_problem}. Use backend='auto' (the PyTorch path "
                           "with this Triton) or 'torch'")
    if not on_cuda and not TRITON_INTERPRETER:
        raise RuntimeError(f"backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
                           f"imported to run the kernels on the CPU (got tensors on {device})")
    return True


def use_custom_op() -> bool:
    """Whether a launcher's caller must go through the ``torch.library`` op rather than call the
    implementation: while torch.compile / torch.export trace (the op must be a graph node with its
    fake implementation) or under a dispatch mode such as ``FakeTensorMode`` (which must see the op
    to use its fake). In plain eager mode the two run the same code, the op only adds dispatch."""
    if torch.compiler.is_compiling():
        return True
    stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return stack_depth is None or stack_depth() > 0


class EagerOps:
    """The implementations of one module's ``talan::*`` custom ops, for ``resolve``. Decorate each
    implementation with ``keep`` under ``@torch.library.custom_op`` (decorators apply bottom-up, so
    ``keep`` sees the plain function)."""

    def __init__(self) -> None:
        self._impls: dict[str, Callable] = {}

    def keep(self, fn: Callable) -> Callable:
        self._impls[fn.__name__] = fn
        return fn

    def resolve(self, name: str) -> Callable:
        """``torch.ops.talan.<name>`` while torch.compile traces or a dispatch mode is active
        (``use_custom_op``), else the op's implementation: the same code, called directly."""
        return getattr(torch.ops.talan, name) if use_custom_op() else self._impls[name]


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= ``n`` (1 for n <= 1), as ``triton.next_power_of_2``."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def dot_tile(n: int) -> int:
    """Tile width for a dimension of size ``n`` that a kernel multiplies with ``tl.dot``: a power of 2,
    at least 16 (``tl.dot``'s minimum)."""
    return max(16, next_power_of_2(n))


def interpreter_slice(br: int) -> int:
    """Slice width of the products over a latent dimension (tile ``br``) in the interpreter's launch
    configs: 16 from a 32-wide tile on, so the interpreter tests run both the whole-tile products (R <= 16)
    and the sliced ones that a GPU takes at R = 256 (the side path's ``BK``)."""
    return 16 if br >= 32 else br


def as_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous fp32 tensor for a kernel (no autograd involved): ``x`` itself when it
    already is one (TALAN's parameters and state always are), which skips three tensor method calls
    a parameter on every call of a decode step."""
    if x.dtype == torch.float32 and x.is_contiguous():
        return x
    return x.detach().float().contiguous()


@contextlib.contextmanager
def overridden(settings: dict, key: str, value) -> Iterator[None]:
    """Within the block ``settings[key]`` is ``value``, then what it was: the launch choices that benchmarks
    time against the defaults (``precision.gpu_dot_precision``, ``decode.decode_pipeline_stages``)."""
    before, settings[key] = settings[key], value
    try:
        yield
    finally:
        settings[key] = before
