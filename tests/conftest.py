"""Shared tiny hosts and configs: plain factories (``from conftest import tiny_qwen3``) and fixtures of
the same names that return the factory (``def test_x(tiny_qwen3): model = tiny_qwen3()``)."""

import os

import pytest
import torch
import transformers
from packaging.version import Version

import talan

if os.environ.get("TRITON_INTERPRET") == "1":  # every interpreted load and store stays inside its launch's tensors
    import memory_check

    memory_check.install()

# `make test` runs the CPU tests a second time on the oldest transformers/peft the package accepts (4.x);
# the few behaviours that differ there are marked where they are tested.
TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
# the GPU check machine's transformers (make test's HF_MID pass), for its own defects that TALAN cannot change
TRANSFORMERS_5_17 = transformers.__version__ == "5.17.0"
# transformers before 5.25 (the venv's 5.24 and older), for defects that 5.25 (make test's HF_NEXT pass) fixed
TRANSFORMERS_BEFORE_5_25 = Version(transformers.__version__).release[:2] < (5, 25)
# transformers 5.17's Llama 4 cannot build its chunked mask for a static cache, TALAN off too
LLAMA4_STATIC_5_17 = pytest.mark.xfail(TRANSFORMERS_5_17, raises=TypeError, strict=True, reason="transformers 5.17: "
                                       "create_chunked_causal_mask() got an unexpected keyword 'block_sequence_ids'")
# transformers 4.57's Gemma 3n computes a layer that shares keys and values otherwise without a cache (recomputing)
# than with one, TALAN off too
GEMMA3N_RECOMPUTED_4 = pytest.mark.xfail(TRANSFORMERS_4, raises=AssertionError, strict=True, reason="transformers "
                                         "4.57: Gemma 3n's cached generation differs from recomputing, TALAN off too")
# transformers 5.17's Qwen4-Exp makes NaN logits for a left-padded row, TALAN off too
QWEN4EXP_PADDING_5_17 = pytest.mark.skipif(TRANSFORMERS_5_17, reason="transformers 5.17's Qwen4-Exp makes NaN logits "
                                           "for a left-padded row, TALAN off too")
# pyproject accepts torch >= 2.4 (with transformers 4.x; `make test-torch` runs the suite there). transformers
# builds packed-sequence attention masks, and Trainer resumes, only on torch >= 2.6; accelerate's FSDP2 too.
TORCH_BEFORE_2_6 = Version(torch.__version__).release[:2] < (2, 6)
NEEDS_TORCH_2_6 = pytest.mark.skipif(TORCH_BEFORE_2_6, reason="needs torch >= 2.6: transformers' packed-sequence "
                                     "masks and resume, accelerate's FSDP2 (talan train refuses the first two)")

VOCAB = 128
HOST = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def record_calls(monkeypatch, owner, name: str, record=lambda *args, **kwargs: None) -> list:
    """Wrap ``owner.name`` for the test: every call appends ``record(*args, **kwargs)`` to the returned
    list, then runs the real function."""
    calls, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(record(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


NOT_SET = object()  # an override that leaves a HOST key out of the config (Falcon derives head_dim itself)


def _build(config_cls, model_cls, seed, train, overrides):
    config = config_cls(**{k: v for k, v in {**HOST, **overrides}.items() if v is not NOT_SET})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config)
    return model.train() if train else model.eval()


def tiny_qwen3(seed: int = 0, train: bool = False, **overrides):
    """A seeded 3-layer ``Qwen3ForCausalLM`` (d=64) with random weights, eval mode, eager attention."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _build(Qwen3Config, Qwen3ForCausalLM, seed, train, overrides)


def tiny_llama(seed: int = 0, train: bool = False, **overrides):
    """The ``LlamaForCausalLM`` equivalent of `tiny_qwen3`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _build(LlamaConfig, LlamaForCausalLM, seed, train, overrides)


def open_gates(model, value: float = 2.0):
    """Open every block's tanh gate (zero at init, where TALAN is an exact identity) so TALAN changes the
    outputs; returns the model."""
    from talan.patching import talan_blocks

    with torch.no_grad():
        for block in talan_blocks(model).values():
            block.gate.fill_(value)
    return model


def assert_same_generation(got, expected, tol: float = 1e-5) -> None:
    """Two ``generate(..., output_scores=True, return_dict_in_generate=True)`` results: the same tokens and
    step scores within ``tol``."""
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores)
    for a, b in zip(got.scores, expected.scores):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def assert_talan_and_lora_gradients(model) -> None:
    """After a backward: every TALAN and LoRA parameter has a finite gradient, and some of each are non-zero."""
    talan_grads = [p.grad for p in talan.talan_parameters(model)]
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in talan_grads + lora_grads)
    assert any(g.abs().sum() > 0 for g in talan_grads) and any(g.abs().sum() > 0 for g in lora_grads)


def two_forwards_loss_and_grads(base, batches: list[dict], site: str, checkpointing: bool):
    """Loss and gradients of a forward of each of ``batches`` (with their labels) then one backward, in train mode:
    peft LoRA on every linear layer of ``base`` and TALAN at ``site`` in layers 0 and 1, gates open. Two forwards
    before one backward, each with its own padding, catch a gradient-checkpointing recompute that reads a later
    forward's inputs."""
    from peft import LoraConfig, get_peft_model

    from talan.hosts import all_linear_excludes

    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            **all_linear_excludes(base)))
    open_gates(talan.patch(model, tiny_config(site=site, layer=(0, 1))), 0.5)
    if checkpointing:
        model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.get_base_model().enable_input_require_grads()
    loss = sum(model(**batch).loss for batch in batches)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def assert_site_writes_the_block_output(model, batch: dict, site: str, layer: int) -> None:
    """With TALAN at ``site`` of ``layer`` (gate open), the residual stream right after TALAN's write, where `talan
    analyze` probes it, is exactly what the block makes of the stream probed there with TALAN disabled. The same
    dropout masks in both forwards (seeded), for a model in train mode."""
    from talan.analyze import _forward, _site_module
    from talan.hosts import decoder_layers, decoder_stack, layer_layout
    from talan.patching import talan_blocks

    open_gates(talan.patch(model, tiny_config(site=site, layer=layer)))
    layout, stack = layer_layout(model), decoder_stack(model)
    probe = {layer: _site_module(decoder_layers(stack)[layer], site, layout)}
    streams = layout.streams(stack.config)  # TALAN's, where a layer input or output holds several (Gemma 3n, mHC)
    torch.manual_seed(1)
    with talan.disabled(model):
        stream = _forward(model, batch, probe, streams)[layer]
    torch.manual_seed(1)
    written = _forward(model, batch, probe, streams)[layer]
    with torch.no_grad():
        expected, _ = talan_blocks(model)[layer](stream, batch["attention_mask"].bool(), None, None)
    assert not torch.allclose(expected, stream, atol=1e-2)  # the block changes the stream
    torch.testing.assert_close(written, expected, rtol=1e-5, atol=1e-5)  # fp32: (h + a) + (w - h) against w


def assert_same_loss_and_grads(reference, checkpointed):
    """Two ``(loss, {name: grad})`` of a peft + TALAN model agree to fp32 round-off, and TALAN contributed."""
    (loss0, grads0), (loss1, grads1) = reference, checkpointed
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    assert grads1.keys() == grads0.keys()
    assert any(".talan." in name for name in grads0) and any("lora_" in name for name in grads0)
    for name, g0 in grads0.items():
        assert g0 is not None and grads1[name] is not None, name
        torch.testing.assert_close(grads1[name], g0, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
    # TALAN actually contributes: its compressor gets a gradient (zero while the gate is closed)
    assert any(g.abs().max() > 0 for name, g in grads0.items() if name.endswith("talan.w_in"))


def class_prefix(family: str) -> str:
    """The transformers class prefix of a test family name: the part before a dash, which names a variant (a config
    of its own, as in "GPTNeoX-sequential" or "Llava-gemma2")."""
    return family.split("-")[0]


def needs_transformers(name: str):
    """Skips where the installed transformers lacks the class ``name`` (Qwen3.5 and Gemma 4 came with 5.x)."""
    return pytest.mark.skipif(not hasattr(transformers, name),
                              reason=f"transformers {transformers.__version__} has no {name}")


def tiny_config(**overrides) -> talan.TalanConfig:
    """A small TALAN config (r=16, M=4) on the reference backend."""
    return talan.TalanConfig(**{"latent_dim": 16, "num_slots": 4, "backend": "torch", **overrides})


def tiny_batch(batch: int = 2, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids with a full attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def left_padded_prompt(length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of ``tiny_batch`` ids, the second left-padded by 3 tokens: ``(ids, attention_mask)``."""
    ids = tiny_batch(batch=2, length=length)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def greedy_kwargs(mask: torch.Tensor, max_new_tokens: int = 6, scores: bool = True) -> dict:
    """``generate``'s keyword arguments for greedy decoding of a padded prompt; with ``scores`` the result
    carries the step scores that ``assert_same_generation`` compares."""
    kwargs = dict(attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return {**kwargs, "output_scores": True, "return_dict_in_generate": True} if scores else kwargs


@pytest.fixture(name="tiny_qwen3")
def _tiny_qwen3_factory():
    return tiny_qwen3


@pytest.fixture(name="tiny_llama")
def _tiny_llama_factory():
    return tiny_llama


@pytest.fixture(name="tiny_config")
def _tiny_config_factory():
    return tiny_config


@pytest.fixture(name="tiny_batch")
def _tiny_batch_factory():
    return tiny_batch
