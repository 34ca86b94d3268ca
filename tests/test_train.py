"""`talan train` (talan/train.py, talan/train_config.py): Trainer-based SFT with a peft adapter + TALAN.

Checkpoints hold the adapter and TALAN side by side, the TALAN param group has its own learning
rate, resuming gives the uninterrupted run's weights, two torchrun processes on the CPU (DDP over
gloo) end with identical weights, DeepSpeed ZeRO-3 trains like DDP and resumes exactly, and bad inputs
get clear errors.
"""

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import talan
from talan.data import CharTokenizer
from talan.train import add_train_arguments, build_model, load_examples, run_train
from talan.train_config import load_config_file, resolve_settings

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
TALAN_FILES = {"talan_config.json", "talan_model.safetensors"}
# a few steps of the embedded default with a small block: about a second per run
FAST = ["--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "--num-examples", "64",
        "--latent-dim", "8", "--num-slots", "4", "--logging-steps", "100", "--no-progress"]


def _parse(*argv):
    return add_train_arguments(argparse.ArgumentParser(prog="talan train")).parse_args(list(argv))


def _train(out_dir, *flags):
    return run_train(_parse("--output-dir", str(out_dir), *FAST, *flags))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---- checkpoints -----------------------------------------------------------------------------------
def test_embedded_default_writes_adapter_and_talan_into_every_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    result = _train(tmp_path, "--mixer", "linear", "--site", "post", "--layer", "0", "--adapter", "dora",
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
    assert _max_diff(first, last) > 0
    assert _max_diff(last, load_file(tmp_path / "talan_model.safetensors")) == 0


def test_jsonl_prompt_completion_data_trains_and_checkpoints(tmp_path):
    data = _write_jsonl(tmp_path / "train.jsonl",
                        [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(12)])
    result = _train(tmp_path / "run", "--data", str(data))
    assert result["global_step"] == 4
    for folder in result["checkpoints"]:
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in Path(folder).iterdir()}


def test_eval_data_reports_the_completion_loss_every_eval_steps(tmp_path):
    def pairs(numbers):
        return [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in numbers]

    data = _write_jsonl(tmp_path / "train.jsonl", pairs(range(12)))
    held = _write_jsonl(tmp_path / "eval.jsonl", pairs(range(20, 28)))
    result = _train(tmp_path / "run", "--data", str(data), "--eval-data", str(held), "--eval-steps", "2")
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
        _train(tmp_path / "run2", "--eval-data", str(tmp_path / "missing.jsonl"))


def test_chat_messages_render_with_the_plain_join_and_loss_on_the_last_reply(tmp_path):
    data = _write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"prompt": "a", "completion": "b"},
    ])
    examples = load_examples(data, CharTokenizer())
    assert examples == [{"prompt": "system: be brief\nuser: 2+2?\nassistant: ", "completion": "4"},
                        {"prompt": "a", "completion": "b"}]


def test_local_checkpoint_with_a_chat_template(tmp_path):
    """--model: a saved Qwen3 + a HF tokenizer (built offline) whose chat template renders 'messages'."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                        unk_token="<unk>", additional_special_tokens=specials[1:3])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    config = Qwen3Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         pad_token_id=0, eos_token_id=vocab["<|im_end|>"])
    Qwen3ForCausalLM(config).save_pretrained(model_dir)

    loaded = load_examples(_write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]),
        PreTrainedTokenizerFast.from_pretrained(model_dir))
    assert loaded == [{"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "completion": "yo"}]

    data = _write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": f"{i}!"}]}
        for i in range(8)])
    result = _train(tmp_path / "run", "--model", str(model_dir), "--data", str(data), "--use-cpu")
    for folder in result["checkpoints"]:
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in Path(folder).iterdir()}


# ---- optimizer ---------------------------------------------------------------------------------------
def test_talan_parameter_group_uses_its_own_learning_rate(tmp_path):
    result = _train(tmp_path, "--learning-rate", "1e-2", "--talan-lr", "0")
    model = result["trainer"].model
    talan_ids = {id(p) for p in talan.talan_parameters(model)}
    groups = result["trainer"].optimizer.param_groups
    talan_groups = [g for g in groups if g["name"] == "talan"]
    assert talan_groups and all(g["initial_lr"] == 0.0 for g in talan_groups)
    assert all(g["initial_lr"] == 1e-2 for g in groups if g["name"] != "talan")
    assert {id(p) for g in talan_groups for p in g["params"]} == talan_ids
    assert not any(id(p) in talan_ids for g in groups if g["name"] != "talan" for p in g["params"])
    # lr 0: TALAN stays put while the adapter trains
    first, last = result["checkpoints"]
    assert _max_diff(load_file(Path(first) / "talan_model.safetensors"),
                     load_file(Path(last) / "talan_model.safetensors")) == 0
    assert _max_diff(load_file(Path(first) / "adapter_model.safetensors"),
                     load_file(Path(last) / "adapter_model.safetensors")) > 0


@pytest.mark.parametrize("mixer", ["attn", "linear", "mlp", "glu"])
@pytest.mark.parametrize("writeback", ["zero_add", "tanh_gate", "token_gate", "norm_cap"])
def test_every_trainable_parameter_gets_a_gradient(mixer, writeback):
    """What lets DDP run with find_unused_parameters=False (the default of talan train)."""
    from talan.train import _embedded_model
    from talan.train_config import talan_config_from

    settings = resolve_settings(_parse("--mixer", mixer, "--writeback", writeback, "--latent-dim", "8",
                                       "--num-slots", "4", "--backend", "torch"))
    backbone, tokenizer = _embedded_model(seed=0)
    model = build_model(backbone, settings, talan_config_from(settings))
    from talan.data import collate, recall_examples

    model(**collate(recall_examples(2), tokenizer)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


# ---- resume ------------------------------------------------------------------------------------------
def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    flags = ["--max-steps", "6", "--save-steps", "3"]
    full = _train(tmp_path / "full", *flags)
    middle = Path(full["checkpoints"][0])
    assert middle.name == "checkpoint-3"
    resumed = _train(tmp_path / "resumed", *flags, "--resume-from-checkpoint", str(middle))
    assert resumed["global_step"] == 6
    for name in ("talan_model.safetensors", "adapter_model.safetensors"):
        final = load_file(tmp_path / "full" / name)
        assert _max_diff(final, load_file(tmp_path / "resumed" / name)) <= 1e-6, name
        assert _max_diff(final, load_file(middle / name)) > 1e-4, name  # the last 3 steps changed the weights


# ---- fused LoRA ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_fused_lora_trains_like_peft_eager(tmp_path, adapter):
    """--fused-lora runs every adapter layer on the fused op (on the CPU its PyTorch reference): the first
    step's loss and gradient norm equal peft's eager forward's to fp32 rounding, and training stays on the
    same course. The default on a CPU is peft's forward."""
    eager = _train(tmp_path / "eager", "--adapter", adapter, "--logging-steps", "1")
    fused = _train(tmp_path / "fused", "--adapter", adapter, "--fused-lora", "--logging-steps", "1")
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
    with pytest.raises(ValueError, match="DeepSpeed ZeRO-3 shards the base weights"):
        _train(tmp_path / "run", "--fused-lora", "--deepspeed", str(config))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` exports
    with pytest.raises(ValueError, match="FSDP shards the base weights"):
        _train(tmp_path / "run", "--fused-lora")
    assert not (tmp_path / "run").exists()


# ---- distributed -------------------------------------------------------------------------------------
RANK_SCRIPT = """
import argparse, json, os, sys
from safetensors.torch import save_file
from talan import talan_parameters
from talan.train import add_train_arguments, run_train

if os.environ.get("TALAN_TEST_FSDP_ON_CPU") == "1":
    # accelerate takes its FSDP path only for GPU processes (CPU ones fall back to DDP); set the distributed
    # type it would pick on GPUs. Everything after that is real: fully_shard, Trainer's FSDP save and load.
    import accelerate.state as state
    from accelerate.utils import DistributedType

    accelerator_init = state.AcceleratorState.__init__

    def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        accelerator_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init_with_fsdp_on_cpu

out = sys.argv[1]
result = run_train(add_train_arguments(argparse.ArgumentParser()).parse_args(sys.argv[2:]))
trainer = result["trainer"]
rank = trainer.args.process_index
# FSDP2 parameters are DTensor shards (full_tensor gathers, on every rank); ZeRO-3's are empty partitions
weights = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().contiguous()
           for n, p in trainer.model.named_parameters() if p.requires_grad}
save_file(weights, os.path.join(out, f"rank{rank}.safetensors"))
# TALAN's elements held by this process, and in all: fewer under FSDP2 (DTensor shards) and ZeRO-3 (partitions)
talan_params = list(talan_parameters(trainer.accelerator.unwrap_model(trainer.model)))
held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in talan_params)
total = sum(getattr(p, "ds_numel", p.numel()) for p in talan_params)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"world_size": trainer.args.world_size, "global_step": result["global_step"],
               "param_groups": result["param_groups"], "fsdp": bool(trainer.is_fsdp_enabled),
               "talan_numel": [held, total]}, f)
"""


# the same flags for every torchrun run, so that DDP and ZeRO-3 runs can be compared weight for weight
DISTRIBUTED_FLAGS = [*FAST, "--use-cpu", "--talan-lr", "0.02"]
# persistence threshold 0: ZeRO-3 partitions every parameter (by default it keeps the small ones, all of
# TALAN's and the adapter's at this size, whole on every process)
DEEPSPEED_ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                                         "stage3_param_persistence_threshold": 0},
                   "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                   "gradient_clipping": "auto"}


def _torchrun(folder: Path, *flags, checkpoints=("checkpoint-2", "checkpoint-4"), nproc=2, env=None,
              sharded=False) -> Path:
    """Run RANK_SCRIPT in ``nproc`` processes (CPU unless ``flags`` say otherwise) with ``flags`` and the
    extra environment ``env``; ``sharded``: each process holds part of TALAN's parameters only. Returns the
    run's output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "rank_script.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), str(folder), "--output-dir", str(folder / "run"), *DISTRIBUTED_FLAGS, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(nproc):  # synchronised processes, not independent runs
        info = json.loads((folder / f"rank{rank}.json").read_text())
        assert info["world_size"] == nproc and info["global_step"] == 4
        assert info["fsdp"] == (env.get("ACCELERATE_USE_FSDP") == "true")
        held, total = info["talan_numel"]
        assert held < total if sharded else held == total
        assert {g["name"]: g["lr"] for g in info["param_groups"]} == {"adapter": 0.01, "talan": 0.02}
    for checkpoint in (*checkpoints, "."):
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (folder / "run" / checkpoint).iterdir()}
    return folder / "run"


def _saved_weights(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(run / "talan_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    return _torchrun(tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(ddp_run):
    rank0, rank1 = load_file(ddp_run.parent / "rank0.safetensors"), load_file(ddp_run.parent / "rank1.safetensors")
    assert any(".talan." in n for n in rank0) and any("lora_" in n for n in rank0)
    assert _max_diff(rank0, rank1) == 0
    saved = load_file(ddp_run / "talan_model.safetensors")
    on_rank0 = {k: v for k, v in rank0.items() if ".talan." in k}
    assert sorted(t.sum().item() for t in saved.values()) == sorted(t.sum().item() for t in on_rank0.values())


@pytest.mark.slow
def test_deepspeed_zero3_trains_like_ddp_and_resumes_exactly(ddp_run, tmp_path):
    """ZeRO-3 shards every parameter over the two processes (DeepSpeed's CPU accelerator, gloo): the
    checkpoints' gathered adapter and TALAN weights equal the DDP run's up to fp32 reduction order, and
    resuming from checkpoint-2 ends with the uninterrupted run's weights."""
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps(DEEPSPEED_ZERO3))
    zero3 = _torchrun(tmp_path / "zero3", "--deepspeed", str(config), sharded=True)
    assert (zero3 / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own (sharded) engine state
    sharded = _saved_weights(zero3)
    _assert_weights_close(_saved_weights(ddp_run), sharded)
    assert _max_diff(sharded, _saved_weights(zero3 / "checkpoint-2")) > 1e-3  # steps 3-4 moved the weights
    resumed = _torchrun(tmp_path / "resumed", "--deepspeed", str(config),
                        "--resume-from-checkpoint", str(zero3 / "checkpoint-2"), checkpoints=("checkpoint-4",),
                        sharded=True)
    assert _max_diff(sharded, _saved_weights(resumed)) == 0


def _assert_weights_close(expected: dict, actual: dict) -> None:
    for name, tensor in expected.items():
        assert actual[name].dtype == torch.float32 and actual[name].shape == tensor.shape, name
        # 4 AdamW steps of fp32 sums taken in another order (all-reduce vs reduce-scatter): ~1e-6 measured
        assert (actual[name] - tensor).abs().max().item() <= 1e-5 * max(1.0, tensor.abs().max().item()), name


# what `accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP ...` exports
FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
             "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen3DecoderLayer", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}


@pytest.mark.slow
def test_fsdp2_trainer_run_trains_like_ddp_and_resumes_exactly(ddp_run, tmp_path):
    """Trainer under FSDP2 on two CPU processes (accelerate's FSDP environment, and its FSDP path forced on
    for CPU processes, see RANK_SCRIPT): the callback gathers the shards into TALAN's files in every
    checkpoint, the weights equal the DDP run's, and resuming from checkpoint-2 ends with the same ones."""
    env = {**FSDP2_ENV, "TALAN_TEST_FSDP_ON_CPU": "1"}
    fsdp = _torchrun(tmp_path / "fsdp", env=env, sharded=True)
    assert (fsdp / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # Trainer's own FSDP checkpoint
    sharded = _saved_weights(fsdp)
    _assert_weights_close(_saved_weights(ddp_run), sharded)
    assert _max_diff(sharded, _saved_weights(fsdp / "checkpoint-2")) > 1e-3
    resumed = _torchrun(tmp_path / "resumed", "--resume-from-checkpoint", str(fsdp / "checkpoint-2"),
                        checkpoints=("checkpoint-4",), env=env, sharded=True)
    assert _max_diff(sharded, _saved_weights(resumed)) == 0
    rank0, rank1 = (load_file(tmp_path / "fsdp" / f"rank{r}.safetensors") for r in (0, 1))
    assert _max_diff(rank0, rank1) == 0


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate runs FSDP on GPUs only")
def test_fsdp2_trainer_run_on_one_gpu_trains_like_one_process(tmp_path):
    """Trainer under FSDP2 (one GPU process, as accelerate launch sets it up): every checkpoint holds TALAN's
    gathered files, and they equal a plain one-process run's."""
    # the torch backend: this checks Trainer + FSDP on a GPU, not the kernels (no Triton JIT in the budget)
    fsdp = _torchrun(tmp_path / "fsdp", "--no-use-cpu", "--backend", "torch", nproc=1, env=FSDP2_ENV)
    plain = _train(tmp_path / "plain", "--talan-lr", "0.02", "--no-use-cpu", "--backend", "torch")
    assert plain["global_step"] == 4
    _assert_weights_close(_saved_weights(Path(plain["output_dir"])), _saved_weights(fsdp))
    assert _max_diff(_saved_weights(fsdp), _saved_weights(fsdp / "checkpoint-2")) > 1e-3


# ---- sharded (FSDP) checkpoints ----------------------------------------------------------------------
# accelerate runs FSDP only on GPUs (with use_cpu it falls back to DDP), so Trainer's FSDP path is untested
# here; these check the gather-filter-map with fake state dicts and with a real FSDP2 gather.
def _small_model(*flags, seed=0):
    from talan.train import _embedded_model
    from talan.train_config import talan_config_from

    settings = resolve_settings(_parse("--latent-dim", "8", "--num-slots", "4", "--backend", "torch", *flags))
    backbone, _ = _embedded_model(seed=0)
    torch.manual_seed(seed)
    return build_model(backbone, settings, talan_config_from(settings))


def _wrapped_state_dict(model):
    """The model's state dict as an FSDP1 wrapper under DDP would name it, TALAN's tensors doubled."""
    out = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if "layers" in parts:  # FSDP1 inserts its wrapper's name below each wrapped decoder layer
            at = parts.index("layers") + 2
            parts = [*parts[:at], "_fsdp_wrapped_module", *parts[at:]]
        out["module." + ".".join(parts)] = tensor * 2 if ".talan." in name else tensor
    return out


def test_talan_tensors_are_picked_out_of_a_gathered_state_dict():
    from talan.patching import talan_blocks
    from talan.train import talan_tensors_from_state_dict

    model = _small_model("--layer", "0,1")
    tensors = talan_tensors_from_state_dict(model, _wrapped_state_dict(model))
    blocks = talan_blocks(model)
    assert sorted(blocks) == [0, 1]
    expected = {f"layers.{i}.{n}": p.detach() * 2 for i, b in blocks.items() for n, p in b.named_parameters()}
    assert tensors.keys() == expected.keys()
    assert _max_diff(tensors, expected) == 0
    state_dict = _wrapped_state_dict(model)
    shard_key = next(k for k in state_dict if k.endswith("layers.1._fsdp_wrapped_module.talan.w_in"))
    state_dict[shard_key] = state_dict[shard_key][: state_dict[shard_key].shape[0] // 2]
    with pytest.raises(ValueError, match=r"layers\.1\.talan\.w_in has shape .* a shard"):
        talan_tensors_from_state_dict(model, state_dict)
    del state_dict[shard_key]
    with pytest.raises(KeyError, match=r"layers\.1\.talan\.w_in: no key"):
        talan_tensors_from_state_dict(model, state_dict)


@pytest.mark.parametrize("main", [True, False])
def test_save_talan_gathers_on_every_process_and_writes_on_the_main_one(tmp_path, main):
    from types import SimpleNamespace

    from talan.train import TalanTrainer

    model = _small_model()
    calls = []

    def get_state_dict(wrapped):
        calls.append(wrapped)
        return _wrapped_state_dict(model) if main else {}  # FSDP gathers onto rank 0 only

    wrapped = object()
    fake = SimpleNamespace(_talan_model=lambda: model, _talan_sharded=True, model_wrapped=wrapped,
                           args=SimpleNamespace(should_save=main),
                           accelerator=SimpleNamespace(get_state_dict=get_state_dict, is_main_process=main))
    TalanTrainer.save_talan(fake, tmp_path / "ckpt")
    assert calls == [wrapped]  # the collective runs on every process
    if not main:
        assert not (tmp_path / "ckpt").exists()
        return
    assert TALAN_FILES == {p.name for p in (tmp_path / "ckpt").iterdir()}
    fresh = _small_model(seed=1)
    talan.load_pretrained(fresh, tmp_path / "ckpt")
    saved = {n: p for n, p in fresh.named_parameters() if ".talan." in n}
    assert saved and all(torch.equal(saved[n], p * 2) for n, p in model.named_parameters() if n in saved)


FSDP2_SCRIPT = """
import argparse, sys
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
import talan
from talan import checkpoint
from talan.patching import talan_blocks, talan_config
from talan.train import _embedded_model, add_train_arguments, build_model, talan_tensors_from_state_dict
from talan.train_config import resolve_settings, talan_config_from

dist.init_process_group("gloo")
out = sys.argv[1]
settings = resolve_settings(add_train_arguments(argparse.ArgumentParser()).parse_args(
    ["--latent-dim", "8", "--num-slots", "4", "--backend", "torch", "--layer", "0,1"]))
def make(seed):
    backbone, _ = _embedded_model(0)
    torch.manual_seed(seed)
    return build_model(backbone, settings, talan_config_from(settings))
model = make(0)
full = {f"layers.{i}.{n}": p.detach().clone() for i, b in talan_blocks(model).items() for n, p in b.named_parameters()}
for layer in model.base_model.model.model.layers:
    fully_shard(layer)
fully_shard(model)
shards = [p for p in talan.talan_parameters(model)]
assert all(type(p).__name__ == "DTensor" for p in shards)
assert any(p.to_local().numel() < p.numel() for p in shards)  # really sharded
state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if dist.get_rank() == 0:
    tensors = talan_tensors_from_state_dict(model, state_dict)
    assert tensors.keys() == full.keys()
    assert all(torch.equal(tensors[k], full[k]) for k in full)
    checkpoint._write_checkpoint(out, talan_config(model), tensors, checkpoint._host(model))
dist.barrier()
fresh = make(1)  # resume: load before sharding, then shard; the gathered weights are the saved ones
talan.load_pretrained(fresh, out)
for layer in fresh.base_model.model.model.layers:
    fully_shard(layer)
fully_shard(fresh)
again = get_model_state_dict(fresh, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if dist.get_rank() == 0:
    reloaded = talan_tensors_from_state_dict(fresh, again)
    assert all(torch.equal(reloaded[k], full[k]) for k in full)
    print("FSDP2-OK")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_fsdp2_gathered_talan_tensors_are_full_and_reload(tmp_path):
    """Real FSDP2 sharding (fully_shard over gloo), without Trainer: gather, pick TALAN's tensors, write, reload."""
    script = tmp_path / "fsdp2_script.py"
    script.write_text(textwrap.dedent(FSDP2_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "talan")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FSDP2-OK" in proc.stdout
    saved = load_file(tmp_path / "talan" / "talan_model.safetensors")
    assert tuple(saved["layers.1.w_in"].shape) == (64, 8) and tuple(saved["layers.0.norm_weight"].shape) == (64,)


# ---- settings ----------------------------------------------------------------------------------------
def test_config_file_sets_values_and_flags_override_it(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("mixer: glu\nnum-slots: 4\nlayer: [0, 1]\nrank: 4\ntalan_lr: 0.001\nbf16: false\n")
    settings = resolve_settings(_parse("--config", str(yaml_file), "--num-slots", "2"))
    assert (settings.mixer, settings.num_slots, settings.layer, settings.rank, settings.talan_lr, settings.bf16) \
        == ("glu", 2, (0, 1), 4, 0.001, False)
    assert settings.latent_dim == 64 and settings.alpha == 8.0  # defaults; alpha follows the rank
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({"writeback": "norm_cap", "max_steps": 3}))
    assert load_config_file(json_file) == {"writeback": "norm_cap", "max_steps": 3}


@pytest.mark.parametrize("text, message", [
    ("mixer: bad\n", "mixer: must be one of"),
    ("num_slots: 0\n", "num_slots: expected a positive integer"),
    ("no_such_setting: 1\n", "unknown setting 'no_such_setting'"),
    ("bf16: 3\n", "bf16: expected true or false"),
])
def test_config_file_bad_values_name_the_setting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        resolve_settings(_parse("--config", str(path)))


# ---- bad inputs --------------------------------------------------------------------------------------
def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model .*no_model: no such directory"):
        _train(tmp_path, "--model", str(tmp_path / "no_model"))


def test_missing_resume_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume-from-checkpoint .*checkpoint-9: no such checkpoint"):
        _train(tmp_path, "--resume-from-checkpoint", str(tmp_path / "checkpoint-9"))
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(FileNotFoundError, match="talan_config.json is missing"):
        _train(tmp_path, "--resume-from-checkpoint", str(tmp_path / "checkpoint-2"))


@pytest.mark.parametrize("lines, lineno", [
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}, "{not json"], 3),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c"}], 2),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "[1, 2"], 2),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
      {"messages": [{"role": "user", "content": "a"}]}], 2),
])
def test_malformed_jsonl_line_names_the_file_and_line(tmp_path, lines, lineno):
    data = _write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=rf"bad\.jsonl, line {lineno}:"):
        _train(tmp_path / "run", "--data", str(data))
    assert not (tmp_path / "run").exists()  # nothing trained


def test_bad_flag_values_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--mixer", "bad")
    assert exit_info.value.code == 2 and "invalid choice: 'bad'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="layer as a float"):
        _train(tmp_path, "--layer", "1.5")
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet file"):
        _train(tmp_path, "--data", str(_write_jsonl(tmp_path / "data.txt", ["x"])))


@pytest.mark.parametrize("config, flags, error, message", [
    (None, (), FileNotFoundError, "--deepspeed .*missing.json: no such file"),
    ('{"zero_optimization": ', (), ValueError, r"--deepspeed .*ds\.json, line 1: not valid JSON"),
    ("[1, 2]", (), ValueError, "expected a JSON object, got list"),
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
        _train(tmp_path / "run", "--deepspeed", str(path), *flags)
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
    result = _train(tmp_path / "run", "--data", str(pairs))
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
