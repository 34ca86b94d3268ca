"""End-to-end workloads: a Qwen3-shaped model with random weights, matched peft LoRA with and without
TALAN, prefill, cached decode and a training step. Each ratio is taken round by round in one process.

Hosts (``HOSTS``): ``0.6B`` is Qwen3-0.6B's shape (28 layers, d=1024, vocab 151936), for a GPU;
``cpu`` keeps its width and vocabulary with 4 layers (what ``overhead_cpu.py`` has always used);
``tiny`` (d=64, 2 layers) is for ``--quick`` correctness runs.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from talan.report import MODEL_PRESETS

from .common import TOLERANCE, check_close, interpreting, lora_triton_status, paired_times, side_path_triton_status

QWEN3_0_6B = {k: v for k, v in MODEL_PRESETS["Qwen3-0.6B"].items() if k != "model_type"}
HOSTS = {
    "0.6B": QWEN3_0_6B,
    "cpu": {**QWEN3_0_6B, "num_hidden_layers": 4},
    "tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}

BATCHES = (1, 16)


def e2e_setup(quick: bool, device: torch.device) -> dict:
    """Host and sizes for this machine (bench_end_to_end.py and collect.py's rows). ``share_tokens``:
    the sequence of the block-vs-layer rows (issue 3's target is stated at 4096 tokens)."""
    if quick:
        return dict(host=HOSTS["tiny"], prefill=16, prompt=8, new=4, train_batch=2, train_len=16, rounds=1,
                    share_tokens=16)
    if device.type == "cuda":
        return dict(host=HOSTS["0.6B"], prefill=512, prompt=32, new=32, train_batch=8, train_len=512, rounds=5,
                    share_tokens=4096)
    return dict(host=HOSTS["cpu"], prefill=128, prompt=16, new=8, train_batch=2, train_len=64, rounds=3,
                share_tokens=128)


def kernel_backends(device: torch.device) -> tuple[str, str, str]:
    """(talan_backend, fused_lora_backend, why-not) : the kernels on a GPU (or in the interpreter,
    ``common.interpreting``) when they import."""
    if device.type != "cuda" and not interpreting():
        return "torch", "torch", ""
    sp_ok, sp_why = side_path_triton_status(device)
    lo_ok, lo_why = lora_triton_status(device)
    return ("triton" if sp_ok else "", "triton" if lo_ok else "", sp_why or lo_why)


def random_ids(batch: int, length: int, vocab: int, device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen).to(device)


def qwen3_base(host: dict, seed: int = 0, device="cpu", dtype=torch.float32):
    """A seeded ``Qwen3ForCausalLM`` with random weights, built directly on ``device``, eval mode."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**host)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).eval()


def add_lora(model, rank: int = 16, seed: int = 0):
    """peft LoRA ``r=rank, alpha=2r`` on all linear layers, B non-zero (``init_lora_weights=False``)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                            init_lora_weights=False))


def open_gates(model, value: float = 0.5) -> None:
    """Set every TALAN gate to ``value`` so the side path really computes (it is 0 at init)."""
    import talan

    with torch.no_grad():
        for block in talan.patching.talan_blocks(model).values():
            block.gate.fill_(value)


def build_pair(num_layers: int = 4, seed: int = 0, *, host: dict | None = None, rank: int = 16, device="cpu",
               dtype=torch.float32, talan_backend: str = "torch"):
    """Matched models: peft LoRA (same rank, targets and seed) and a deep copy of it patched with the
    default TALAN config on ``talan_backend``, gates opened. Both in eval mode.

    ``host`` defaults to Qwen3-0.6B's width and vocabulary with ``num_layers`` layers."""
    import talan

    host = host or {**QWEN3_0_6B, "num_hidden_layers": num_layers}
    lora = add_lora(qwen3_base(host, seed, device, dtype), rank, seed).eval()
    with_talan = copy.deepcopy(lora)
    talan.patch(with_talan, talan.TalanConfig(backend=talan_backend))
    open_gates(with_talan)
    return lora, with_talan


def check_pair(lora, with_talan, ids: torch.Tensor) -> float:
    """Gate for the pair: with TALAN disabled the patched copy gives LoRA's logits exactly, and with
    it enabled the logits are finite and differ (the side path really ran). Returns the relative
    change TALAN makes."""
    import talan

    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = lora(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with talan.disabled(with_talan):
            off = with_talan(input_ids=ids, attention_mask=mask, use_cache=False).logits
        on = with_talan(input_ids=ids, attention_mask=mask, use_cache=False).logits
    if not torch.equal(off, ref):
        raise AssertionError("TALAN disabled does not reproduce the matched LoRA model's logits exactly")
    if not torch.isfinite(on).all():
        raise AssertionError("TALAN + LoRA logits are not finite")
    change = (torch.linalg.vector_norm((on - ref).double()) / torch.linalg.vector_norm(ref.double())).item()
    if change == 0.0:
        raise AssertionError("TALAN + LoRA logits equal LoRA's: the side path did not run")
    return change


def prefill_fn(model, ids: torch.Tensor):
    """Prompt processing as ``generate`` does it: every token through the model, logits of the last."""
    mask = torch.ones_like(ids)

    def call():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    return call


def decode_fn(model, prompt: torch.Tensor, new_tokens: int):
    """Greedy ``generate`` of ``new_tokens`` with the KV cache (and TALAN's carried state)."""
    mask = torch.ones_like(prompt)

    def call():
        with torch.no_grad():
            return model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    return call


def check_decode(lora, with_talan, prompt: torch.Tensor, new_tokens: int) -> None:
    """Gate for cached decoding: the patched copy with TALAN disabled generates LoRA's tokens exactly,
    and with TALAN enabled it generates ``new_tokens`` tokens."""
    import talan

    want = decode_fn(lora, prompt, new_tokens)()
    with talan.disabled(with_talan):
        off = decode_fn(with_talan, prompt, new_tokens)()
    if not torch.equal(off, want):
        raise AssertionError("TALAN disabled does not generate the matched LoRA model's tokens")
    out = decode_fn(with_talan, prompt, new_tokens)()
    assert out.shape == (prompt.shape[0], prompt.shape[1] + new_tokens), f"generate returned {tuple(out.shape)}"


def check_block_backend(model, dtype, device, tokens: int = 64) -> float:
    """Gate for a kernel backend: the model's first TALAN block on random hidden states against the
    reference (``side_path_ref``) on the same parameters."""
    import talan
    from talan_kernels.side_path import side_path_ref

    block = next(iter(talan.patching.talan_blocks(model).values()))
    gen = torch.Generator(device="cpu").manual_seed(3)
    h = torch.randn(2, tokens, block.hidden_size, generator=gen).to(device=device, dtype=dtype)
    with torch.no_grad():
        out, _ = block(h)
        ref, _ = side_path_ref(h, block.params())
    return check_close(out, ref, f"TALAN block on backend {block.config.backend!r}")


def inference_ratio(lora, with_talan, ids: torch.Tensor | None, prompt: torch.Tensor | None, new_tokens: int,
                    rounds: int, device) -> dict:
    """Paired prefill and/or decode times of LoRA vs TALAN + LoRA: ``{"prefill": ..., "decode": ...}``,
    each ``{"base_s", "talan_s", "ratio", "ratios"}``."""
    out = {}
    if ids is not None:
        res = paired_times({"base": prefill_fn(lora, ids), "talan": prefill_fn(with_talan, ids)}, rounds, device,
                           baseline="base")
        out["prefill"] = _pair(res)
    if prompt is not None:
        res = paired_times({"base": decode_fn(lora, prompt, new_tokens),
                            "talan": decode_fn(with_talan, prompt, new_tokens)}, rounds, device, baseline="base")
        out["decode"] = _pair(res)
    return out


def _pair(res: dict) -> dict:
    return {"base_s": res["base_s"], "talan_s": res["talan_s"], "ratio": res["ratio_talan"],
            "ratios": res["ratios_talan"]}


# ----------------------------------------------------------------------------- training step

def train_models(host: dict, rank: int, device, dtype, fused_backend: str, talan_backend: str, seed: int = 0):
    """Three models from one seed, train mode: ``base`` (no adapter: frozen weights, only activation
    gradients flow, the floor of any adapter step), ``peft`` (peft eager LoRA) and ``fused``
    (the same LoRA on ``enable_fused_lora(backend=fused_backend)`` plus TALAN on ``talan_backend``)."""
    import talan

    base = qwen3_base(host, seed, device, dtype).train()
    for p in base.parameters():
        p.requires_grad_(False)
    base.enable_input_require_grads()  # so the backward runs through the frozen layers
    peft_model = add_lora(qwen3_base(host, seed, device, dtype), rank, seed).train()
    fused = copy.deepcopy(peft_model)
    talan.enable_fused_lora(fused, backend=fused_backend)
    talan.patch(fused, talan.TalanConfig(backend=talan_backend))
    open_gates(fused)
    return {"base": base, "peft": peft_model, "fused": fused}


def train_step_fn(model, ids: torch.Tensor, lr: float = 1e-4):
    """forward + causal-LM loss + backward + AdamW step on the trainable parameters (none for the
    base model, whose step is forward + backward through frozen weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr) if params else None
    mask = torch.ones_like(ids)

    def call():
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    return call


def check_train(models: dict, ids: torch.Tensor, dtype) -> None:
    """Gate: TALAN disabled, the fused model's LoRA gives peft eager's loss and LoRA gradients."""
    import talan

    mask = torch.ones_like(ids)
    grads = {}
    for name in ("peft", "fused"):
        model = models[name]
        with talan.disabled(model) if name == "fused" else contextlib.nullcontext():
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        g = torch.autograd.grad(loss, [p for _, p in named])
        grads[name] = (loss.detach(), torch.cat([x.flatten().float() for x in g]))
    tol = TOLERANCE[(ids.device.type, dtype)]  # the model's dtype sets the rounding of every layer
    check_close(grads["fused"][0].reshape(1), grads["peft"][0].reshape(1), "fused LoRA loss vs peft", tol)
    check_close(grads["fused"][1], grads["peft"][1], "fused LoRA gradients vs peft", tol)
