"""The benchmarks cannot rot: `benchmarks/gpu_check.sh --dry-run` runs every step on the CPU (the
three benchmark files in ``--quick`` mode, i.e. each benchmark once at tiny shapes with only its
correctness gate, and the results rows at tiny shapes) and writes a results file; `plot.py` turns a
results file into a PNG. No timing is asserted anywhere.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from benchmarks import collect, plot

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
REQUIRED_ROWS = ("lora_fused_vs_base_prefill", "lora_fused_vs_base_decode", "dora_fused_vs_base_eval",
                 "talan_lora_vs_lora_prefill", "talan_lora_vs_lora_decode", "train_step_talan_fused_vs_peft_lora",
                 "talan_block_share_of_layer")
# Optional extras (SPEC §5): the fused ratio split into the LoRA term and the Triton GEMM vs cuBLAS.
TRITON_BASE_ROWS = ("lora_fused_vs_triton_base_prefill", "triton_base_vs_cublas_prefill")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHON"] = sys.executable
    env["OMP_NUM_THREADS"] = "1"  # tiny shapes on a shared machine: threads only add contention
    return env


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script would run the whole check")
@pytest.mark.parametrize("on_path", [("python3", "python"), ("python",)])
def test_gpu_check_takes_python3_when_python_is_not_set(tmp_path, on_path):
    """Without $PYTHON the script runs python3 (the GPU image's interpreter, which may have no `python`),
    else python: on a CPU it stops at its CUDA check, naming the interpreter it asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in on_path:  # wrappers, not symlinks: a symlinked venv python would not find the venv
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    env = {**_env(), "PATH": str(bin_dir)}
    del env["PYTHON"]
    proc = subprocess.run([shutil.which("bash"), str(SCRIPT), "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    asked = bin_dir / on_path[0] if on_path[0] == "python3" else "python"
    assert f"no CUDA device visible to {asked};" in proc.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    results = sorted(out.glob("*.json"))
    report = json.loads(results[0].read_text()) if len(results) == 1 else None
    return proc, out, results, report


def _log(out: Path, step: str) -> str:
    path = out / "logs" / f"{step}.log"
    return path.read_text()[-4000:] if path.exists() else f"(no log {path})"


def test_dry_run_quick_benchmarks_pass_their_gates(dry_run):
    proc, out, _, report = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report is not None, proc.stdout[-3000:]
    assert report["steps"]["benchmarks"].startswith("passed"), _log(out, "benchmarks")
    assert report["steps"]["rows"].startswith("passed"), _log(out, "rows")
    # the GPU tests ran in their shards, and every one of them skipped itself on the CPU
    assert report["steps"]["gpu_tests"].startswith("passed"), _log(out, "gpu_tests")
    tests = report["gpu_tests"]
    assert tests["files"] >= 5 and tests["tests"] == tests["skipped"] > 0 and not tests["failed"], tests


def test_dry_run_writes_a_well_formed_results_file(dry_run):
    proc, out, results, report = dry_run
    assert len(results) == 1, (list(out.iterdir()), proc.stdout[-2000:])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-cpu\.json", results[0].name)
    assert results[0].with_suffix(".md").exists()
    assert report["dry_run"] is True
    for key in ("device", "date", "torch", "triton", "transformers", "peft", "cuda"):
        assert key in report["env"], key
    rows = {r["name"]: r for r in report["rows"]}
    assert set(REQUIRED_ROWS) <= set(rows)
    for row in report["rows"]:
        assert {"name", "value", "unit", "ratio", "baseline"} <= set(row), row
        assert "error" not in row, row
        if row.get("skipped"):
            assert row["ratio"] is None and row["value"] is None
        else:
            assert row["ratio"] > 0 and row["value"] > 0 and row["baseline"], row
    # The Triton rows need a GPU and say so; the model rows run on the CPU's torch backends.
    assert "GPU" in rows["lora_fused_vs_base_prefill"]["skipped"]
    for name in TRITON_BASE_ROWS:
        assert "GPU" in rows[name]["skipped"], rows[name]
    for name in ("talan_lora_vs_lora_decode", "talan_block_share_of_layer", "talan_block_train_share_of_layer"):
        assert rows[name]["ratio"] is not None, rows[name]
    # the rows that decide the side path's next step say where their time went (CPU operators here)
    for name in ("talan_block_share_of_layer", "talan_block_train_share_of_layer",
                 "train_step_talan_fused_vs_peft_lora"):
        kernels = rows[name]["detail"]["kernels"]
        assert "error" not in kernels and kernels["us_per_call"] > 0 and kernels["kernels"], (name, kernels)
    markdown = results[0].with_suffix(".md").read_text()
    assert "DRY RUN" in markdown.upper()
    assert "### talan_block_train_share_of_layer" in markdown and "`aten::mm`" in markdown


GPU_TESTS = ROOT / "benchmarks" / "gpu_tests.sh"
SHARD_TESTS = """
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_passes():
    pass


def test_fails():
    assert False


def test_outlives_the_step():
    Path(os.environ["TALAN_SHARD_STARTED"]).touch()
    time.sleep(120)
"""


def _parses(path: Path) -> bool:
    try:
        ET.parse(path)
    except (OSError, ET.ParseError):
        return False
    return True


def test_gpu_test_shards_write_their_reports_when_the_time_limit_interrupts_them(tmp_path):
    """gpu_check.sh's time limit (``timeout -s INT``: SIGINT to the process group) stops a shard that is
    still running; it must still write its junit file (background jobs start with SIGINT ignored unless the
    shard restores it), and the report lists the failed test by its id. The signal goes out once the long
    test is running: sent at a fixed time, it could reach a shard still starting up on a loaded machine
    (seen here), which has no report to write."""
    tests = tmp_path / "test_shard.py"
    tests.write_text(SHARD_TESTS)
    work, logs, started = tmp_path / "work", tmp_path / "logs", tmp_path / "started"
    work.mkdir(), logs.mkdir()
    shards = [f"{tests}|passes or fails", f"{tests}|outlives"]
    # SIGINT at its default in the script, as timeout gives it: a test run started in the background (nohup make
    # test &) passes it on ignored, and bash cannot trap a signal ignored at its start (seen here once)
    proc = subprocess.Popen(["bash", str(GPU_TESTS), str(work), str(logs), *shards], cwd=ROOT,
                            env={**_env(), "TALAN_SHARD_STARTED": str(started)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        # the first shard's report whole, not just created: pytest opens the file before it writes it, and a
        # SIGINT in between leaves it cut short (seen here once; collect.junit_counts calls such a file unreadable)
        while not (started.exists() and _parses(work / "gpu_tests_0.xml")) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what timeout -s INT does to the step's process group
        output, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted; waiting for the shards" in output, output
    assert proc.returncode == 1, output  # a shard failed (the interrupted one and test_fails')
    reports = sorted(work.glob("gpu_tests_*.xml"))
    assert [p.name for p in reports] == ["gpu_tests_0.xml", "gpu_tests_1.xml"], output
    counts = collect.junit_counts([str(p) for p in reports])
    assert counts["tests"] >= 2 and counts["failures"] == 1 and counts["files"] == 2
    assert [name.rsplit("::", 1)[1] for name in counts["failed"]] == ["test_fails"]


def test_the_rows_step_needs_neither_pytest_nor_pytest_benchmark(tmp_path):
    """The required rows come from ``benchmarks.collect measure``: it must run on a GPU machine whose
    stack lacks pytest (the test steps then fail on their own; the rows still land)."""
    blocker = ("import builtins, sys\n"
               "real = builtins.__import__\n"
               "def no_pytest(name, *args, **kwargs):\n"
               "    if name.split('.')[0] in ('pytest', '_pytest', 'pytest_benchmark'):\n"
               "        raise ImportError('blocked: ' + name)\n"
               "    return real(name, *args, **kwargs)\n"
               "builtins.__import__ = no_pytest\n"
               "from benchmarks import collect\n"
               "sys.exit(collect.main(['measure', '--dry-run', '--out', sys.argv[1]]))\n")
    env = {k: v for k, v in _env().items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-c", blocker, str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if r.get("error")], [r for r in rows if r.get("error")]
    assert {"talan_lora_vs_lora_prefill", "train_step_talan_fused_vs_peft_lora"} <= {r["name"] for r in rows
                                                                                      if r["ratio"]}


def test_launch_overhead_script_runs_every_call_with_the_kernels_stubbed():
    env = {**_env(), "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.launch_overhead_cpu", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and line.rstrip().endswith("|")]
    assert len(rows) == 1 + 8 and all(float(r.rsplit("|", 2)[1]) > 0 for r in rows[1:]), proc.stdout


def test_report_without_rows_marks_every_row_skipped():
    report = collect.build_report(None, collect.environment(), {}, None, None, dry_run=True)
    rows = {r["name"]: r for r in report["rows"]}
    assert set(REQUIRED_ROWS) | set(TRITON_BASE_ROWS) <= set(rows)
    assert all(r["ratio"] is None and r["skipped"] for r in rows.values())
    assert not set(TRITON_BASE_ROWS) & set(collect.REQUIRED)
    assert "talan_lora_vs_lora_prefill" in collect.to_markdown(report)


def test_report_names_a_stack_outside_pyprojects_requirements():
    versions = {"torch": "2.11.0a0+git1234", "triton": "3.6.0", "transformers": "4.55.4", "peft": "0.17.1"}
    assert collect.below_floors(versions) == ["transformers 4.55.4 outside >=4.57"]
    assert collect.below_floors({**versions, "transformers": "5.0.0", "peft": "0.9.0"}) == ["peft 0.9.0 outside >=0.17"]
    env = collect.environment()
    assert env["below_floors"] == []  # make test's own stacks are inside them
    report = collect.build_report(None, {**env, "below_floors": collect.below_floors(versions)}, {}, None, None,
                                  dry_run=True)
    assert "Outside pyproject's requirements (a stack make test does not cover): transformers 4.55.4" in \
        collect.to_markdown(report)


def test_plot_writes_a_png(tmp_path):
    # A sample results file made here (the values exercise the chart only; nothing is committed).
    sample = {"env": {"device": "sample", "date": "2000-01-01"}, "dry_run": True, "paper_range": [1.01, 1.02],
              "rows": [{"name": "talan_lora_vs_lora_prefill", "value": 2.0, "unit": "ms", "ratio": 1.2,
                        "baseline": "b", "target": 1.005},
                       {"name": "talan_block_share_of_layer", "value": 1.0, "unit": "ms", "ratio": 0.1,
                        "baseline": "b", "target": None},
                       {"name": "lora_fused_vs_base_prefill", "value": None, "unit": "ms", "ratio": None,
                        "baseline": None, "target": 1.03, "skipped": "needs a GPU"}]}
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(sample))
    assert plot.main([str(path), "-o", str(tmp_path / "chart.png")]) == 0
    data = (tmp_path / "chart.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100


def test_cpu_overhead_toggle_restores_the_model_and_times_both_arms():
    """overhead_cpu.py's pairing: TALAN toggled in and out of one model with fixed weights, both arms
    timed, the hook clock restored afterwards (checked on a tiny host, no timing asserted)."""
    import torch

    import talan
    from benchmarks.models import add_lora, prefill_fn, qwen3_base
    from benchmarks.overhead_cpu import HookClock, TalanToggle, paired_toggle
    from talan.patching import _Patch

    host = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16)
    model = add_lora(qwen3_base(host, seed=0), rank=4, seed=0).eval()
    ids = torch.randint(0, 64, (2, 8))
    before = prefill_fn(model, ids)().logits
    toggle = TalanToggle(model, talan.TalanConfig(latent_dim=8, num_slots=2, backend="torch"))
    toggle.set(True)
    on = prefill_fn(model, ids)().logits
    assert not torch.allclose(on, before)  # the saved weights have open gates
    original = _Patch._apply
    res = paired_toggle(toggle, prefill_fn(model, ids), rounds=2)
    assert _Patch._apply is original and HookClock.METHODS
    assert not talan.patching.is_patched(model)
    assert torch.equal(prefill_fn(model, ids)().logits, before)
    assert 0 < res["talan_hook_share"] < 1 and len(res["wall"]["ratios"]) == 2
    toggle.set(True)
    assert torch.equal(prefill_fn(model, ids)().logits, on)  # same TALAN weights every time


def test_triton_base_provider_is_forward_only():
    import torch

    from benchmarks.cases import FORWARD_ONLY_PROVIDERS, LORA_PROVIDERS, lora_case

    assert "triton_base" in LORA_PROVIDERS and "triton_base" in FORWARD_ONLY_PROVIDERS
    with pytest.raises(ValueError, match="forward only"):
        lora_case("triton_base", 8, 16, 4, "fwdbwd", torch.device("cpu"), torch.float32)


def test_triton_providers_skip_on_a_gpu_whose_triton_cannot_compile_the_kernels(monkeypatch):
    """On a Triton older than launching.MIN_GPU_TRITON the kernels never launch on a GPU, so the benchmarks
    skip their Triton providers with that reason rather than run the PyTorch path under their name."""
    pytest.importorskip("triton")
    import torch

    from benchmarks import common
    from talan_kernels import launching

    if common.interpreting():
        pytest.skip("under the interpreter the kernels run on any Triton")
    cuda = torch.device("cuda")
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", None)
    assert common.lora_triton_status(cuda) == (True, "") and common.side_path_triton_status(cuda) == (True, "")
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", "Triton 3.2.0 cannot compile every kernel")
    for status in (common.lora_triton_status, common.side_path_triton_status):
        assert status(cuda) == (False, "Triton 3.2.0 cannot compile every kernel")


def test_kernel_breakdown_counts_the_calls_of_a_known_function():
    import torch

    from benchmarks.profiling import breakdown_markdown, guarded_breakdown, kernel_breakdown

    a = torch.randn(64, 64)
    out = kernel_breakdown(lambda: (a @ a) @ a + 1, torch.device("cpu"), iters=3, measured_s=1.0)
    by_name = {k["name"]: k for k in out["kernels"]}
    assert by_name["aten::mm"]["calls"] == 2 and by_name["aten::add"]["calls"] == 1, out
    assert "busy_fraction" not in out  # a CPU's self times include the profiler's overhead
    assert out["us_per_call"] >= sum(k["us"] for k in out["kernels"]) - 0.05 * len(out["kernels"])

    def broken():
        raise RuntimeError("no profiler here")

    assert guarded_breakdown(broken, torch.device("cpu")) == {"error": "RuntimeError: no profiler here"}
    assert "profiler failed" in "\n".join(breakdown_markdown("row", {"error": "RuntimeError: x"}))
    assert "| `aten::mm` | 2 |" in "\n".join(breakdown_markdown("row", out))


def test_device_totals_sum_kernels_by_name_and_leave_host_events_out():
    """The CUDA branch's aggregation, on profiler events built by hand (no GPU here)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import Interval

    from benchmarks.profiling import device_totals

    def event(name, device_type, start, end):
        return SimpleNamespace(name=name, device_type=device_type, time_range=Interval(start, end))

    events = [event("_shrink_kernel", DeviceType.CUDA, 0, 4), event("cudaLaunchKernel", DeviceType.CPU, 0, 9),
              event("_shrink_kernel", DeviceType.CUDA, 10, 16), event("aten::mm", DeviceType.CPU, 0, 30),
              event("Memset (Device)", DeviceType.CUDA, 20, 21)]
    assert device_totals(events) == {"_shrink_kernel": [10.0, 2], "Memset (Device)": [1.0, 1]}
