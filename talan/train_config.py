"""The arguments of ``talan train``: command-line flags, a YAML/JSON config file and the defaults.

Precedence: a flag given on the command line, then the config file (``--config``), then the
defaults. Every flag defaults to ``None`` in the parser so that `resolve_settings` can tell a flag
the user typed from one they left out; the real defaults live in `DEFAULTS` (and `EMBEDDED_DEFAULTS`
for the embedded tiny model, which needs a higher learning rate and a fixed number of steps).

A config file holds a flat mapping of the flags' names, with underscores or dashes
(``num_slots: 8`` or ``num-slots: 8``); its values are checked like the flags' (types, choices).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from talan_kernels.side_path import MIXERS, WRITEBACKS

from .cli_types import non_negative_float, non_negative_int, positive_int
from .config import BACKENDS, SITES, TRAINABLE_SCOPES, TalanConfig
from .hosts import family_summary

ADAPTERS = ("lora", "dora", "rslora")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MODEL_DTYPES = ("float32", "bfloat16", "float16")

_TALAN_DEFAULTS = TalanConfig()
DEFAULTS = {
    "model": None, "data": None, "eval_data": None, "eval_steps": None, "output_dir": "runs/train",
    "resume_from_checkpoint": None,
    "max_length": 1024, "num_examples": 2000,
    "layer": _TALAN_DEFAULTS.layer, "site": _TALAN_DEFAULTS.site, "num_slots": _TALAN_DEFAULTS.num_slots,
    "latent_dim": _TALAN_DEFAULTS.latent_dim, "mixer": _TALAN_DEFAULTS.mixer,
    "writeback": _TALAN_DEFAULTS.writeback, "trainable": _TALAN_DEFAULTS.trainable,
    "grad_scale": _TALAN_DEFAULTS.grad_scale, "backend": _TALAN_DEFAULTS.backend,
    "adapter": "lora", "rank": 16, "alpha": None, "dropout": 0.0, "target_modules": "all-linear",
    "learning_rate": 2e-4, "talan_lr": None, "weight_decay": 0.0, "batch_size": 8, "grad_accum": 1,
    "max_steps": None, "num_epochs": 1.0, "warmup_steps": 0, "lr_scheduler": "cosine", "max_grad_norm": 1.0,
    "seed": 0, "save_steps": 500, "save_total_limit": None, "logging_steps": 10,
    "gradient_checkpointing": False, "bf16": False, "use_cpu": None, "ddp_find_unused_parameters": False,
    "progress": True, "deepspeed": None, "fused_lora": None, "packing": False, "model_dtype": "float32",
    "fsdp": False, "fsdp_config": None, "load_in_4bit": False, "load_in_8bit": False, "optim": None,
}
# No --model: the embedded tiny Qwen3 (random init) on the synthetic recall task, well under a minute on a CPU.
EMBEDDED_DEFAULTS = {"learning_rate": 1e-2, "max_steps": 200, "save_steps": 100, "warmup_steps": 10,
                     "rank": 8, "max_length": 256}


def _layer_item(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer: expected an int index or a float in [0, 1], got {text!r}") from None


def parse_layer(text) -> int | float | tuple:
    """``"0.5"`` -> 0.5, ``"-1"`` -> -1, ``"0,2"`` -> (0, 2); a number or a list (from a config file) as is."""
    if isinstance(text, (list, tuple)):
        return tuple(text)
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    items = [_layer_item(part) for part in str(text).split(",")]
    return items[0] if len(items) == 1 else tuple(items)


def _target_modules(text):
    """``all-linear`` (peft's keyword) or a comma-separated list of module names."""
    if isinstance(text, (list, tuple)):
        return list(text)
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("target-modules: expected 'all-linear' or comma-separated module names")
    return names[0] if names == ["all-linear"] else names


def _default_help(dest: str) -> str:
    value = DEFAULTS[dest]
    embedded = EMBEDDED_DEFAULTS.get(dest)
    text = f"default: {value}"
    return text + (f"; {embedded} with the embedded model" if embedded is not None else "")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``talan train`` flags to ``parser`` (every default is None; see `resolve_settings`)."""
    parser.set_defaults(**{dest: None for dest in DEFAULTS})
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of flag values (flags override it)")

    io = parser.add_argument_group("model and data")
    io.add_argument("--model", metavar="PATH", help="local Hugging Face checkpoint folder, never downloaded (default: "
                    f"an embedded tiny Qwen3 with a character tokenizer); of {family_summary()}")
    io.add_argument("--model-dtype", choices=MODEL_DTYPES, help="dtype of the backbone's (frozen) weights; the "
                    "adapter and TALAN train in fp32 whatever it is (default: float32)")
    io.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, help="QLoRA: load --model's linear "
                    "weights as bitsandbytes 4-bit NF4 (double quantisation) that compute in --model-dtype, prepared "
                    "as peft's prepare_model_for_kbit_training does; the adapter and TALAN train in fp32 (one "
                    "process or DDP)")
    io.add_argument("--load-in-8bit", action=argparse.BooleanOptionalAction, help="load --model's linear weights as "
                    "bitsandbytes int8, prepared likewise")
    io.add_argument("--data", metavar="FILE", help="training data, .jsonl or .parquet: prompt/completion pairs or "
                    "chat 'messages' lists (default: the synthetic key-value recall task)")
    io.add_argument("--eval-data", metavar="FILE", help="held-out data in the same formats: its completion loss "
                    "(eval_loss) every --eval-steps and at the end")
    io.add_argument("--eval-steps", type=positive_int, help="optimizer steps between evaluations (default: "
                    "--save-steps)")
    io.add_argument("--packing", action=argparse.BooleanOptionalAction, help="each batch as one row with no "
                    "padding, position ids restarting per example (attention and TALAN's memory restart there)")
    io.add_argument("--output-dir", metavar="DIR", help=_default_help("output_dir"))
    io.add_argument("--resume-from-checkpoint", metavar="DIR", help="a checkpoint-* folder of an earlier run "
                    "(adapter, TALAN, optimizer and RNG state)")
    io.add_argument("--max-length", type=positive_int, help="tokens per example; a longer prompt loses its start "
                    f"({_default_help('max_length')})")
    io.add_argument("--num-examples", type=positive_int, help="size of the synthetic task "
                    f"({_default_help('num_examples')})")

    block = parser.add_argument_group("TALAN block (SPEC §1)")
    block.add_argument("--layer", type=parse_layer, help="decoder layer: int index, float fraction of the depth, "
                       f"or a comma-separated list ({_default_help('layer')})")
    block.add_argument("--site", choices=SITES, help=_default_help("site"))
    block.add_argument("--num-slots", type=positive_int, help=_default_help("num_slots"))
    block.add_argument("--latent-dim", type=positive_int, help=_default_help("latent_dim"))
    block.add_argument("--mixer", choices=MIXERS, help=_default_help("mixer"))
    block.add_argument("--writeback", choices=WRITEBACKS, help=_default_help("writeback"))
    block.add_argument("--trainable", choices=TRAINABLE_SCOPES, help=_default_help("trainable"))
    block.add_argument("--grad-scale", type=non_negative_float, help=_default_help("grad_scale"))
    block.add_argument("--backend", choices=BACKENDS, help=_default_help("backend"))

    adapter = parser.add_argument_group("adapter (peft)")
    adapter.add_argument("--adapter", choices=ADAPTERS, help=_default_help("adapter"))
    adapter.add_argument("--rank", type=positive_int, help=_default_help("rank"))
    adapter.add_argument("--alpha", type=non_negative_float, help="default: 2 * rank")
    adapter.add_argument("--dropout", type=non_negative_float, help=_default_help("dropout"))
    adapter.add_argument("--fused-lora", action=argparse.BooleanOptionalAction,
                         help="run the adapter's peft layers on talan's fused LoRA/DoRA kernels (enable_fused_lora, "
                         "with --backend; under --bf16 in bf16, as autocast runs peft's); a layer falls back to "
                         "peft's forward while dropout is active. Default: on when training on a CUDA device "
                         "without FSDP or ZeRO-3, which shard the base weights the fused op reads")
    adapter.add_argument("--target-modules", type=_target_modules, metavar="NAMES",
                         help="'all-linear' or comma-separated module names (default: all-linear)")

    opt = parser.add_argument_group("optimisation (transformers.Trainer)")
    opt.add_argument("--learning-rate", type=non_negative_float, help=f"adapter lr ({_default_help('learning_rate')})")
    opt.add_argument("--talan-lr", type=non_negative_float, help="lr of the TALAN parameter group "
                     "(default: --learning-rate)")
    opt.add_argument("--weight-decay", type=non_negative_float, help=_default_help("weight_decay"))
    opt.add_argument("--optim", metavar="NAME", help="Trainer's optimizer (TrainingArguments.optim), e.g. "
                     "adamw_torch, or paged_adamw_8bit for QLoRA (default: Trainer's); TALAN keeps its param group")
    opt.add_argument("--batch-size", type=positive_int, help=f"per device ({_default_help('batch_size')})")
    opt.add_argument("--grad-accum", type=positive_int, help=_default_help("grad_accum"))
    opt.add_argument("--max-steps", type=positive_int, help="optimizer steps (default: --num-epochs over the "
                     f"data; {EMBEDDED_DEFAULTS['max_steps']} with the embedded model)")
    opt.add_argument("--num-epochs", type=non_negative_float, help=_default_help("num_epochs"))
    opt.add_argument("--warmup-steps", type=non_negative_int, help=_default_help("warmup_steps"))
    opt.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, help=_default_help("lr_scheduler"))
    opt.add_argument("--max-grad-norm", type=non_negative_float, help=_default_help("max_grad_norm"))
    opt.add_argument("--seed", type=int, help=_default_help("seed"))
    opt.add_argument("--save-steps", type=positive_int, help=_default_help("save_steps"))
    opt.add_argument("--save-total-limit", type=positive_int, help="keep at most this many checkpoints")
    opt.add_argument("--logging-steps", type=positive_int, help=_default_help("logging_steps"))
    opt.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    opt.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 mixed precision")
    opt.add_argument("--ddp-find-unused-parameters", action=argparse.BooleanOptionalAction,
                     help="DDP only; every adapter and TALAN parameter gets a gradient each step, so off by default")
    opt.add_argument("--use-cpu", action=argparse.BooleanOptionalAction, help="train on the CPU (default: when "
                     "no CUDA device is present; it is what makes a torchrun launch on CPUs use DDP over gloo)")
    opt.add_argument("--fsdp", action=argparse.BooleanOptionalAction, help="shard with FSDP2, as Trainer's --fsdp "
                     "(launch with torchrun; accelerate runs FSDP on GPUs only)")
    opt.add_argument("--fsdp-config", metavar="FILE", help="Trainer's fsdp_config, a JSON file (with --fsdp)")
    opt.add_argument("--deepspeed", metavar="FILE", help="DeepSpeed JSON config, as Trainer's --deepspeed (ZeRO-3 "
                     "needs stage3_gather_16bit_weights_on_model_save: true, so checkpoints hold full weights); "
                     "launch with torchrun or the deepspeed launcher")
    opt.add_argument("--progress", action=argparse.BooleanOptionalAction, help="show the progress bar "
                     "(default: on)")
    return parser


def _actions() -> dict[str, argparse.Action]:
    parser = add_train_arguments(argparse.ArgumentParser(add_help=False))
    return {action.dest: action for action in parser._actions if action.dest in DEFAULTS}


def _coerce(action: argparse.Action, value, where: str):
    """A config-file value checked like the flag's: its type, choices, or a bool for on/off flags."""
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if action.type in (parse_layer, _target_modules) and isinstance(value, list):
        return action.type(value)
    if isinstance(value, (dict, list)) or isinstance(value, bool) and action.type is not None:
        raise ValueError(f"{where}: expected a single value, got {value!r}")
    if action.type is not None:
        try:
            value = action.type(str(value))
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"{where}: {err}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where}: must be one of {tuple(action.choices)}; got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (.yaml/.yml) or JSON (.json) mapping of flag names to values, checked like the flags."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # PyYAML is a dependency of transformers, peft and accelerate

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
    else:
        raise ValueError(f"--config {path}: expected a .yaml, .yml or .json file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values, got {type(raw).__name__}")
    actions = _actions()
    values = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:  # the settings only: not --config itself
            known = ", ".join(sorted(actions))
            raise ValueError(f"{path}: unknown setting {key!r}; known: {known}")
        values[dest] = _coerce(actions[dest], value, f"{path}: {key}")
    return values


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Every setting with its value: the flag if given, else the config file's, else the default."""
    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    embedded = (getattr(args, "model", None) or from_file.get("model")) is None
    defaults = {**DEFAULTS, **(EMBEDDED_DEFAULTS if embedded else {})}
    settings = {}
    for dest, default in defaults.items():
        flag = getattr(args, dest, None)
        if flag is not None:
            settings[dest] = flag
        elif from_file.get(dest) is not None:
            settings[dest] = from_file[dest]
        else:
            settings[dest] = default
    if settings["alpha"] is None:
        settings["alpha"] = 2.0 * settings["rank"]
    if settings["talan_lr"] is None:
        settings["talan_lr"] = settings["learning_rate"]
    settings["embedded"] = embedded
    settings["config"] = getattr(args, "config", None)
    return argparse.Namespace(**settings)


def talan_config_from(settings: argparse.Namespace) -> TalanConfig:
    """The `TalanConfig` of the resolved settings (raises `ValueError` naming a bad field)."""
    return TalanConfig(layer=settings.layer, site=settings.site, num_slots=settings.num_slots,
                       latent_dim=settings.latent_dim, mixer=settings.mixer, writeback=settings.writeback,
                       trainable=settings.trainable, grad_scale=settings.grad_scale, backend=settings.backend)
