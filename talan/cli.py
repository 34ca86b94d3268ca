"""The ``talan`` command: ``demo``, ``report``, ``train``, ``export``, ``study`` and ``analyze``.

Each subcommand is a function ``_cmd_<name>(args) -> int`` and an ``add_parser`` block in
`build_parser`; `main` maps the errors users can cause (a missing path, a malformed data file, a bad
configuration value) to one line on stderr and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .cli_types import positive_int
from .config import TalanConfig
from .hosts import family_summary


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(model_path=args.model, data_path=args.data, steps=args.steps, out_dir=args.out, seed=args.seed,
             batch_size=args.batch_size, progress=not args.no_progress)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import MODEL_PRESETS, budget_table, format_budget_table

    kwargs = {}
    if args.latent_dim is not None:
        kwargs["latent_dim"] = args.latent_dim
    if args.num_slots is not None:
        kwargs["num_slots"] = args.num_slots
    config = TalanConfig(**kwargs)
    presets = args.models or list(MODEL_PRESETS)
    unknown = [m for m in presets if m not in MODEL_PRESETS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_PRESETS)}")
    rows = budget_table(config, lora_rank=args.lora_rank, presets=presets)
    print("Parameter budget (counted on meta-device models; backbone excludes LoRA and TALAN; "
          "percentages are of the backbone)")
    print(format_budget_table(rows, config, args.lora_rank))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import run_study

    run_study(args)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import run_analyze

    run_analyze(args)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    run_train(args)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import run_export

    run_export(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="talan", description="TALAN: Task-Aligned Latent Adaptation Networks "
                                     "for Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"talan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="co-train peft LoRA + TALAN briefly, generate, save and reload",
                          description="Runs offline. With no --model: a tiny random-init Qwen3, a character "
                          "tokenizer and a synthetic key-value recall task.")
    demo.add_argument("--model", metavar="PATH", help="local Hugging Face checkpoint folder, never downloaded; of "
                      f"{family_summary()}")
    demo.add_argument("--data", metavar="FILE.jsonl", help='training data: one {"prompt": ..., "completion": ...} '
                      "per line (default: the synthetic recall task)")
    demo.add_argument("--steps", type=positive_int, default=None, help="training steps (default: 300)")
    demo.add_argument("--batch-size", type=positive_int, default=16)
    demo.add_argument("--out", metavar="DIR", default="runs/demo", help="checkpoint folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=_cmd_demo)

    report = sub.add_parser("report", help="parameter budget of LoRA + TALAN on the Qwen3 and Llama-3.2 configs",
                            description="Builds each published configuration on the meta device (no weights), "
                            "applies peft LoRA on all linear layers and talan.patch, and counts parameters.")
    report.add_argument("--latent-dim", type=positive_int, default=None, help="TALAN latent width r (default 64)")
    report.add_argument("--num-slots", type=positive_int, default=None, help="TALAN memory slots M (default 16)")
    report.add_argument("--lora-rank", type=positive_int, default=16)
    report.add_argument("--models", nargs="+", metavar="NAME", help="a subset of the presets (default: all)")
    report.set_defaults(func=_cmd_report)

    from .train_config import add_train_arguments  # light import; talan.train pulls in transformers.Trainer

    train = sub.add_parser("train", help="SFT of a local checkpoint (Qwen3, Llama or another supported host) with "
                           "a peft adapter (LoRA/DoRA/rsLoRA) + TALAN on transformers.Trainer",
                           description="Runs offline; with no --model, a tiny Qwen3 on the synthetic recall task. "
                           "Flags override --config FILE (YAML/JSON).")
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    from .export import add_export_arguments

    export = sub.add_parser("export", help="merge a trained adapter into its backbone; save it with TALAN's files",
                            description="peft's merge_and_unload, then the merged model (no adapter cost), its "
                            "tokenizer and TALAN's two files in one new folder.")
    add_export_arguments(export)
    export.set_defaults(func=_cmd_export)

    from .analyze import add_analyze_arguments
    from .study import add_study_arguments

    study = sub.add_parser("study", help="LoRA/DoRA/rsLoRA with and without TALAN on synthetic tasks, paired seeds",
                           description="Pretrains (or reuses) a small Qwen3 on synthetic skills, fine-tunes it with "
                           "each adapter with and without TALAN over paired seeds; writes study.json, study.md, PNGs.")
    add_study_arguments(study)
    study.set_defaults(func=_cmd_study)
    analyze = sub.add_parser("analyze", help="adapter update vs TALAN perturbation in a trained checkpoint")
    add_analyze_arguments(analyze)
    analyze.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every get_peft_model;
    # the warning is not about the user's code and would be the first thing the demo prints
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if args.command == "demo" and args.steps is None:
        from .demo import DEFAULT_STEPS

        args.steps = DEFAULT_STEPS
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ImportError, ValueError) as err:
        # errors a user causes with an argument: one clear line, not a traceback
        print(f"talan {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
