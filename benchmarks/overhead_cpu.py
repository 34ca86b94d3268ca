"""TALAN + LoRA vs matched LoRA on the CPU, side by side in one process (issue 2's numbers).

Host: Qwen3-0.6B's width and vocabulary (d=1024, vocab 151936, 16/8 heads of 128, MLP 3072) with
4 layers and random weights; peft LoRA r=16 on all linear layers; TALAN with the default config on
the torch backend, gates opened so the side path really computes. The two models are copies with
the same LoRA weights; rounds alternate them and the reported ratio is the median of per-round
ratios, so drift in the machine's speed cancels.

    python benchmarks/overhead_cpu.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import paired_ratio  # noqa: E402
from benchmarks.models import build_pair  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    lora, with_talan = build_pair()
    gen = torch.Generator().manual_seed(1)
    prefill_ids = torch.randint(0, 151936, (4, 256), generator=gen)
    prompt = torch.randint(0, 151936, (4, 64), generator=gen)

    @torch.no_grad()
    def prefill(model):
        return lambda: model(input_ids=prefill_ids, attention_mask=torch.ones_like(prefill_ids), use_cache=False)

    @torch.no_grad()
    def decode(model):
        return lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                      min_new_tokens=32, do_sample=False, pad_token_id=0)

    results = {
        "host": "Qwen3-0.6B width/vocab, 4 layers, LoRA r=16 all-linear, TALAN default (torch backend)",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "prefill_4x256": paired_ratio(prefill(lora), prefill(with_talan), args.rounds),
        "decode_4x(64+32)": paired_ratio(decode(lora), decode(with_talan), args.rounds),
    }
    for name in ("prefill_4x256", "decode_4x(64+32)"):
        r = results[name]
        print(f"{name:18s} LoRA {r['base_s'] * 1e3:8.1f} ms   LoRA+TALAN {r['talan_s'] * 1e3:8.1f} ms   "
              f"ratio {r['ratio']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
