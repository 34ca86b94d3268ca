"""The benchmarks' GPU-only code under the Triton interpreter: with ``TRITON_INTERPRET=1`` the Triton
providers and rows run on the CPU at the quick/dry-run shapes (``benchmarks.common.interpreting``),
so the code a GPU run is the first to execute (the kernel rows, the fused-LoRA and Triton side-path
providers, the TALAN-on-kernels model rows) runs its correctness gates before any GPU run. Times
under the interpreter mean nothing and nothing here looks at them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.interpreter, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")]


def _run(*args, timeout):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_every_results_row_runs_on_the_kernels_in_the_interpreter(tmp_path):
    out = tmp_path / "rows.json"
    _run("-m", "benchmarks.collect", "measure", "--dry-run", "--out", str(out), timeout=600)
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("lora_fused_vs_base_prefill", "lora_fused_vs_base_decode", "dora_fused_vs_base_eval",
                 "lora_fused_vs_triton_base_prefill", "triton_base_vs_cublas_prefill", "talan_lora_vs_lora_prefill",
                 "talan_lora_vs_lora_decode", "train_step_talan_fused_vs_peft_lora", "talan_block_share_of_layer",
                 "talan_block_train_share_of_layer"):
        assert name in rows, name
    for row in rows.values():
        assert not row.get("skipped") and not row.get("error"), row
        assert row["ratio"] > 0, row
    # the model rows really ran TALAN and the fused LoRA on the kernels, not the torch fallback
    assert rows["talan_lora_vs_lora_prefill"]["talan_backend"] == "triton"
    assert rows["train_step_talan_fused_vs_peft_lora"]["lora_backend"] == "triton"
    assert "block_rel_rms_error" in rows["talan_lora_vs_lora_prefill"]["detail"]["gate"]


def test_kernel_benchmarks_pass_their_gates_on_every_triton_provider():
    proc = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "benchmarks/bench_lora.py",
                "benchmarks/bench_side_path.py", "--quick", timeout=600)
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("forward only" in line for line in skips), skips  # no Triton provider skipped for want of a GPU
    assert " passed" in proc.stdout.splitlines()[-1]
