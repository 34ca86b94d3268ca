"""Fused LoRA / DoRA linear against the base GEMM, the reference and peft eager (SPEC §5 rows 1-3).

Groups are ``lora <mode> M<tokens> H<hidden> r<rank>``; compare providers within a group. On a GPU:
bf16, Qwen3 widths 1024/2048/4096, r 8/16/64, 4096 tokens (forward, forward+backward) and 1/16
tokens (decode). On a CPU: fp32 at small shapes, the Triton providers skipped. ``triton_base`` (the
fused kernel's main loop without the LoRA term) separates, within a group, the cost of the LoRA term
(triton / triton_base) from that of the Triton GEMM itself (triton_base / base); it is forward only.
"""

from __future__ import annotations

import pytest

from .cases import DORA_PROVIDERS, FORWARD_ONLY_PROVIDERS, LORA_PROVIDERS, lora_case
from .common import bench_device, lora_triton_status


def lora_grid(quick: bool, cuda: bool) -> list[tuple[str, int, int, int]]:
    """(mode, tokens, hidden, rank) for the LoRA benchmarks."""
    if quick:
        return [("fwd", 32, 64, 8), ("fwdbwd", 32, 64, 8), ("decode", 4, 64, 8)]
    if cuda:
        return ([("fwd", 4096, h, r) for h in (1024, 2048, 4096) for r in (8, 16, 64)]
                + [("fwdbwd", 4096, h, 16) for h in (1024, 2048, 4096)]
                + [("decode", t, h, 16) for t in (1, 16) for h in (1024, 4096)])
    return [("fwd", 256, 1024, r) for r in (8, 16, 64)] + [("fwdbwd", 256, 1024, 16)] + \
        [("decode", t, 1024, 16) for t in (1, 16)]


def dora_grid(quick: bool, cuda: bool) -> list[tuple[str, int, int, int]]:
    """(mode, tokens, hidden, rank) for DoRA in eval (norm cached by the fused path)."""
    if quick:
        return [("eval", 32, 64, 8)]
    return [("eval", t, 4096 if cuda else 1024, 16) for t in ((16, 4096) if cuda else (16, 256))]


def pytest_generate_tests(metafunc):
    quick = metafunc.config.getoption("--quick")
    cuda = bench_device().type == "cuda"
    for name, grid in (("lora_shape", lora_grid), ("dora_shape", dora_grid)):
        if name in metafunc.fixturenames:
            shapes = grid(quick, cuda)
            metafunc.parametrize(name, shapes, ids=[f"{m}-M{t}-H{h}-r{r}" for m, t, h, r in shapes])


def _skip_unavailable(provider: str, device) -> None:
    if "triton" in provider:
        ok, why = lora_triton_status(device)
        if not ok:
            pytest.skip(why)


@pytest.mark.parametrize("provider", LORA_PROVIDERS)
def test_lora(run_case, device, dtype, lora_shape, provider):
    mode, tokens, hidden, rank = lora_shape
    _skip_unavailable(provider, device)
    if provider in FORWARD_ONLY_PROVIDERS and mode == "fwdbwd":
        pytest.skip(f"{provider} is forward only (no backward to time)")
    case = lora_case(provider, tokens, hidden, rank, mode, device, dtype)
    run_case(case, f"lora {mode} M{tokens} H{hidden} r{rank}", provider=provider, mode=mode, tokens=tokens,
             hidden=hidden, rank=rank, dtype=str(dtype))


@pytest.mark.parametrize("provider", DORA_PROVIDERS)
def test_dora_eval(run_case, device, dtype, dora_shape, provider):
    mode, tokens, hidden, rank = dora_shape
    _skip_unavailable(provider, device)
    case = lora_case(provider, tokens, hidden, rank, "fwd", device, dtype)
    run_case(case, f"dora {mode} M{tokens} H{hidden} r{rank}", provider=provider, mode=mode, tokens=tokens,
             hidden=hidden, rank=rank, dtype=str(dtype))
