"""`talan train` (talan/train.py, talan/train_config.py): Trainer-based SFT with a peft adapter + TALAN.

Checkpoints hold the adapter and TALAN side by side, the TALAN param group has its own learning
rate, resuming gives the uninterrupted run's weights, --fused-lora trains like peft's forward,
--eval-data reports the held-out loss, and bad inputs get clear errors. Multi-process runs (DDP, ZeRO-3,
FSDP2) are in test_train_distributed.py.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NEEDS_TORCH_2_6
from safetensors.torch import load_file
from train_helpers import (
    ADAPTER_FILES,
    DEEPSPEED_ZERO3,
    TALAN_FILES,
    make_local_checkpoint,
    max_diff,
    parse_train,
    saved_weights,
    train,
    write_jsonl,
)
from transformers import TrainingArguments

import talan
from talan import TalanConfig
from talan.data import CharTokenizer
from talan.train import build_model, load_examples
from talan.train_config import DEFAULTS, EMBEDDED_DEFAULTS, load_config_file, resolve_settings, talan_config_from


# ---- checkpoints -----------------------------------------------------------------------------------
def test_embedded_default_writes_adapter_and_talan_into_every_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    result = train(tmp_path, "--mixer", "linear", "--site", "post", "--layer", "0", "--adapter", "dora",
                    "--rank", "4")
    assert torch.get_num_threads() == threads  # lowered to 1 for the tiny model, then restored
    assert result["global_step"] == 4
    assert [Path(p).name for p in result["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]
    for folder in [*result["checkpoints"], result["output_dir"]]:
        names = {p.name for p in Path(folder).iterdir()}
        assert ADAPTER_FILES | TALAN_FILES <= names, (folder, names)
    saved = json.loads((tmp_path / "talan_config.json").read_text())
    assert (saved["mixer"], saved["site"], saved["layer"], saved["num_slots"], saved["latent_dim"]) == \
        ("linear", "post", 0, 4, 8)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["use_dora"] is True
    # TALAN trained between the two checkpoints, and the final folder holds the last weights
    first, last = (load_file(Path(c) / "talan_model.safetensors") for c in result["checkpoints"])
    assert max_diff(first, last) > 0
    assert max_diff(last, load_file(tmp_path / "talan_model.safetensors")) == 0


def test_jsonl_prompt_completion_data_trains_and_checkpoints(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl",
                        [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(12)])
    result = train(tmp_path / "run", "--data", str(data))
    assert result["global_step"] == 4
    for folder in result["checkpoints"]:
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in Path(folder).iterdir()}


def test_eval_data_reports_the_completion_loss_every_eval_steps(tmp_path):
    def pairs(numbers):
        return [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in numbers]

    data = write_jsonl(tmp_path / "train.jsonl", pairs(range(12)))
    held = write_jsonl(tmp_path / "eval.jsonl", pairs(range(20, 28)))
    result = train(tmp_path / "run", "--data", str(data), "--eval-data", str(held), "--eval-steps", "2")
    trainer = result["trainer"]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4, 4]  # every 2 steps, then the evaluation after training
    # eval_loss is the mean of the batches' completion losses (8 held-out examples, batches of 4, in order)
    examples = load_examples(held, CharTokenizer())
    model = trainer.model.eval()
    with torch.no_grad():
        losses = [model(**trainer.data_collator(examples[i:i + 4])).loss.item() for i in (0, 4)]
    assert result["eval_metrics"]["eval_loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    with pytest.raises(FileNotFoundError, match="--eval-data .*missing.jsonl: no such file"):
        train(tmp_path / "run2", "--eval-data", str(tmp_path / "missing.jsonl"))


@NEEDS_TORCH_2_6
def test_packing_trains_like_padded_batches(tmp_path):
    """--packing: each batch is one row of its examples end to end. Attention and TALAN's memory restart at
    every example, so the first step's loss and gradient norm are the padded batch's."""
    padded = train(tmp_path / "padded", "--logging-steps", "1")
    packed = train(tmp_path / "packed", "--packing", "--logging-steps", "1")
    first = packed["trainer"].get_train_dataloader().collate_fn(padded["trainer"].train_dataset[:4])
    assert first["input_ids"].shape[0] == 1 and "attention_mask" not in first
    logs = [[h for h in run["trainer"].state.log_history if "loss" in h] for run in (padded, packed)]
    for key in ("loss", "grad_norm"):  # same weights, same tokens: only fp32 sums in another order
        assert logs[1][0][key] == pytest.approx(logs[0][0][key], rel=1e-5), key
    assert logs[1][-1]["loss"] == pytest.approx(logs[0][-1]["loss"], rel=1e-3)


def test_chat_messages_render_with_the_plain_join_and_loss_on_the_last_reply(tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"prompt": "a", "completion": "b"},
    ])
    examples = load_examples(data, CharTokenizer())
    assert examples == [{"prompt": "system: be brief\nuser: 2+2?\nassistant: ", "completion": "4"},
                        {"prompt": "a", "completion": "b"}]


def test_local_checkpoint_with_a_chat_template(tmp_path):
    """--model: a saved Qwen3 + a HF tokenizer (built offline) whose chat template renders 'messages'."""
    from transformers import PreTrainedTokenizerFast

    model_dir = make_local_checkpoint(tmp_path / "model")
    loaded = load_examples(write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]),
        PreTrainedTokenizerFast.from_pretrained(model_dir))
    assert loaded == [{"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "completion": "yo"}]

    data = write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": f"{i}!"}]}
        for i in range(8)])
    result = train(tmp_path / "run", "--model", str(model_dir), "--data", str(data), "--use-cpu")
    for folder in result["checkpoints"]:
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in Path(folder).iterdir()}


@pytest.mark.parametrize("fused", [False, True], ids=["peft", "fused-lora"])
def test_bf16_backbone_trains_fp32_adapter_and_talan(tmp_path, fused):
    """--model-dtype bfloat16: the frozen backbone in bf16 (half the memory), the adapter and TALAN in fp32,
    as are their checkpoint files; the loss falls as in fp32 training."""
    result = train(tmp_path, "--model-dtype", "bfloat16", "--logging-steps", "1", *(["--fused-lora"] if fused else []))
    model = result["trainer"].model
    dtypes = {("talan" if ".talan." in n else "adapter" if "lora_" in n else "base"): p.dtype
              for n, p in model.named_parameters()}
    assert dtypes == {"base": torch.bfloat16, "adapter": torch.float32, "talan": torch.float32}
    assert (result["fused_lora"] is not None) == fused
    for name in ("talan_model.safetensors", "adapter_model.safetensors"):
        assert {t.dtype for t in load_file(tmp_path / name).values()} == {torch.float32}
    losses = [h["loss"] for h in result["trainer"].state.log_history if "loss" in h]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# ---- optimizer ---------------------------------------------------------------------------------------
def test_talan_parameter_group_uses_its_own_learning_rate(tmp_path):
    result = train(tmp_path, "--learning-rate", "1e-2", "--talan-lr", "0", "--weight-decay", "0.1")
    model = result["trainer"].model
    talan_ids = {id(p) for p in talan.talan_parameters(model)}
    groups = result["trainer"].optimizer.param_groups
    # Trainer's decay split holds in TALAN's groups: its RMSNorm weights (raw parameters, which Trainer cannot tell
    # from a weight by module type) are not decayed, its matrices are
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    norms = [p for n, p in model.named_parameters() if n.endswith(".talan.norm_weight")]
    assert norms and all(decay[id(p)] == 0.0 for p in norms)
    assert all(decay[id(p)] == 0.1 for n, p in model.named_parameters() if n.endswith(".talan.w_in"))
    talan_groups = [g for g in groups if g["name"] == "talan"]
    assert talan_groups and all(g["initial_lr"] == 0.0 for g in talan_groups)
    # what run_train returns: each group's initial lr (the schedule has decayed the current one to 0 by now)
    assert [(g["name"], g["lr"], g["num_tensors"]) for g in result["param_groups"]] == \
        [(g["name"], g["initial_lr"], len(g["params"])) for g in groups]
    assert {g["lr"] for g in result["param_groups"] if g["name"] != "talan"} == {1e-2}
    # asked again (as Trainer may), the optimizer is the one it made, its groups as they were
    assert result["trainer"].create_optimizer() is result["trainer"].optimizer
    assert [(g["name"], len(g["params"])) for g in result["trainer"].optimizer.param_groups] == \
        [(g["name"], g["num_tensors"]) for g in result["param_groups"]]
    assert all(g["initial_lr"] == 1e-2 for g in groups if g["name"] != "talan")
    assert {id(p) for g in talan_groups for p in g["params"]} == talan_ids
    assert not any(id(p) in talan_ids for g in groups if g["name"] != "talan" for p in g["params"])
    # lr 0: TALAN stays put while the adapter trains
    first, last = result["checkpoints"]
    assert max_diff(load_file(Path(first) / "talan_model.safetensors"),
                     load_file(Path(last) / "talan_model.safetensors")) == 0
    assert max_diff(load_file(Path(first) / "adapter_model.safetensors"),
                     load_file(Path(last) / "adapter_model.safetensors")) > 0


def test_optim_picks_trainers_optimizer_and_keeps_talans_group(tmp_path):
    """--optim: Trainer's optimizer by name (SGD here: its steps differ from AdamW's), TALAN in its own groups
    at --talan-lr; a name Trainer does not know fails before any model is built."""
    result = train(tmp_path / "sgd", "--optim", "sgd", "--learning-rate", "1e-2", "--talan-lr", "3e-2")
    optimizer = result["trainer"].optimizer
    assert isinstance(getattr(optimizer, "optimizer", optimizer), torch.optim.SGD)
    assert {(g["name"], g["initial_lr"]) for g in optimizer.param_groups} == {("adapter", 1e-2), ("talan", 3e-2)}
    train(tmp_path / "adamw", "--learning-rate", "1e-2", "--talan-lr", "3e-2")
    assert max_diff(saved_weights(tmp_path / "sgd"), saved_weights(tmp_path / "adamw")) > 1e-4
    with pytest.raises(ValueError, match=r"--optim 'adam_w': not one of Trainer's optimizers \(.*adamw_torch"):
        train(tmp_path / "bad", "--optim", "adam_w")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("mixer", ["attn", "linear", "mlp", "glu"])
@pytest.mark.parametrize("writeback", ["zero_add", "tanh_gate", "token_gate", "norm_cap"])
def test_every_trainable_parameter_gets_a_gradient(mixer, writeback):
    """What lets DDP run with find_unused_parameters=False (the default of talan train)."""
    from talan.train import _embedded_model
    from talan.train_config import talan_config_from

    settings = resolve_settings(parse_train("--mixer", mixer, "--writeback", writeback, "--latent-dim", "8",
                                       "--num-slots", "4", "--backend", "torch"))
    backbone, tokenizer = _embedded_model(seed=0)
    model = build_model(backbone, settings, talan_config_from(settings))
    from talan.data import collate, recall_examples

    model(**collate(recall_examples(2), tokenizer)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_a_run_starts_from_its_seed_whatever_ran_before(tmp_path):
    """The adapter's and TALAN's initialisation come from --seed (on every rank alike), not from whatever the
    process drew before; checkpoints are listed by step (checkpoint-5 before checkpoint-10)."""
    model_dir = make_local_checkpoint(tmp_path / "model")
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        torch.manual_seed(100 + i)
        flags = ("--max-steps", "10", "--save-steps", "5", "--seed", str(seed))
        runs.append(train(tmp_path / f"run{i}", "--model", str(model_dir), "--use-cpu", *flags))
    assert [Path(p).name for p in runs[0]["checkpoints"]] == ["checkpoint-5", "checkpoint-10"]
    first = [saved_weights(Path(run["checkpoints"][0])) for run in runs]
    assert max_diff(first[0], first[1]) == 0 and max_diff(first[0], first[2]) > 0


# ---- resume ------------------------------------------------------------------------------------------
@NEEDS_TORCH_2_6
def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    flags = ["--max-steps", "6", "--save-steps", "3"]
    full = train(tmp_path / "full", *flags)
    middle = Path(full["checkpoints"][0])
    assert middle.name == "checkpoint-3"
    resumed = train(tmp_path / "resumed", *flags, "--resume-from-checkpoint", str(middle))
    assert resumed["global_step"] == 6
    for name in ("talan_model.safetensors", "adapter_model.safetensors"):
        final = load_file(tmp_path / "full" / name)
        assert max_diff(final, load_file(tmp_path / "resumed" / name)) <= 1e-6, name
        assert max_diff(final, load_file(middle / name)) > 1e-4, name  # the last 3 steps changed the weights


# ---- fused LoRA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_fused_lora_trains_like_peft_eager(tmp_path, adapter):
    """--fused-lora runs every adapter layer on the fused op (on the CPU its PyTorch reference): the first
    step's loss and gradient norm equal peft's eager forward's to fp32 rounding, and training stays on the
    same course. The default on a CPU is peft's forward."""
    eager = train(tmp_path / "eager", "--adapter", adapter, "--logging-steps", "1")
    fused = train(tmp_path / "fused", "--adapter", adapter, "--fused-lora", "--logging-steps", "1")
    assert eager["fused_lora"] is None
    n_layers = sum(1 for n, _ in eager["trainer"].model.named_modules() if n.endswith(".lora_A"))
    assert fused["fused_lora"] == {"backend": "auto", "layers": n_layers, "skipped": {}} and n_layers > 0
    logs = [[h for h in run["trainer"].state.log_history if "loss" in h] for run in (eager, fused)]
    assert len(logs[0]) == len(logs[1]) == 4
    for key in ("loss", "grad_norm"):  # identical weights at step 1: only the order of fp32 sums differs
        assert logs[1][0][key] == pytest.approx(logs[0][0][key], rel=1e-6), key
    # Later steps drift apart further: AdamW turns rounding noise in near-zero gradient components (lora_A's
    # gradient starts at exactly 0, as lora_B does) into updates of up to ~lr: 1e-3 in DoRA's lora_A by step 4.
    assert logs[1][-1]["loss"] == pytest.approx(logs[0][-1]["loss"], rel=1e-3)


def test_fused_lora_is_refused_where_the_base_weights_are_sharded(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under a launcher (DeepSpeed needs one)
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps(DEEPSPEED_ZERO3))
    # a --deepspeed config is read only where the package is installed (make test installs it; the GPU
    # machine's stack may not): without it the run stops first on that, and the launcher routes below still run
    error, message = (ValueError, "DeepSpeed ZeRO-3 shards the base weights") \
        if importlib.util.find_spec("deepspeed") else (ImportError, "--deepspeed needs the deepspeed package")
    with pytest.raises(error, match=message):
        train(tmp_path / "run", "--fused-lora", "--deepspeed", str(config))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # `accelerate launch --use_deepspeed --zero_stage 3`
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 shards the base weights"):
        train(tmp_path / "run", "--fused-lora")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` exports
    with pytest.raises(ValueError, match="FSDP shards the base weights"):
        train(tmp_path / "run", "--fused-lora")
    assert not (tmp_path / "run").exists()


def test_fused_lora_is_on_by_default_only_on_a_gpu_where_the_kernels_compile(monkeypatch):
    """Unset --fused-lora: on for an unsharded CUDA run, but not on a Triton whose compiler aborts on some
    of the kernels (launching.GPU_KERNELS_UNAVAILABLE), where peft's own forward is the better default."""
    from talan.train import _use_fused_lora
    from talan_kernels import launching

    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    settings = argparse.Namespace(fused_lora=None, use_cpu=False, fsdp=False, deepspeed=None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", None)
    assert _use_fused_lora(settings) is True
    settings.use_cpu = True  # --use-cpu on a GPU machine: the fused op would run its PyTorch reference
    assert _use_fused_lora(settings) is False
    settings.use_cpu = False
    monkeypatch.setattr(launching, "GPU_KERNELS_UNAVAILABLE", "Triton 3.2.0 cannot compile every kernel")
    assert _use_fused_lora(settings) is False
    settings.fused_lora = True  # asked for: its layers run the PyTorch reference of the op there
    assert _use_fused_lora(settings) is True


# ---- settings ----------------------------------------------------------------------------------------
def test_every_optimisation_flag_reaches_trainers_arguments(tmp_path, recwarn):
    from talan.train import _training_arguments

    settings = resolve_settings(parse_train(  # --model: the defaults of a checkpoint, max_steps None
        "--model", str(tmp_path), "--output-dir", str(tmp_path), "--eval-data", "held.jsonl", "--eval-steps", "7",
        "--save-steps", "5", "--save-total-limit", "3", "--grad-accum", "2", "--num-epochs", "2.5",
        "--warmup-steps", "4", "--lr-scheduler", "constant", "--max-grad-norm", "0.5", "--weight-decay", "0.1",
        "--learning-rate", "3e-3", "--batch-size", "6", "--seed", "11", "--logging-steps", "9",
        "--gradient-checkpointing", "--use-cpu"))
    args = _training_arguments(settings)
    expected = dict(per_device_train_batch_size=6, per_device_eval_batch_size=6, gradient_accumulation_steps=2,
                    learning_rate=3e-3, weight_decay=0.1, max_steps=-1, num_train_epochs=2.5, warmup_steps=4,
                    max_grad_norm=0.5, seed=11, data_seed=11, save_steps=5, save_total_limit=3, eval_steps=7,
                    logging_steps=9, use_cpu=True, output_dir=str(tmp_path))
    assert {name: getattr(args, name) for name in expected} == expected
    assert (str(args.lr_scheduler_type.value), str(args.eval_strategy.value)) == ("constant", "steps")
    # checkpointing under the name this transformers gives it (5.x: activation_checkpointing), so no deprecation
    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    assert (getattr(args, name), getattr(args, f"{name}_kwargs")) == (True, {"use_reentrant": False})
    assert not [w for w in recwarn if "gradient_checkpointing` is deprecated" in str(w.message)]

    fsdp_config = tmp_path / "fsdp.json"
    fsdp_config.write_text(json.dumps({"min_num_params": 10}))
    settings = resolve_settings(parse_train("--output-dir", str(tmp_path), "--max-steps", "8", "--save-steps", "5",
                                            "--fsdp", "--fsdp-config", str(fsdp_config), "--use-cpu"))
    environ = dict(os.environ)
    try:
        args = _training_arguments(settings)
    finally:  # transformers 4.x exports FSDP's settings (ACCELERATE_USE_FSDP, ...), which later runs would take
        os.environ.clear()
        os.environ.update(environ)
    assert (args.max_steps, args.eval_steps, args.eval_strategy.value) == (8, 5, "no")  # evaluating every save
    assert args.fsdp_config["min_num_params"] == 10


def test_build_model_makes_the_asked_adapter_with_the_familys_excludes(monkeypatch):
    """--adapter picks peft's DoRA or rsLoRA; an all-linear adapter leaves out the modules that
    talan.hosts.all_linear_excludes names for the family (Jamba's dt_proj, ...), here the MLPs' down_proj."""
    from talan import hosts
    from talan.train import _embedded_model

    monkeypatch.setattr(hosts, "all_linear_excludes", lambda model: {"exclude_modules": r".*\.down_proj"})
    for adapter, dora, rslora in (("lora", False, False), ("dora", True, False), ("rslora", False, True)):
        settings = resolve_settings(parse_train("--adapter", adapter, "--latent-dim", "8", "--num-slots", "4"))
        model = build_model(_embedded_model(seed=0)[0], settings, talan_config_from(settings))
        config = model.peft_config["default"]
        assert (config.use_dora, config.use_rslora) == (dora, rslora), adapter
        adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
        assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}, adapter
    settings = resolve_settings(parse_train("--target-modules", "q_proj,down_proj"))  # named: no exclusion
    model = build_model(_embedded_model(seed=0)[0], settings, talan_config_from(settings))
    assert {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")} == \
        {"q_proj", "down_proj"}


def test_config_file_sets_values_and_flags_override_it(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("mixer: glu\nnum-slots: 4\nlayer: [0, 1]\nrank: 4\ntalan_lr: 0.001\nbf16: false\n")
    settings = resolve_settings(parse_train("--config", str(yaml_file), "--num-slots", "2"))
    assert (settings.mixer, settings.num_slots, settings.layer, settings.rank, settings.talan_lr, settings.bf16) \
        == ("glu", 2, (0, 1), 4, 0.001, False)
    assert settings.latent_dim == 64 and settings.alpha == 8.0  # defaults; alpha follows the rank
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({"writeback": "norm_cap", "max_steps": 3}))
    assert load_config_file(json_file) == {"writeback": "norm_cap", "max_steps": 3}


def test_settings_defaults_follow_the_model_and_the_learning_rate(tmp_path):
    embedded = resolve_settings(parse_train("--learning-rate", "0.02"))
    assert embedded.embedded and embedded.talan_lr == 0.02 and embedded.rank == EMBEDDED_DEFAULTS["rank"]
    (tmp_path / "model.yaml").write_text(f"model: {tmp_path}\n")  # a model named in the file, not by the flag
    local = resolve_settings(parse_train("--config", str(tmp_path / "model.yaml")))
    assert not local.embedded and local.rank == DEFAULTS["rank"] and local.talan_lr == DEFAULTS["learning_rate"]


def test_talan_config_takes_every_block_flag():
    settings = resolve_settings(parse_train("--layer", "0,-1", "--site", "post", "--num-slots", "4", "--latent-dim",
                                            "8", "--mixer", "mlp", "--writeback", "token_gate", "--trainable",
                                            "freeze_compressor", "--grad-scale", "0.25", "--backend", "torch"))
    assert talan_config_from(settings) == TalanConfig(layer=(0, -1), site="post", num_slots=4, latent_dim=8,
                                                      mixer="mlp", writeback="token_gate",
                                                      trainable="freeze_compressor", grad_scale=0.25, backend="torch")


def test_layer_and_target_modules_parse_as_their_help_says(tmp_path, capsys):
    assert [parse_train("--layer", text).layer for text in ("2", "-1", "0.5", "0,2")] == [2, -1, 0.5, (0, 2)]
    assert [parse_train("--target-modules", text).target_modules for text in ("all-linear", "q_proj, v_proj")] == \
        ["all-linear", ["q_proj", "v_proj"]]  # all-linear stays peft's keyword, not a module name
    for flag, value, message in (("--layer", "half", "layer: expected an int index or a float in [0, 1], got 'half'"),
                                 ("--target-modules", ",", "target-modules: expected 'all-linear' or")):
        with pytest.raises(SystemExit):
            parse_train(flag, value)
        assert message in capsys.readouterr().err
    # a config file: YAML lists for both, a .yml suffix, a number where a string is meant; an empty file is no values
    (tmp_path / "train.yml").write_text("layer: [0, -1]\ntarget_modules: [q_proj, v_proj]\noutput_dir: 2026\n")
    settings = resolve_settings(parse_train("--config", str(tmp_path / "train.yml")))
    assert (settings.layer, settings.target_modules, settings.output_dir) == ((0, -1), ["q_proj", "v_proj"], "2026")
    (tmp_path / "empty.yaml").write_text("# nothing set yet\n")
    assert load_config_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("text, message", [
    ("mixer: bad\n", "mixer: must be one of"),
    ("num_slots: 0\n", "num_slots: expected a positive integer"),
    ("no_such_setting: 1\n", "unknown setting 'no_such_setting'"),
    ("bf16: 3\n", "bf16: expected true or false"),
    ("rank: [4]\n", "rank: expected a single value"),
    ("config: other.yaml\n", "unknown setting 'config'"),  # a file names no other file
    ("- mixer\n- glu\n", "expected a mapping of flag names to values, got list"),
])
def test_config_file_bad_values_name_the_setting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        resolve_settings(parse_train("--config", str(path)))


def test_config_file_that_is_missing_malformed_or_of_another_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config .*nowhere.yaml: no such file"):
        load_config_file(tmp_path / "nowhere.yaml")
    (tmp_path / "bad.json").write_text('{"mixer": "glu",\n "rank": }')
    with pytest.raises(ValueError, match=r"bad.json, line 2: not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    (tmp_path / "train.toml").write_text('mixer = "glu"\n')
    with pytest.raises(ValueError, match=r"expected a .yaml, .yml or .json file"):
        load_config_file(tmp_path / "train.toml")


# ---- bad inputs --------------------------------------------------------------------------------------
def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model .*no_model: no such directory"):
        train(tmp_path, "--model", str(tmp_path / "no_model"))


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume-from-checkpoint .*checkpoint-9: no such checkpoint"):
        train(tmp_path, "--resume-from-checkpoint", str(tmp_path / "checkpoint-9"))
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(FileNotFoundError, match="talan_config.json is missing"):
        train(tmp_path, "--resume-from-checkpoint", str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize("flag", ["--packing", "--resume-from-checkpoint"])
def test_what_needs_torch_2_6_is_refused_before_training_on_an_older_torch(tmp_path, monkeypatch, flag):
    """On torch < 2.6 transformers ignores packed boundaries in attention (silently wrong) and Trainer refuses
    to resume (after the model is built): talan train says so before it builds anything."""
    train(tmp_path / "run", "--max-steps", "2", "--save-steps", "2")
    args = {"--packing": [], "--resume-from-checkpoint": [str(tmp_path / "run" / "checkpoint-2")]}
    monkeypatch.setattr(talan.train, "build_model", lambda *a: pytest.fail("built a model"))
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(ValueError, match=f"{flag} needs torch >= 2.6 .*this is torch 2.5.1"):
        train(tmp_path / "refused", flag, *args[flag])
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr(torch, "__version__", "2.6.0a0+git1234")  # a pre-release counts as its release
    talan.train._check_torch_release(parse_train(flag, *args[flag]))


@pytest.mark.parametrize("lines, lineno", [
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}, "{not json"], 3),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], 2),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "[1, 2"], 2),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
      {"messages": [{"role": "user", "content": "a"}]}], 2),
])
def test_malformed_jsonl_line_names_the_file_and_line(tmp_path, lines, lineno):
    data = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=rf"bad\.jsonl, line {lineno}:"):
        train(tmp_path / "run", "--data", str(data))
    assert not (tmp_path / "run").exists()  # nothing trained


def test_bad_flag_values_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_train("--mixer", "bad")
    assert exit_info.value.code == 2 and "invalid choice: 'bad'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layer as a float"):
        train(tmp_path, "--layer", "1.5")
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet file"):
        train(tmp_path, "--data", str(write_jsonl(tmp_path / "data.txt", ["x"])))


@pytest.mark.parametrize("config, flags, error, message", [
    (None, (), FileNotFoundError, "--deepspeed .*missing.json: no such file"),
    ('{"zero_optimization": ', (), ValueError, r"--deepspeed .*ds\.json, line 1: not valid JSON"),
    ("[1, 2]", (), ValueError, "expected a JSON object, got list"),
    ('{"zero_optimization": 3}', (), ValueError, "zero_optimization must be a JSON object, got int"),
    ('{"zero_optimization": {"stage": 3}}', (), ValueError, "stage3_gather_16bit_weights_on_model_save"),
    (json.dumps({**DEEPSPEED_ZERO3, "optimizer": {"type": "AdamW"}}), ("--talan-lr", "0.05"), ValueError,
     "'optimizer' section replaces Trainer's optimizer"),
    (json.dumps(DEEPSPEED_ZERO3), (), ValueError, "needs a distributed launcher"),
])
def test_bad_deepspeed_setups_fail_before_training(tmp_path, monkeypatch, config, flags, error, message):
    if message == "needs a distributed launcher":
        pytest.importorskip("deepspeed")
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    path = tmp_path / ("missing.json" if config is None else "ds.json")
    if config is not None:
        path.write_text(config)
    with pytest.raises(error, match=message):
        train(tmp_path / "run", "--deepspeed", str(path), *flags)
    assert not (tmp_path / "run").exists()


def test_a_deepspeed_optimizer_section_is_taken_when_talan_shares_the_learning_rate(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**DEEPSPEED_ZERO3, "optimizer": {"type": "AdamW"}}))
    # past the optimizer check, the run stops at the next: no deepspeed package here, or no launcher
    with pytest.raises((ImportError, ValueError), match="needs the deepspeed package|needs a distributed launcher"):
        train(tmp_path / "run", "--deepspeed", str(path), "--learning-rate", "0.01", "--talan-lr", "0.01")


def test_bad_fsdp_setups_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="pass --fsdp with it"):
        train(tmp_path / "run", "--fsdp-config", str(tmp_path / "fsdp.json"))
    with pytest.raises(FileNotFoundError, match="--fsdp-config .*fsdp.json: no such file"):
        train(tmp_path / "run", "--fsdp", "--fsdp-config", str(tmp_path / "fsdp.json"))
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps(DEEPSPEED_ZERO3))
    with pytest.raises(ValueError, match="--fsdp and --deepspeed both shard"):
        train(tmp_path / "run", "--fsdp", "--deepspeed", str(config))
    assert not (tmp_path / "run").exists()


def test_parquet_pairs_and_chat_rows_load_and_train(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(12)]),
                   pairs)
    chat = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": [{"role": "user", "content": f"double {i}"},
                                                       {"role": "assistant", "content": str(2 * i)}]}
                                         for i in range(12)]), chat)
    examples = load_examples(pairs, CharTokenizer())
    assert examples[3] == {"prompt": "3+3=", "completion": "6"} and len(examples) == 12
    chat_examples = load_examples(chat, CharTokenizer())
    assert [e["completion"] for e in chat_examples[:3]] == ["0", "2", "4"] and "double 1" in chat_examples[1]["prompt"]
    result = train(tmp_path / "run", "--data", str(pairs))
    assert result["global_step"] == 4
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}, {"prompt": "c"}]), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet, row 2"):
        load_examples(bad, CharTokenizer())


def test_unreadable_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401

        expected = "not a readable Parquet file"
    except ImportError:
        expected = "needs the pyarrow package"
    with pytest.raises(ValueError, match=expected):
        load_examples(path, CharTokenizer())
