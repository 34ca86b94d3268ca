"""The results rows of a benchmark run (SPEC §5), measured and written as JSON + Markdown.

    python -m benchmarks.collect measure --out rows.json [--dry-run]
    python -m benchmarks.collect report --rows rows.json --out-dir benchmarks/results \\
        [--junit gpu_tests_0.xml ...] [--bench-json bench.json] [--steps steps.tsv] [--dry-run]

``measure`` computes every row it can on this machine; a row whose kernel is missing, or that needs a
GPU on a CPU-only machine, is written as skipped with the reason, and a row that fails (a wrong
kernel fails its correctness gate before anything is timed) is written with its error: a missing
piece never stops the others. ``report`` adds the device, versions, GPU-test counts and the
pytest-benchmark summary and writes ``<out-dir>/<date>-<gpu>.json`` and ``.md``.

Each row is ``{"name", "value", "unit", "ratio", "baseline"}`` (+ ``target``, ``detail``, ``skipped``
or ``error``): ``value`` is the measured time of the variant, ``baseline`` names what it is compared
with (and that time), ``ratio`` = variant / baseline, taken round by round in one process. Lower is
better for every ratio; ``target`` is SPEC §5's bound for it (the block share's: issue 3's 1 %).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import statistics
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from .common import (
    bench_device,
    bench_dtype,
    interpreting,
    lora_triton_status,
    measure,
    measure_ceilings,
    paired_times,
    sync,
)
from .profiling import breakdown_markdown, guarded_breakdown

# name -> (target ratio or None, what the row compares). The first seven are the required rows.
ROWS = {
    "lora_fused_vs_base_prefill": (1.03, "fused LoRA (Triton) vs x @ W.T (cuBLAS), bf16 4096x4096 r=16, 4096 tokens"),
    "lora_fused_vs_base_decode": (1.15, "fused LoRA (Triton) vs x @ W.T, bf16 4096x4096 r=16, worst of 1/16 tokens"),
    "dora_fused_vs_base_eval": (1.05, "fused DoRA, norm cached (Triton) vs x @ W.T, bf16 4096x4096 r=16, 4096 tokens"),
    "talan_lora_vs_lora_prefill": (1.005, "Qwen3 + LoRA r=16 with vs without TALAN, prefill, worst of batch 1/16"),
    "talan_lora_vs_lora_decode": (1.01, "same, cached greedy decode, worst of batch 1/16"),
    "train_step_talan_fused_vs_peft_lora": (1 / 1.3, "train step: fused LoRA + TALAN vs peft eager LoRA alone"),
    "talan_block_share_of_layer": (0.01, "one TALAN block vs one Qwen3 decoder layer with peft LoRA, prefill, "
                                         "4096 tokens on a GPU (issue 3's target)"),
    # the training path (shrink/scan/expand kernels forward, scan kernels + low-rank GEMMs backward): its share
    # of a layer's forward + backward, which says whether more of it needs fusing
    "talan_block_train_share_of_layer": (None, "one TALAN block vs one Qwen3 decoder layer with peft LoRA, "
                                               "forward + backward (the training path)"),
    "lora_peft_vs_base_prefill": (None, "anchor: peft eager LoRA vs x @ W.T, 4096 tokens (SPEC: ~1.35x)"),
    "lora_peft_vs_base_decode": (None, "anchor: peft eager LoRA vs x @ W.T, worst of 1 and 16 tokens (SPEC: ~2.5x)"),
    "dora_peft_vs_base_eval": (None, "anchor: peft eager DoRA (eval) vs x @ W.T, 4096 tokens (SPEC: ~2.39x)"),
    "train_step_peft_lora_vs_base": (None, "peft's own overhead: peft eager LoRA step vs the frozen base step"),
    # lora_fused_vs_base_prefill = (these two ratios' product, up to timing noise): how much is the
    # LoRA term, how much the Triton main loop against cuBLAS (SPEC §5).
    "lora_fused_vs_triton_base_prefill": (None, "fused LoRA (Triton) vs the same Triton GEMM without the LoRA term "
                                                "(HAS_LORA=False, same tiles), bf16 4096x4096 r=16, 4096 tokens"),
    "triton_base_vs_cublas_prefill": (None, "Triton GEMM without the LoRA term vs x @ W.T (cuBLAS), "
                                            "bf16 4096x4096 (tiles of r=16), 4096 tokens"),
}
REQUIRED = tuple(list(ROWS)[:7])
PAPER_RANGE = (1.01, 1.02)


def _row(name: str, **kw) -> dict:
    target, what = ROWS.get(name, (None, ""))
    row = {"name": name, "value": None, "unit": "ms", "ratio": None, "baseline": None, "target": target,
           "what": what}
    row.update(kw)
    return row


def skipped(name: str, reason: str) -> dict:
    return _row(name, skipped=reason)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 6)


# ----------------------------------------------------------------------------- kernel rows

def kernel_rows(device, dtype, dry_run: bool) -> list[dict]:
    """Fused LoRA / DoRA and peft eager against the base GEMM (one process, interleaved timing)."""
    from .cases import lora_case

    ok, why = lora_triton_status(device)
    hidden, rank, prefill = (64, 8, 32) if dry_run else (4096, 16, 4096)
    decode_tokens = (1, 4) if dry_run else (1, 16)
    rounds = 1 if dry_run else 5

    def compare(variant: str, base: str, tokens: int, mode: str = "fwd") -> dict:
        cases = {p: lora_case(p, tokens, hidden, rank, mode, device, dtype) for p in (variant, base)}
        errors = {p: c.check() for p, c in cases.items()}  # gate before timing
        timer = (lambda fn: measure(fn, device, rounds=3))
        res = paired_times({p: c.fn for p, c in cases.items()}, rounds, device, baseline=base, timer=timer)
        return {"variant_s": res[f"{variant}_s"], "base_s": res[f"{base}_s"], "ratio": res[f"ratio_{variant}"],
                "ratios": res[f"ratios_{variant}"], "max_rel_rms_error": max(errors.values()), "tokens": tokens}

    def to_row(name, res_list, variant_label, base_label="x @ W.T"):
        worst = max(res_list, key=lambda r: r["ratio"])
        return _row(name, value=_ms(worst["variant_s"]), ratio=round(worst["ratio"], 4),
                    baseline=f"{base_label}: {_ms(worst['base_s'])} ms", provider=variant_label,
                    detail={f"tokens_{r['tokens']}": {k: v for k, v in r.items() if k != "tokens"} for r in res_list})

    cublas = "x @ W.T (cuBLAS)"
    specs = [  # (row, variant, baseline provider, token counts, baseline label)
        ("lora_fused_vs_base_prefill", "triton", "base", (prefill,), "x @ W.T"),
        ("lora_fused_vs_base_decode", "triton", "base", decode_tokens, "x @ W.T"),
        ("dora_fused_vs_base_eval", "dora_triton", "base", (prefill,), "x @ W.T"),
        ("lora_peft_vs_base_prefill", "peft", "base", (prefill,), "x @ W.T"),
        ("lora_peft_vs_base_decode", "peft", "base", decode_tokens, "x @ W.T"),
        ("dora_peft_vs_base_eval", "dora_peft", "base", (prefill,), "x @ W.T"),
        ("lora_fused_vs_triton_base_prefill", "triton", "triton_base", (prefill,),
         "Triton GEMM without the LoRA term (HAS_LORA=False)"),
        ("triton_base_vs_cublas_prefill", "triton_base", "base", (prefill,), cublas),
    ]
    rows = []
    for name, variant, base, token_list, label in specs:
        if ("triton" in variant or "triton" in base) and not ok:
            rows.append(skipped(name, why))
            continue
        if device.type != "cuda" and not interpreting():
            rows.append(skipped(name, "kernel ratios are measured on a GPU only (no CUDA device here)"))
            continue
        rows.append(_guard(name, lambda v=variant, b=base, t=token_list, n=name, lab=label: to_row(
            n, [compare(v, b, tok) for tok in t], v, lab)))
    return rows


def _guard(name: str, fn) -> dict:
    try:
        return fn()
    except Exception as exc:  # one failing row (or gate) never stops the others
        traceback.print_exc()
        return _row(name, error=f"{type(exc).__name__}: {exc}"[:2000])


# ----------------------------------------------------------------------------- model rows

def e2e_rows(device, dtype, dry_run: bool) -> list[dict]:
    """TALAN + LoRA vs matched LoRA (prefill, decode; batch 1 and 16) and the block's share of a layer."""
    from .models import (
        BATCHES,
        build_pair,
        check_block_backend,
        check_decode,
        check_pair,
        e2e_setup,
        inference_ratio,
        kernel_backends,
        random_ids,
    )

    setup = e2e_setup(dry_run, device)
    talan_backend, _, why = kernel_backends(device)
    names = ("talan_lora_vs_lora_prefill", "talan_lora_vs_lora_decode", "talan_block_share_of_layer")
    if not talan_backend:
        return [skipped(n, why) for n in names]
    try:
        vocab = setup["host"]["vocab_size"]
        lora, with_talan = build_pair(host=setup["host"], device=device, dtype=dtype, talan_backend=talan_backend)
        gate = {"logit_change": check_pair(lora, with_talan, random_ids(2, 16, vocab, device, 7))}
        if talan_backend != "torch":
            gate["block_rel_rms_error"] = check_block_backend(with_talan, dtype, device)
    except Exception as exc:
        traceback.print_exc()
        return [_row(n, error=f"model setup or gate failed: {type(exc).__name__}: {exc}"[:2000]) for n in names]
    rows = []
    for phase in ("prefill", "decode"):
        per_batch = {}
        for batch in BATCHES:
            ids = random_ids(batch, setup["prefill"], vocab, device, 1) if phase == "prefill" else None
            prompt = random_ids(batch, setup["prompt"], vocab, device, 2) if phase == "decode" else None
            try:
                if prompt is not None:
                    check_decode(lora, with_talan, prompt, setup["new"])
                per_batch[batch] = inference_ratio(lora, with_talan, ids, prompt, setup["new"], setup["rounds"],
                                                   device)[phase]
            except Exception as exc:
                traceback.print_exc()
                per_batch[batch] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        name = f"talan_lora_vs_lora_{phase}"
        good = {b: r for b, r in per_batch.items() if "ratio" in r}
        for b, r in per_batch.items():
            sub = f"{name}_b{b}"
            if "ratio" in r:
                rows.append(_row(sub, value=_ms(r["talan_s"]), ratio=round(r["ratio"], 4),
                                 baseline=f"LoRA alone: {_ms(r['base_s'])} ms", target=ROWS[name][0],
                                 detail={"ratios": r["ratios"]}))
            else:
                rows.append(_row(sub, error=r["error"]))
        if len(good) < len(per_batch):
            rows.append(_row(name, error="a batch failed: see the _b<batch> rows"))
            continue
        b, worst = max(good.items(), key=lambda kv: kv[1]["ratio"])
        shape = (f"{setup['prefill']} tokens" if phase == "prefill"
                  else f"{setup['new']} new tokens after a {setup['prompt']}-token prompt")
        rows.append(_row(name, value=_ms(worst["talan_s"]), ratio=round(worst["ratio"], 4),
                         baseline=f"LoRA alone: {_ms(worst['base_s'])} ms (batch {b}, {shape})",
                         talan_backend=talan_backend, detail={"gate": gate, "worst_batch": b}))
    for name, train in (("talan_block_share_of_layer", False), ("talan_block_train_share_of_layer", True)):
        rows.append(_guard(name, lambda train=train: block_share_row(lora, with_talan, setup, device, dtype, train)))
    return rows


def block_share_row(lora, with_talan, setup, device, dtype, train: bool = False) -> dict:
    """Time of one TALAN block over one decoder layer of the LoRA model (same layer index, same h): the
    forward without autograd, or with ``train`` forward + backward (``h`` and the trainable weights take
    gradients, as in a training step)."""
    import talan

    idx, block = next(iter(talan.patching.talan_blocks(with_talan).items()))
    layer = lora.base_model.model.model.layers[idx]
    rotary = lora.base_model.model.model.rotary_emb
    batch, tokens = (2 if setup["rounds"] == 1 else 1), setup["share_tokens"]
    gen = torch.Generator().manual_seed(11)
    h = torch.randn(batch, tokens, block.hidden_size, generator=gen).to(device=device, dtype=dtype)
    pos = torch.arange(tokens, device=device).unsqueeze(0).expand(batch, -1)
    pe = rotary(h, pos)
    grad_out = torch.randn(batch, tokens, block.hidden_size, generator=gen).to(device=device, dtype=dtype)
    h.requires_grad_(train)

    def timed(module, **kwargs):
        def run():
            if not train:
                with torch.no_grad():
                    return module(h, **kwargs)
            out = module(h, **kwargs)
            (out[0] if isinstance(out, tuple) else out).backward(grad_out)
        return run

    if train:
        assert any(p.requires_grad for p in block.parameters()), "the TALAN block has no trainable parameter"
    res = paired_times({"layer": timed(layer, position_embeddings=pe, position_ids=pos), "block": timed(block)},
                       3 if setup["rounds"] > 1 else 1, device, baseline="layer",
                       timer=lambda fn: measure(fn, device, rounds=3))
    name = "talan_block_train_share_of_layer" if train else "talan_block_share_of_layer"
    what = "forward + backward" if train else "forward"
    kernels = guarded_breakdown(timed(block), device, iters=1 if setup["rounds"] == 1 else 5,
                                measured_s=res["block_s"])
    return _row(name, value=_ms(res["block_s"]), unit="ms", ratio=round(res["ratio_block"], 4),
                baseline=f"decoder layer {idx} with peft LoRA, {what}: {_ms(res['layer_s'])} ms "
                         f"({batch}x{tokens} tokens)", detail={"ratios": res["ratios_block"], "kernels": kernels})


def train_rows(device, dtype, dry_run: bool) -> list[dict]:
    """peft's overhead over the base step, then fused LoRA + TALAN against peft eager LoRA."""
    from .models import check_train, e2e_setup, kernel_backends, random_ids, train_models, train_step_fn

    names = ("train_step_peft_lora_vs_base", "train_step_talan_fused_vs_peft_lora")
    setup = e2e_setup(dry_run, device)
    talan_backend, lora_backend, why = kernel_backends(device)
    if not (talan_backend and lora_backend):
        return [skipped(n, why) for n in names]
    try:
        vocab = setup["host"]["vocab_size"]
        models = train_models(setup["host"], 16, device, dtype, lora_backend, talan_backend)
        check_train(models, random_ids(2, 16, vocab, device, 5), dtype)
        ids = random_ids(setup["train_batch"], setup["train_len"], vocab, device, 4)
        steps = {n: train_step_fn(m, ids) for n, m in models.items()}
        res = paired_times(steps, setup["rounds"], device, baseline="peft")
        kernels = guarded_breakdown(steps["fused"], device, iters=1 if setup["rounds"] == 1 else 3, top=15,
                                    measured_s=res["fused_s"])
    except Exception as exc:
        traceback.print_exc()
        return [_row(n, error=f"{type(exc).__name__}: {exc}"[:2000]) for n in names]
    shape = f"batch {setup['train_batch']} x {setup['train_len']} tokens"
    base_over_peft = res["ratios_base"]
    peft_over_base = [1 / r for r in base_over_peft]
    return [
        _row(names[0], value=_ms(res["peft_s"]), ratio=round(statistics.median(peft_over_base), 4),
             baseline=f"frozen base step (forward + backward, no adapter): {_ms(res['base_s'])} ms ({shape})",
             detail={"ratios": peft_over_base}),
        _row(names[1], value=_ms(res["fused_s"]), ratio=round(res["ratio_fused"], 4),
             baseline=f"peft eager LoRA step: {_ms(res['peft_s'])} ms ({shape})",
             speedup=round(1 / res["ratio_fused"], 4), lora_backend=lora_backend, talan_backend=talan_backend,
             detail={"ratios": res["ratios_fused"], "kernels": kernels}),
    ]


def measure_rows(dry_run: bool, out: str | None = None) -> dict:
    """Every row, written to ``out`` after each part (a timeout later keeps what was measured)."""
    device = bench_device()
    dtype = bench_dtype(device)
    started = time.time()
    ceil = None
    if not dry_run:
        c = measure_ceilings(device)
        ceil = {"bandwidth_GB/s": c.bandwidth_gbps, "matmul_TFLOP/s": c.matmul_tflops, "matmul_dtype": c.matmul_dtype}
    doc = {"device_type": device.type, "dtype": str(dtype).replace("torch.", ""), "ceilings": ceil, "rows": [],
           "measure_s": 0.0, "dry_run": dry_run}
    for part in (kernel_rows, e2e_rows, train_rows):
        doc["rows"] += part(device, dtype, dry_run)
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        doc["measure_s"] = round(time.time() - started, 1)
        if out:
            Path(out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return doc


# ----------------------------------------------------------------------------- report

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def below_floors(versions: dict, pyproject: Path = PYPROJECT) -> list:
    """``["transformers 4.55.0 outside >=4.57", ...]``: the distributions in ``versions`` that pyproject's
    requirements do not accept.
    A GPU machine runs its own preinstalled stack (nothing is installed), so its results say when that stack
    is one `make test` does not cover."""
    try:
        import tomllib
        from packaging.requirements import Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:  # Python 3.10 or no packaging: nothing to compare with
        return []
    below = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        found = versions.get(requirement.name)
        if found is None or found == "not installed":
            continue
        try:
            # prereleases count: a container's torch is often one (2.11.0a0+git...)
            if not requirement.specifier.contains(Version(found), prereleases=True):
                below.append(f"{requirement.name} {found} outside {requirement.specifier}")
        except InvalidVersion:
            continue
    return below


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "date": time.strftime("%Y-%m-%d"), "time": time.strftime("%H:%M:%S"), "machine": platform.machine()}
    for dist in ("triton", "transformers", "peft"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = "not installed"
    env["below_floors"] = below_floors(env)
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return env


def junit_counts(paths: list[str] | str | None) -> dict | None:
    """Test counts summed over junit files (gpu_tests.sh writes one per shard), with the ids of the
    failed and errored tests (``file::test[params]``) so that a results file says which ones."""
    found = [Path(p) for p in ([paths] if isinstance(paths, str) else paths or []) if Path(p).exists()]
    if not found:
        return None
    keys = ("tests", "failures", "errors", "skipped")
    totals, failed = dict.fromkeys(keys, 0), []
    for path in found:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:  # a shard killed mid-write
            failed.append(f"{path.name}: unreadable ({exc})")
            continue
        for suite in ([root] if root.tag == "testsuite" else root.findall("testsuite")):
            for k in keys:
                totals[k] += int(suite.get(k, 0))
            for case in suite.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
    return {**totals, "files": len(found), "failed": failed}


def bench_summary(paths: list[str] | None) -> list[dict] | None:
    """name, group, median ms and the GB/s, TFLOP/s columns of pytest-benchmark JSON files."""
    found = [Path(p) for p in paths or [] if Path(p).exists()]
    if not found:
        return None
    out = []
    for path in found:
        try:
            out += _bench_entries(json.loads(path.read_text()))
        except (ValueError, KeyError) as exc:  # a run killed mid-write leaves a broken file
            out.append({"name": f"{path.name}: unreadable ({exc})", "group": None, "median_ms": None})
    return out


def _bench_entries(data: dict) -> list[dict]:
    keep = ("GB/s", "TFLOP/s", "bw_fraction", "flop_fraction", "ratio_talan_lora", "speedup_fused_vs_peft",
            "peft_over_base", "max_rel_rms_error")
    return [{"name": b["name"], "group": b.get("group"), "median_ms": b["stats"]["median"] * 1e3,
             **{k: b["extra_info"][k] for k in keep if k in b.get("extra_info", {})}}
            for b in data.get("benchmarks", [])]


def read_steps(path: str | None) -> dict:
    """``steps.tsv``: one ``name<TAB>status`` line per script step."""
    if not path or not Path(path).exists():
        return {}
    return dict(line.split("\t", 1) for line in Path(path).read_text().splitlines() if "\t" in line)


def build_report(rows_doc: dict | None, env: dict, steps: dict, junit: dict | None, bench: list | None,
                 dry_run: bool) -> dict:
    rows = list(rows_doc["rows"]) if rows_doc else []
    have = {r["name"] for r in rows}
    for name in ROWS:
        if name not in have:
            rows.append(skipped(name, "the measurement step did not produce this row (see its log)"))
    return {"env": env, "dry_run": dry_run, "ceilings": (rows_doc or {}).get("ceilings"),
            "dtype": (rows_doc or {}).get("dtype"), "steps": steps, "gpu_tests": junit, "rows": rows,
            "benchmarks": bench, "targets": {n: t for n, (t, _) in ROWS.items() if t is not None},
            "paper_range": list(PAPER_RANGE)}


def _fmt(x, digits=4):
    return "" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))


def to_markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# Benchmark results: {env['device']}, {env['date']}", ""]
    if report["dry_run"]:
        lines += ["**Dry run on a CPU: plumbing check only, these numbers mean nothing.**", ""]
    lines.append(" · ".join(f"{k} {env.get(k)}" for k in ("torch", "triton", "transformers", "peft", "cuda")))
    if env.get("below_floors"):
        lines.append(f"\n**Outside pyproject's requirements (a stack make test does not cover): "
                     f"{'; '.join(env['below_floors'])}.**")
    if report.get("ceilings"):
        c = report["ceilings"]
        lines.append(f"\nMeasured ceilings: copy {c['bandwidth_GB/s']:.0f} GB/s, "
                     f"{c['matmul_dtype']} matmul {c['matmul_TFLOP/s']:.0f} TFLOP/s")
    if report.get("gpu_tests"):
        t = report["gpu_tests"]
        lines.append(f"\nGPU tests: {t['tests']} run, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped ({t.get('files', 1)} junit files)")
        lines += [f"- failed: `{name}`" for name in t.get("failed", [])]
    if report.get("steps"):
        lines.append("\nSteps: " + "; ".join(f"{k}: {v}" for k, v in report["steps"].items()))
    lines += ["", "| row | value (ms) | ratio | target | baseline | note |", "|---|---:|---:|---:|---|---|"]
    for r in report["rows"]:
        note = r.get("skipped") and f"skipped: {r['skipped']}" or r.get("error") and f"error: {r['error']}" or ""
        target = f"≤ {r['target']:.3g}" if r.get("target") else ""
        lines.append(f"| {r['name']} | {_fmt(r['value'])} | {_fmt(r['ratio'])} | {target} | {r['baseline'] or ''} "
                     f"| {note.replace('|', '/').splitlines()[0] if note else ''} |")
    broken_down = [r for r in report["rows"] if isinstance(r.get("detail"), dict) and r["detail"].get("kernels")]
    if broken_down:
        lines += ["", "## Where the time goes (torch.profiler, one profiled run after the timing)"]
        for r in broken_down:
            lines += breakdown_markdown(r["name"], r["detail"]["kernels"])
    if report.get("benchmarks"):
        lines += ["", "## pytest-benchmark (median)", "", "| benchmark | median ms | GB/s | TFLOP/s |",
                  "|---|---:|---:|---:|"]
        for b in report["benchmarks"]:
            lines.append(f"| {b['name']} | {_fmt(b['median_ms'])} | {_fmt(b.get('GB/s'))} | {_fmt(b.get('TFLOP/s'))} |")
    return "\n".join(lines) + "\n"


def result_stem(env: dict) -> str:
    name = env["device"].split(" (")[0] if env["device"].startswith("cpu") else env["device"]
    return f"{env['date']}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"


def write_report(report: dict, out_dir: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(report["env"])
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md.write_text(to_markdown(report))
    return js, md


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measure the rows and write them to --out")
    m.add_argument("--out", required=True)
    m.add_argument("--dry-run", action="store_true", help="tiny shapes, one round: a plumbing check")
    r = sub.add_parser("report", help="write <out-dir>/<date>-<gpu>.json and .md")
    r.add_argument("--rows", default=None)
    r.add_argument("--out-dir", required=True)
    r.add_argument("--junit", action="append", default=[], help="junit XML of the GPU tests (repeatable)")
    r.add_argument("--bench-json", action="append", default=[], help="pytest-benchmark JSON (repeatable)")
    r.add_argument("--steps", default=None)
    r.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "measure":
        doc = measure_rows(args.dry_run, args.out)
        for row in doc["rows"]:
            print(f"{row['name']:40s} ratio {_fmt(row['ratio']):>8s}  {row.get('skipped') or row.get('error') or ''}")
        return 0
    rows_doc = json.loads(Path(args.rows).read_text()) if args.rows and Path(args.rows).exists() else None
    report = build_report(rows_doc, environment(), read_steps(args.steps), junit_counts(args.junit),
                          bench_summary(args.bench_json), args.dry_run)
    js, md = write_report(report, args.out_dir)
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
