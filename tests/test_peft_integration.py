"""TALAN co-trained with a peft LoRA / DoRA / rsLoRA adapter (SPEC §2–§3): trainability in both
orders, `all-linear` never wrapping TALAN, gradient checkpointing, merge_and_unload, generation, and
a TALAN checkpoint beside a peft adapter in one folder."""

import os

import pytest
import torch
from conftest import TRANSFORMERS_4, assert_same_loss_and_grads, open_gates, tiny_batch, tiny_config, tiny_qwen3
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import Qwen3ForCausalLM

import talan
from talan.patching import is_patched, talan_blocks

# transformers 5 renames gradient_checkpointing_* to activation_checkpointing_*; the old names still work
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

ADAPTERS = {"lora": {}, "dora": {"use_dora": True}, "rslora": {"use_rslora": True}}
ORDERS = ["peft_first", "patch_first"]
KIND = pytest.mark.parametrize("kind", list(ADAPTERS))
ORDER = pytest.mark.parametrize("order", ORDERS)


def _lora(kind="lora", **kw):
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, **ADAPTERS[kind], **kw)


def _build(order, kind="lora", config=None, train=False, reenable=True, **lora_kw):
    """A tiny Qwen3 with a peft adapter and TALAN, in the given order. ``patch_first`` calls
    `talan.mark_trainable` after `get_peft_model` unless ``reenable`` is False."""
    model = tiny_qwen3(train=train)
    config = tiny_config() if config is None else config
    if order == "peft_first":
        model = get_peft_model(model, _lora(kind, **lora_kw))
        talan.patch(model, config)
    else:
        talan.patch(model, config)
        model = get_peft_model(model, _lora(kind, **lora_kw))
        if reenable:
            talan.mark_trainable(model)
    return model


def _adapter_params(model):
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def _talan_params(model):
    return {name: p for name, p in model.named_parameters() if ".talan." in name}


def _logits(model, batch=None):
    batch = tiny_batch() if batch is None else batch
    with torch.no_grad():
        return model(**batch).logits


def _train_step(model, lr=1e-2):
    """One AdamW step over every trainable parameter; returns the parameters before the step."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = tiny_batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    return before


def _changed(model, before, names):
    params = dict(model.named_parameters())
    return {name for name in names if not torch.equal(params[name], before[name])}


# ---- trainability in both orders -----------------------------------------------------------------

@KIND
def test_peft_first_then_patch_trains_adapter_and_talan_together(kind):
    model = _build("peft_first", kind)
    adapter, tal = _adapter_params(model), _talan_params(model)
    assert adapter and tal
    assert all(p.requires_grad for p in tal.values())
    assert {id(p) for p in talan.talan_parameters(model)} == {id(p) for p in tal.values()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.values()} | {id(p) for p in tal.values()}

    before = _train_step(model)
    assert _changed(model, before, adapter), "no adapter parameter changed"
    assert _changed(model, before, tal), "no TALAN parameter changed"
    backbone = set(before) - set(adapter) - set(tal)
    assert not _changed(model, before, backbone), "a frozen backbone weight changed"


@KIND
def test_patch_first_then_peft_freezes_talan_until_mark_trainable(kind):
    model = _build("patch_first", kind, reenable=False)
    tal = _talan_params(model)
    assert tal and not any(p.requires_grad for p in tal.values())
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}

    assert talan.mark_trainable(model) is model
    assert all(p.requires_grad for p in tal.values())
    # mark_trainable touches TALAN only: the backbone stays frozen, the adapter trainable
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == frozen - set(tal)
    assert all(p.requires_grad for p in _adapter_params(model).values())

    before = _train_step(model)
    assert _changed(model, before, _adapter_params(model)), "no adapter parameter changed"
    assert _changed(model, before, tal), "no TALAN parameter changed"


@ORDER
def test_peft_disable_adapter_turns_off_the_adapter_not_talan(order):
    """peft's disable_adapter() leaves TALAN on (talan.disabled turns it off): a TRL reference model taken as
    the policy with its adapter disabled keeps TALAN (README)."""
    model = open_gates(_build(order))
    with torch.no_grad():
        for p in _adapter_params(model).values():
            p.normal_(0, 0.1)  # a trained adapter: LoRA's B is zero at init
    both_on = _logits(model)
    with model.disable_adapter():
        adapter_off = _logits(model)
        with talan.disabled(model):
            both_off = _logits(model)
    with talan.disabled(model):
        talan_off = _logits(model)
    # each switch changes the outputs on its own: under disable_adapter TALAN still acts
    for a, b in ((adapter_off, both_on), (both_off, adapter_off), (talan_off, both_on), (both_off, talan_off)):
        assert not torch.allclose(a, b, atol=1e-4)
    assert torch.equal(both_off, _logits(tiny_qwen3()))  # the base model: neither adapter nor TALAN


@ORDER
def test_all_linear_never_wraps_talan_weights(order):
    model = tiny_qwen3()
    if order == "patch_first":
        talan.patch(model, tiny_config(layer=(0, 2), mixer="mlp"))
        params_before = {(i, name): p for i, b in talan_blocks(model).items() for name, p in b.named_parameters()}
        model = get_peft_model(model, _lora())
    else:
        model = get_peft_model(model, _lora())
        talan.patch(model, tiny_config(layer=(0, 2), mixer="mlp"))
        params_before = {(i, name): p for i, b in talan_blocks(model).items() for name, p in b.named_parameters()}
    blocks = talan_blocks(model)
    assert all(type(b) is talan.TalanBlock for b in blocks.values())
    for i, block in blocks.items():
        assert [name for name, _ in block.named_modules() if name] == [], f"layer {i}: TALAN has submodules"
    assert not [name for name, _ in model.named_modules() if ".talan." in name and "lora_" in name]
    assert not [name for name in model.targeted_module_names if "talan" in name]
    params_after = {(i, name): p for i, b in blocks.items() for name, p in b.named_parameters()}
    assert params_after.keys() == params_before.keys()
    assert all(params_after[key] is params_before[key] for key in params_after)
    # peft did wrap the decoder's own linears
    assert any("self_attn.q_proj" in name for name in model.targeted_module_names)


# ---- gradient checkpointing ------------------------------------------------------------------------



def _loss_and_grads(order, site, checkpointing, reentrant=False, batches=1, compile_backend=None):
    """Loss and gradients of every trainable parameter for a model in train mode with TALAN open (its forward
    compiled with ``compile_backend`` if given)."""
    model = _build(order, config=tiny_config(site=site), train=True, init_lora_weights=False)
    open_gates(model, 0.5)
    if checkpointing:
        hf = model.get_base_model()
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        hf.enable_input_require_grads()
        assert hf.model.gradient_checkpointing
    model.train()
    forward = model if compile_backend is None else torch.compile(model, backend=compile_backend)
    loss = 0.0
    for seed in range(batches):
        batch = tiny_batch(seed=seed + 1)
        batch["attention_mask"][seed % 2, : 2 + 3 * seed] = 0  # padding differs between the batches
        loss = loss + forward(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


GC_CASES = ["pre", "mid", "post"]


@ORDER
@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("site", GC_CASES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(order, site, reentrant):
    reference = _loss_and_grads(order, site, checkpointing=False)
    assert_same_loss_and_grads(reference, _loss_and_grads(order, site, checkpointing=True, reentrant=reentrant))


@pytest.mark.parametrize("site", GC_CASES)
def test_gradient_checkpointing_with_two_forwards_before_one_backward(site):
    """The recompute of a batch must use that batch's padding mask, not the mask of the latest forward."""
    reference = _loss_and_grads("peft_first", site, checkpointing=False, batches=2)
    assert_same_loss_and_grads(reference, _loss_and_grads("peft_first", site, checkpointing=True, batches=2))


@pytest.mark.slow
def test_the_whole_model_compiled_trains_as_in_eager():
    """Trainer(torch_compile=True) compiles the whole peft + TALAN model: dynamo traces the hooks and
    AOTAutograd the backward (aot_eager: inductor's front end, without its C++ build)."""
    reference = _loss_and_grads("peft_first", "mid", checkpointing=False, batches=2)
    try:
        compiled = _loss_and_grads("peft_first", "mid", checkpointing=False, batches=2, compile_backend="aot_eager")
    finally:
        torch._dynamo.reset()
    assert_same_loss_and_grads(reference, compiled)


# ---- merge, generate, save/load --------------------------------------------------------------------

@ORDER
@KIND
def test_merge_and_unload_keeps_talan_blocks_and_outputs(order, kind):
    model = _build(order, kind, init_lora_weights=False)
    open_gates(model, 0.5)
    blocks = talan_blocks(model)
    base_q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    expected = _logits(model)

    merged = model.merge_and_unload()
    assert isinstance(merged, Qwen3ForCausalLM) and not isinstance(merged, PeftModel)
    assert not [name for name, _ in merged.named_modules() if "lora_" in name]
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base_q), "the adapter was not merged"
    assert is_patched(merged)
    assert all(talan_blocks(merged)[i] is block for i, block in blocks.items())
    got = _logits(merged)
    assert (got - expected).norm() / expected.norm() < 5e-5
    with talan.disabled(merged):
        assert (_logits(merged) - expected).norm() / expected.norm() > 1e-3, "TALAN no longer contributes"


@ORDER
@KIND
def test_forward_and_cached_generation_work_in_either_order(order, kind):
    model = _build(order, kind, init_lora_weights=False)
    open_gates(model, 0.5)
    batch = tiny_batch(length=6)
    batch["attention_mask"][0, :2] = 0  # left padding
    logits = _logits(model, batch)
    assert torch.isfinite(logits).all()
    with talan.disabled(model):
        assert not torch.allclose(_logits(model, batch), logits), "TALAN does not contribute"

    common = dict(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0, output_scores=True,
                  return_dict_in_generate=True)
    cached = model.generate(**common, use_cache=True)
    recomputed = model.generate(**common, use_cache=False)
    assert cached.sequences.shape == (2, 11)
    assert torch.equal(cached.sequences, recomputed.sequences)
    for step, (a, b) in enumerate(zip(cached.scores, recomputed.scores)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, s=step: f"step {s}: {m}")


@ORDER
@KIND
def test_talan_checkpoint_beside_peft_adapter_in_one_folder_reproduces_logits(tmp_path, order, kind):
    model = _build(order, kind)
    _train_step(model)  # adapter and TALAN move away from their (identity) initialisation
    expected = _logits(model)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    talan.save_pretrained(model, folder)
    files = set(os.listdir(folder))
    assert {"adapter_config.json", "adapter_model.safetensors", "talan_config.json",
            "talan_model.safetensors"} <= files
    assert not [key for key in load_file(str(folder / "adapter_model.safetensors")) if "talan" in key]
    assert all(key.startswith("layers.") and "lora" not in key
               for key in load_file(str(folder / "talan_model.safetensors")))

    fresh = PeftModel.from_pretrained(tiny_qwen3(), folder)
    assert not torch.equal(_logits(fresh), expected)  # the adapter alone does not reproduce them
    assert talan.load_pretrained(fresh, folder) is fresh
    assert torch.equal(_logits(fresh), expected)


@ORDER
def test_talan_loaded_before_the_peft_adapter_reproduces_logits(tmp_path, order):
    model = _build(order)
    _train_step(model)
    expected = _logits(model)
    model.save_pretrained(tmp_path)
    talan.save_pretrained(model, tmp_path)

    base = talan.load_pretrained(tiny_qwen3(), tmp_path)  # patch first, then the adapter on top
    fresh = PeftModel.from_pretrained(base, tmp_path)
    assert is_patched(fresh)
    assert not [name for name in fresh.targeted_module_names if "talan" in name]
    assert torch.equal(_logits(fresh), expected)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_trainable_tokens_beside_talan_count_as_adapter_train_and_reload(tmp_path, tied):
    """peft's ``trainable_token_indices`` (new rows of the embedding, tied to the LM head or not) with
    ``all-linear`` LoRA and TALAN: the token delta counts as adapter, trains with TALAN, and the folder reloads
    exactly."""
    lora = _lora(trainable_token_indices=[1, 2, 3], init_lora_weights=False)
    model = talan.patch(get_peft_model(tiny_qwen3(tie_word_embeddings=tied), lora), tiny_config())
    open_gates(model)
    delta = {n for n, _ in model.named_parameters() if "trainable_tokens_delta" in n}
    assert delta and delta <= {n for n, p in model.named_parameters() if p.requires_grad}
    report = talan.parameter_report(model)
    assert report["trainable"] == report["adapter"] + report["talan"]
    before = _train_step(model)
    assert _changed(model, before, delta) == delta
    assert _changed(model, before, _talan_params(model)) == set(_talan_params(model))
    expected = _logits(model)
    model.save_pretrained(tmp_path)
    talan.save_pretrained(model, tmp_path)
    fresh = talan.load_pretrained(PeftModel.from_pretrained(tiny_qwen3(tie_word_embeddings=tied), tmp_path), tmp_path)
    assert torch.equal(_logits(fresh), expected)


@pytest.mark.skipif(TRANSFORMERS_4, reason="transformers 4.x keeps MoE experts as nn.Linear modules: no 3-D "
                    "expert weights for target_parameters")
def test_lora_on_moe_expert_weights_trains_fuses_and_reloads_beside_talan(tmp_path):
    """peft's ``target_parameters`` (LoRA on a 3-D expert weight, its ParamWrapper) beside TALAN on a
    Qwen3-MoE: its LoRA counts as adapter and trains with TALAN, enable_fused_lora fuses the attention's
    LoRA layers and keeps peft's forward for the experts, naming their base, and the folder reloads exactly."""
    from conftest import _build as build_model  # this file's _build builds an adapted Qwen3
    from host_configs import FAMILY_CONFIG
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    def tiny_moe():  # test_hosts' tiny Qwen3-MoE: conftest.HOST with 4 experts in every layer
        return build_model(Qwen3MoeConfig, Qwen3MoeForCausalLM, 0, False, FAMILY_CONFIG["Qwen3Moe"])

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.gate_up_proj"],
                      init_lora_weights=False)
    model = talan.patch(get_peft_model(tiny_moe(), lora), tiny_config())
    open_gates(model)
    expert_lora = {n for n in _adapter_params(model) if ".experts." in n}
    assert expert_lora and expert_lora <= {n for n, p in model.named_parameters() if p.requires_grad}
    report = talan.parameter_report(model)
    assert report["adapter"] == sum(p.numel() for p in _adapter_params(model).values())

    before = _train_step(model)
    assert _changed(model, before, expert_lora) == expert_lora
    assert _changed(model, before, _talan_params(model)) == set(_talan_params(model))

    ids = tiny_batch(length=9)["input_ids"]
    expected = _logits(model, {"input_ids": ids})
    fused = talan.enable_fused_lora(model, backend="torch")
    assert {n.split(".")[-1] for n in fused.fused} == {"q_proj", "v_proj"}
    assert {n.split(".")[-1] for n in fused.skipped} == {"experts"}
    assert all("Qwen3MoeExperts is not torch.nn.Linear" in why for why in fused.skipped.values())
    torch.testing.assert_close(_logits(model, {"input_ids": ids}), expected, rtol=1e-5, atol=1e-6)
    talan.disable_fused_lora(model)

    model.save_pretrained(tmp_path)
    talan.save_pretrained(model, tmp_path)
    fresh = talan.load_pretrained(PeftModel.from_pretrained(tiny_moe(), tmp_path), tmp_path)
    assert torch.equal(_logits(fresh, {"input_ids": ids}), expected)
