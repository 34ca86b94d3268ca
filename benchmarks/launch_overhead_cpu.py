"""The CPU time of a call on the kernel paths, with the Triton launches themselves stubbed out: what is
left is this project's Python, the op dispatch and the small torch ops around the kernels. A decode
step pays it once per TALAN block and once per adapted linear layer (~200 in a 28-layer model with
LoRA on all linear layers) and, while the GPU waits on the CPU, nothing hides it. Triton's own
launch cost comes on top on a GPU and is not measured here.

Tiny shapes (d = 64), so peft eager's own CPU time is the yardstick beside the fused LoRA layer.
Kernels run nowhere: ``TRITON_INTERPRET=1`` only lets ``backend="triton"`` accept CPU tensors.

    python -m benchmarks.launch_overhead_cpu [--quick]   # a Markdown table (median µs a call)

Run it in its own process: it stubs the kernels of the imported modules for good.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402


class _NoLaunch:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_kernels() -> None:
    from talan_kernels.lora import kernels as lora_kernels
    from talan_kernels.side_path import decode, fused, fused_kernels, triton_path
    from talan_kernels.side_path import kernels as side_path_kernels

    for module in (lora_kernels, side_path_kernels, fused_kernels, triton_path, fused, decode):
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(module, name, _NoLaunch())


CALLS, REPEATS = 300, 7


def per_call_us(fn) -> float:
    calls, repeats = CALLS, REPEATS
    for _ in range(min(20, calls)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times) * 1e6


def side_path_rows() -> list[tuple[str, float]]:
    from talan import TalanBlock, TalanConfig

    rows = []
    h = torch.randn(1, 16, 64)
    for mixer, writeback in (("attn", "tanh_gate"), ("glu", "norm_cap")):
        torch.manual_seed(0)
        block = TalanBlock(64, TalanConfig(num_slots=4, latent_dim=16, mixer=mixer, writeback=writeback,
                                           backend="triton"))
        with torch.no_grad():
            _, state = block(h)
            name = f"TALAN block {mixer}/{writeback}"
            rows.append((f"{name}, prefill 16 tokens", per_call_us(lambda block=block: block(h))))
            rows.append((f"{name}, decode step",
                         per_call_us(lambda block=block, state=state: block(h[:, :1], state=state))))
    return rows


def lora_rows() -> list[tuple[str, float]]:
    from peft import LoraConfig, get_peft_model

    import talan

    rows = []
    x = torch.randn(1, 64)
    for dora in (False, True):
        torch.manual_seed(0)
        holder = torch.nn.Sequential()
        holder.add_module("proj", torch.nn.Linear(64, 64))
        model = get_peft_model(holder, LoraConfig(r=8, target_modules=["proj"], use_dora=dora)).eval()
        layer = model.base_model.model.proj
        kind = "DoRA" if dora else "LoRA"
        with torch.no_grad():
            rows.append((f"peft eager {kind} layer, 1 token", per_call_us(lambda layer=layer: layer(x))))
            talan.enable_fused_lora(model, backend="triton")
            rows.append((f"fused {kind} layer, 1 token", per_call_us(lambda layer=layer: layer(x))))
    return rows


def main(argv=None) -> int:
    global CALLS, REPEATS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few calls: a plumbing check, no timing to read")
    if parser.parse_args(argv).quick:
        CALLS, REPEATS = 3, 1
    torch.set_num_threads(1)
    stub_kernels()
    print("| call (kernel launches stubbed) | µs |\n|---|---:|")
    for name, us in side_path_rows() + lora_rows():
        print(f"| {name} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
