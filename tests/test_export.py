"""`talan export` (talan/export.py): a trained adapter merged into its backbone, saved with TALAN's files;
reloading the folder gives the trained model's logits, and bad inputs get clear errors."""

import json

import pytest
import torch
from conftest import needs_transformers
from safetensors.torch import load_file
from train_helpers import TALAN_FILES, make_local_checkpoint, train, write_jsonl

import talan
from talan.cli import main
from talan_kernels.testing import assert_rel_rms, rel_rms


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    return make_local_checkpoint(tmp_path_factory.mktemp("model"))


# Qwen3 with either adapter; then a local checkpoint of each other decoder-layer layout (hosts.FAMILIES): Gemma 3
# (attention output normed first; the text-only model and the vision-language one, which AutoModelForCausalLM
# loads for Gemma 3 from 4B on), OLMo 2 (no pre-norm), Phi-3 (dropped out first, fused qkv_proj that "all-linear"
# adapts), Granite (scaled), Gemma 4 (normed first; as it ships, the vision-language model, which
# AutoModelForCausalLM loads), Qwen3.5 (hybrid linear attention; saved as it ships, the vision-language model, which
# AutoModelForCausalLM loads as its text decoder), Granite 4 (dense, a Mamba 2 layer whose projections LoRA adapts
# too), LFM2 (a short-convolution layer) and Jamba (a Mamba layer, whose dt_proj "all-linear" must leave alone: the
# Mamba reads its weight without calling it), GPT-2 (its layers in h, Conv1D projections that "all-linear" adapts),
# OPT (its layers in decoder.layers, at the post site), BLOOM (its attention adds the residual itself) and DeepSeek-V4
# (hyper-connections, at the post site; LoRA kept off its grouped o_a_proj and its indexer), each trained by `talan
# train` on text, exported and reloaded.
EXPORT_CASES = [("Qwen3", "lora"), ("Qwen3", "dora"), ("Gemma3Text", "lora"), ("Gemma3", "lora"), ("Olmo2", "lora"),
                ("Phi3", "lora"), ("Granite", "lora"), ("Gemma4", "lora"), ("Qwen3_5", "lora"),
                ("GraniteMoeHybrid", "lora"), ("Lfm2", "lora"), ("Jamba", "lora"), ("GPT2", "lora"),
                ("OPT", "lora"), ("Bloom", "lora"), ("DeepseekV4", "lora")]


@pytest.mark.parametrize("family,adapter", [
    pytest.param(f, a, id=f"{f}-{a}", marks=needs_transformers(f"{f}Config")) for f, a in EXPORT_CASES])
def test_export_merges_the_adapter_and_keeps_talan(tmp_path, local_model, family, adapter):
    from transformers import AutoModelForCausalLM

    if family != "Qwen3":
        local_model = make_local_checkpoint(tmp_path / "model", family=family)
    data = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(16)])
    site = ["--site", "post"] if family in ("OPT", "DeepseekV4") else []  # their layers have no mid site
    run = train(tmp_path / "run", "--model", str(local_model), "--data", str(data), "--use-cpu", "--adapter", adapter,
                "--learning-rate", "1e-2", "--backend", "torch", *site)
    # each LoRA's B starts at zero; a vision tower's sees no image in text training
    untrained = [name for name, w in load_file(f"{run['output_dir']}/adapter_model.safetensors").items()
                 if "lora_B" in name and "vision" not in name and not w.any()]
    assert not untrained, f"LoRA modules that training never reached: {untrained}"
    ids = torch.randint(4, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = run["trainer"].model.eval()(input_ids=ids).logits

    out = tmp_path / "merged"
    assert main(["export", "--model", str(local_model), "--checkpoint", run["output_dir"], "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert TALAN_FILES | {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith("adapter_") for n in names)  # merged: no adapter left
    weights = load_file(out / "model.safetensors")
    assert not any(".talan." in k or "lora_" in k for k in weights)  # a plain HF checkpoint
    assert json.loads((out / "talan_config.json").read_text())["backend"] == "torch"

    merged = talan.load_pretrained(AutoModelForCausalLM.from_pretrained(out), out).eval()
    assert type(merged) is type(run["trainer"].model.get_base_model())
    with torch.no_grad():
        got = merged(input_ids=ids).logits
        with talan.disabled(merged):
            without_talan = merged(input_ids=ids).logits
    assert_rel_rms(got, trained, 1e-5, "merged model + TALAN vs the trained adapter + TALAN")  # fp32 merge rounding
    assert rel_rms(without_talan, trained) > 1e-4  # TALAN is part of what was exported


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, local_model):
    tmp = tmp_path_factory.mktemp("run")
    return train(tmp / "run", "--model", str(local_model), "--use-cpu", "--backend", "torch",
                 "--data", str(write_jsonl(tmp / "d.jsonl", [{"prompt": "a", "completion": "b"}] * 4)))


def _export(model, checkpoint, out, *extra):
    return main(["export", "--model", str(model), "--checkpoint", str(checkpoint), "--out", str(out), *extra])


def test_export_bad_inputs_are_clear_errors(tmp_path, local_model, tiny_run, capsys):
    assert _export(local_model, tmp_path / "nowhere", tmp_path / "out") == 2
    assert f"--checkpoint {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    assert _export(local_model, tmp_path / "half", tmp_path / "out") == 2
    assert "talan_config.json is missing" in capsys.readouterr().err
    (tmp_path / "talan_only").mkdir()  # TALAN's files without the adapter's
    for name in TALAN_FILES:
        (tmp_path / "talan_only" / name).write_text("")
    assert _export(local_model, tmp_path / "talan_only", tmp_path / "out") == 2
    assert "adapter_config.json is missing" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert _export(local_model, tiny_run["output_dir"], tmp_path / "full") == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_writes_the_merged_weights_in_the_asked_dtype(tmp_path, local_model, tiny_run):
    out = tmp_path / "bf16"
    assert _export(local_model, tiny_run["output_dir"], out, "--model-dtype", "bfloat16") == 0
    assert {w.dtype for w in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert {w.dtype for w in load_file(out / "talan_model.safetensors").values()} == {torch.float32}  # as trained
