"""What `benchmarks/collect.py report` makes of a GPU run's pieces, on hand-made inputs: the GPU tests' junit files
(pytest's ``<testsuites>`` and a bare ``<testsuite>``, a shard killed mid-write), pytest-benchmark's JSON, the
script's steps, and the Markdown table, whose cells must survive an error message with a ``|`` or several lines;
and, with the timing patched to give chosen times, which measurement each row reports (the worst token count or
batch, no ratio when a batch failed, each ratio the right way round). (`test_benchmarks_quick.py` runs the whole
script on the CPU.)"""

import json
from types import SimpleNamespace

import torch

from benchmarks import collect

SHARD = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3" failures="1" errors="1"
skipped="0"><testcase classname="tests.test_a" name="test_ok"/><testcase classname="tests.test_a" name="test_bad[x]">
<failure message="no"/></testcase><testcase classname="tests.test_b" name="test_setup"><error message="no"/></testcase>
</testsuite></testsuites>"""
BARE_SUITE = """<testsuite name="pytest" tests="2" failures="0" errors="0" skipped="1">
<testcase classname="tests.test_c" name="test_one"/><testcase classname="tests.test_c" name="test_two"><skipped/>
</testcase></testsuite>"""


def test_junit_counts_sum_the_shards_and_name_what_failed(tmp_path):
    (tmp_path / "gpu_tests_0.xml").write_text(SHARD)
    (tmp_path / "gpu_tests_1.xml").write_text(BARE_SUITE)
    (tmp_path / "gpu_tests_2.xml").write_text(SHARD[:120])  # killed while writing
    paths = [str(tmp_path / f"gpu_tests_{i}.xml") for i in range(4)]  # the 4th never written
    counts = collect.junit_counts(paths)
    assert {k: counts[k] for k in ("tests", "failures", "errors", "skipped", "files")} == \
        {"tests": 5, "failures": 1, "errors": 1, "skipped": 1, "files": 3}
    assert counts["failed"][:2] == ["tests/test_a.py::test_bad[x]", "tests/test_b.py::test_setup"]
    assert counts["failed"][2].startswith("gpu_tests_2.xml: unreadable (")
    single = collect.junit_counts(str(tmp_path / "gpu_tests_1.xml"))  # one path, as a string
    assert (single["tests"], single["skipped"], single["failed"]) == (2, 1, [])
    assert collect.junit_counts([str(tmp_path / "missing.xml")]) is None


def test_bench_summary_reads_medians_in_ms_and_survives_a_broken_file(tmp_path):
    good = {"benchmarks": [{"name": "test_lora[triton]", "group": "lora", "stats": {"median": 0.0025},
                            "extra_info": {"GB/s": 812.5, "TFLOP/s": 101.0, "unrelated": 1}}]}
    (tmp_path / "bench.json").write_text(json.dumps(good))
    (tmp_path / "killed.json").write_text('{"benchmarks": [{"name": ')
    summary = collect.bench_summary([str(tmp_path / name) for name in ("bench.json", "killed.json", "none.json")])
    assert summary[0] == {"name": "test_lora[triton]", "group": "lora", "median_ms": 2.5, "GB/s": 812.5,
                          "TFLOP/s": 101.0}
    assert summary[1]["name"].startswith("killed.json: unreadable (") and summary[1]["median_ms"] is None
    assert len(summary) == 2


def test_read_steps_keeps_each_steps_status_whole(tmp_path):
    (tmp_path / "steps.tsv").write_text("rows\tpassed in 12 s\tretried\nno tab here\ngpu_tests\tfailed (rc 1)\n")
    assert collect.read_steps(str(tmp_path / "steps.tsv")) == {"rows": "passed in 12 s\tretried",
                                                                "gpu_tests": "failed (rc 1)"}
    assert collect.read_steps(str(tmp_path / "missing.tsv")) == {}


def _report(rows, **extra):
    env = {"device": "NVIDIA H200", "date": "2026-12-01", "torch": "2.11.0", "triton": "3.6.0",
           "transformers": "5.17.0", "peft": "0.18.0", "cuda": "12.8"}
    return collect.build_report({"rows": rows, "ceilings": extra.pop("ceilings", None), "dtype": "bfloat16"}, env,
                                extra.pop("steps", {}), extra.pop("junit", None), None, dry_run=False)


def test_markdown_table_cells_hold_a_row_each_whatever_its_error_says():
    error = "RuntimeError: a | b\nTraceback line two"
    report = _report([collect._row("lora_fused_vs_base_prefill", value=1.25, ratio=1.0213, baseline="x @ W.T: 1.2 ms"),
                      collect._row("talan_lora_vs_lora_decode", error=error)],
                     ceilings={"bandwidth_GB/s": 4012.3, "matmul_TFLOP/s": 701.9, "matmul_dtype": "bf16"},
                     steps={"rows": "passed"},
                     junit={"tests": 4, "failures": 1, "errors": 0, "skipped": 0, "files": 2,
                            "failed": ["tests/test_x.py::test_y"]})
    lines = collect.to_markdown(report).splitlines()
    assert "Measured ceilings: copy 4012 GB/s, bf16 matmul 702 TFLOP/s" in lines
    assert "GPU tests: 4 run, 1 failed, 0 errors, 0 skipped (2 junit files)" in lines
    assert "- failed: `tests/test_x.py::test_y`" in lines and "Steps: rows: passed" in lines
    table = [line for line in lines if line.startswith("| ")]
    fused = next(line for line in table if line.startswith("| lora_fused_vs_base_prefill |"))
    assert [c.strip() for c in fused.split("|")[1:-1]] == ["lora_fused_vs_base_prefill", "1.25", "1.021", "≤ 1.03",
                                                          "x @ W.T: 1.2 ms", ""]
    failed = next(line for line in table if line.startswith("| talan_lora_vs_lora_decode |"))
    assert failed.count("|") == 7 and failed.endswith("| error: RuntimeError: a / b |")
    assert not any(line.startswith("Traceback") for line in lines)


def test_result_file_names_say_the_date_and_the_device():
    assert collect.result_stem({"device": "NVIDIA H200", "date": "2026-12-01"}) == "2026-12-01-nvidia-h200"
    assert collect.result_stem({"device": "cpu (x86_64, 2 threads)", "date": "2026-12-01"}) == "2026-12-01-cpu"


# ---- which measurement a row reports: the worst token count or batch, the ratio the right way round ----------------
def _timed(seconds: float):
    """A stand-in for a benchmarked call: does nothing, and the patched timer reads its seconds."""
    def fn():
        return None
    fn.seconds = seconds
    return fn


def test_kernel_rows_report_the_worst_token_count(monkeypatch):
    import benchmarks.cases

    seconds = {("triton", 1): 1.3e-3, ("triton", 16): 1.1e-3}  # everything else: 1 ms
    monkeypatch.setattr(benchmarks.cases, "lora_case", lambda provider, tokens, *args: SimpleNamespace(
        fn=_timed(seconds.get((provider, tokens), 1e-3)), check=lambda: 1e-3))
    monkeypatch.setattr(collect, "measure", lambda fn, device, rounds: fn.seconds)
    monkeypatch.setattr(collect, "lora_triton_status", lambda device: (True, ""))
    monkeypatch.setattr(collect, "interpreting", lambda: True)  # as if the kernels could run here
    rows = {row["name"]: row for row in collect.kernel_rows(torch.device("cpu"), torch.float32, dry_run=False)}
    decode = rows["lora_fused_vs_base_decode"]
    assert (decode["ratio"], decode["value"], decode["baseline"]) == (1.3, 1.3, "x @ W.T: 1.0 ms")
    assert sorted(decode["detail"]) == ["tokens_1", "tokens_16"] and decode["detail"]["tokens_16"]["ratio"] == 1.1
    assert rows["lora_fused_vs_base_prefill"]["ratio"] == 1.0


def _patch_models(monkeypatch, ratios: dict, failing=None):
    import benchmarks.models as models

    def inference_ratio(lora, with_talan, ids, prompt, new_tokens, rounds, device):
        phase, batch = ("prefill", ids) if ids is not None else ("decode", prompt)
        if (phase, batch) == failing:
            raise RuntimeError("CUDA out of memory")
        r = ratios[phase, batch]
        return {phase: {"base_s": 1e-3, "talan_s": r * 1e-3, "ratio": r, "ratios": [r]}}

    monkeypatch.setattr(models, "kernel_backends", lambda device: ("torch", "torch", ""))  # also under the interpreter
    monkeypatch.setattr(models, "build_pair", lambda **kwargs: ("lora", "with_talan"))
    monkeypatch.setattr(models, "check_pair", lambda *args: 0.0)
    monkeypatch.setattr(models, "check_decode", lambda *args: None)
    monkeypatch.setattr(models, "random_ids", lambda batch, *args: batch)  # the "ids" say their batch
    monkeypatch.setattr(models, "inference_ratio", inference_ratio)
    monkeypatch.setattr(collect, "block_share_row", lambda *args: collect._row("the block's share"))


def test_model_rows_report_the_worst_batch_and_no_ratio_when_a_batch_failed(monkeypatch):
    ratios = {("prefill", 1): 1.002, ("prefill", 16): 1.004, ("decode", 1): 1.02, ("decode", 16): 1.01}
    _patch_models(monkeypatch, ratios)
    rows = {row["name"]: row for row in collect.e2e_rows(torch.device("cpu"), torch.float32, dry_run=False)}
    for name, ratio, batch in (("talan_lora_vs_lora_prefill", 1.004, 16), ("talan_lora_vs_lora_decode", 1.02, 1)):
        assert (rows[name]["ratio"], rows[name]["detail"]["worst_batch"]) == (ratio, batch), name
        assert [rows[f"{name}_b{b}"]["ratio"] for b in (1, 16)] == [ratios[name.rsplit("_", 1)[1], b] for b in (1, 16)]
    _patch_models(monkeypatch, ratios, failing=("decode", 16))
    rows = {row["name"]: row for row in collect.e2e_rows(torch.device("cpu"), torch.float32, dry_run=False)}
    assert rows["talan_lora_vs_lora_decode"]["ratio"] is None
    assert rows["talan_lora_vs_lora_decode"]["error"] == "a batch failed: see the _b<batch> rows"
    assert rows["talan_lora_vs_lora_decode_b16"]["error"] == "RuntimeError: CUDA out of memory"
    assert rows["talan_lora_vs_lora_prefill"]["ratio"] == 1.004


def test_train_rows_give_peft_over_base_and_fused_over_peft(monkeypatch):
    import benchmarks.common
    import benchmarks.models as models

    monkeypatch.setattr(models, "kernel_backends", lambda device: ("torch", "torch", ""))
    monkeypatch.setattr(models, "train_models", lambda *args: {"base": 1.0, "peft": 1.25, "fused": 0.9})
    monkeypatch.setattr(models, "check_train", lambda *args: None)
    monkeypatch.setattr(models, "train_step_fn", lambda seconds, ids: _timed(seconds))
    monkeypatch.setattr(benchmarks.common, "time_once", lambda fn, device: fn.seconds)
    monkeypatch.setattr(collect, "guarded_breakdown", lambda *args, **kwargs: {})
    peft, fused = collect.train_rows(torch.device("cpu"), torch.float32, dry_run=False)
    assert (peft["name"], peft["ratio"], peft["value"]) == ("train_step_peft_lora_vs_base", 1.25, 1250.0)
    assert (fused["name"], fused["ratio"], fused["speedup"]) == ("train_step_talan_fused_vs_peft_lora", 0.72, 1.3889)
