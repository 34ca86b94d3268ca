"""``talan export``: merge a trained adapter into its backbone and save it beside TALAN's files.

peft's ``merge_and_unload`` folds ``B A`` (and DoRA's magnitude) into the base weights, so the merged
model runs with no adapter cost; TALAN's blocks survive the merge (SPEC §3). The export folder holds
the merged Hugging Face model (without TALAN's tensors, so a plain ``from_pretrained`` loads it cleanly),
its tokenizer, and ``talan_config.json`` + ``talan_model.safetensors``. Load it with::

    model = talan.load_pretrained(AutoModelForCausalLM.from_pretrained(folder), folder)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import checkpoint as talan_checkpoint
from .checkpoint import load_local_checkpoint
from .patching import unpatch

ADAPTER_CONFIG = "adapter_config.json"


def _check_checkpoint(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"--checkpoint {folder}: no such directory")
    for name in (ADAPTER_CONFIG, talan_checkpoint.CONFIG_NAME, talan_checkpoint.WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"--checkpoint {folder}: {name} is missing; pass a folder that `talan train` "
                                    "wrote (its output directory or a checkpoint-* folder)")


def export_merged(model_path: str | Path, checkpoint: str | Path, out_dir: str | Path,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Load the backbone at ``model_path`` (in ``dtype``), the adapter and TALAN from ``checkpoint``,
    merge the adapter and write the merged model, its tokenizer and TALAN's files into ``out_dir``."""
    from peft import PeftModel

    checkpoint, out = Path(checkpoint), Path(out_dir)
    _check_checkpoint(checkpoint)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out}: the folder is not empty; export into a new one")
    backbone, tokenizer = load_local_checkpoint(model_path, dtype=dtype)
    model = PeftModel.from_pretrained(backbone, checkpoint)
    talan_checkpoint.load_pretrained(model, checkpoint)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    talan_checkpoint.save_pretrained(merged, out)
    unpatch(merged)  # the HF weights without TALAN's: they live in TALAN's own files
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", metavar="PATH", required=True, help="the local backbone the adapter was "
                        "trained on (a Hugging Face checkpoint folder)")
    parser.add_argument("--checkpoint", metavar="DIR", required=True, help="what `talan train` wrote: the output "
                        "directory or a checkpoint-* folder (adapter + TALAN files)")
    parser.add_argument("--out", metavar="DIR", required=True, help="a new folder for the merged model")
    parser.add_argument("--model-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the merged weights (default: float32)")
    return parser


def run_export(args: argparse.Namespace) -> Path:
    out = export_merged(args.model, args.checkpoint, args.out, getattr(torch, args.model_dtype))
    print(f"merged model and TALAN written to {out}; load with "
          f"talan.load_pretrained(AutoModelForCausalLM.from_pretrained('{out}'), '{out}')")
    return out
