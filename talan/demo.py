"""`talan demo`: peft LoRA + TALAN co-trained on a short SFT run, then generation, save and reload.

With no arguments everything is embedded: a tiny Qwen3 built from a config with random weights, a
character tokenizer and a synthetic key-value recall task, so the demo runs offline on a laptop CPU
in well under a minute. ``model_path`` points at a local HF checkpoint of a supported host
(``talan.hosts.FAMILIES``; never downloaded) and ``data_path`` at a JSONL file of prompt/completion pairs.

The order is the one SPEC §3 asks of users: ``get_peft_model`` first, then ``talan.patch``.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from . import data as talan_data
from .checkpoint import load_local_checkpoint
from .config import TalanConfig
from .report import format_report, parameter_report

# The embedded backbone: big enough that the loss drop is visible in a few hundred steps, small
# enough that a step costs tens of milliseconds on 2 CPU cores. initializer_range is 0.25, not HF's
# 0.02: the (tied, frozen) embedding is also the output layer, which LoRA does not train, and with
# rows of norm 0.02 * sqrt(64) the logits cannot move more than about +-1, so the loss would stall
# near ln(vocab) whatever the adapter learns (measured: 4.67 -> 3.93 and stuck).
TINY_QWEN3 = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
                  rms_norm_eps=1e-6, initializer_range=0.25)
DEFAULT_STEPS = 300
LORA_RANK = 8
# TALAN has its own param group: SPEC §1 names a separate learning rate as the lever on how fast the
# side path opens (scaling its gradients is not, under Adam). Equal here; 3e-3 barely moved the loss.
LORA_LR, TALAN_LR = 1e-2, 1e-2
NUM_TRAIN, NUM_EVAL, NUM_SAMPLES = 4000, 64, 3
MAX_LENGTH = 256


def _embedded_backbone(vocab_size: int, pad_id: int, eos_id: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id,
                         **TINY_QWEN3)
    return Qwen3ForCausalLM(config).float()


def _with_adapters(backbone, config: TalanConfig):
    """peft LoRA on every linear layer first, then TALAN (the order SPEC §3 prescribes)."""
    from peft import LoraConfig, get_peft_model

    import talan

    model = get_peft_model(backbone, LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0,
                                                target_modules="all-linear"))
    return talan.patch(model, config)


@torch.no_grad()
def _eval_loss(model, batch) -> float:
    was_training = model.training
    model.eval()
    loss = model(**batch).loss.item()
    model.train(was_training)
    return loss


@torch.no_grad()
def _generate(model, tokenizer, examples, max_new_tokens: int) -> list[str]:
    """Greedy generation with the KV cache (TALAN carries its slot state along the cache)."""
    model.eval()
    prompts = talan_data.collate_prompts([ex["prompt"] for ex in examples], tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**prompts, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    new_tokens = out[:, prompts["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True) for row in new_tokens]


def _split(examples: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    if len(examples) < 2:
        raise ValueError(f"the data holds {len(examples)} example(s); the demo needs at least 2 "
                         "(one to train on, one held out)")
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    n_eval = max(1, min(NUM_EVAL, len(examples) // 10))
    return examples[n_eval:], examples[:n_eval]


def run_demo(model_path: str | Path | None = None, data_path: str | Path | None = None, steps: int = DEFAULT_STEPS,
             out_dir: str | Path = "runs/demo", seed: int = 0, batch_size: int = 16,
             talan_config: TalanConfig | None = None, progress: bool = True) -> dict:
    """Co-train LoRA + TALAN for ``steps`` steps, report, generate, save to ``out_dir`` and reload.

    Prints as it goes; returns the numbers (``report``, ``loss_before``, ``loss_after``,
    ``loss_reloaded``, ``samples``, ``files``, ``seconds``) so tests can check them.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive; got {steps}")
    threads = torch.get_num_threads()
    if model_path is None:
        # a tiny model's ops are far too small to gain from intra-op threads; on a loaded 2-core
        # machine two threads made each step ~10x slower than one (measured 0.77 s vs 0.08 s)
        torch.set_num_threads(1)
    try:
        return _run(model_path, data_path, steps, out_dir, seed, batch_size, talan_config, progress)
    finally:
        torch.set_num_threads(threads)


def _run(model_path, data_path, steps, out_dir, seed, batch_size, talan_config, progress) -> dict:
    from tqdm.auto import tqdm

    import talan

    start = time.perf_counter()
    talan_config = TalanConfig() if talan_config is None else talan_config
    out_dir = Path(out_dir)
    torch.manual_seed(seed)

    # ---- data and backbone -------------------------------------------------------------------
    if model_path is None:
        tokenizer = talan_data.CharTokenizer()
        backbone = _embedded_backbone(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        # keep the random init: the reload below must see the same frozen backbone
        initial_state = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
        source = (f"embedded tiny Qwen3 (random init, d={TINY_QWEN3['hidden_size']}, "
                  f"{TINY_QWEN3['num_hidden_layers']} layers), character tokenizer")
    else:
        backbone, tokenizer = load_local_checkpoint(model_path)
        initial_state = None
        source = f"{model_path} ({type(backbone).__name__})"
    if data_path is None:
        train = talan_data.recall_examples(NUM_TRAIN, seed=seed)
        held_out = talan_data.recall_examples(NUM_EVAL, seed=seed + 10_000)
        source += ", synthetic key-value recall task"
    else:
        train, held_out = _split(talan_data.load_jsonl(data_path), seed)
        source += f", {data_path} ({len(train)} train / {len(held_out)} held out)"
    print(f"talan demo: {source}")

    # ---- peft LoRA, then TALAN ---------------------------------------------------------------
    model = _with_adapters(backbone, talan_config)
    report = parameter_report(model)
    print(f"parameters (peft LoRA r={LORA_RANK} all-linear + TALAN {talan_config.mixer}/{talan_config.writeback}, "
          f"M={talan_config.num_slots}, r={talan_config.latent_dim}):")
    print(format_report(report))
    if model_path is None:
        print("  (the demo backbone is tiny, hence the large percentages; `talan report` sizes real models)")

    talan_ids = {id(p) for p in talan.talan_parameters(model)}
    adapter_params = [p for p in model.parameters() if p.requires_grad and id(p) not in talan_ids]
    talan_params = [p for p in talan.talan_parameters(model) if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": LORA_LR},
                                   {"params": talan_params, "lr": TALAN_LR}], weight_decay=0.0)

    eval_batch = talan_data.collate(held_out, tokenizer, max_length=MAX_LENGTH)
    loss_before = _eval_loss(model, eval_batch)
    print(f"held-out loss before: {loss_before:.4f}")

    # ---- co-training -------------------------------------------------------------------------
    stream = talan_data.batches(train, min(batch_size, len(train)), seed=seed)
    model.train()
    bar = tqdm(range(steps), desc="co-training LoRA + TALAN", disable=not progress, mininterval=0.5)
    for step in bar:
        # a short warm-up then a cosine decay, so a few hundred steps converge without spikes
        scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group, lr in zip(optimizer.param_groups, (LORA_LR, TALAN_LR)):
            group["lr"] = lr * scale
        loss = model(**talan_data.collate(next(stream), tokenizer, max_length=MAX_LENGTH)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter_params + talan_params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    loss_after = _eval_loss(model, eval_batch)
    print(f"held-out loss after:  {loss_after:.4f} ({loss_after - loss_before:+.4f} over {steps} steps)")

    # ---- generation --------------------------------------------------------------------------
    shown = held_out[:NUM_SAMPLES]
    max_new = max(len(tokenizer.encode(ex["completion"], add_special_tokens=False)) for ex in shown) + 1
    samples = _generate(model, tokenizer, shown, max_new_tokens=min(max_new, 64))
    print("greedy samples (model.generate, KV cache):")
    for ex, text in zip(shown, samples):
        print(f"  {ex['prompt']!r} -> {text!r} (expected {ex['completion']!r})")

    # ---- save: the peft adapter and TALAN side by side in one folder ---------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    talan.save_pretrained(model, out_dir)
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    print(f"saved to {out_dir}: {', '.join(files)}")

    # ---- reload into a fresh model -----------------------------------------------------------
    from peft import PeftModel

    if initial_state is None:
        fresh, _ = load_local_checkpoint(model_path)
    else:
        fresh = _embedded_backbone(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
        fresh.load_state_dict(initial_state)
    fresh = PeftModel.from_pretrained(fresh, out_dir)
    fresh = talan.load_pretrained(fresh, out_dir)
    loss_reloaded = _eval_loss(fresh, eval_batch)
    with torch.no_grad():
        model.eval()
        fresh.eval()
        diff = (model(**eval_batch).logits - fresh(**eval_batch).logits).abs().max().item()
    print(f"reloaded with PeftModel.from_pretrained + talan.load_pretrained: held-out loss {loss_reloaded:.4f}, "
          f"max |logit difference| vs the trained model {diff:.2e}")
    seconds = time.perf_counter() - start
    print(f"done in {seconds:.1f} s")
    return {"report": report, "loss_before": loss_before, "loss_after": loss_after,
            "loss_reloaded": loss_reloaded, "max_logit_diff": diff, "samples": samples, "files": files,
            "out_dir": str(out_dir), "seconds": seconds}
