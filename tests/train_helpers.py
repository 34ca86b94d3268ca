"""Shared pieces of the `talan train` tests (test_train.py, test_train_distributed.py)."""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from talan.train import add_train_arguments, run_train

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
TALAN_FILES = {"talan_config.json", "talan_model.safetensors"}
# a few steps of the embedded default with a small block: about a second per run
FAST = ["--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "--num-examples", "64",
        "--latent-dim", "8", "--num-slots", "4", "--logging-steps", "100", "--no-progress"]
# persistence threshold 0: ZeRO-3 partitions every parameter (by default it keeps the small ones, all of
# TALAN's and the adapter's at this size, whole on every process)
DEEPSPEED_ZERO3 = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                                         "stage3_param_persistence_threshold": 0},
                   "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                   "gradient_clipping": "auto"}


def parse_train(*argv):
    return add_train_arguments(argparse.ArgumentParser(prog="talan train")).parse_args(list(argv))


def train(out_dir, *flags):
    return run_train(parse_train("--output-dir", str(out_dir), *FAST, *flags))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def saved_weights(run: Path) -> dict[str, torch.Tensor]:
    """The adapter's and TALAN's tensors a run (or one of its checkpoints) wrote."""
    return {**load_file(run / "talan_model.safetensors"), **load_file(run / "adapter_model.safetensors")}


# Mamba 2 heads of 16 channels and 16 states, one group, chunks of 4 tokens (mamba_n_heads x 16 = the width)
MAMBA_2 = dict(mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1, mamba_expand=1, mamba_chunk_size=4)
# gated DeltaNet (linear attention) heads: 2 key heads, 4 value heads, 16 channels each
GATED_DELTANET = dict(linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                      linear_num_value_heads=4)
# Llama 4's text decoder: chunked attention (chunks of 4 tokens) in layers 0 and 1, which use RoPE, and a mixture of
# 4 experts (1 per token) in layer 1
LLAMA4_TEXT = dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128, interleave_moe_layer_step=2,
                   attention_chunk_size=4, no_rope_layers=[1, 1, 0])
# Multi-head latent attention: keys of 16 + 16 (no rope + rope) dims, values as wide (a static cache in 4.57 holds
# keys and values of one width); 4 routed experts, 2 per token
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
           v_head_dim=32)
ROUTED_EXPERTS = dict(n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32)
# Gemma 3n as E2B: four AltUp streams, a LAuReL branch, per-layer input embeddings (of the tiny vocabulary, 128 ids),
# the last layer reusing layer 1's keys and values; layer 0 slides
GEMMA3N_TEXT = dict(vocab_size_per_layer_input=128, hidden_size_per_layer_input=8, laurel_rank=4,
                    num_kv_shared_layers=1, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "full_attention"])
# dots.llm3: its sparse attention (an indexer picks 4 keys) in layers 0 and 1, sliding attention (windows of 4 tokens;
# its own multi-head latent attention, swa_*) in layer 2; experts from layer 1 on, beside a shared one
DOTS3_TEXT = dict(MLA, **ROUTED_EXPERTS, index_topk=4, index_head_dim=16, index_n_heads=2, sliding_window=4,
                  moe_shared_expert_intermediate_size=32, swa_num_attention_heads=4, swa_num_key_value_heads=4,
                  swa_q_lora_rank=32, swa_kv_lora_rank=16, swa_head_dim=32, swa_qk_nope_head_dim=16, swa_v_head_dim=32)
# DeepSeek-V4: 4 hyper-connection streams (3 Sinkhorn steps), compressed sparse attention (4 tokens to a key, within
# the prompt; its indexer keeping every key) beside heavily compressed attention, hash-routed experts in layer 0
DEEPSEEK_V4 = dict(q_lora_rank=32, o_lora_rank=32, o_groups=2, num_key_value_heads=1, n_routed_experts=4,
                   num_experts_per_tok=2, moe_intermediate_size=32, index_n_heads=2, index_head_dim=16, index_topk=64,
                   sliding_window=4, hc_sinkhorn_iters=3, num_nextn_predict_layers=0,
                   layer_types=["compressed_sparse_attention", "heavily_compressed_attention",
                                "compressed_sparse_attention"],
                   compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
                   mlp_layer_types=["hash_moe", "moe", "moe"])
# the layers of the 2-layer checkpoints that differ from their config's defaults: the text-only hybrids' (Granite 4: a
# Mamba 2 layer, then attention, every sum scaled; LFM2: a short convolution, then attention; Jamba) and DeepSeek-V4's
CHECKPOINT_LAYERS = {
    "GraniteMoeHybrid": dict(MAMBA_2, layer_types=["mamba", "attention"], residual_multiplier=0.22, mamba_n_heads=2,
                             num_local_experts=0, shared_intermediate_size=64),
    "Lfm2": dict(layer_types=["conv", "full_attention"], block_ff_dim=64),
    # Jamba: a Mamba layer with 4 experts, then attention and a dense MLP
    "Jamba": dict(use_mamba_kernels=False, attn_layer_period=2, attn_layer_offset=1, num_experts=4,
                  num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=0),
    # both layers compressed sparse attention: heavily compressed attention pools 128 tokens into a key, more than a
    # training text holds, so its compressor (and LoRA) would never run
    "DeepseekV4": dict(DEEPSEEK_V4, layer_types=["compressed_sparse_attention"] * 2)}


def word_level_tokenizer(tokens: list[str], split_chars: bool = False, **special_tokens):
    """A HF fast tokenizer built in memory (nothing downloaded) whose ids are the positions in ``tokens``, which must
    hold ``<unk>``; ``split_chars`` makes every character a token; ``special_tokens`` go to the tokenizer as given."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({tok: i for i, tok in enumerate(tokens)}, unk_token="<unk>"))
    if split_chars:
        backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special_tokens)


def make_local_checkpoint(model_dir: Path, chat_template: bool = True, family: str = "Qwen3") -> Path:
    """A tiny random causal LM of ``family`` (a transformers config prefix: Qwen3, Gemma3Text, Phi3, ...; Gemma3,
    Gemma4 and Qwen3_5: the vision-language model, with a 1-layer vision tower) and a character-level HF tokenizer
    (built offline, with a chat template) saved as a local Hugging Face checkpoint folder."""
    import transformers
    from transformers import AutoModelForCausalLM

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tokenizer = word_level_tokenizer(specials + chars, split_chars=True, pad_token="<pad>", eos_token="<|im_end|>",
                                     additional_special_tokens=specials[1:3])
    if chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.save_pretrained(model_dir)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    if family == "Gemma3":  # its image token lies outside the vocabulary, which Gemma 3 allows (text-only data)
        config = transformers.Gemma3Config(text_config=text, mm_tokens_per_image=4, vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=4))
    elif family == "Gemma4":  # as it ships: the vision-language model, which AutoModelForCausalLM loads
        text.update(vocab_size_per_layer_input=len(tokenizer), hidden_size_per_layer_input=8,
                    layer_types=["sliding_attention", "full_attention"])
        config = transformers.Gemma4Config(text_config=text, vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16, patch_size=4, pooling_kernel_size=3, position_embedding_size=64))
    elif family == "Qwen3_5":  # as it ships: the vision-language model (AutoModelForCausalLM keeps its text decoder)
        text.update(GATED_DELTANET, layer_types=["linear_attention", "full_attention"])
        config = transformers.Qwen3_5Config(text_config=text, vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=4,
            num_position_embeddings=16))
        transformers.Qwen3_5ForConditionalGeneration(config).save_pretrained(model_dir)
        return model_dir
    else:
        if family in CHECKPOINT_LAYERS:  # a hybrid's layer 0 mixes tokens otherwise than by self_attn, layer 1 by it
            text.update(CHECKPOINT_LAYERS[family])
        config = getattr(transformers, f"{family}Config")(**text)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    return model_dir
