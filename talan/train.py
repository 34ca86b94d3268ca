"""``talan train``: SFT of a local checkpoint (Qwen3, Llama or another family in ``talan.hosts.FAMILIES``) with a
peft adapter (LoRA, DoRA, rsLoRA) + TALAN.

Built on `transformers.Trainer`, so ``accelerate launch`` and ``torchrun`` (DDP) work as with any
Trainer script. It runs `talan.trainer.TalanTrainer`: the TALAN parameters in param groups of their own
(``--talan-lr``), TALAN's files in every checkpoint and beside the final adapter, and resuming that
restores them.

Data: a JSONL or Parquet file of ``{"prompt", "completion"}`` pairs or of chat ``{"messages": [...]}``
lists, rendered with the tokenizer's chat template when it has one (else ``"role: content"`` lines);
the loss covers the completion (the final assistant message) and its eos only. Batching, left
padding and label masking are `talan.data.collate`'s.

With no ``--model``: a tiny random-init Qwen3, the character tokenizer and the synthetic recall task
of `talan.data`, on the CPU in well under a minute.

Checked: one process (CPU/GPU), DDP (``torchrun``; on a machine without a GPU ``use_cpu`` is set so that the
processes synchronise over gloo), DeepSpeed ZeRO-3 (``--deepspeed``; on the CPU too, where DeepSpeed picks its
CPU accelerator) and FSDP2 (``--fsdp``, or ``accelerate launch --use_fsdp``). Under FSDP and ZeRO-3 TALAN's
files are written from the gathered state dict. The tests run ZeRO-3 and FSDP2 on two CPU processes against
DDP; for FSDP they force accelerate's FSDP path, which it takes for GPU processes only (CPU ones would fall
back to DDP; an unforced FSDP run on CPU processes is refused before its first step,
`_check_fsdp_took_effect`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import checkpoint as talan_checkpoint
from . import data as talan_data
from .checkpoint import load_local_checkpoint
from .train_config import add_train_arguments, resolve_settings, talan_config_from
from .trainer import TalanCheckpointCallback, TalanTrainer, TalanTrainerMixin, talan_tensors_from_state_dict

__all__ = ["TalanCheckpointCallback", "TalanTrainer", "TalanTrainerMixin", "add_train_arguments", "load_examples",
           "run_train", "talan_tensors_from_state_dict"]


# ---- data ------------------------------------------------------------------------------------------
def _render_chat(messages, tokenizer, where: str) -> dict:
    """A ``messages`` list -> prompt (every message before the last) and completion (the last, an assistant's)."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError(f"{where}: 'messages' must be a list of at least 2 messages (a prompt and the assistant's "
                         "reply)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: message {i} must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message is the completion and must have role 'assistant', "
                         f"got {messages[-1]['role']!r}")
    if not messages[-1]["content"]:
        raise ValueError(f"{where}: the final assistant message is empty, so the example would carry no loss")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if full.startswith(prompt):
            completion = full[len(prompt):].rstrip()
            eos = getattr(tokenizer, "eos_token", None)
            if eos and completion.endswith(eos):  # collate appends the eos token itself
                completion = completion[:-len(eos)]
            if completion:
                return {"prompt": prompt, "completion": completion}
        return {"prompt": prompt, "completion": messages[-1]["content"]}
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + "assistant: "
    return {"prompt": prompt, "completion": messages[-1]["content"]}


def _to_example(record, tokenizer, where: str) -> dict:
    if isinstance(record, dict) and "messages" in record:
        return _render_chat(record["messages"], tokenizer, where)
    return talan_data.prompt_completion(record, where, also_accepted="a chat 'messages' list")


def _first_jsonl_record(path: Path):
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None  # talan.data.load_jsonl reports it with the line number
    return None


def _load_chat_jsonl(path: Path, tokenizer) -> list[dict]:
    return [_to_example(record, tokenizer, where) for where, record in talan_data.iter_jsonl(path)]


def _load_parquet(path: Path, tokenizer) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading Parquet needs the pyarrow package (pip install pyarrow); "
                         "or convert the file to JSONL") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises its own error types for a corrupt file
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    return [_to_example(row, tokenizer, f"{path}, row {i}") for i, row in enumerate(rows, start=1)]


def load_examples(path: str | Path, tokenizer, flag: str = "--data") -> list[dict]:
    """Prompt/completion examples from a ``.jsonl`` or ``.parquet`` file (pairs or chat ``messages``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and line (or
    Parquet row) for a malformed record, or for a file with no examples; ``flag`` names the option.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if path.suffix == ".parquet":
        examples = _load_parquet(path, tokenizer)
    elif path.suffix == ".jsonl":
        first = _first_jsonl_record(path)
        if isinstance(first, dict) and "messages" in first:
            examples = _load_chat_jsonl(path, tokenizer)
        else:
            examples = talan_data.load_jsonl(path)
    else:
        raise ValueError(f"{flag} {path}: expected a .jsonl or .parquet file")
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


class CompletionCollator:
    """Trainer's ``data_collator``: `talan.data.collate` (left padding, loss on the completion + eos), or
    with ``packing`` `talan.data.collate_packed` (the batch in one row, no padding)."""

    def __init__(self, tokenizer, max_length: int | None, packing: bool = False):
        # not `.tokenizer`: Trainer would call its save_pretrained, which the character tokenizer lacks
        self.text_tokenizer = tokenizer
        self.max_length = max_length
        self.packing = packing

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        collate = talan_data.collate_packed if self.packing else talan_data.collate
        return collate(features, self.text_tokenizer, max_length=self.max_length)


# ---- model -----------------------------------------------------------------------------------------
def _embedded_model(seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from .demo import TINY_QWEN3

    tokenizer = talan_data.CharTokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, **TINY_QWEN3)
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).float(), tokenizer


def build_model(backbone, settings: argparse.Namespace, talan_config):
    """peft adapter first, then `talan.patch` (the order SPEC §3 prescribes)."""
    from peft import LoraConfig, get_peft_model

    from .hosts import all_linear_excludes
    from .patching import patch

    excludes = all_linear_excludes(backbone) if settings.target_modules == "all-linear" else {}
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=settings.target_modules, use_dora=settings.adapter == "dora",
                      use_rslora=settings.adapter == "rslora", task_type="CAUSAL_LM", **excludes)
    backbone.config.use_cache = False  # no KV cache (and no TALAN decode state) in teacher-forced training
    return patch(get_peft_model(backbone, lora), talan_config)


def _checkpointing_arguments(enabled: bool) -> dict:
    """Activation checkpointing (non-reentrant), under the name this transformers gives it: 5.x calls it
    activation_checkpointing (gradient_checkpointing stays as a deprecated alias), 4.x only gradient_checkpointing."""
    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def _training_arguments(settings: argparse.Namespace) -> TrainingArguments:
    return TrainingArguments(
        output_dir=settings.output_dir, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, max_steps=settings.max_steps or -1, num_train_epochs=settings.num_epochs,
        warmup_steps=settings.warmup_steps, lr_scheduler_type=settings.lr_scheduler,
        max_grad_norm=settings.max_grad_norm, seed=settings.seed, data_seed=settings.seed, save_strategy="steps",
        save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        eval_strategy="no" if settings.eval_data is None else "steps",
        eval_steps=settings.eval_steps or settings.save_steps, per_device_eval_batch_size=settings.batch_size,
        prediction_loss_only=True,  # eval_loss only: no [tokens, vocab] logits gathered
        logging_steps=settings.logging_steps, **_checkpointing_arguments(settings.gradient_checkpointing),
        bf16=settings.bf16, ddp_find_unused_parameters=settings.ddp_find_unused_parameters,
        # without use_cpu, a multi-process launch on a machine with no GPU runs N unsynchronised copies
        use_cpu=not torch.cuda.is_available() if settings.use_cpu is None else settings.use_cpu,
        disable_tqdm=not settings.progress, report_to="none", remove_unused_columns=False,
        dataloader_pin_memory=False, deepspeed=settings.deepspeed, fsdp=True if settings.fsdp else None,
        fsdp_config=settings.fsdp_config if settings.fsdp else None,
        **({} if settings.optim is None else {"optim": settings.optim}))


def _torch_before_2_6() -> bool:
    """torch < 2.6 (a 2.6 pre-release counts as 2.6, as transformers counts it)."""
    from packaging.version import Version  # a dependency of transformers

    return Version(torch.__version__).release[:2] < (2, 6)


def _check_torch_release(settings: argparse.Namespace) -> None:
    """What transformers does only on torch >= 2.6, refused up front on an older torch (which transformers
    4.x runs on): there it builds no per-sequence attention mask from the position ids, so packed examples
    would silently attend across their boundaries; and Trainer refuses the torch.load of a resume's
    optimizer and RNG state, but only once the model is built. (accelerate refuses FSDP2 there itself.)"""
    if not _torch_before_2_6():
        return
    needs = (("--packing", "packed examples would attend across their boundaries", settings.packing),
             ("--resume-from-checkpoint", "Trainer loads optimizer and RNG state with torch.load only there",
              settings.resume_from_checkpoint))
    for flag, why, asked in needs:
        if asked:
            raise ValueError(f"{flag} needs torch >= 2.6 ({why}); this is torch {torch.__version__}")


def _check_paths(settings: argparse.Namespace) -> None:
    """Fail on a missing path or a bad combination of flags before anything heavy is built."""
    if settings.model is not None and not Path(settings.model).is_dir():
        raise FileNotFoundError(f"--model {settings.model}: no such directory. Pass a local Hugging Face "
                                "checkpoint folder; talan train never downloads.")
    if settings.fsdp_config is not None and not settings.fsdp:
        raise ValueError("--fsdp-config is Trainer's FSDP tuning: pass --fsdp with it")
    if settings.fsdp and settings.deepspeed is not None:
        raise ValueError("--fsdp and --deepspeed both shard the model: pass one of them")
    for flag, path in (("--data", settings.data), ("--eval-data", settings.eval_data),
                       ("--fsdp-config", settings.fsdp_config)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    resume = settings.resume_from_checkpoint
    if resume is not None:
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"--resume-from-checkpoint {resume}: no such checkpoint folder")
        for name in (talan_checkpoint.CONFIG_NAME, talan_checkpoint.WEIGHTS_NAME, "trainer_state.json"):
            if not (Path(resume) / name).is_file():
                raise FileNotFoundError(f"--resume-from-checkpoint {resume}: {name} is missing, so it is not a "
                                        "checkpoint of talan train")
    # the quantised backbone's combinations first: DeepSpeed's check asks for a package that would not help
    _check_quantization(settings)
    if settings.deepspeed is not None:
        _check_deepspeed_config(settings)
    _check_torch_release(settings)
    _check_optim(settings)


def _check_optim(settings: argparse.Namespace) -> None:
    """--optim: one of Trainer's optimizer names (TrainingArguments would reject it only once the model is built)."""
    if settings.optim is None:
        return
    from transformers.training_args import OptimizerNames

    names = [name.value for name in OptimizerNames]
    if settings.optim not in names:
        raise ValueError(f"--optim {settings.optim!r}: not one of Trainer's optimizers ({', '.join(names)})")


def _quantization_flag(settings: argparse.Namespace) -> str | None:
    return "--load-in-4bit" if settings.load_in_4bit else "--load-in-8bit" if settings.load_in_8bit else None


def _saved_quantization(settings: argparse.Namespace) -> str | None:
    """The ``quant_method`` of a checkpoint saved quantised (a ``quantization_config`` in its config.json, as
    the bitsandbytes 4-bit checkpoints that QLoRA users share carry), or None."""
    if settings.embedded:
        return None
    try:
        config = json.loads((Path(settings.model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # load_local_checkpoint reports a missing or unreadable config
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    return str(quantization.get("quant_method", "unknown")) if isinstance(quantization, dict) else None


def _check_quantization(settings: argparse.Namespace) -> None:
    """A quantised backbone (--load-in-4bit / --load-in-8bit, or a checkpoint saved quantised): one flag, on a
    checkpoint, unsharded, with bitsandbytes installed."""
    flag, saved = _quantization_flag(settings), _saved_quantization(settings)
    if flag is None and saved is None:
        return
    if settings.load_in_4bit and settings.load_in_8bit:
        raise ValueError("--load-in-4bit and --load-in-8bit both quantise the backbone: pass one of them")
    if settings.embedded:
        raise ValueError(f"{flag} quantises a checkpoint as it loads: pass --model (a local checkpoint folder)")
    what = flag or f"--model {settings.model} (saved quantised, {saved})"
    # untested there: FSDP and ZeRO-3 would shard the packed weights, and DeepSpeed wraps the model on its own
    deepspeed = settings.deepspeed is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    engine = _shards_parameters(settings) or ("DeepSpeed" if deepspeed else None)
    if engine is not None:
        raise ValueError(f"{what}: {engine} with a quantised backbone is not supported by talan train; "
                         "train it on one process or with DDP")
    import importlib.util

    if (flag is not None or saved == "bitsandbytes") and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"{what} needs the bitsandbytes package: pip install bitsandbytes")


def _quantization_config(settings: argparse.Namespace):
    """transformers' ``BitsAndBytesConfig`` for the quantisation flags (QLoRA's NF4 with double quantisation,
    computing in the backbone's dtype), or None."""
    if _quantization_flag(settings) is None:
        return None
    from transformers import BitsAndBytesConfig

    if settings.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, settings.model_dtype))


def _shards_parameters(settings: argparse.Namespace) -> str | None:
    """What shards the parameters in this run, or None: FSDP (accelerate's environment) or ZeRO-3 (from
    --deepspeed, or from ``accelerate launch --use_deepspeed``'s stage or config file)."""
    env = os.environ
    if settings.fsdp or env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    config_file = settings.deepspeed
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
            return "DeepSpeed ZeRO-3"
        config_file = config_file or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if config_file is not None and Path(config_file).is_file():
        try:
            config = _read_deepspeed_config(config_file)
        except ValueError:
            return None  # --deepspeed was checked before; accelerate reports its own file's errors
        if config.get("zero_optimization", {}).get("stage") == 3:
            return "DeepSpeed ZeRO-3"
    return None


def _check_fsdp_took_effect(settings: argparse.Namespace, trainer) -> None:
    """accelerate takes its FSDP path for GPU processes only: on CPU processes it quietly trains
    unsharded (as DDP), which a user who asked for FSDP should hear about before training, not after."""
    if _shards_parameters(settings) == "FSDP" and not trainer.is_fsdp_enabled:
        asked = "--fsdp" if settings.fsdp else "accelerate launch --use_fsdp"
        raise ValueError(f"{asked}: accelerate runs FSDP on GPU processes only, and these run on the CPU, so "
                         "Trainer would train unsharded; launch on GPUs, or drop it (DDP is what would run)")


def _use_fused_lora(settings: argparse.Namespace) -> bool:
    """``--fused-lora``: on, off, or (unset) on for an unsharded run on a CUDA device where the kernels
    compile (not on a Triton older than ``talan_kernels.launching.MIN_GPU_TRITON``)."""
    from talan_kernels.launching import GPU_KERNELS_UNAVAILABLE

    sharded = _shards_parameters(settings)
    if settings.fused_lora is None:
        on_gpu = torch.cuda.is_available() and not settings.use_cpu
        return on_gpu and sharded is None and GPU_KERNELS_UNAVAILABLE is None
    if settings.fused_lora and sharded is not None:
        # the fused op reads the whole base weight inside the LoRA layer's forward, where the sharding
        # wrapper has not gathered it (it gathers per wrapped module, around that module's own forward)
        raise ValueError(f"--fused-lora: {sharded} shards the base weights that the fused LoRA op reads whole; "
                         "train with --no-fused-lora (peft's own forward) under it")
    return bool(settings.fused_lora)


def _read_deepspeed_config(path) -> dict:
    """A DeepSpeed JSON config as a dict whose ``zero_optimization`` (if any) is a dict too; otherwise a
    ValueError naming the file (and the line)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed {path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed {path}: expected a JSON object, got {type(config).__name__}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"--deepspeed {path}: zero_optimization must be a JSON object, got {type(zero).__name__}")
    return config


def _check_deepspeed_config(settings: argparse.Namespace) -> None:
    """Fail before training on a DeepSpeed config that would fail (or drop TALAN's settings) later."""
    path = Path(settings.deepspeed)
    if not path.is_file():
        raise FileNotFoundError(f"--deepspeed {path}: no such file")
    config = _read_deepspeed_config(path)
    zero = config.get("zero_optimization", {})
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        # without it the first checkpoint fails after save_steps of training (accelerate cannot gather)
        raise ValueError(f"--deepspeed {path}: ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save"
                         " = true, so that checkpoints hold the full adapter and TALAN weights")
    if "optimizer" in config and settings.talan_lr != settings.learning_rate:
        raise ValueError(f"--deepspeed {path}: its 'optimizer' section replaces Trainer's optimizer and with it the "
                         "TALAN param group, so --talan-lr would be ignored; remove the section (Trainer's AdamW is "
                         "used) or drop --talan-lr")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError("--deepspeed needs the deepspeed package: pip install deepspeed")
    if "LOCAL_RANK" not in os.environ and importlib.util.find_spec("mpi4py") is None:
        # without a launcher's environment DeepSpeed falls back to MPI discovery and fails deep inside
        raise ValueError("--deepspeed needs a distributed launcher, even for one process: "
                           "torchrun --nproc_per_node N -m talan.cli train ... (or the deepspeed launcher)")


def run_train(args: argparse.Namespace) -> dict:
    """Run ``talan train`` with the parsed flags of `add_train_arguments`.

    Returns ``output_dir``, ``checkpoints`` (the ``checkpoint-*`` folders, sorted by step),
    ``global_step``, ``metrics`` (Trainer's), ``param_groups`` (name, initial lr, tensor count of
    each optimizer group), ``eval_metrics`` (Trainer's ``evaluate()`` on ``--eval-data`` after
    training, or None), ``fused_lora`` (None, or the backend, the number of peft layers on the
    fused op and the ones skipped with why) and ``trainer`` (its ``model`` is the trained peft model).
    """
    settings = resolve_settings(args)
    talan_config = talan_config_from(settings)  # a bad axis value fails here, before any model is built
    _check_paths(settings)
    settings.fused_lora = _use_fused_lora(settings)
    threads = torch.get_num_threads()
    if settings.embedded:
        # the tiny model's ops gain nothing from intra-op threads; on a shared 2-core CPU they cost ~10x
        torch.set_num_threads(1)
    try:
        return _run(settings, talan_config)
    finally:
        torch.set_num_threads(threads)


def _run(settings: argparse.Namespace, talan_config) -> dict:
    if settings.embedded:
        backbone, tokenizer = _embedded_model(settings.seed)
        backbone = backbone.to(getattr(torch, settings.model_dtype))
    else:
        quantization = _quantization_config(settings)
        backbone, tokenizer = load_local_checkpoint(settings.model, dtype=getattr(torch, settings.model_dtype),
                                                    quantization_config=quantization)
        if getattr(backbone, "hf_quantizer", None) is not None:  # the flags, or a checkpoint saved quantised
            from peft import prepare_model_for_kbit_training

            # peft's QLoRA recipe: the rest of the backbone in fp32; checkpointing as --gradient-checkpointing asks
            backbone = prepare_model_for_kbit_training(
                backbone, use_gradient_checkpointing=settings.gradient_checkpointing)
    if settings.data is None:
        examples = talan_data.recall_examples(settings.num_examples, seed=settings.seed)
    else:
        examples = load_examples(settings.data, tokenizer)
    eval_examples = None if settings.eval_data is None else load_examples(settings.eval_data, tokenizer,
                                                                            "--eval-data")
    torch.manual_seed(settings.seed)  # adapter and TALAN initialisation, identical on every rank
    model = build_model(backbone, settings, talan_config)
    fused = None
    if settings.fused_lora:
        from .fused_lora import enable_fused_lora

        report = enable_fused_lora(model, backend=settings.backend)
        fused = {"backend": report.backend, "layers": len(report.fused), "skipped": report.skipped}
    from transformers import PreTrainedTokenizerBase

    trainer = TalanTrainer(
        model=model, args=_training_arguments(settings), train_dataset=examples, eval_dataset=eval_examples,
        data_collator=CompletionCollator(tokenizer, settings.max_length, settings.packing),
        processing_class=tokenizer if isinstance(tokenizer, PreTrainedTokenizerBase) else None,
        talan_lr=settings.talan_lr)
    _check_fsdp_took_effect(settings, trainer)
    output = trainer.train(resume_from_checkpoint=settings.resume_from_checkpoint)

    eval_metrics = None if eval_examples is None else trainer.evaluate()
    trainer.save_model(settings.output_dir)  # on every process: the adapter (a HF tokenizer) and TALAN's files
    trainer.accelerator.wait_for_everyone()
    out = Path(settings.output_dir)
    checkpoints = sorted((p for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()),
                         key=lambda p: int(p.name.rsplit("-", 1)[1]))
    groups = [{"name": g.get("name"), "lr": g.get("initial_lr", g["lr"]), "num_tensors": len(g["params"])}
              for g in trainer.optimizer.param_groups]
    return {"output_dir": str(out), "checkpoints": [str(p) for p in checkpoints],
            "global_step": trainer.state.global_step, "metrics": output.metrics, "param_groups": groups,
            "eval_metrics": eval_metrics, "fused_lora": fused, "trainer": trainer}
