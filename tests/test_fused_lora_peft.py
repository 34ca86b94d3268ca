"""enable_fused_lora / disable_fused_lora on peft models: a tiny Qwen3 with LoRA, rsLoRA and DoRA
gives the same logits and adapter gradients fused and unfused; disable restores peft's outputs
bit for bit; uncovered layers and states keep peft's forward; state_dict keys are untouched;
torch.compile(fullgraph=True) traces a fused layer through the custom ops."""

import copy
import os
import warnings
from collections import OrderedDict

import pytest
import torch
from conftest import record_calls
from torch import nn

from talan.fused_lora import FusedLoraReport, disable_fused_lora, enable_fused_lora
from talan_kernels.lora import interface
from talan_kernels.testing import assert_rel_rms, rel_rms

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_qwen3_peft(variant="lora", seed=0, **lora_kw):
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.Qwen3ForCausalLM(cfg).float()
    lcfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False,
                           use_dora=variant == "dora", use_rslora=variant == "rslora", **lora_kw)
    model = peft.get_peft_model(model, lcfg)
    if variant == "dora":
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.mul_(0.5 + torch.rand_like(p))
    return model


def logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).logits
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), grads


def check_fused_matches(model, backend, ids, tol=1e-5):
    ref_logits, ref_grads = logits_and_grads(model, ids)
    report = enable_fused_lora(model, backend=backend)
    assert len(report.fused) == 2 * len(TARGETS) and not report.skipped
    logits, grads = logits_and_grads(model, ids)
    assert_rel_rms(logits, ref_logits, tol, "logits")
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for n in ref_grads:
        assert_rel_rms(grads[n], ref_grads[n], tol, n)
    disable_fused_lora(model)


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_fused_torch_backend_matches_peft(variant):
    model = tiny_qwen3_peft(variant)
    ids = torch.randint(0, 128, (2, 9))
    check_fused_matches(model.train(), "torch", ids)
    check_fused_matches(model.eval(), "torch", ids)


@pytest.mark.interpreter
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_fused_triton_backend_matches_peft(variant, monkeypatch):
    monkeypatch.setattr(interface, "POISON_OUTPUTS", True)
    model = tiny_qwen3_peft(variant, seed=1).train()
    check_fused_matches(model, "triton", torch.randint(0, 128, (2, 7)))
    # Decode-shaped call (one token) in eval, on the decode tile configuration.
    model.eval()
    ids = torch.randint(0, 128, (1, 1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        enable_fused_lora(model, backend="triton")
        got = model(input_ids=ids).logits
        disable_fused_lora(model)
    assert_rel_rms(got, ref, 1e-5, "decode logits")


def test_enable_then_disable_restores_exactly():
    model = tiny_qwen3_peft("dora").eval()
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    keys = list(model.state_dict().keys())
    report = enable_fused_lora(model, backend="torch")
    assert isinstance(report, FusedLoraReport)
    assert list(model.state_dict().keys()) == keys
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert "forward" in layer.__dict__
    restored = disable_fused_lora(model)
    assert len(restored) == len(report.fused)
    assert "forward" not in layer.__dict__ and not hasattr(layer, "_talan_fused_lora")
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(after, before)


def test_a_forward_set_on_the_layer_before_is_what_falls_back_and_what_disable_restores():
    # another wrapper set on the instance first (as enable_fused_lora does): uncovered calls go through it, and
    # disable puts it back rather than peft's class forward
    model = tiny_qwen3_peft("lora", lora_dropout=0.1)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    wrapped = []

    def outer(self, x, *args, **kwargs):
        wrapped.append(x.shape)
        return type(self).forward(self, x, *args, **kwargs)

    layer.forward = outer.__get__(layer)
    enable_fused_lora(model, backend="torch")
    model.train()(input_ids=torch.randint(0, 128, (1, 5)))  # dropout active: uncovered, the wrapper runs
    assert len(wrapped) == 1
    disable_fused_lora(model)
    assert layer.__dict__["forward"].__func__ is outer


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the error raised without the interpreter")
def test_enabling_again_switches_the_backend_of_fused_layers():
    model = tiny_qwen3_peft("lora").eval()
    ids = torch.randint(0, 128, (1, 5))
    assert len(enable_fused_lora(model, backend="torch").fused) == 2 * len(TARGETS)
    model(input_ids=ids)
    assert len(enable_fused_lora(model, backend="triton").fused) == 2 * len(TARGETS)
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1"):
        model(input_ids=ids)  # the kernels now, which a CPU runs only under the interpreter
    disable_fused_lora(model)


def test_uncovered_states_fall_back_to_peft(monkeypatch):
    calls = record_calls(monkeypatch, interface, "_apply")
    model = tiny_qwen3_peft("lora", lora_dropout=0.1)
    enable_fused_lora(model, backend="torch")
    ids = torch.randint(0, 128, (1, 5))
    model.train()  # dropout active: peft's forward (with its dropout) must run
    model(input_ids=ids)
    assert calls == []
    model.eval()  # dropout inactive: fused
    model(input_ids=ids)
    assert len(calls) == 2 * len(TARGETS)
    calls.clear()
    with model.disable_adapter():
        model(input_ids=ids)
    assert calls == []
    model.merge_adapter()
    model(input_ids=ids)
    assert calls == []
    model.unmerge_adapter()
    disable_fused_lora(model)


def test_second_active_adapter_falls_back_and_matches_peft():
    model = tiny_qwen3_peft("lora").eval()
    model.add_adapter("other", peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False))
    model.base_model.set_adapter(["default", "other"])
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        enable_fused_lora(model, backend="torch")
        got = model(input_ids=ids).logits
    assert torch.equal(got, ref)  # peft's own forward ran, bit for bit
    disable_fused_lora(model)


def test_a_hooked_base_layer_keeps_peft_forward_so_its_hooks_run(monkeypatch):
    # a hook on the base nn.Linear (accelerate's offload, an activation probe) runs only inside peft's forward
    calls = record_calls(monkeypatch, interface, "_apply")
    model = tiny_qwen3_peft("lora").eval()
    seen = []
    base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    base.register_forward_hook(lambda module, args, out: seen.append(out))
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        enable_fused_lora(model, backend="torch")
        got = model(input_ids=ids).logits
    assert len(seen) == 2 and len(calls) == 2 * len(TARGETS) - 1  # every layer but the hooked one ran fused
    assert_rel_rms(got, ref, 1e-5, "logits")
    disable_fused_lora(model)


def test_an_active_adapter_with_lora_bias_falls_back_beside_a_covered_one(monkeypatch):
    calls = record_calls(monkeypatch, interface, "_apply")
    model = tiny_qwen3_peft("lora").eval()
    model.add_adapter("biased", peft.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False,
                                                lora_bias=True))
    ids = torch.randint(0, 128, (1, 5))
    report = enable_fused_lora(model, backend="torch")
    assert len(report.fused) == 2 * len(TARGETS)  # "default" is covered
    model.base_model.set_adapter("biased")
    with torch.no_grad():
        got = model(input_ids=ids).logits
        disable_fused_lora(model)
        ref = model(input_ids=ids).logits
    assert calls == [] and torch.equal(got, ref)  # peft's own forward ran, bit for bit


class _MarkedVariant:
    """An adapter variant other than DoRA (peft 0.21 has aLoRA, KaSA, ...): peft's forward hands it the base output."""

    @staticmethod
    def forward(module, active_adapter, x, result, **kwargs):
        return result + 1.0


class _DoubledLinear(nn.Linear):  # an nn.Linear subclass with a forward of its own, which peft wraps
    def forward(self, x):
        return 2 * super().forward(x)


def _one_layer_peft(base=None):
    torch.manual_seed(0)
    return peft.get_peft_model(nn.Sequential(OrderedDict(lin=base or nn.Linear(16, 12))),
                               peft.LoraConfig(r=4, target_modules=["lin"], init_lora_weights=False)).eval()


@pytest.mark.parametrize("case", ["adapter_names", "custom_dropout", "other_variant", "rank_over_the_tile"])
def test_an_uncovered_call_of_a_fused_layer_runs_peft_forward(case, monkeypatch):
    """States that arise after enable_fused_lora (or come with a call) and that the fused op does not cover: peft's
    forward runs, bit for bit."""
    calls = record_calls(monkeypatch, interface, "_apply")
    model = _one_layer_peft()
    layer, x, kwargs = model.base_model.model.lin, torch.randn(3, 16), {}
    assert enable_fused_lora(model, backend="torch").fused == ["base_model.model.lin"]
    if case == "adapter_names":  # peft's batch of mixed adapters
        kwargs = {"adapter_names": ["default", "__base__", "default"]}
    elif case == "custom_dropout":  # not an nn.Dropout: the fused op could not apply it
        layer.lora_dropout["default"] = nn.Hardtanh(-0.5, 0.5)
    elif case == "other_variant":
        layer.lora_variant["default"] = _MarkedVariant()
    else:  # an adapter wider than the kernels' tile, added and activated after enabling
        model.add_adapter("wide", peft.LoraConfig(r=interface.MAX_TRITON_RANK + 1, target_modules=["lin"],
                                                  init_lora_weights=False))
        model.base_model.set_adapter("wide")
    with torch.no_grad():
        got = layer(x, **kwargs)
        disable_fused_lora(model)
        ref = layer(x, **kwargs)
    assert calls == [] and torch.equal(got, ref)


def test_a_call_in_another_dtype_than_the_weights_is_refused_as_peft_refuses_it(monkeypatch):
    calls = record_calls(monkeypatch, interface, "_apply")
    model = _one_layer_peft()
    enable_fused_lora(model, backend="torch")
    with pytest.raises(RuntimeError):  # no autocast: peft's nn.Linear refuses it, and so does the fused layer
        model.base_model.model.lin(torch.randn(3, 16, dtype=torch.bfloat16))
    assert calls == []


def test_a_base_that_subclasses_linear_keeps_peft_forward():
    report = enable_fused_lora(_one_layer_peft(_DoubledLinear(16, 12)), backend="torch")
    assert report.fused == [] and "is not torch.nn.Linear" in report.skipped["base_model.model.lin"]


def test_report_lists_uncovered_layers_and_bad_inputs_raise():
    model = tiny_qwen3_peft("lora", lora_bias=True)
    report = enable_fused_lora(model, backend="torch")
    assert report.fused == [] and len(report.skipped) == 2 * len(TARGETS)
    assert all("lora_bias" in why for why in report.skipped.values())
    with pytest.raises(ValueError, match="backend"):
        enable_fused_lora(tiny_qwen3_peft("lora"), backend="cuda")
    with pytest.raises(ValueError, match="no peft LoRA layer"):
        enable_fused_lora(nn.Linear(4, 4))


def test_deepcopy_of_fused_model_runs_its_own_weights():
    model = tiny_qwen3_peft("lora").eval()
    enable_fused_lora(model, backend="torch")
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in clone.named_parameters():
            if "lora_B" in n:
                p.zero_()
        ids = torch.randint(0, 128, (1, 4))
        assert not torch.equal(clone(input_ids=ids).logits, model(input_ids=ids).logits)
        with clone.disable_adapter():
            base = clone(input_ids=ids).logits
        assert_rel_rms(clone(input_ids=ids).logits, base, 1e-6, "clone with B = 0")


def test_dora_norm_cached_in_eval_and_recomputed_after_update(monkeypatch):
    calls = record_calls(monkeypatch, interface, "dora_weight_norm")
    model = tiny_qwen3_peft("dora").eval()
    enable_fused_lora(model, backend="torch")
    ids = torch.randint(0, 128, (1, 4))
    n_layers = 2 * len(TARGETS)
    with torch.no_grad():
        model(input_ids=ids)
        model(input_ids=ids)
        assert len(calls) == n_layers
        lora_B = model.base_model.model.model.layers[1].mlp.down_proj.lora_B["default"].weight
        lora_B.mul_(1.5)
        got = model(input_ids=ids).logits
        assert len(calls) == n_layers + 1
        disable_fused_lora(model)
        want = model(input_ids=ids).logits
    assert_rel_rms(got, want, 1e-5, "logits after an in-place update of lora_B")


@pytest.mark.parametrize("model_dtype, recomputed", [(torch.bfloat16, False), (torch.float32, True)])
def test_dora_norm_cache_under_autocast(model_dtype, recomputed, monkeypatch):
    """Under a bf16 autocast the eval cache holds for bf16 weights (nothing is cast); fp32 weights are cast
    afresh on every call, so their norm is recomputed rather than keyed on temporary copies."""
    calls = record_calls(monkeypatch, interface, "dora_weight_norm")
    model = tiny_qwen3_peft("dora").to(model_dtype).eval()
    enable_fused_lora(model, backend="torch")
    ids = torch.randint(0, 128, (1, 4))
    n_layers = 2 * len(TARGETS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
        model(input_ids=ids)
    assert len(calls) == (2 * n_layers if recomputed else n_layers)


@pytest.mark.slow
def test_torch_compile_fullgraph_over_fused_layer():
    torch.manual_seed(0)
    base = nn.Sequential(OrderedDict(lin=nn.Linear(24, 16)))
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["lin"], init_lora_weights=False,
                                                      use_dora=True))
    layer = model.base_model.model.lin
    x = torch.randn(5, 24, requires_grad=True)
    want = layer(x)
    (want_dx,) = torch.autograd.grad(want.sum(), [x])
    enable_fused_lora(model, backend="torch")
    compiled = torch.compile(layer, fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled(x)
    # dynamo warns when it traces through a cache wrapper (as _peft_classes once was)
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)], [str(w.message) for w in caught]
    (got_dx,) = torch.autograd.grad(got.sum(), [x])
    assert_rel_rms(got, want, 1e-5, "compiled y")
    assert_rel_rms(got_dx, want_dx, 1e-5, "compiled dx")
    disable_fused_lora(model)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_autocast_runs_fused_in_the_autocast_dtype_like_peft(variant, monkeypatch):
    """Under a bf16 autocast (Trainer's --bf16) on an fp32 model every layer still runs fused, on operands
    cast to bf16 as autocast casts peft's. Against the fp32 model without autocast, its logits and fp32
    adapter gradients are off by no more than twice peft's own error under the same autocast. 128 tokens: over
    18 (2 x 9) one gradient's bf16 error is too noisy a measure of peft's own error: fused over peft reached 3.2x
    in a tensor (2 of 20 seeds failed, each variant; 0.9x geometric mean), over 128 within 1.51x (30 seeds)."""
    calls = record_calls(monkeypatch, interface, "_apply", lambda *a, **k: a[0].dtype)
    model = tiny_qwen3_peft(variant)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))
    exact_logits, exact_grads = logits_and_grads(model, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peft_logits, peft_grads = logits_and_grads(model, ids)
        enable_fused_lora(model, backend="torch")
        logits, grads = logits_and_grads(model, ids)
    assert calls == [torch.bfloat16] * (2 * len(TARGETS))
    assert logits.dtype == peft_logits.dtype
    for name, got, peft_got, exact in [("logits", logits, peft_logits, exact_logits),
                                       *((n, grads[n], peft_grads[n], exact_grads[n]) for n in exact_grads)]:
        assert got.dtype == peft_got.dtype, name
        peft_error = rel_rms(peft_got.float(), exact.float())
        assert rel_rms(got.float(), exact.float()) <= 2 * peft_error + 1e-3, name
