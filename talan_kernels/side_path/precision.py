"""The input precision of the side-path kernels' fp32 ``tl.dot`` products on a GPU.

``"tf32x3"`` (the default) splits each fp32 operand into a TF32 head and tail and takes three
tensor-core products: fp32 accuracy, about 3x the tensor-core work of ``"tf32"``, which rounds the
operands to TF32 (10-bit mantissa, ~1e-3 relative error per product). The chunk scans and the fused
shrink/expand kernels are small next to a decoder layer, so how much the cheaper ``"tf32"`` saves is
a GPU measurement (``benchmarks/bench_side_path.py``, provider ``triton_tf32``) not made yet. Its
accuracy was emulated on the CPU (``benchmarks/tf32_emulation.py``): it fails the GPU parity test's
bound (2x PyTorch's own error + 1e-6) by 300-650x for an fp32 residual stream, where 3xTF32 stays
within half of it; hence the default. On the CPU (the interpreter) products are always IEEE fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..launching import overridden

GPU_DOT_PRECISIONS = ("tf32x3", "tf32", "ieee")
_current = {"gpu": "tf32x3"}


def dot_precision(device_type: str) -> str:
    """The ``DOT_PREC`` constexpr the launchers pass for tensors on ``device_type``."""
    return _current["gpu"] if device_type == "cuda" else "ieee"


@contextlib.contextmanager
def gpu_dot_precision(precision: str) -> Iterator[None]:
    """Within the block, launch the side-path kernels on CUDA tensors with ``precision`` (one of
    ``GPU_DOT_PRECISIONS``) for their fp32 dot products. Benchmarks use it to time the alternatives."""
    if precision not in GPU_DOT_PRECISIONS:
        raise ValueError(f"precision must be one of {GPU_DOT_PRECISIONS}; got {precision!r}")
    with overridden(_current, "gpu", precision):
        yield
