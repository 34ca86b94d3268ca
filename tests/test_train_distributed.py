"""`talan train` over several processes on the CPU: DDP (two torchrun processes end with identical
weights), DeepSpeed ZeRO-3 and FSDP2 under Trainer (they train like DDP and resume exactly), and the
gathering of sharded TALAN tensors (fake FSDP1 state dicts, real FSDP2 shards over gloo). A one-GPU
FSDP2 Trainer run is a GPU test.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from conftest import NEEDS_TORCH_2_6, TORCH_BEFORE_2_6, TRANSFORMERS_4
from safetensors.torch import load_file
from train_helpers import (
    ADAPTER_FILES,
    DEEPSPEED_ZERO3,
    FAST,
    TALAN_FILES,
    make_local_checkpoint,
    max_diff,
    parse_train,
    saved_weights,
    train,
)

import talan
from talan.train import build_model
from talan.train_config import resolve_settings

# ---- distributed -------------------------------------------------------------------------------------
# The last lines of the torchrun scripts. At interpreter exit, after every rank has destroyed its process group,
# torch's teardown sometimes aborts a gloo rank ("terminate called without an active exception", SIGABRT): 7
# times in 40 runs of FSDP2_SCRIPT on the 2-core VM under CPU load, twice in a row in one clean-clone .ci/run
# here. Everything is written and flushed by then, so the ranks leave without that teardown (0 in 40 runs
# under the same load); _run_ranks still runs a killed rank once more.
EXIT_WITHOUT_TEARDOWN = """
import torch.distributed as dist
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""

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
""" + EXIT_WITHOUT_TEARDOWN


# the same flags for every torchrun run, so that DDP and ZeRO-3 runs can be compared weight for weight
DISTRIBUTED_FLAGS = [*FAST, "--use-cpu", "--talan-lr", "0.02"]


def _torchrun(folder: Path, *flags, checkpoints=("checkpoint-2", "checkpoint-4"), nproc=2, env=None,
              sharded=False, fsdp=None) -> Path:
    """Run RANK_SCRIPT in ``nproc`` processes (CPU unless ``flags`` say otherwise) with ``flags`` and the
    extra environment ``env``; ``sharded``: each process holds part of TALAN's parameters only; ``fsdp``:
    whether Trainer runs FSDP (default: as accelerate's environment says). Returns the output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "rank_script.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), str(folder), "--output-dir", str(folder / "run"), *DISTRIBUTED_FLAGS, *flags]
    _run_ranks(cmd, env, folder, outputs=[folder / "run"], timeout=300)
    for rank in range(nproc):  # synchronised processes, not independent runs
        info = json.loads((folder / f"rank{rank}.json").read_text())
        assert info["world_size"] == nproc and info["global_step"] == 4
        assert info["fsdp"] == (env.get("ACCELERATE_USE_FSDP") == "true" if fsdp is None else fsdp)
        held, total = info["talan_numel"]
        assert held < total if sharded else held == total
        assert {g["name"]: g["lr"] for g in info["param_groups"]} == {"adapter": 0.01, "talan": 0.02}
    for checkpoint in (*checkpoints, "."):
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (folder / "run" / checkpoint).iterdir()}
    return folder / "run"


def _run_ranks(cmd, env, folder: Path, outputs, timeout) -> subprocess.CompletedProcess:
    """Run the torchrun command ``cmd``; assert that every rank exited cleanly. A rank killed by a signal gets
    one more run (its ``outputs`` removed first) with a warning. On the 2-core VM one rank sometimes aborts with
    ``terminate called without an active exception`` (SIGABRT from C++, no Python traceback) and the other then
    loses its gloo peer: once in ~15 Trainer FSDP runs, and 3 times in 240 runs of FSDP2_SCRIPT (torch 2.13),
    each time after rank 0 had printed its result (one of them failed a CI run). A crash of the process, not
    a wrong result; a Python exception is never run again. (The scripts now end with EXIT_WITHOUT_TEARDOWN,
    which keeps that crash from happening at all in the runs measured.)"""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 and _a_rank_was_killed(proc.stderr):
        (folder / "first_attempt.log").write_text(proc.stdout + proc.stderr)
        warnings.warn(f"torchrun: a rank was killed by a signal; ran again (log: {folder / 'first_attempt.log'})",
                      stacklevel=3)
        for output in outputs:
            shutil.rmtree(output, ignore_errors=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _a_rank_was_killed(stderr: str) -> bool:
    """Whether the rank torchrun names as the root cause died by a signal (``Signal 6 (SIGABRT) received by
    PID``), not by a Python exception (``exitcode  : 1``)."""
    _, found, root_cause = stderr.rpartition("Root Cause")
    return bool(found) and re.search(r"Signal \d+ \(SIG\w+\) received by PID", root_cause) is not None


def test_only_a_rank_killed_by_a_signal_is_run_again():
    killed = ("[1]:\n  exitcode  : -15 (pid: 9378)  (SIGTERM)\n  traceback : Signal 15 (SIGTERM) received by PID 9378\n"
              "Root Cause (first observed failure):\n[0]:\n  exitcode  : -6 (pid: 9379)  (SIGABRT)\n"
              "  traceback : Signal 6 (SIGABRT) received by PID 9379\n")
    raised = ("[1]:\n  traceback : Signal 15 (SIGTERM) received by PID 9378\nRoot Cause (first observed failure):\n"
              "[0]:\n  exitcode  : 1 (pid: 9379)\n  traceback : To enable traceback see: https://pytorch.org/docs\n")
    assert _a_rank_was_killed(killed)
    assert not _a_rank_was_killed(raised)
    assert not _a_rank_was_killed("ValueError: --fsdp: accelerate runs FSDP on GPU processes only")


def test_run_ranks_runs_a_killed_rank_once_more_and_clears_its_outputs(tmp_path):
    """The first run "loses" a rank to SIGABRT after writing an output: one more run, which must start without
    that output. A run that fails with an error is not run again."""
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent("""
        import pathlib, sys
        out, runs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
        runs.write_text(runs.read_text() + "run\\n" if runs.exists() else "run\\n")
        if out.exists():
            sys.exit("the output of an earlier run was left behind")
        out.mkdir()
        if runs.read_text().count("run") == 1:
            sys.exit("Root Cause (first observed failure):\\n  traceback : Signal 6 (SIGABRT) received by PID 7")
        print("second run")
    """))
    runs = tmp_path / "runs.txt"
    cmd = [sys.executable, str(script), str(tmp_path / "out"), str(runs)]
    with pytest.warns(UserWarning, match="a rank was killed by a signal; ran again"):
        proc = _run_ranks(cmd, os.environ, tmp_path, outputs=[tmp_path / "out"], timeout=60)
    assert proc.stdout == "second run\n" and (tmp_path / "first_attempt.log").is_file()
    assert runs.read_text().count("run") == 2
    with pytest.raises(AssertionError, match="the output of an earlier run"):  # an error (out is still there)
        _run_ranks(cmd, os.environ, tmp_path, outputs=[], timeout=60)
    assert runs.read_text().count("run") == 3  # ... is not run again


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    return _torchrun(tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(ddp_run):
    rank0, rank1 = load_file(ddp_run.parent / "rank0.safetensors"), load_file(ddp_run.parent / "rank1.safetensors")
    assert any(".talan." in n for n in rank0) and any("lora_" in n for n in rank0)
    assert max_diff(rank0, rank1) == 0
    saved = load_file(ddp_run / "talan_model.safetensors")
    on_rank0 = {k: v for k, v in rank0.items() if ".talan." in k}
    assert sorted(t.sum().item() for t in saved.values()) == sorted(t.sum().item() for t in on_rank0.values())


@pytest.mark.slow
def test_torchrun_ddp_trains_a_4bit_backbone_in_step(tmp_path):
    """QLoRA under DDP (--load-in-4bit, two processes): both ranks end with identical adapter and TALAN weights."""
    pytest.importorskip("bitsandbytes")
    run = _torchrun(tmp_path / "qlora", "--model", str(make_local_checkpoint(tmp_path / "model")), "--load-in-4bit",
                    "--learning-rate", "0.01")  # the embedded model's default, which _torchrun checks
    rank0, rank1 = (load_file(run.parent / f"rank{r}.safetensors") for r in (0, 1))
    assert any(".talan." in n for n in rank0) and any("lora_" in n for n in rank0)
    assert max_diff(rank0, rank1) == 0


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
    sharded = saved_weights(zero3)
    _assert_weights_close(saved_weights(ddp_run), sharded)
    assert max_diff(sharded, saved_weights(zero3 / "checkpoint-2")) > 1e-3  # steps 3-4 moved the weights
    if TORCH_BEFORE_2_6:
        pytest.skip("trained like DDP; resuming needs torch >= 2.6 (Trainer's torch.load)")
    resumed = _torchrun(tmp_path / "resumed", "--deepspeed", str(config),
                        "--resume-from-checkpoint", str(zero3 / "checkpoint-2"), checkpoints=("checkpoint-4",),
                        sharded=True)
    assert max_diff(sharded, saved_weights(resumed)) == 0


def _assert_weights_close(expected: dict, actual: dict) -> None:
    for name, tensor in expected.items():
        assert actual[name].dtype == torch.float32 and actual[name].shape == tensor.shape, name
        # 4 AdamW steps of fp32 sums taken in another order (all-reduce vs reduce-scatter): ~1e-6 measured
        assert (actual[name] - tensor).abs().max().item() <= 1e-5 * max(1.0, tensor.abs().max().item()), name


# what `accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP ...` exports
FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
             "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen3DecoderLayer", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}


@pytest.mark.slow
@NEEDS_TORCH_2_6  # accelerate's FSDP2
def test_fsdp2_trainer_run_trains_like_ddp_and_resumes_exactly(ddp_run, tmp_path):
    """Trainer under FSDP2 on two CPU processes (accelerate's FSDP environment, and its FSDP path forced on
    for CPU processes, see RANK_SCRIPT): the callback gathers the shards into TALAN's files in every
    checkpoint, the weights equal the DDP run's, and resuming from checkpoint-2 ends with the same ones."""
    env = {**FSDP2_ENV, "TALAN_TEST_FSDP_ON_CPU": "1"}
    fsdp = _torchrun(tmp_path / "fsdp", env=env, sharded=True)
    assert (fsdp / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # Trainer's own FSDP checkpoint
    sharded = saved_weights(fsdp)
    _assert_weights_close(saved_weights(ddp_run), sharded)
    assert max_diff(sharded, saved_weights(fsdp / "checkpoint-2")) > 1e-3
    rank0, rank1 = (load_file(tmp_path / "fsdp" / f"rank{r}.safetensors") for r in (0, 1))
    assert max_diff(rank0, rank1) == 0
    resumed = _torchrun(tmp_path / "resumed", "--resume-from-checkpoint", str(fsdp / "checkpoint-2"),
                        checkpoints=("checkpoint-4",), env=env, sharded=True)
    resumed_diff = max_diff(sharded, saved_weights(resumed))
    if TRANSFORMERS_4 and resumed_diff > 0:
        # measured with 4.57.6 + accelerate 1.10.1: the LoRA weights drift as far as TALAN's (~lr), so
        # Trainer's FSDP2 resume there does not restore the training state exactly; TALAN's files load alike
        pytest.xfail(f"transformers 4.x: an FSDP2 resume does not continue exactly (max diff {resumed_diff:.1e})")
    assert resumed_diff == 0


@pytest.mark.slow
@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.x's --fsdp asks accelerate to sync module states, "
                    "which accelerate refuses on CPU processes (no device)")
def test_fsdp_flag_shards_like_accelerates_environment(ddp_run, tmp_path):
    """--fsdp (Trainer's own flag, for a plain torchrun launch) takes the same FSDP2 path as accelerate's
    environment: sharded TALAN parameters, gathered into checkpoints equal to the DDP run's."""
    fsdp = _torchrun(tmp_path / "fsdp", "--fsdp", env={"TALAN_TEST_FSDP_ON_CPU": "1"}, sharded=True, fsdp=True)
    assert (fsdp / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    _assert_weights_close(saved_weights(ddp_run), saved_weights(fsdp))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flag", "accelerate"])
def test_fsdp_on_cpu_processes_is_refused_instead_of_training_unsharded(tmp_path, how):
    """Unshimmed, accelerate's CPU processes fall back to DDP under --fsdp (or accelerate's --use_fsdp
    environment): talan train stops before the first step and says so, and writes no checkpoint."""
    flags, env = (["--fsdp"], {}) if how == "flag" else ([], FSDP2_ENV)
    script = tmp_path / "rank_script.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path), "--output-dir", str(tmp_path / "run"), *DISTRIBUTED_FLAGS, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          timeout=300)
    assert proc.returncode != 0
    asked = "--fsdp" if how == "flag" else "accelerate launch --use_fsdp"
    if how == "flag" and TRANSFORMERS_4:  # there accelerate itself refuses first (module-state sync, no device)
        assert "There are currently no available devices found" in proc.stderr, proc.stderr[-3000:]
    elif how == "accelerate" and TORCH_BEFORE_2_6:  # accelerate refuses its FSDP2 on torch < 2.6 itself
        assert "FSDP2 requires PyTorch >= 2.6" in proc.stderr, proc.stderr[-3000:]
    else:
        assert f"{asked}: accelerate runs FSDP on GPU processes only" in proc.stderr, proc.stderr[-3000:]
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerate runs FSDP on GPUs only")
def test_fsdp2_trainer_run_on_one_gpu_trains_like_one_process(tmp_path):
    """Trainer under FSDP2 (one GPU process, as accelerate launch sets it up): every checkpoint holds TALAN's
    gathered files, and they equal a plain one-process run's."""
    # the torch backend: this checks Trainer + FSDP on a GPU, not the kernels (no Triton JIT in the budget)
    fsdp = _torchrun(tmp_path / "fsdp", "--no-use-cpu", "--backend", "torch", nproc=1, env=FSDP2_ENV)
    # peft's own forward in both (FSDP turns fused LoRA off): only the sharding differs
    plain = train(tmp_path / "plain", "--talan-lr", "0.02", "--no-use-cpu", "--backend", "torch", "--no-fused-lora")
    assert plain["global_step"] == 4
    _assert_weights_close(saved_weights(Path(plain["output_dir"])), saved_weights(fsdp))
    assert max_diff(saved_weights(fsdp), saved_weights(fsdp / "checkpoint-2")) > 1e-3


# ---- sharded (FSDP) checkpoints ----------------------------------------------------------------------
# The gather-filter-map on its own: with fake FSDP1-named state dicts, and with a real FSDP2 gather
# outside Trainer.
def _small_model(*flags, seed=0):
    from talan.train import _embedded_model
    from talan.train_config import talan_config_from

    settings = resolve_settings(parse_train("--latent-dim", "8", "--num-slots", "4", "--backend", "torch", *flags))
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
    assert max_diff(tensors, expected) == 0
    state_dict = _wrapped_state_dict(model)
    shard_key = next(k for k in state_dict if k.endswith("layers.1._fsdp_wrapped_module.talan.w_in"))
    state_dict[shard_key] = state_dict[shard_key][: state_dict[shard_key].shape[0] // 2]
    with pytest.raises(ValueError, match=r"layers\.1\.talan\.w_in has shape .* a shard"):
        talan_tensors_from_state_dict(model, state_dict)
    del state_dict[shard_key]
    with pytest.raises(KeyError, match=r"layers\.1\.talan\.w_in: no key"):
        talan_tensors_from_state_dict(model, state_dict)
    for part in ("_checkpoint_wrapped_module", "_orig_mod"):  # activation checkpointing's and torch.compile's names
        renamed = {k.replace("_fsdp_wrapped_module", part): v for k, v in _wrapped_state_dict(model).items()}
        assert max_diff(talan_tensors_from_state_dict(model, renamed), expected) == 0, part
    state_dict = _wrapped_state_dict(model)
    state_dict["copy." + shard_key] = state_dict[shard_key]
    with pytest.raises(KeyError, match=r"layers\.1\.talan\.w_in: several keys"):
        talan_tensors_from_state_dict(model, state_dict)


# should_save without the main process: a node's first process under save_on_each_node, on another node than rank 0
@pytest.mark.parametrize("should_save, main", [(True, True), (False, False), (True, False)],
                         ids=["main", "other", "other-node-first"])
def test_save_talan_gathers_on_every_process_and_writes_on_the_main_one(tmp_path, should_save, main):
    from types import SimpleNamespace

    from talan.train import TalanTrainer

    model = _small_model()
    calls = []

    def get_state_dict(wrapped):
        calls.append(wrapped)
        return _wrapped_state_dict(model) if main else {}  # FSDP gathers onto rank 0 only

    wrapped = object()
    fake = SimpleNamespace(_talan_model=lambda: model, _talan_sharded=True, model_wrapped=wrapped,
                           args=SimpleNamespace(should_save=should_save),
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
import argparse, os, sys
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
""" + EXIT_WITHOUT_TEARDOWN


@pytest.mark.slow
@NEEDS_TORCH_2_6  # torch.distributed.fsdp.fully_shard
def test_torchrun_fsdp2_gathered_talan_tensors_are_full_and_reload(tmp_path):
    """Real FSDP2 sharding (fully_shard over gloo), without Trainer: gather, pick TALAN's tensors, write, reload."""
    script = tmp_path / "fsdp2_script.py"
    script.write_text(textwrap.dedent(FSDP2_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(tmp_path / "talan")]
    proc = _run_ranks(cmd, env, tmp_path, outputs=[tmp_path / "talan"], timeout=120)
    assert "FSDP2-OK" in proc.stdout
    saved = load_file(tmp_path / "talan" / "talan_model.safetensors")
    assert tuple(saved["layers.1.w_in"].shape) == (64, 8) and tuple(saved["layers.0.norm_weight"].shape) == (64,)
