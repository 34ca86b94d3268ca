"""TALAN on a QLoRA host: a bitsandbytes 4-bit (or 8-bit) Qwen3 with peft LoRA. TALAN never touches the
base's linear layers, so it must patch, train, generate, save and load there as on an fp32 host; the
fused LoRA kernels leave the quantised layers on peft's forward and say so; the parameter report counts a
packed 4-bit weight as the weights it was quantised from."""

import pytest
import torch
from conftest import (
    assert_same_generation,
    greedy_kwargs,
    left_padded_prompt,
    open_gates,
    tiny_batch,
    tiny_config,
    tiny_qwen3,
)
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from train_helpers import ADAPTER_FILES, TALAN_FILES, make_local_checkpoint, train

import talan
from talan.cli import main
from talan_kernels.testing import assert_rel_rms

bnb = pytest.importorskip("bitsandbytes")
# bitsandbytes' notes on its CPU fallbacks; peft's k-bit preparation calls a transformers 5 deprecated name
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

LORA = dict(r=4, lora_alpha=8, target_modules="all-linear")
QUANT = {"nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
         "nf4_bf16_storage": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.bfloat16),
         "int8": dict(load_in_8bit=True)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The fp32 tiny Qwen3 saved once, to load quantised."""
    path = tmp_path_factory.mktemp("qwen3")
    tiny_qwen3().save_pretrained(path)
    return path


def quantised(checkpoint, kind="nf4"):
    from transformers import BitsAndBytesConfig, Qwen3ForCausalLM

    return Qwen3ForCausalLM.from_pretrained(checkpoint, quantization_config=BitsAndBytesConfig(**QUANT[kind]),
                                            dtype=torch.float32, attn_implementation="eager").eval()


def qlora(checkpoint, kind="nf4", seed=0, checkpointing=False):
    """QLoRA as peft's guide builds it: the quantised base prepared for k-bit training, then LoRA."""
    model = prepare_model_for_kbit_training(quantised(checkpoint, kind), use_gradient_checkpointing=checkpointing)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(**LORA))


def dequantised_twin(quantised_model):
    """An fp32 Qwen3 whose linear weights are the 4-bit model's weights dequantised: the same function."""
    twin = tiny_qwen3()
    twin_layers = dict(twin.named_modules())
    copied = 0
    with torch.no_grad():
        for name, module in quantised_model.get_base_model().named_modules():
            if isinstance(module, bnb.nn.Linear4bit):  # peft's wrapper keeps it as `<name>.base_layer`
                weight = module.weight
                twin_layers[name.removesuffix(".base_layer")].weight.copy_(
                    bnb.functional.dequantize_4bit(weight.data, weight.quant_state))
                copied += 1
    assert copied == 7 * 3
    return twin


@pytest.mark.parametrize("kind", QUANT)
def test_parameter_report_counts_quantised_weights_as_the_weights_they_stand_for(checkpoint, kind):
    reference = talan.parameter_report(talan.patch(get_peft_model(tiny_qwen3(), LoraConfig(**LORA)), tiny_config()))
    model = talan.patch(qlora(checkpoint, kind), tiny_config())
    report = talan.parameter_report(model)
    assert report["backbone"] == reference["backbone"] == model.get_base_model().num_parameters() - (
        report["adapter"] + report["talan"])
    assert {k: report[k] for k in ("adapter", "talan", "trainable")} == {
        k: reference[k] for k in ("adapter", "talan", "trainable")}
    assert report["talan_percent"] == pytest.approx(reference["talan_percent"])


# The inference tests run under no_grad, as generate does: in eval, bitsandbytes repacks a 4-bit weight for a
# CPU inference kernel (with sums of its own) on the first call whose input needs no gradient.
@pytest.mark.parametrize("kind", ["nf4", "int8"])
@torch.no_grad()
def test_qlora_host_patches_exactly_and_generates_as_it_recomputes(checkpoint, kind):
    model = qlora(checkpoint, kind).eval()
    ids, mask = left_padded_prompt()
    unpatched = model(input_ids=ids, attention_mask=mask).logits
    talan.patch(model, tiny_config(layer=(0, 1)))
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, unpatched)  # identity at initialisation
    open_gates(model)
    assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, unpatched, atol=1e-4)
    kwargs = greedy_kwargs(mask)
    recomputed = model.generate(input_ids=ids, use_cache=False, **kwargs)
    assert_same_generation(model.generate(input_ids=ids, **kwargs), recomputed)
    talan.unpatch(model)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, unpatched)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_qlora_training_step_matches_the_dequantised_fp32_host(checkpoint, checkpointing):
    """Loss and every TALAN and LoRA gradient on the 4-bit host equal those of an fp32 host holding its
    dequantised weights (fp32 compute: only the order of the sums differs), also with the gradient
    checkpointing that peft's k-bit preparation turns on by default."""
    model = qlora(checkpoint, checkpointing=checkpointing).train()
    assert model.is_gradient_checkpointing == checkpointing  # eval would repack its 4-bit weights for a CPU kernel
    twin = dequantised_twin(model).train()
    torch.manual_seed(0)  # the LoRA initialisation `qlora` drew
    twin = get_peft_model(twin, LoraConfig(**LORA))
    batch = tiny_batch(batch=2, length=9)
    batch["attention_mask"][1, :2] = 0
    results = []
    for host in (model, twin):
        torch.manual_seed(1)
        talan.patch(host, tiny_config(layer=1))
        open_gates(host, 0.5)
        with torch.no_grad():  # a trained adapter: LoRA's B is zero at init
            for name, p in host.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        loss = host(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        grads = {n: p.grad for n, p in host.named_parameters() if p.requires_grad}
        results.append((loss, grads))
    (loss, grads), (twin_loss, twin_grads) = results
    torch.testing.assert_close(loss, twin_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == twin_grads.keys() and any("talan" in n for n in grads)
    for name in grads:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], twin_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@torch.no_grad()
def test_qlora_talan_checkpoint_reloads_into_a_fresh_quantised_model(checkpoint, tmp_path):
    model = open_gates(talan.patch(qlora(checkpoint).eval(), tiny_config(layer=1)))
    batch = tiny_batch()
    expected = model(**batch).logits
    talan.save_pretrained(model, tmp_path)
    model.save_pretrained(tmp_path)  # the peft adapter beside TALAN's two files
    from peft import PeftModel

    fresh = PeftModel.from_pretrained(quantised(checkpoint), tmp_path)
    talan.load_pretrained(fresh, tmp_path)
    assert torch.equal(fresh(**batch).logits, expected)


@torch.no_grad()
def test_fused_lora_leaves_quantised_layers_on_peft_and_names_their_base(checkpoint):
    model = talan.patch(qlora(checkpoint).eval(), tiny_config())
    batch = tiny_batch()
    expected = model(**batch).logits
    report = talan.enable_fused_lora(model, backend="triton")
    assert report.fused == [] and len(report.skipped) == 7 * 3  # every linear layer of the three decoders
    assert all(why == "base layer bitsandbytes.nn.modules.Linear4bit is not torch.nn.Linear"
               for why in report.skipped.values())
    assert torch.equal(model(**batch).logits, expected)


# ---- talan train --load-in-4bit / --load-in-8bit ---------------------------------------------------------
@pytest.mark.parametrize("flag", ["--load-in-4bit", "--load-in-8bit"])
def test_talan_train_quantised_backbone_trains_and_its_checkpoint_reloads(tmp_path, flag):
    """With QLoRA's paged 8-bit AdamW (bitsandbytes), which keeps TALAN's param group."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = make_local_checkpoint(tmp_path / "model")
    result = train(tmp_path / "run", "--model", str(model_dir), flag, "--use-cpu", "--logging-steps", "1",
                   "--optim", "paged_adamw_8bit", "--talan-lr", "1e-3")
    optimizer = result["trainer"].optimizer
    assert type(getattr(optimizer, "optimizer", optimizer)).__module__.startswith("bitsandbytes.optim")
    assert {g["name"]: g["initial_lr"] for g in optimizer.param_groups} == {"adapter": 2e-4, "talan": 1e-3}
    model = result["trainer"].model
    weights = {type(m.base_layer.weight).__name__ for m in model.modules() if hasattr(m, "base_layer")}
    assert weights == {"Params4bit" if "4bit" in flag else "Int8Params"}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    losses = [h["loss"] for h in result["trainer"].state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}

    # the run's files onto a freshly quantised backbone: the trained model's outputs
    config = result["trainer"].model.get_base_model().config.quantization_config
    fresh = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32)
    fresh = talan.load_pretrained(PeftModel.from_pretrained(fresh, tmp_path / "run"), tmp_path / "run")
    ids = torch.randint(1, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    # In train mode (no dropout here): bitsandbytes' CPU inference repacking (eval, no grad) fails on layers
    # narrower than its 64-wide quantisation block, as this checkpoint's are.
    with torch.no_grad():
        assert torch.equal(fresh.train()(input_ids=ids).logits, model.train()(input_ids=ids).logits)

    # talan export merges the run into the unquantised backbone: the fp32 backbone + the run's adapter and TALAN
    out = tmp_path / "merged"
    assert main(["export", "--model", str(model_dir), "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 0
    merged = talan.load_pretrained(AutoModelForCausalLM.from_pretrained(out), out).eval()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "run")
    unmerged = talan.load_pretrained(unmerged, tmp_path / "run").eval()
    with torch.no_grad():
        assert_rel_rms(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits, 1e-5, "export of a QLoRA run")


def test_talan_train_prepares_a_checkpoint_saved_in_4bit(tmp_path):
    """A checkpoint saved quantised (its config.json carries the quantization_config) loads quantised with no
    flag and gets peft's k-bit preparation like --load-in-4bit: the rest of the backbone (saved in bf16, loaded
    with --model-dtype bfloat16) in fp32; sharding it is refused like the flags."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model_dir = make_local_checkpoint(tmp_path / "model")
    saved = tmp_path / "model-4bit"
    AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4")).save_pretrained(saved)  # its other weights in bf16
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (saved / name).write_bytes((model_dir / name).read_bytes())
    result = train(tmp_path / "run", "--model", str(saved), "--model-dtype", "bfloat16", "--use-cpu")
    model = result["trainer"].model
    assert {type(m.base_layer.weight).__name__ for m in model.modules() if hasattr(m, "base_layer")} == {"Params4bit"}
    assert {p.dtype for p in model.parameters() if p.dtype.is_floating_point} == {torch.float32}
    assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match=r"\(saved quantised, bitsandbytes\): FSDP with a quantised backbone"):
        train(tmp_path / "fsdp", "--model", str(saved), "--fsdp")


def _hide_package(monkeypatch, package: str) -> None:
    """As on a machine without ``package``: ``importlib.util.find_spec`` (how talan train asks) finds no such spec."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == package else real(name, *args))


@pytest.mark.parametrize("flags, error, message", [
    (["--load-in-4bit", "--load-in-8bit"], ValueError, "pass one of them"),
    (["--load-in-4bit"], ValueError, "pass --model"),
    (["--load-in-8bit", "--fsdp", "--model", "."], ValueError, "FSDP with a quantised backbone"),
    (["--load-in-4bit", "--deepspeed", "ds.json", "--model", "."], ValueError, "DeepSpeed with a quantised"),
])
def test_bad_quantisation_setups_fail_before_training(tmp_path, monkeypatch, flags, error, message):
    # without deepspeed installed (the GPU check machine's stack) too: a refused combination is named before any
    # package it would need
    _hide_package(monkeypatch, "deepspeed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    monkeypatch.setenv("LOCAL_RANK", "0")  # as under a launcher (DeepSpeed's own check)
    with pytest.raises(error, match=message):
        train(tmp_path / "run", *flags)
    assert not (tmp_path / "run").exists()


def test_quantisation_without_bitsandbytes_is_a_clear_error(tmp_path, monkeypatch, capsys):
    model_dir = make_local_checkpoint(tmp_path / "model")
    _hide_package(monkeypatch, "bitsandbytes")
    with pytest.raises(ImportError, match="--load-in-4bit needs the bitsandbytes package"):
        train(tmp_path / "run", "--model", str(model_dir), "--load-in-4bit")
    assert not (tmp_path / "run").exists()
    # the command prints it as one line and exits with 2, as for any other error a user can cause
    argv = ["train", "--output-dir", str(tmp_path / "run"), "--model", str(model_dir), "--load-in-4bit"]
    assert main(argv) == 2
    assert "talan train: error: --load-in-4bit needs the bitsandbytes package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
