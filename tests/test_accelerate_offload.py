"""A model that accelerate dispatched with a device_map that offloads layers (big-model inference): an offloaded
layer keeps its weights on the meta device between forwards, so its TALAN block lives on the layer's execution
device instead (on this CPU-only machine: a layer offloaded to disk, executed on the CPU)."""

import pytest
import torch
from conftest import open_gates, tiny_batch, tiny_config, tiny_qwen3

import talan
from talan.patching import talan_blocks

DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}


def _offloaded(tmp_path):
    """The tiny Qwen3 (eager attention, as its in-memory twin) loaded with layer 1 offloaded to disk."""
    from transformers import AutoModelForCausalLM

    tiny_qwen3().save_pretrained(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", device_map=DEVICE_MAP,
                                                 offload_folder=str(tmp_path / "offload"), attn_implementation="eager")
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    return model


def test_a_block_in_a_disk_offloaded_layer_lives_on_its_execution_device(tmp_path):
    model = _offloaded(tmp_path)
    reference = talan.patch(tiny_qwen3(), tiny_config(layer=(0, 1)))
    batch = tiny_batch(batch=2, length=7)
    batch["attention_mask"][1, :3] = 0
    unpatched = model(**batch).logits
    talan.patch(model, tiny_config(layer=(0, 1)))
    assert {p.device.type for p in talan.talan_parameters(model)} == {"cpu"}
    torch.testing.assert_close(model(**batch).logits, unpatched, rtol=0, atol=0)  # identity at init
    for blocks in (talan_blocks(model), talan_blocks(reference)):
        torch.manual_seed(0)
        for block in blocks.values():
            for p in block.parameters():
                p.data.normal_(0, 0.3)
    open_gates(model)
    open_gates(reference)
    torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-5)
    kwargs = dict(attention_mask=batch["attention_mask"], max_new_tokens=5, do_sample=False, pad_token_id=0)
    generated = model.generate(batch["input_ids"], **kwargs)
    assert torch.equal(generated, reference.generate(batch["input_ids"], use_cache=False, **kwargs))
    # the offload hooks never touched the block: its weights are still there after the forwards
    assert {p.device.type for p in talan.talan_parameters(model)} == {"cpu"}


def test_a_layer_offloaded_as_one_module_is_refused_by_name(tmp_path):
    """With preload_module_classes, accelerate offloads the whole decoder layer under one hook, which would
    load and drop every tensor under it, the block's too: patch refuses that layer and changes nothing."""
    from accelerate import dispatch_model

    whole = dispatch_model(tiny_qwen3(), device_map=DEVICE_MAP, offload_dir=str(tmp_path / "offload2"),
                           preload_module_classes=["Qwen3DecoderLayer"])
    hooks = [dict(m._forward_pre_hooks) for m in whole.modules()]
    with pytest.raises(ValueError, match=r"layer: accelerate offloads decoder layer\(s\) \[1\]"):
        talan.patch(whole, tiny_config(layer=(0, 1)))
    assert not hasattr(whole.model.layers[0], "talan") and not talan.patching.is_patched(whole)
    assert hooks == [dict(m._forward_pre_hooks) for m in whole.modules()]
    talan.patch(whole, tiny_config(layer=0))  # a layer kept on a device is fine
