"""The hosts beyond the paper's Qwen3 and Llama: Qwen3-MoE, Qwen2 (Qwen2.5), Mistral and Mixtral share their
decoder layer, so every site patches exactly, generates (dynamic and static cache) as it recomputes, unpatches exactly
and trains with peft."""

import pytest
import torch
from conftest import (
    _build,
    assert_same_generation,
    greedy_kwargs,
    left_padded_prompt,
    open_gates,
    tiny_batch,
    tiny_config,
)
from peft import LoraConfig, get_peft_model

import talan

# The mixture-of-experts families' config: every layer sparse, 4 experts, 2 per token, so the hooks sit around a
# mixture-of-experts MLP.
MOE = {"Qwen3Moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1),
       "Mixtral": dict(num_local_experts=4, num_experts_per_tok=2)}


def tiny_qwen3_moe(seed=0, train=False):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return _build(Qwen3MoeConfig, Qwen3MoeForCausalLM, seed, train, MOE["Qwen3Moe"])


def tiny_qwen2(seed=0, train=False):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _build(Qwen2Config, Qwen2ForCausalLM, seed, train, {})


def tiny_mistral(seed=0, train=False):
    from transformers import MistralConfig, MistralForCausalLM

    return _build(MistralConfig, MistralForCausalLM, seed, train, {})


def tiny_mixtral(seed=0, train=False):
    from transformers import MixtralConfig, MixtralForCausalLM

    return _build(MixtralConfig, MixtralForCausalLM, seed, train, MOE["Mixtral"])


MOE_HOSTS = (tiny_qwen3_moe, tiny_mixtral)
HOSTS = [tiny_qwen3_moe, tiny_qwen2, tiny_mistral, tiny_mixtral]


@pytest.mark.parametrize("site", ["pre", "mid", "post"])
@pytest.mark.parametrize("factory", HOSTS, ids=lambda f: f.__name__[5:])
def test_host_patches_exactly_and_generates_as_it_recomputes(factory, site):
    model = factory()
    ids, mask = left_padded_prompt()
    unpatched = model(ids, attention_mask=mask).logits
    talan.patch(model, tiny_config(site=site, layer=(0, 1)))
    assert torch.equal(model(ids, attention_mask=mask).logits, unpatched)  # identity at initialisation
    open_gates(model)
    assert not torch.allclose(model(ids, attention_mask=mask).logits, unpatched, atol=1e-4)
    kwargs = greedy_kwargs(mask)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    for cache in ("dynamic", "static"):  # a static cache hands the model 4-D masks built from the 2-D one
        cached = model.generate(ids, cache_implementation=cache, **kwargs)
        assert_same_generation(cached, recomputed)
    talan.unpatch(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, unpatched)


def sliding_mistral():  # every layer slides: generate hands the model one 4-D mask tensor
    from transformers import MistralConfig, MistralForCausalLM

    return _build(MistralConfig, MistralForCausalLM, 0, False, {"sliding_window": 4})


def sliding_qwen2():  # layers 1 and 2 slide, layer 0 attends fully: a dict of masks per layer type
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _build(Qwen2Config, Qwen2ForCausalLM, 0, False,
                  {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1})


@pytest.mark.parametrize("factory", [sliding_mistral, sliding_qwen2], ids=lambda f: f.__name__)
def test_sliding_window_caches_generate_as_recomputed_past_the_window(factory):
    """Past the window a static sliding layer's mask covers only the window (Mistral: every layer, so generate
    hands the model that tensor): TALAN reads the padding at the query's own column of it."""
    model = open_gates(talan.patch(factory(), tiny_config(layer=(0, 1))))
    ids, mask = left_padded_prompt()
    kwargs = greedy_kwargs(mask)
    recomputed = model.generate(ids, use_cache=False, **kwargs)
    for cache in ("dynamic", "static"):
        assert_same_generation(model.generate(ids, cache_implementation=cache, **kwargs), recomputed)


@pytest.mark.parametrize("factory", HOSTS, ids=lambda f: f.__name__[5:])
def test_host_trains_talan_and_lora_together(factory):
    model = get_peft_model(factory(train=True), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    talan.patch(model, tiny_config(layer=1))
    batch = tiny_batch(batch=2, length=9)
    extra = {"output_router_logits": True} if factory in MOE_HOSTS else {}  # adds the MoE balancing loss
    loss = model(**batch, labels=batch["input_ids"], **extra).loss
    loss.backward()
    assert torch.isfinite(loss)
    talan_grads = [p.grad for p in talan.talan_parameters(model)]
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in talan_grads + lora_grads)
    assert any(g.abs().sum() > 0 for g in talan_grads) and any(g.abs().sum() > 0 for g in lora_grads)


# The task heads peft fine-tunes over the same decoder stack: (class suffix, peft task_type, labels).
TASK_HEADS = {
    "ForSequenceClassification": ("SEQ_CLS", lambda ids: {"labels": torch.tensor([0, 1])}),
    "ForTokenClassification": ("TOKEN_CLS", lambda ids: {"labels": ids % 2}),
    "ForQuestionAnswering": ("QUESTION_ANS", lambda ids: {"start_positions": torch.tensor([1, 4]),
                                                          "end_positions": torch.tensor([3, 6])}),
}
HEAD_CASES = ([(family, head) for family in ("Qwen3", "Llama") for head in TASK_HEADS]
              + [(family, "ForSequenceClassification") for family in ("Qwen3Moe", "Qwen2", "Mistral", "Mixtral")])


def _task_model(family: str, head: str, seed: int = 0, train: bool = False):
    import transformers

    return _build(getattr(transformers, f"{family}Config"), getattr(transformers, family + head), seed, train,
                  {"num_labels": 2, "pad_token_id": 0, **MOE.get(family, {})})


def _head_outputs(out) -> torch.Tensor:
    return torch.cat([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


@pytest.mark.parametrize("family,head", HEAD_CASES, ids=[f + h[3:] for f, h in HEAD_CASES])
def test_task_heads_patch_train_with_peft_save_and_load(family, head, tmp_path):
    """Sequence/token classification and extractive QA: the same hooks on the stack under the head. Exact at
    initialisation and after unpatch; with the gates open TALAN changes the head's outputs; trains beside a
    peft adapter of that task type; its checkpoint, loaded into the unpatched model, reproduces the outputs."""
    batch = tiny_batch(batch=2, length=9)
    batch["input_ids"] = batch["input_ids"].clamp(min=1)  # the pad token (0) only where padding is
    batch["input_ids"][0, -2:] = 0  # right padding in the first row: the classifier reads its last real token
    batch["attention_mask"][0, -2:] = 0
    model = _task_model(family, head)
    with torch.no_grad():
        unpatched = _head_outputs(model(**batch))
        talan.patch(model, tiny_config(layer=(0, 1)))
        assert torch.equal(_head_outputs(model(**batch)), unpatched)
        open_gates(model)
        patched = _head_outputs(model(**batch))
    assert not torch.allclose(patched, unpatched, atol=1e-4)
    talan.save_pretrained(model, tmp_path)
    with torch.no_grad():
        talan.unpatch(model)
        assert torch.equal(_head_outputs(model(**batch)), unpatched)
        torch.testing.assert_close(_head_outputs(talan.load_pretrained(model, tmp_path)(**batch)), patched,
                                   rtol=0, atol=0)

    task_type, labels = TASK_HEADS[head]
    trained = get_peft_model(_task_model(family, head, train=True),
                             LoraConfig(task_type=task_type, r=4, lora_alpha=8,  # "all-linear" takes the heads too
                                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    open_gates(talan.patch(trained, tiny_config(layer=1)))
    loss = trained(**batch, **labels(batch["input_ids"])).loss
    loss.backward()
    assert torch.isfinite(loss)
    talan_grads = [p.grad for p in talan.talan_parameters(trained)]
    assert all(g is not None and torch.isfinite(g).all() for g in talan_grads)
    assert any(g.abs().sum() > 0 for g in talan_grads)
