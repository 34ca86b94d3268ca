"""Shared pieces of the `talan train` tests (test_train.py, test_train_distributed.py)."""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from talan.train import add_train_arguments, run_train

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
TALAN_FILES = {"talan_config.json", "talan_model.safetensors"}
# a few steps of the embedded default with a small block: about a second per run
FAST = ["--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "--num-examples", "64",
        "--latent-dim", "8", "--num-slots", "4", "--logging-steps", "100", "--no-progress"]
# persistence threshold 0: ZeRO-3 partitions every parameter (by default it keeps the small ones, all of
# TALAN's and the adapter's at this size, whole on every process)
DEEPSPEED_ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                                         "stage3_param_persistence_threshold": 0},
                   "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                   "gradient_clipping": "auto"}


def parse_train(*argv):
    return add_train_arguments(argparse.ArgumentParser(prog="talan train")).parse_args(list(argv))


def train(out_dir, *flags):
    return run_train(parse_train("--output-dir", str(out_dir), *FAST, *flags))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def saved_weights(run: Path) -> dict[str, torch.Tensor]:
    """The adapter's and TALAN's tensors a run (or one of its checkpoints) wrote."""
    return {**load_file(run / "talan_model.safetensors"), **load_file(run / "adapter_model.safetensors")}
