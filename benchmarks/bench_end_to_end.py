"""End to end: a Qwen3-shaped model with matched LoRA, with and without TALAN (prefill and cached
decode, batch 1 and 16), and the training step of fused TALAN + LoRA against peft eager LoRA.

Each benchmark times one *round* (every variant once, in rotating order); the per-round ratios and
per-variant medians go to ``extra_info`` (``ratio``, ``*_ms``), so ratios are taken run by run in one
process. Host: Qwen3-0.6B's shape in bf16 on a GPU (TALAN and fused LoRA on the Triton kernels),
its width and vocabulary with 4 layers in fp32 on a CPU (torch backends), a d=64 model in --quick.
"""

from __future__ import annotations

import statistics

import pytest

from talan.patching import talan_config

from .common import time_once
from .models import (
    BATCHES,
    build_pair,
    check_block_backend,
    check_decode,
    check_pair,
    check_train,
    decode_fn,
    e2e_setup,
    kernel_backends,
    prefill_fn,
    random_ids,
    train_models,
    train_step_fn,
)


def timed_rounds(benchmark, fns: dict, baseline: str, device, rounds: int, quick: bool) -> dict:
    """pytest-benchmark times rounds of every variant once (rotating order); returns the medians
    per variant and of the per-round ratios against ``baseline``."""
    names = list(fns)
    times = {n: [] for n in names}
    count = [0]

    def one_round():
        k = count[0] % len(names)
        count[0] += 1
        for n in names[k:] + names[:k]:
            times[n].append(time_once(fns[n], device))

    for n in names:  # warm-up outside the timed rounds
        fns[n]()
    benchmark.pedantic(one_round, rounds=1 if quick else rounds, iterations=1, warmup_rounds=0)
    info = {f"{n}_ms": statistics.median(times[n]) * 1e3 for n in names}
    for n in names:
        if n != baseline:
            info[f"ratio_{n}"] = statistics.median(a / b for a, b in zip(times[n], times[baseline]))
    return info


@pytest.fixture(scope="module")
def setup(quick, device):
    return e2e_setup(quick, device)


@pytest.fixture(scope="module")
def pair(setup, device, dtype):
    talan_backend, _, why = kernel_backends(device)
    if not talan_backend:
        pytest.skip(why)
    lora, with_talan = build_pair(host=setup["host"], device=device, dtype=dtype, talan_backend=talan_backend)
    check_pair(lora, with_talan, random_ids(2, 16, setup["host"]["vocab_size"], device, seed=7))
    if talan_backend != "torch":
        check_block_backend(with_talan, dtype, device)
    return lora, with_talan


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("phase", ("prefill", "decode"))
def test_talan_lora_vs_lora(benchmark, pair, setup, device, quick, phase, batch):
    lora, with_talan = pair
    vocab = setup["host"]["vocab_size"]
    if phase == "prefill":
        ids = random_ids(batch, setup["prefill"], vocab, device, seed=1)
        fns = {"lora": prefill_fn(lora, ids), "talan_lora": prefill_fn(with_talan, ids)}
    else:
        prompt = random_ids(batch, setup["prompt"], vocab, device, seed=2)
        check_decode(lora, with_talan, prompt, setup["new"])
        fns = {"lora": decode_fn(lora, prompt, setup["new"]), "talan_lora": decode_fn(with_talan, prompt, setup["new"])}
    benchmark.group = f"e2e {phase} batch {batch}"
    benchmark.extra_info.update(phase=phase, batch=batch, host_layers=setup["host"]["num_hidden_layers"],
                                hidden=setup["host"]["hidden_size"], talan_backend=talan_config(with_talan).backend)
    benchmark.extra_info.update(timed_rounds(benchmark, fns, "lora", device, setup["rounds"], quick))


@pytest.fixture(scope="module")
def trainers(setup, device, dtype):
    talan_backend, lora_backend, why = kernel_backends(device)
    if not (talan_backend and lora_backend):
        pytest.skip(why)
    models = train_models(setup["host"], 16, device, dtype, lora_backend, talan_backend)
    check_train(models, random_ids(2, 16, setup["host"]["vocab_size"], device, seed=5), dtype)
    return models


def test_train_step(benchmark, trainers, setup, device, quick):
    ids = random_ids(setup["train_batch"], setup["train_len"], setup["host"]["vocab_size"], device, seed=4)
    fns = {name: train_step_fn(model, ids) for name, model in trainers.items()}
    benchmark.group = "e2e train step"
    benchmark.extra_info.update(batch=setup["train_batch"], tokens=setup["train_len"])
    info = timed_rounds(benchmark, fns, "peft", device, setup["rounds"], quick)
    info["peft_over_base"] = info["peft_ms"] / info["base_ms"]
    info["speedup_fused_vs_peft"] = info["peft_ms"] / info["fused_ms"]
    benchmark.extra_info.update(info)
