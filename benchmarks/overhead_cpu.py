"""TALAN + LoRA vs matched LoRA on the CPU, side by side in one process (issue 2's numbers).

Host: Qwen3-0.6B's width and vocabulary (d=1024, vocab 151936, 16/8 heads of 128, MLP 3072) with
4 layers and random weights; peft LoRA r=16 on all linear layers; TALAN with the default config on
the torch backend, gates opened so the side path really computes.

One model object serves both arms: before each timed call TALAN is patched in (with the same saved
weights) or unpatched, outside the timer, so both arms run on the same weights in the same memory
(two deep copies differ by a few percent from memory placement alone). Rounds alternate the order.
Each call records wall time and the process's CPU time; the CPU time is insensitive to the time the
process waits while other jobs (or a CPU quota) hold the cores. Reported per arm: the median; per
pair: the geometric mean of the per-round ratios with a 95 % interval (normal approximation on
the log ratios), their median, and the ratio of the minima.

    python benchmarks/overhead_cpu.py [--rounds 9] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.models import QWEN3_0_6B, add_lora, decode_fn, open_gates, prefill_fn, qwen3_base  # noqa: E402


class TalanToggle:
    """Patches TALAN into ``model`` with fixed weights, or removes it, between timed calls."""

    def __init__(self, model, config):
        import talan

        self.talan, self.model, self.config = talan, model, config
        talan.patch(model, config)
        open_gates(model)
        self.weights = {i: {k: v.clone() for k, v in b.state_dict().items()}
                        for i, b in talan.patching.talan_blocks(model).items()}
        talan.unpatch(model)

    def set(self, on: bool) -> None:
        patched = self.talan.patching.is_patched(self.model)
        if on and not patched:
            self.talan.patch(self.model, self.config)
            for i, block in self.talan.patching.talan_blocks(self.model).items():
                block.load_state_dict(self.weights[i])
        elif not on and patched:
            self.talan.unpatch(self.model)


class HookClock:
    """Accumulates the wall time spent in TALAN's hook work (the model-level pre-hook, the per-layer
    token context and the block application), by wrapping those methods of the patch class for the
    duration of the benchmark. Its share of a timed call is a low-noise view of TALAN's cost."""

    METHODS = ("on_model_forward", "_context", "_apply")

    def __init__(self):
        from talan.patching import _Patch

        self.cls, self.seconds, self.originals, self.depth = _Patch, 0.0, {}, 0
        for name in self.METHODS:
            original = getattr(_Patch, name)
            self.originals[name] = original
            setattr(_Patch, name, self._wrap(original))

    def _wrap(self, original):
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:  # nested calls (_apply inside a hook) are counted once
                    self.seconds += time.perf_counter() - start

        return timed

    def restore(self) -> None:
        for name, original in self.originals.items():
            setattr(self.cls, name, original)


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def paired_toggle(toggle: TalanToggle, fn, rounds: int) -> dict:
    """Time ``fn`` with TALAN off and on, alternating which goes first each round."""
    for on in (False, True):  # warm-up
        toggle.set(on)
        fn()
    times = {False: [], True: []}
    clock = HookClock()
    try:
        for i in range(rounds):
            for on in ((False, True) if i % 2 == 0 else (True, False)):
                toggle.set(on)
                times[on].append(_timed(fn))
    finally:
        clock.restore()
    toggle.set(False)
    share = clock.seconds / sum(t[0] for t in times[True])
    out = {"talan_hook_share": share, "ratio_implied_by_share": 1.0 / (1.0 - share)}
    for k, clock in enumerate(("wall", "cpu")):
        base = [t[k] for t in times[False]]
        talan = [t[k] for t in times[True]]
        ratios = [a / b for a, b in zip(talan, base)]
        logs = [math.log(r) for r in ratios]
        half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
        mean = statistics.fmean(logs)
        out[clock] = {"lora_s": statistics.median(base), "talan_lora_s": statistics.median(talan),
                      "ratio_median": statistics.median(ratios), "ratio_of_minima": min(talan) / min(base),
                      "ratio_geomean": math.exp(mean), "ratio_ci95": [math.exp(mean - half), math.exp(mean + half)],
                      "ratios": ratios}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="prefill rounds")
    parser.add_argument("--decode-rounds", type=int, default=None, help="decode rounds (default: --rounds)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import talan

    if args.threads:
        torch.set_num_threads(args.threads)
    model = add_lora(qwen3_base({**QWEN3_0_6B, "num_hidden_layers": 4}, seed=0), rank=16, seed=0).eval()
    toggle = TalanToggle(model, talan.TalanConfig(backend="torch"))
    gen = torch.Generator().manual_seed(1)
    prefill_ids = torch.randint(0, 151936, (4, 256), generator=gen)
    prompt = torch.randint(0, 151936, (4, 64), generator=gen)
    results = {
        "host": "Qwen3-0.6B width/vocab, 4 layers, random weights, peft LoRA r=16 all-linear, "
                "TALAN default config (torch backend), fp32",
        "machine": f"{platform.machine()} ({platform.processor() or 'cpu'}), {torch.get_num_threads()} torch threads",
        "versions": {"torch": torch.__version__, "talan": talan.__version__},
        "date": time.strftime("%Y-%m-%d"),
        "rounds": {"prefill": args.rounds, "decode": args.decode_rounds or args.rounds},
        "prefill_4x256": paired_toggle(toggle, prefill_fn(model, prefill_ids), args.rounds),
        "decode_4x(64+32)": paired_toggle(toggle, decode_fn(model, prompt, 32), args.decode_rounds or args.rounds),
    }
    for name in ("prefill_4x256", "decode_4x(64+32)"):
        share = results[name]["talan_hook_share"]
        print(f"{name:17s} time inside TALAN's hooks: {100 * share:.2f} % of the LoRA+TALAN calls "
              f"(implied ratio {results[name]['ratio_implied_by_share']:.4f})")
        for clock in ("wall", "cpu"):
            r = results[name][clock]
            print(f"{name:17s} {clock:4s}  LoRA {r['lora_s'] * 1e3:8.1f} ms  "
                  f"LoRA+TALAN {r['talan_lora_s'] * 1e3:8.1f} ms  "
                  f"ratio: geomean {r['ratio_geomean']:.4f} [{r['ratio_ci95'][0]:.4f}, {r['ratio_ci95'][1]:.4f}]  "
                  f"median {r['ratio_median']:.4f}  of minima {r['ratio_of_minima']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
