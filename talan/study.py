"""`talan study`: the paper's adapter-vs-adapter+TALAN table at a scale a laptop CPU runs.

1. Pretrain a small Qwen3 (built from a config, character vocabulary) on the pretraining skills of
   `talan.study_tasks`; cache it under ``<out>/backbone`` (an HF folder, reused when its recorded
   settings match).
2. Fine-tune it on the mixture of the targeted tasks with peft LoRA, DoRA and rsLoRA, each with and
   without TALAN, for every seed. A seed fixes the adapter initialisation and the data order, and
   TALAN's blocks are created after the adapter (peft first, then `talan.patch`, SPEC §3), so within
   a pair TALAN is the only difference (checked: the adapter-init checksum is stored per run).
3. Score exact match of greedy generation with the KV cache on held-out sets of every targeted task
   and, for non-regression, of every pretraining skill.
4. Write ``study.json``, ``study.md`` (the table: paired differences with a t-interval over seeds)
   and PNG plots (`talan.study_report`), and keep one trained TALAN checkpoint per adapter kind under
   ``<out>/checkpoints/<kind>_talan`` for `talan analyze`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
import warnings
from pathlib import Path

import torch

from . import data as talan_data
from . import study_tasks
from .cli_types import positive_int
from .config import TalanConfig

ADAPTERS = ("lora", "dora", "rslora")
# d=128, 4 layers: big enough to learn most pretraining skills in ~1k steps, small enough that a
# LoRA step on a batch of 32 costs ~0.1 s on one (shared) CPU core.
BACKBONE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, max_position_embeddings=128, tie_word_embeddings=True,
                rms_norm_eps=1e-6)
DEFAULTS = dict(seeds=5, steps=200, batch_size=32, lr=3e-3, talan_lr=1e-2, lora_rank=8, n_train=3000, n_eval=150,
                n_eval_pretrain=100, pretrain_steps=1200, pretrain_batch_size=64, pretrain_lr=3e-3,
                pretrain_n_train=20000)
QUICK = dict(seeds=2, steps=30, n_train=300, n_eval=32, n_eval_pretrain=16, pretrain_steps=100,
             pretrain_batch_size=32, pretrain_n_train=3000)
CHECKPOINT_META = "study_checkpoint.json"
BACKBONE_META = "study_backbone.json"
EVAL_PROMPTS = "eval_prompts.jsonl"
DATA_SEED = 1234  # the task data is the same for every seed: a seed varies init and order only


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``talan study``; values left at None take the default (or the --quick) setting."""
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder (default: runs/study, or runs/study-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, fewer steps, smaller sets (about 3 minutes)")
    parser.add_argument("--seeds", type=positive_int, default=None, help="paired seeds (default 5; quick 2)")
    parser.add_argument("--steps", type=positive_int, default=None, help="fine-tuning steps per run (default 200)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="fine-tuning batch (default 32)")
    parser.add_argument("--lr", type=float, default=None, help="adapter learning rate (default 3e-3)")
    parser.add_argument("--talan-lr", type=float, default=None,
                        help="TALAN learning rate (default 1e-2: its own param group, SPEC §1)")
    parser.add_argument("--lora-rank", type=positive_int, default=None, help="adapter rank (default 8)")
    parser.add_argument("--adapters", nargs="+", choices=ADAPTERS, default=list(ADAPTERS), metavar="KIND",
                        help=f"adapter kinds, each run with and without TALAN (default: all of {ADAPTERS})")
    parser.add_argument("--tasks", nargs="+", choices=list(study_tasks.TARGET_TASKS),
                        default=list(study_tasks.TARGET_TASKS), metavar="TASK",
                        help=f"targeted tasks (default: all of {list(study_tasks.TARGET_TASKS)})")
    parser.add_argument("--pretrain-steps", type=positive_int, default=None,
                        help="backbone pretraining steps (default 1200; quick 100)")
    parser.add_argument("--layer", type=float, default=0.5, help="TALAN insertion layer as a fraction of the depth")
    parser.add_argument("--site", choices=("pre", "mid", "post"), default="mid", help="TALAN insertion site")
    parser.add_argument("--num-slots", type=positive_int, default=8, help="TALAN memory slots M (default 8)")
    parser.add_argument("--latent-dim", type=positive_int, default=16,
                        help="TALAN latent width r (default 16: under 1 %% of the backbone, as in the paper)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads during the study (default 1: tiny ops do not gain from more)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _settings(args: argparse.Namespace) -> dict:
    settings = dict(DEFAULTS)
    if args.quick:
        settings.update(QUICK)
    for key in ("seeds", "steps", "batch_size", "lr", "talan_lr", "lora_rank", "pretrain_steps"):
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    for key in ("lr", "talan_lr"):
        if not settings[key] > 0 or not math.isfinite(settings[key]):
            raise ValueError(f"--{key.replace('_', '-')} must be a positive number; got {settings[key]}")
    unknown = [a for a in args.adapters if a not in ADAPTERS]
    if unknown:
        raise ValueError(f"unknown adapter kind(s) {unknown}; known: {', '.join(ADAPTERS)}")
    unknown = [t for t in args.tasks if t not in study_tasks.TARGET_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(study_tasks.TARGET_TASKS)}")
    settings.update(adapters=list(dict.fromkeys(args.adapters)), tasks=list(dict.fromkeys(args.tasks)),
                    talan=TalanConfig(layer=args.layer, site=args.site, num_slots=args.num_slots,
                                      latent_dim=args.latent_dim, backend="torch").to_dict())
    settings["talan"].pop("talan_version")
    return settings


# ---- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def exact_match(model, tokenizer, examples: list[dict], batch_size: int = 128) -> float:
    """Fraction of ``examples`` whose greedy completion (``generate`` with the KV cache) is exact."""
    from .demo import _generate

    if not examples:
        raise ValueError("exact_match needs at least one example")
    max_new = max(len(ex["completion"]) for ex in examples) + 1
    hits = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        outputs = _generate(model, tokenizer, chunk, max_new_tokens=max_new)
        hits += sum(out == ex["completion"] for out, ex in zip(outputs, chunk))
    return hits / len(examples)


def _scores(model, tokenizer, held_out: dict[str, list[dict]]) -> dict[str, float]:
    return {task: exact_match(model, tokenizer, examples) for task, examples in held_out.items()}


def _lr_scale(step: int, steps: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


# ---- the backbone ----------------------------------------------------------------------------
def _new_backbone(tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **BACKBONE)
    return Qwen3ForCausalLM(config).float()


def _backbone_settings(settings: dict) -> dict:
    keys = ("pretrain_steps", "pretrain_batch_size", "pretrain_lr", "pretrain_n_train", "n_eval_pretrain")
    return {"architecture": BACKBONE, "skills": list(study_tasks.PRETRAIN_SKILLS), "tokenizer": "char",
            "data_seed": DATA_SEED, **{k: settings[k] for k in keys}}


def load_backbone(folder: str | Path):
    """A cached study backbone (an HF folder) in fp32, frozen, eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar of a 1 MB model is noise
    try:
        model = AutoModelForCausalLM.from_pretrained(Path(folder), local_files_only=True, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False)
    return model.eval()


def prepare_backbone(folder: Path, settings: dict, tokenizer, progress: bool) -> dict:
    """Pretrain the backbone into ``folder`` unless it already holds one made with the same settings.

    Returns the backbone's record: its settings, its held-out skill accuracies and whether it was cached.
    """
    from tqdm.auto import tqdm

    wanted = _backbone_settings(settings)
    meta_path = folder / BACKBONE_META
    if meta_path.is_file() and (folder / "config.json").is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == wanted:
            print(f"talan study: reusing the cached backbone in {folder}")
            return {**meta, "cached": True}
        print(f"talan study: {folder} holds a backbone made with other settings; pretraining a new one")
    start = time.perf_counter()
    skills = list(study_tasks.PRETRAIN_SKILLS)
    per_skill = settings["pretrain_n_train"] // len(skills)
    train, held_out = study_tasks.splits(skills, per_skill, settings["n_eval_pretrain"], DATA_SEED)
    torch.manual_seed(DATA_SEED)
    model = _new_backbone(tokenizer).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["pretrain_lr"], weight_decay=0.01)
    stream = talan_data.batches(train, settings["pretrain_batch_size"], seed=DATA_SEED)
    steps = settings["pretrain_steps"]
    bar = tqdm(range(steps), desc="pretraining the backbone", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = settings["pretrain_lr"] * _lr_scale(step, steps, warmup=min(100, steps // 10 + 1))
        loss = model(**talan_data.collate(next(stream), tokenizer)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    accuracy = _scores(model, tokenizer, held_out)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    meta = {"settings": wanted, "skill_accuracy": accuracy, "final_loss": loss.item(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - start, 1)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"talan study: backbone pretrained in {meta['seconds']} s, skill accuracy "
          + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    return {**meta, "cached": False}


# ---- one fine-tuning run ---------------------------------------------------------------------
def build_model(backbone, kind: str, rank: int, talan_config: TalanConfig | None):
    """peft adapter of ``kind`` on every linear layer, then TALAN when ``talan_config`` is given."""
    from peft import LoraConfig, get_peft_model

    import talan

    from .hosts import all_linear_excludes

    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {kind!r}; known: {', '.join(ADAPTERS)}")
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                      use_dora=kind == "dora", use_rslora=kind == "rslora", **all_linear_excludes(backbone))
    model = get_peft_model(backbone, lora)
    if talan_config is not None:
        talan.patch(model, talan_config)
    return model


def _adapter_checksum(model) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.encode())
            digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def finetune(backbone, backbone_dir: Path, kind: str, use_talan: bool, seed: int, settings: dict, tokenizer,
             train: list, held_out: dict, skills_held_out: dict, bar=None, save_to: Path | None = None) -> dict:
    """Train one (adapter kind, TALAN or not, seed) run and score it; optionally save its checkpoint."""
    import talan

    from .report import parameter_report

    start = time.perf_counter()
    torch.manual_seed(seed)
    talan_config = TalanConfig(**settings["talan"]) if use_talan else None
    model = build_model(copy.deepcopy(backbone), kind, settings["lora_rank"], talan_config)
    checksum = _adapter_checksum(model)
    talan_ids = {id(p) for p in talan.talan_parameters(model)} if use_talan else set()
    adapter_params = [p for p in model.parameters() if p.requires_grad and id(p) not in talan_ids]
    groups = [{"params": adapter_params, "lr": settings["lr"]}]
    if use_talan:
        groups.append({"params": [p for p in talan.talan_parameters(model) if p.requires_grad],
                       "lr": settings["talan_lr"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    params = [p for g in groups for p in g["params"]]
    stream = talan_data.batches(train, settings["batch_size"], seed=seed)
    steps = settings["steps"]
    model.train()
    losses = []
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * _lr_scale(step, steps, warmup=min(20, steps // 10 + 1))
        loss = model(**talan_data.collate(next(stream), tokenizer)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(run=f"{kind}{'+talan' if use_talan else ''} s{seed}", loss=f"{losses[-1]:.3f}")
    model.eval()
    result = {"adapter": kind, "talan": use_talan, "seed": seed, "adapter_init_checksum": checksum,
              "accuracy": _scores(model, tokenizer, held_out),
              "skill_accuracy": _scores(model, tokenizer, skills_held_out),
              "final_train_loss": sum(losses[-20:]) / len(losses[-20:]),
              "parameters": parameter_report(model)}
    if save_to is not None:
        save_checkpoint(model, save_to, backbone_dir, kind, held_out)
        result["checkpoint"] = str(save_to)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def save_checkpoint(model, folder: Path, backbone_dir: Path, kind: str, held_out: dict, per_task: int = 32) -> None:
    """The peft adapter and TALAN side by side, plus what `talan analyze` needs to find the backbone and
    evaluation prompts (``study_checkpoint.json``, ``eval_prompts.jsonl``)."""
    import talan

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    talan.save_pretrained(model, folder)
    meta = {"backbone": str(Path(backbone_dir).resolve()), "adapter": kind, "tasks": list(held_out),
            "tokenizer": "char"}
    (folder / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")
    with (folder / EVAL_PROMPTS).open("w") as f:
        for examples in held_out.values():
            for ex in examples[:per_task]:
                f.write(json.dumps(ex) + "\n")


# ---- the study -------------------------------------------------------------------------------
def run_study(args: argparse.Namespace) -> dict:
    """Run the whole study; returns the ``study.json`` content (with ``files``: what was written)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return _run_study(args)
    finally:
        torch.set_num_threads(threads)


def _run_study(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    from . import study_report

    start = time.perf_counter()
    settings = _settings(args)
    out = Path(args.out or ("runs/study-quick" if args.quick else "runs/study"))
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    tokenizer = talan_data.CharTokenizer()
    backbone_dir = out / "backbone"
    backbone = prepare_backbone(backbone_dir, settings, tokenizer, progress)

    per_task = settings["n_train"]
    train, held_out = study_tasks.splits(settings["tasks"], per_task, settings["n_eval"], DATA_SEED)
    skills = list(study_tasks.PRETRAIN_SKILLS)
    _, skills_held_out = study_tasks.splits(skills, settings["pretrain_n_train"] // len(skills),
                                            settings["n_eval_pretrain"], DATA_SEED)
    base_model = load_backbone(backbone_dir)  # every run adapts a fresh copy of it
    baseline = {"accuracy": _scores(base_model, tokenizer, held_out),
                "skill_accuracy": _scores(base_model, tokenizer, skills_held_out)}

    seeds = list(range(settings["seeds"]))
    plan = [(kind, seed, use_talan) for kind in settings["adapters"] for seed in seeds for use_talan in (False, True)]
    print(f"talan study: {len(plan)} runs ({', '.join(settings['adapters'])} x {{plain, +TALAN}} x "
          f"{len(seeds)} seeds), {settings['steps']} steps of batch {settings['batch_size']} each, "
          f"tasks {', '.join(settings['tasks'])}")
    runs = []
    bar = tqdm(total=len(plan) * settings["steps"], desc="fine-tuning", disable=not progress, mininterval=1.0)
    for kind, seed, use_talan in plan:
        save_to = out / "checkpoints" / f"{kind}_talan" if use_talan and seed == seeds[0] else None
        runs.append(finetune(base_model, backbone_dir, kind, use_talan, seed, settings, tokenizer, train, held_out,
                             skills_held_out, bar=bar, save_to=save_to))
    bar.close()

    for kind in settings["adapters"]:
        for seed in seeds:
            pair = [r for r in runs if r["adapter"] == kind and r["seed"] == seed]
            if pair[0]["adapter_init_checksum"] != pair[1]["adapter_init_checksum"]:
                raise RuntimeError(f"{kind} seed {seed}: the paired runs started from different adapter weights")

    result = {"settings": settings, "backbone": {"folder": str(backbone_dir), **backbone}, "baseline": baseline,
              "runs": runs, "summary": study_report.summarize(runs, settings, baseline),
              "command": "talan study" + (" --quick" if args.quick else ""),
              "seconds": round(time.perf_counter() - start, 1)}
    files = study_report.write_outputs(result, out)
    result["files"] = [str(f) for f in files]
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    print((out / "study.md").read_text())
    print(f"talan study: done in {result['seconds']} s; wrote {', '.join(str(f) for f in files)}")
    return result
