"""peft's other adapters beside TALAN (LoHa, LoKr, IA3, AdaLoRA, VeRA, OFT): TALAN's hooks sit on the decoder
layers, peft's on their linears, so any tuner co-trains with TALAN, saves beside it, reloads and merges with the
blocks left in place."""

import pytest
import torch
from conftest import open_gates, tiny_batch, tiny_config, tiny_qwen3
from peft import AdaLoraConfig, IA3Config, LoHaConfig, LoKrConfig, OFTConfig, PeftModel, VeraConfig, get_peft_model

import talan
from talan.patching import is_patched, talan_blocks

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Each tuner at a tiny size, initialised away from the identity where it has such an option, so it matters.
TUNERS = {
    "loha": lambda: LoHaConfig(r=4, alpha=8, target_modules=ATTENTION, init_weights=False),
    "lokr": lambda: LoKrConfig(r=4, alpha=8, target_modules=ATTENTION, init_weights=False),
    "ia3": lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                             init_ia3_weights=False),
    "adalora": lambda: AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=ATTENTION,
                                     init_lora_weights=False),
    "vera": lambda: VeraConfig(r=8, target_modules=["q_proj", "v_proj"], init_weights=False),
    "oft": lambda: OFTConfig(r=0, oft_block_size=16, target_modules=ATTENTION, init_weights=False),
}


def _tuned(kind, seed=0, train=False):
    torch.manual_seed(seed + 10)  # the tuner's own random initialisation
    return get_peft_model(tiny_qwen3(seed=seed, train=train), TUNERS[kind]())


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("kind", TUNERS)
def test_other_peft_tuners_cotrain_save_reload_and_merge_with_talan(kind, tmp_path):
    batch = tiny_batch(length=9)
    batch["attention_mask"][0, :3] = 0  # left padding
    model = _tuned(kind, train=True)
    model.eval()
    adapter_only = _logits(model, batch)
    open_gates(talan.patch(model, tiny_config(layer=(0, 1))), 0.5)
    with talan.disabled(model):  # TALAN off: the adapter's own outputs
        torch.testing.assert_close(_logits(model, batch), adapter_only, rtol=0, atol=0)
    with model.disable_adapter():  # the adapter off: TALAN alone changes the base model's outputs
        assert not torch.allclose(_logits(model, batch), adapter_only, atol=1e-4)

    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    talan_names = {n for n, p in model.named_parameters() if ".talan." in n}
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad and n not in talan_names}
    assert adapter and all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.values())
    talan_grads = [p.grad for p in talan.talan_parameters(model)]
    assert all(g is not None for g in talan_grads) and any(g.abs().sum() > 0 for g in talan_grads)
    if kind == "adalora":  # its rank allocator reads the adapter's gradients only
        model.base_model.update_and_allocate(1)
    model.eval()
    expected = _logits(model, batch)
    assert not torch.allclose(expected, adapter_only, atol=1e-4)

    model.save_pretrained(tmp_path)
    talan.save_pretrained(model, tmp_path)
    reloaded = talan.load_pretrained(PeftModel.from_pretrained(tiny_qwen3(), tmp_path), tmp_path)
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=1e-6, atol=1e-6)

    blocks = talan_blocks(model)
    merged = model.merge_and_unload()  # the adapter folded into the base weights; the blocks stay
    assert is_patched(merged) and all(talan_blocks(merged)[i] is b for i, b in blocks.items())
    torch.testing.assert_close(_logits(merged, batch), expected, rtol=1e-4, atol=1e-5)
