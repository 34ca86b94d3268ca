"""pytest setup of the benchmarks: ``bench_*.py`` files are collected, ``--quick`` runs each benchmark
once at tiny shapes with only its correctness gate, and the device ceilings are measured once.

    python -m pytest benchmarks                       # full run (GPU shapes on CUDA, small ones on a CPU)
    python -m pytest benchmarks --quick               # correctness gates only, seconds
    python -m pytest benchmarks --benchmark-json=out.json
"""

from __future__ import annotations

import pytest

from .common import bench_device, bench_dtype, measure_ceilings, rate_info, synced


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="run each benchmark once at tiny shapes: correctness gates only, no timing")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("--quick"):
        config.option.benchmark_disable = True  # pytest-benchmark then calls each target once


def pytest_collect_file(file_path, parent):
    # bench_*.py do not match pytest's python_files; files named on the command line are collected anyway.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture(scope="session")
def device():
    return bench_device()


@pytest.fixture(scope="session")
def dtype(device):
    return bench_dtype(device)


@pytest.fixture(scope="session")
def ceilings(device, quick):
    """Copy bandwidth and matmul rate of this device, measured once per session (None in --quick)."""
    return None if quick else measure_ceilings(device)


@pytest.fixture
def run_case(benchmark, device, quick, ceilings):
    """``run_case(case, group, **info)``: the correctness gate first (a wrong provider is never
    timed), then the timing; GB/s, TFLOP/s and their fractions of the ceilings go to extra_info."""

    def run(case, group: str, rounds: int | None = None, **info):
        benchmark.group = group
        benchmark.extra_info.update(info)
        benchmark.extra_info["max_rel_rms_error"] = case.check()
        target = synced(case.fn, device)
        if quick:
            benchmark.pedantic(target, rounds=1, iterations=1, warmup_rounds=0)
            return
        cuda = device.type == "cuda"
        benchmark.pedantic(target, rounds=rounds or (30 if cuda else 5), iterations=1,
                           warmup_rounds=5 if cuda else 1)
        if benchmark.stats is not None:
            benchmark.extra_info.update(rate_info(benchmark.stats.stats.median, case.bytes, case.flops, ceilings))

    return run
