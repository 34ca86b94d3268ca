"""A mutation sweep: each mutant is one small wrong change to a kernel (a mask, a sign, a dropped term, a state carried
across a reset), to the reference op's stages 2 and 3 or TalanBlock's initialisation (against the SPEC), or to the
glue around them (the masks TALAN reads, the decode state that follows a cache, the fused-LoRA fall-backs,
checkpoints, the trainer's groups and gather, talan train's settings, data and Trainer arguments, the demo, the
command line's value types and talan export, the hosts' residual streams and prefix caches, talan analyze's
measurements, talan study's settings, summary and tasks, the benchmarks' correctness gates and the results file a
GPU run writes), and the tests named beside it must fail on every one. A mutant they pass is a gap in the tests (the
sweep found zero_add's scale tested only at its default of 1, a reference whose mixers and writebacks only the kernels
checked, config options the block could drop, cache operations, fall-backs and refusals that no test reached, Gemma 3n
tested only with AltUp's first stream active, analyze's and study's numbers checked for being finite only, Trainer
arguments no test read, a score cap tested only at its default on the kernels, benchmark gates no test gave a broken
model, and a results file whose rows could have shown the best batch instead of the worst).

Opt-in, never part of ``make test`` (about 30 minutes on 2 cores): ``make mutants``, or ``python tests/mutants.py
[NAME ...]`` with TRL on ``PYTHONPATH`` as make mutants puts it (the trainer's SFTTrainer tests skip without it, so
their mutants would survive). Each mutant runs in a copy of the checkout, so the working tree is never changed; the
kernels' tests run under ``TRITON_INTERPRET=1``. ``tests/test_mutants.py`` (in ``make test``) checks that every
mutant still applies to the source, once, so the list cannot rot as the code changes.

Left out as equivalent, or as not testable deterministically: a split decode program's write mask to D instead of
its share's end (every share is whole BD blocks); fan_in_fan_out on an nn.Linear base (peft turns it off there);
the DoRA norm cache kept for autocast's cast copies (a stale hit needs the allocator to reuse their storage); the DoRA
reference norm's clamp at 0 (only rounding makes its square negative); ``talan report``'s up-front check of the model
names (building the first unknown preset names it too); TalanCheckpointCallback's should_save test without the mixin
(only a process that is not the main one, in a multi-process run, tells it apart); the fused-LoRA wrapper's checks of
an autocast dtype other than fp16/bf16 (CPU autocast takes no other), of a call with tensors on two devices (peft's
forward refuses it too) and the bias's cast under autocast (on the reference path it changes a rounding at most);
in the hosts, a closed gate tested by all() or any() (Mllama's gate is one number), the order in which _find_stack
tries the outer and inner modules (no supported model has layers in both), variant_if's default (every layer of
those families holds the attribute) and the family count in the refusal message (its text only); the parameter
budget's count of an adapter attribute that is a bare Parameter (no peft tuner we test holds one: theirs are dicts);
the demo's evaluation putting the model back in training mode (the demo's model has no dropout), its warm-up and
gradient clipping (they steady a run; no deterministic test tells them apart); the talan version left out of the
checkpoint's block comparison (to_dict writes this talan's version on both sides); the trainer's refusal of an
optimizer that already holds state (Trainer's create_optimizer makes a new one) and its default group name (Trainer's
groups carry none); the dot before a gathered key's parameter name (no wrapper name ends in a parameter name's start);
in the parameter budget, TALAN's weights taken out of the adapter's (no peft tuner holds a TALAN block), the shares
of a model with TALAN weights but no backbone (no such model) and the LoRA alpha (counts do not depend on it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SCAN = "talan_kernels/side_path/kernels.py"
FUSED = "talan_kernels/side_path/fused_kernels.py"
TRAIN = "talan_kernels/side_path/fused_train.py"
LORA = "talan_kernels/lora/kernels.py"
SIDE_PATH_TESTS = ("tests/test_side_path_kernels_interp.py", "tests/test_side_path_gpu_configs_interp.py")
LORA_TESTS = ("tests/test_lora_kernels_interp.py",)
MASKS = "talan/masks.py"
STATE = "talan/decode_state.py"
PATCHING = "talan/patching.py"
FUSED_LORA = "talan/fused_lora.py"
LORA_OP = "talan_kernels/lora/interface.py"
CHECKPOINT = "talan/checkpoint.py"
TRAINER = "talan/trainer.py"
BLOCK = "talan/block.py"
REFERENCE = "talan_kernels/side_path/reference.py"
STATE_TESTS = ("tests/test_decode_state.py",)
BLOCK_TESTS = ("tests/test_block.py",)
REFERENCE_TESTS = ("tests/test_side_path_reference.py",)
OP = "talan_kernels/side_path/interface.py"
PATCH_TESTS = ("tests/test_patch_model.py", "-k", "nests or other_ranks")
TRL_TESTS = ("tests/test_trl.py", "-k", "resume or peft_config")  # TRL on PYTHONPATH, as make mutants puts it
SETTINGS = "talan/train_config.py"
SETTINGS_TESTS = ("tests/test_train.py", "-k", "config_file or settings_defaults or every_block_flag")
FUSED_LORA_TESTS = ("tests/test_fused_lora_peft.py", "tests/test_lora_reference.py")
HOSTS = "talan/hosts.py"
PREFIX_TESTS = ("tests/test_peft_prefix_tuning.py",)
BAD_INPUT_TESTS = ("tests/test_patch_model.py", "-k", "bad_inputs")
ANALYZE = "talan/analyze.py"
STUDY = "talan/study.py"
STUDY_REPORT = "talan/study_report.py"
STUDY_TESTS = ("tests/test_study_analyze.py", "-m", "not slow")
TASKS = "talan/study_tasks.py"
TASKS_TESTS = ("tests/test_study_tasks.py",)
DATA = "talan/data.py"
DATA_TESTS = ("tests/test_data.py",)
TRAIN_CLI = "talan/train.py"
TRAIN_DATA_TESTS = ("tests/test_train_data.py",)
TRAIN_ARGS_TESTS = ("tests/test_train.py", "-k", "every_optimisation")
DEMO = "talan/demo.py"
SETTINGS_PARSE_TESTS = ("tests/test_train.py", "-k", "parse_as_their")
COLLECT = "benchmarks/collect.py"
TRITON_PATH = "talan_kernels/side_path/triton_path.py"
DECODE = "talan_kernels/side_path/decode.py"
CAP_TESTS = ("tests/test_side_path_kernels_interp.py", "-k", "score_cap")
BENCH_MODELS = "benchmarks/models.py"
BENCH_CASES = "benchmarks/cases.py"
GATE_TESTS = ("tests/test_benchmark_gates.py",)
RESULTS_TESTS = ("tests/test_benchmarks_report.py",)
GATHER_TESTS = ("tests/test_train_distributed.py", "-k", "picked_out or save_talan")


class Mutant(NamedTuple):
    name: str
    path: str  # relative to the checkout
    old: str  # found exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, and -k where a file's other tests are slow
    interpreter: bool = True  # run them under TRITON_INTERPRET=1 (the kernel tests need it)


MUTANTS = [
    # the chunked slot scan (forward, backward, carried state)
    Mutant("tanh_series_range", SCAN, "x2 < 1.6e-3", "x2 < 1.6e-1", SIDE_PATH_TESTS),
    Mutant("causal_excludes_self", SCAN, "allowed = o_t[:, None] >= o_t[None, :]",
           "allowed = o_t[:, None] > o_t[None, :]", SIDE_PATH_TESTS),
    Mutant("first_segment_wrong", SCAN, "        first = seg == 0\n", "        first = seg <= 1\n", SIDE_PATH_TESTS),
    Mutant("state_fwd_all_segments", SCAN, "w = tl.where((seg == n_resets)[:, None], w, 0.0)", "w = w",
           SIDE_PATH_TESTS),
    Mutant("state_fwd_keeps_across_reset", SCAN, "keep = (n_resets == 0).to(tl.float32)\n            s = s * keep",
           "keep = (n_resets >= 0).to(tl.float32)\n            s = s * keep", SIDE_PATH_TESTS),
    Mutant("state_fwd_stores_wrong_state", SCAN,
           "tl.store(cs_ptr + base + o_m, s.to(cs_ptr.dtype.element_ty), mask=m_mask)",
           "tl.store(cs_ptr + base + o_m, (s * 1.0001).to(cs_ptr.dtype.element_ty), mask=m_mask)", SIDE_PATH_TESTS),
    Mutant("online_softmax_alpha_sign", SCAN, "            alpha = tl.exp(m_run - m_new)\n",
           "            alpha = tl.exp(m_new - m_run)\n", SIDE_PATH_TESTS),
    Mutant("lse_without_log", SCAN, "(m_run + tl.log(l_run))", "(m_run)", SIDE_PATH_TESTS),
    Mutant("dscore_drops_dc_c", SCAN, "(tl.sum(dct * mem, 1) - dc_c)", "(tl.sum(dct * mem, 1))", SIDE_PATH_TESTS),
    Mutant("d1_every_segment", SCAN, "tl.sum(tl.where(first[:, None], gs, 0.0), 0)", "tl.sum(gs, 0)",
           SIDE_PATH_TESTS),
    Mutant("r2_wrong_axis", SCAN, "r2 = tl.sum(allowed_f * e[:, None], 0)", "r2 = tl.sum(allowed_f * e[None, :], 0)",
           SIDE_PATH_TESTS),
    Mutant("scan_bwd_softcap_sign", SCAN, "(tl.sum(vt * r1, 1) - r2) * (1.0 - th * th)",
           "(tl.sum(vt * r1, 1) - r2) * (1.0 + th * th)", SIDE_PATH_TESTS),
    Mutant("state_bwd_ignores_reset", SCAN, "keep = (n_resets == 0).to(tl.float32)\n            g1 = g1 * keep",
           "keep = (n_resets >= 0).to(tl.float32)\n            g1 = g1 * keep", SIDE_PATH_TESTS),
    Mutant("carry_bwd_all_segments", SCAN, "w = tl.where(last[:, None], w, 0.0)", "w = w", SIDE_PATH_TESTS),
    Mutant("carry_bwd_g2_sign", SCAN, "dw = vg1 - g2[None, :]", "dw = vg1 + g2[None, :]", SIDE_PATH_TESTS),
    Mutant("carry_bwd_skips_dqs_partials", SCAN,
           "        dqs += tl.load(dqs_ptr + base * R + mr_off, mask=mr_mask, other=0.0)\n", "", SIDE_PATH_TESTS),
    Mutant("sliced_matmul_k_mask", SCAN, "        k_mask = o_k < R\n        xs",
           "        k_mask = o_k < R + 1\n        xs", SIDE_PATH_TESTS),
    # the decode kernel
    Mutant("decode_reset_kept", SCAN, "keep = (tl.load(resets_ptr + i_b) == 0).to(tl.float32)", "keep = 1.0",
           SIDE_PATH_TESTS),
    Mutant("decode_every_program_stores_state", SCAN, "m_store = tl.where(tl.program_id(1) == 0, M, 0)",
           "m_store = M", SIDE_PATH_TESTS),
    Mutant("decode_norm_cap_min", SCAN, "tl.maximum(tl.maximum(tl.sqrt(tl.sum(usq, 0)), limit)",
           "tl.maximum(tl.minimum(tl.sqrt(tl.sum(usq, 0)), limit)", SIDE_PATH_TESTS),
    Mutant("square_matvec_rows_not_limited", SCAN, "_matvec(xk, w_ptr + k0 * R, R - k0, R, R, o_k, o_r)",
           "_matvec(xk, w_ptr + k0 * R, R, R, R, o_k, o_r)", SIDE_PATH_TESTS),
    Mutant("decode_eps_dropped", SCAN, "rstd = 1.0 / tl.sqrt(sumsq / D + eps)", "rstd = 1.0 / tl.sqrt(sumsq / D)",
           SIDE_PATH_TESTS),
    Mutant("decode_gate_logit_no_rstd", SCAN, "logit = tl.sum(gate_dot, 0) * rstd + tl.load(wb2_ptr)",
           "logit = tl.sum(gate_dot, 0) + tl.load(wb2_ptr)", SIDE_PATH_TESTS),
    Mutant("decode_zero_add_scale", SCAN, "        factor = a * zero_add_scale\n", "        factor = a\n",
           SIDE_PATH_TESTS),
    # the d-wide shrink and expand kernels, and the training backward's writeback
    Mutant("shrink_gate_no_rstd", FUSED, "logit = gate_dot * rstd + tl.load(gate_b_ptr)",
           "logit = gate_dot + tl.load(gate_b_ptr)", SIDE_PATH_TESTS),
    Mutant("shrink_hnorm_of_weighted", FUSED, "        sq += tl.sum(ht * ht, 1)\n",
           "        sq += tl.sum(hw * hw, 1)\n", SIDE_PATH_TESTS),
    Mutant("expand_norm_cap_limit", FUSED, "limit = norm_cap_ratio * tl.load(hnorm_ptr + rows",
           "limit = 1.01 * norm_cap_ratio * tl.load(hnorm_ptr + rows", SIDE_PATH_TESTS),
    Mutant("expand_zero_add_scale", FUSED, "factor = factor * zero_add_scale", "factor = factor", SIDE_PATH_TESTS),
    Mutant("train_bwd_zero_add_scale", TRAIN, "coef = active * ctx.zero_add_scale", "coef = active", SIDE_PATH_TESTS),
    # the fused LoRA / DoRA kernels
    Mutant("lora_store_s_from_every_group", LORA, "        if pid_g == 0:\n            _store_rank_rows(S_OUT",
           "        if pid_g >= 0:\n            _store_rank_rows(S_OUT", LORA_TESTS),
    Mutant("lora_group_loop_off_by_one", LORA, "range(first + 1, tl.minimum(first + GROUP_N, tl.cdiv(N, BLOCK_N)))",
           "range(first + 1, tl.minimum(first + GROUP_N - 1, tl.cdiv(N, BLOCK_N)))", LORA_TESTS),
    Mutant("lora_dora_saved_z_off", LORA, "tl.store(Z_OUT + out_off, acc.to(Z_OUT.dtype.element_ty)",
           "tl.store(Z_OUT + out_off, (acc * 1.001).to(Z_OUT.dtype.element_ty)", LORA_TESTS),
    Mutant("lora_dx_dora_scale_dropped", LORA, "            dy = dy.to(tl.float32) * g[None, :]\n",
           "            dy = dy.to(tl.float32)\n", LORA_TESTS),
    Mutant("lora_ds_unscaled", LORA, "    ds = ds * scaling\n", "", LORA_TESTS),
    Mutant("lora_dx_later_tiles_drop_ds", LORA, "_dx_epilogue(acc_kb, ds_lo,", "_dx_epilogue(acc_kb, ds_lo * 0,",
           LORA_TESTS),
    Mutant("dora_csum_off", LORA, "csum += tl.sum(xt.to(tl.float32) * z, axis=0)",
           "csum += tl.sum(xt.to(tl.float32) * z * 1.001, axis=0)", LORA_TESTS),
    Mutant("dora_norm_cross_factor", LORA, "sq = wsq + 2.0 * scaling * cross", "sq = wsq + scaling * cross",
           LORA_TESTS),
    Mutant("dora_norm_quad_unscaled", LORA, "+ scaling * scaling * quad", "+ scaling * quad", LORA_TESTS),
    Mutant("dora_gram_chunk_mask", LORA, "mask=mask_r[:, None] & mask_c[None, :], other=0.0)",
           "mask=mask_r[:, None] & (cc < R + 1)[None, :], other=0.0)", LORA_TESTS),
    # the fused LoRA op's refusals on the kernel path
    Mutant("lora_op_wide_rank_launched", LORA_OP, "    if R < 1 or (use_triton and R > MAX_TRITON_RANK):\n",
           "    if R < 1:\n", ("tests/test_lora_kernels_interp.py", "-k", "refuse")),
    Mutant("lora_op_fp64_launched", LORA_OP, "(() if use_triton else (torch.float64,))", "(torch.float64,)",
           ("tests/test_lora_kernels_interp.py", "-k", "refuse")),
    # the side path's host code: score_cap on every path (all other tests keep its default), its launch checks
    Mutant("triton_training_cap_fixed", TRITON_PATH,
           '                                         float(cap), mixer != "linear", chunk_size)',
           '                                         15.0, mixer != "linear", chunk_size)', CAP_TESTS),
    Mutant("triton_prefill_cap_fixed", TRITON_PATH,
           'p["slot_queries"], mix, act, res, s0, n0, float(cap), mixer != "linear",\n        chunk_size)',
           'p["slot_queries"], mix, act, res, s0, n0, 15.0, mixer != "linear",\n        chunk_size)', CAP_TESTS),
    Mutant("triton_decode_cap_fixed", DECODE, "mixer, writeback, float(cap), float(zero_add_scale),",
           "mixer, writeback, 15.0, float(zero_add_scale),", CAP_TESTS),
    Mutant("triton_chunk_of_8", TRITON_PATH, "    if chunk_size < 16 or chunk_size & (chunk_size - 1):",
           "    if chunk_size < 8 or chunk_size & (chunk_size - 1):", CAP_TESTS),
    Mutant("triton_chunk_not_a_power_of_2", TRITON_PATH, "    if chunk_size < 16 or chunk_size & (chunk_size - 1):",
           "    if chunk_size < 16:", CAP_TESTS),
    Mutant("decode_step_of_two_tokens", DECODE, '    if t != 1:\n        raise ValueError(f"side_path_decode',
           '    if False:\n        raise ValueError(f"side_path_decode', CAP_TESTS),
]

# the glue (CPU tests, run without the interpreter)
GLUE = [
    # the masks TALAN reads padding and packed-sequence starts off
    Mutant("mask_key_offset_zero", MASKS, "offset = max(past_len + q - kv, 0)", "offset = 0",
           ("tests/test_patch_model.py", "-k", "read_off_4d_masks")),
    Mutant("mask_starts_at_first_token", MASKS, "starts = real & (before >= 0) & ~sees_before",
           "starts = real & ~sees_before", ("tests/test_patch_model.py", "-k", "read_off_4d_masks")),
    Mutant("additive_mask_masked_above_minus_1e30", MASKS,
           "mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0",
           "mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] > -1e30",
           ("tests/test_patch_model.py", "-k", "read_off_4d_masks")),
    Mutant("mask_dict_ignores_full_attention", MASKS, 'full = masks.get("full_attention")', "full = None",
           ("tests/test_patch_model.py", "-k", "mask_dict")),
    Mutant("mask_dict_prefers_2d", MASKS, "(four_d or two_d or tensors or [None])[0]",
           "(two_d or four_d or tensors or [None])[0]", ("tests/test_patch_model.py", "-k", "mask_dict")),
    # TalanConfig's checks
    Mutant("config_takes_infinity", "talan/config.py", "or not math.isfinite(value) \\",
           "or value != value \\", ("tests/test_config.py",)),
    Mutant("config_takes_nan_gate_bias", "talan/config.py", " or not math.isfinite(bias):", ":",
           ("tests/test_config.py",)),
    # the reference's stages 2 and 3 against the SPEC (the kernels are tested against the reference)
    Mutant("ref_attn_unscaled", REFERENCE, "/ math.sqrt(r), dim=-1)", ", dim=-1)", REFERENCE_TESTS),
    Mutant("ref_mlp_input_order", REFERENCE, "torch.cat([z, read], -1)", "torch.cat([read, z], -1)", REFERENCE_TESTS),
    Mutant("ref_mlp_relu", REFERENCE, "hidden = F.silu(", "hidden = F.relu(", REFERENCE_TESTS),
    Mutant("ref_glu_gate_of_read", REFERENCE, 'torch.sigmoid(z @ _up(params["w_glu"])) * read',
           'torch.sigmoid(read @ _up(params["w_glu"])) * read', REFERENCE_TESTS),
    Mutant("ref_linear_softmaxed", REFERENCE, '(_up(params["mix_weights"]) @ mem)',
           '(_up(params["mix_weights"]).softmax(0) @ mem)', REFERENCE_TESTS),
    Mutant("ref_token_gate_of_h", REFERENCE, 'gate = torch.sigmoid(x @ _up(params["gate_weight"])',
           'gate = torch.sigmoid(h32 @ _up(params["gate_weight"])', REFERENCE_TESTS),
    Mutant("ref_tanh_gate_untanhed", REFERENCE, 'return torch.tanh(_up(params["gate"])) * u',
           'return _up(params["gate"]) * u', REFERENCE_TESTS),
    Mutant("ref_rms_without_eps", REFERENCE, "h32.pow(2).mean(-1, keepdim=True) + eps)",
           "h32.pow(2).mean(-1, keepdim=True))", REFERENCE_TESTS),
    # TalanBlock: the SPEC's initialisation and the config's options handed to the op
    Mutant("init_w_k_random", BLOCK, "self.w_k.copy_(torch.eye(r))", "self.w_k.normal_(0.0, 1.0 / math.sqrt(r))",
           BLOCK_TESTS),
    Mutant("init_w_in_unscaled", BLOCK, "self.w_in.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))",
           "self.w_in.normal_(0.0, 1.0)", BLOCK_TESTS),
    Mutant("init_mix_weights_ones", BLOCK, "self.mix_weights.fill_(1.0 / self.config.num_slots)",
           "self.mix_weights.fill_(1.0)", BLOCK_TESTS),
    Mutant("init_gate_bias_fixed", BLOCK, "self.gate_bias.fill_(self.config.token_gate_bias)",
           "self.gate_bias.fill_(-4.0)", BLOCK_TESTS),
    Mutant("scalar_gate_per_channel", BLOCK, "param(d if config.gate_per_channel else 1)", "param(d)", BLOCK_TESTS),
    Mutant("block_default_cap", BLOCK, "cap=c.score_cap,", "cap=15.0,", BLOCK_TESTS),
    Mutant("block_default_zero_add_scale", BLOCK, "zero_add_scale=c.zero_add_scale,", "zero_add_scale=1.0,",
           BLOCK_TESTS),
    Mutant("block_default_norm_cap_ratio", BLOCK, "norm_cap_ratio=c.norm_cap_ratio,", "norm_cap_ratio=1e-2,",
           BLOCK_TESTS),
    # the demo's and talan train's data, talan export and the local checkpoints they load
    Mutant("partial_batches", "talan/data.py", "if len(chunk) == batch_size or len(order) < batch_size:", "if True:",
           ("tests/test_data.py",)),
    Mutant("pad_fallback_zero", "talan/data.py", "return tokenizer.eos_token_id if pad is None else pad",
           "return 0 if pad is None else pad", ("tests/test_data.py",)),
    Mutant("empty_prompt_generated", "talan/data.py", "    if any(not r for r in ids):\n", "    if False:\n",
           ("tests/test_data.py",)),
    Mutant("export_without_adapter", "talan/export.py",
           "for name in (ADAPTER_CONFIG, talan_checkpoint.CONFIG_NAME, talan_checkpoint.WEIGHTS_NAME):",
           "for name in (talan_checkpoint.CONFIG_NAME, talan_checkpoint.WEIGHTS_NAME):",
           ("tests/test_export.py", "-k", "bad_inputs")),
    Mutant("tokenizer_without_eos_loaded", HOSTS, "    if tokenizer.eos_token_id is None:\n        raise",
           "    if False:\n        raise", ("tests/test_demo_cli.py", "-k", "no_eos")),
    Mutant("export_dtype_ignored", "talan/export.py", "getattr(torch, args.model_dtype)", "torch.float32",
           ("tests/test_export.py", "-k", "dtype")),
    Mutant("tokenizer_ids_of_repeats", DATA, "chars = list(dict.fromkeys(alphabet))", "chars = list(alphabet)",
           DATA_TESTS),
    Mutant("recall_pairs_unchecked", DATA, "    if not 1 <= num_pairs <= 26:\n", "    if False:\n", DATA_TESTS),
    Mutant("recall_value_len_ignored", DATA, "for _ in range(value_len))", "for _ in range(2))", DATA_TESTS),
    Mutant("collate_without_eos", DATA, "    if tokenizer.eos_token_id is None:\n", "    if False:\n", DATA_TESTS),
    Mutant("collate_whole_completion_refused", DATA, "if len(completion) > max_length:",
           "if len(completion) >= max_length:", DATA_TESTS),
    Mutant("collate_no_examples_unchecked", DATA, '    if not examples:\n        raise ValueError("collate needs',
           '    if False:\n        raise ValueError("collate needs', DATA_TESTS),
    Mutant("batches_one_shuffle", DATA, "    while True:\n        rng.shuffle(order)",
           "    rng.shuffle(order)\n    while True:", DATA_TESTS),
    Mutant("jsonl_error_column_from_0", DATA, "at column {err.colno}", "at column {err.pos}", DATA_TESTS),
    Mutant("chat_one_message", TRAIN_CLI, "len(messages) < 2", "len(messages) < 1", TRAIN_DATA_TESTS),
    Mutant("chat_last_not_assistant", TRAIN_CLI, '    if messages[-1]["role"] != "assistant":', "    if False:",
           TRAIN_DATA_TESTS),
    Mutant("chat_empty_reply", TRAIN_CLI, '    if not messages[-1]["content"]:', "    if False:", TRAIN_DATA_TESTS),
    Mutant("chat_message_not_an_object", TRAIN_CLI, "if not isinstance(message, dict) or not",
           "if False and not isinstance(message, dict) or not", TRAIN_DATA_TESTS),
    Mutant("chat_template_empty_reply", TRAIN_CLI, "            if completion:\n", "            if True:\n",
           TRAIN_DATA_TESTS),
    Mutant("chat_first_line_blank", TRAIN_CLI, "            if line.strip():\n", "            if True:\n",
           TRAIN_DATA_TESTS),
    Mutant("train_no_examples", TRAIN_CLI, '    if not examples:\n        raise ValueError(f"{path}: no examples")',
           '    if False:\n        raise ValueError(f"{path}: no examples")', TRAIN_DATA_TESTS),
    Mutant("train_no_rslora", TRAIN_CLI, 'use_rslora=settings.adapter == "rslora"', "use_rslora=False",
           ("tests/test_train.py", "-k", "build_model_makes")),
    Mutant("train_no_excludes", TRAIN_CLI,
           'all_linear_excludes(backbone) if settings.target_modules == "all-linear" else {}', "{}",
           ("tests/test_train.py", "-k", "build_model_makes")),
    Mutant("train_eval_steps_ignored", TRAIN_CLI, "eval_steps=settings.eval_steps or settings.save_steps",
           "eval_steps=settings.save_steps", TRAIN_ARGS_TESTS),
    Mutant("train_warmup_ignored", TRAIN_CLI, "warmup_steps=settings.warmup_steps,", "warmup_steps=0,",
           TRAIN_ARGS_TESTS),
    Mutant("train_scheduler_ignored", TRAIN_CLI, "lr_scheduler_type=settings.lr_scheduler,", "", TRAIN_ARGS_TESTS),
    Mutant("train_grad_norm_ignored", TRAIN_CLI, "max_grad_norm=settings.max_grad_norm,", "", TRAIN_ARGS_TESTS),
    Mutant("train_save_limit_ignored", TRAIN_CLI, "save_total_limit=settings.save_total_limit,", "",
           TRAIN_ARGS_TESTS),
    Mutant("train_grad_accum_ignored", TRAIN_CLI, "gradient_accumulation_steps=settings.grad_accum,", "",
           TRAIN_ARGS_TESTS),
    Mutant("train_epochs_ignored", TRAIN_CLI, "num_train_epochs=settings.num_epochs,", "", TRAIN_ARGS_TESTS),
    Mutant("train_fsdp_config_ignored", TRAIN_CLI, "fsdp_config=settings.fsdp_config if settings.fsdp else None",
           "fsdp_config=None", TRAIN_ARGS_TESTS),
    Mutant("train_checkpointing_deprecated_name", TRAIN_CLI, 'name = "activation_checkpointing" if '
           '"activation_checkpointing" in fields else "gradient_checkpointing"', 'name = "gradient_checkpointing"',
           TRAIN_ARGS_TESTS),
    Mutant("train_checkpointing_reentrant", TRAIN_CLI, '{"use_reentrant": False} if enabled else None', "None",
           TRAIN_ARGS_TESTS),
    Mutant("train_fused_default_on_use_cpu", TRAIN_CLI,
           "on_gpu = torch.cuda.is_available() and not settings.use_cpu", "on_gpu = torch.cuda.is_available()",
           ("tests/test_train.py", "-k", "fused_lora_is_on")),
    Mutant("train_deepspeed_optimizer_always_refused", TRAIN_CLI,
           '"optimizer" in config and settings.talan_lr != settings.learning_rate', '"optimizer" in config',
           ("tests/test_train.py", "-k", "optimizer_section")),
    Mutant("train_init_not_seeded", TRAIN_CLI, "    torch.manual_seed(settings.seed)  # adapter",
           "    pass  # adapter", ("tests/test_train.py", "-k", "seed_whatever")),
    Mutant("train_checkpoints_sorted_as_text", TRAIN_CLI, 'key=lambda p: int(p.name.rsplit("-", 1)[1])',
           "key=lambda p: p.name", ("tests/test_train.py", "-k", "seed_whatever")),
    Mutant("train_groups_current_lr", TRAIN_CLI, 'g.get("initial_lr", g["lr"])', 'g["lr"]',
           ("tests/test_train.py", "-k", "parameter_group")),
    Mutant("layer_one_as_a_tuple", SETTINGS, "return items[0] if len(items) == 1 else tuple(items)",
           "return tuple(items)", SETTINGS_PARSE_TESTS),
    Mutant("layer_error_without_its_text", SETTINGS, 'raise argparse.ArgumentTypeError(f"layer: expected',
           'raise ValueError(f"layer: expected', SETTINGS_PARSE_TESTS),
    Mutant("target_modules_empty", SETTINGS, "    if not names:\n", "    if False:\n", SETTINGS_PARSE_TESTS),
    Mutant("target_modules_all_linear_as_a_name", SETTINGS, 'return names[0] if names == ["all-linear"] else names',
           "return names", SETTINGS_PARSE_TESTS),
    Mutant("target_modules_list_from_file_as_text", SETTINGS,
           "    if isinstance(text, (list, tuple)):\n        return list(text)",
           "    if False:\n        return list(text)", SETTINGS_PARSE_TESTS),
    Mutant("config_file_number_for_a_string", SETTINGS,
           "    elif not isinstance(value, str):\n        value = str(value)\n", "", SETTINGS_PARSE_TESTS),
    Mutant("config_file_yml_refused", SETTINGS, 'elif path.suffix in (".yaml", ".yml"):',
           'elif path.suffix == ".yaml":', SETTINGS_PARSE_TESTS),
    Mutant("config_file_empty_refused", SETTINGS, "    if raw is None:\n        return {}\n", "", SETTINGS_PARSE_TESTS),
    Mutant("gather_keeps_wrapper_names", TRAINER,
           '_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")',
           '_WRAPPER_PARTS = ("_fsdp_wrapped_module.",)', GATHER_TESTS),
    Mutant("gather_takes_the_first_of_several", TRAINER, "            if len(hits) != 1:\n",
           "            if not hits:\n", GATHER_TESTS),
    Mutant("gather_written_by_every_saving_process", TRAINER,
           "if self.args.should_save and self.accelerator.is_main_process:", "if self.args.should_save:",
           GATHER_TESTS),
    Mutant("optimizer_regrouped_when_asked_again", TRAINER,
           "        if self.optimizer is not None:\n            return self.optimizer\n", "",
           ("tests/test_train.py", "-k", "parameter_group")),
    Mutant("demo_one_example", DEMO, "if len(examples) < 2:", "if len(examples) < 1:",
           ("tests/test_demo_cli.py", "-k", "refuses_no_steps")),
    Mutant("demo_zero_steps", DEMO, "    if steps < 1:\n", "    if False:\n",
           ("tests/test_demo_cli.py", "-k", "refuses_no_steps")),
    Mutant("demo_default_steps", "talan/cli.py", "        args.steps = DEFAULT_STEPS", "        args.steps = 1",
           ("tests/test_demo_cli.py", "-k", "passes_its_flags")),
    # patch, unpatch and disabled; the op's input checks and launch helpers
    Mutant("patch_skips_trainable_scope", PATCHING,
           "        block.apply_trainable_scope()\n        layers[i].add_module", "        layers[i].add_module",
           PATCH_TESTS),
    Mutant("disabled_exit_enables", PATCHING, "        state.enabled = previous\n", "        state.enabled = True\n",
           PATCH_TESTS),
    Mutant("unpatch_stays_patched", PATCHING, "    delattr(state.stack, _PATCH_ATTR)\n", "    pass\n", PATCH_TESTS),
    Mutant("short_mask_unchecked", PATCHING, "            if mask.shape[0] != b or mask.shape[1] < t:\n",
           "            if False:\n", PATCH_TESTS),
    Mutant("op_backend_unchecked", OP, "    if backend not in BACKENDS:\n", "    if False:\n", REFERENCE_TESTS),
    Mutant("op_integer_h", OP, "    if h.dim() != 3 or not h.is_floating_point():\n", "    if h.dim() != 3:\n",
           REFERENCE_TESTS),
    Mutant("op_w_in_unchecked", OP, '    if params["w_in"].shape[0] != d:\n', "    if False:\n", REFERENCE_TESTS),
    Mutant("op_mask_shape_unchecked", OP, "        if mask is not None and tuple(mask.shape) != (b, t):\n",
           "        if False:\n", REFERENCE_TESTS),
    Mutant("op_state_n_unchecked", OP, "        if tuple(s.shape) != (b, m) or tuple(n.shape) != (b, m, r):\n",
           "        if tuple(s.shape) != (b, m):\n", REFERENCE_TESTS),
    Mutant("lora_op_0d_x", LORA_OP, "    if x.dim() < 1:\n", "    if False:\n", ("tests/test_lora_reference.py",)),
    Mutant("lora_op_weight_rank", LORA_OP, "    if weight.dim() != 2:\n", "    if False:\n",
           ("tests/test_lora_reference.py",)),
    Mutant("lora_op_rank_zero", LORA_OP, "    if R < 1 or (use_triton and R > MAX_TRITON_RANK):\n",
           "    if use_triton and R > MAX_TRITON_RANK:\n", ("tests/test_lora_reference.py",)),
    Mutant("lora_op_device_unchecked", LORA_OP, "        if t.device != x.device:\n", "        if False:\n",
           ("tests/test_lora_reference.py",)),
    Mutant("checkpoint_folder_unchecked", CHECKPOINT,
           '    if not folder.is_dir():\n        raise FileNotFoundError(f"no TALAN',
           '    if False:\n        raise FileNotFoundError(f"no TALAN', ("tests/test_checkpoint.py", "-k", "missing")),
    Mutant("dot_tile_under_16", "talan_kernels/launching.py", "    return max(16, next_power_of_2(n))\n",
           "    return next_power_of_2(n)\n", ("tests/test_launching.py",)),
    # talan train's settings: defaults, config files and the TalanConfig they make
    Mutant("talan_lr_fixed_default", SETTINGS, 'settings["talan_lr"] = settings["learning_rate"]',
           'settings["talan_lr"] = 1e-3', SETTINGS_TESTS),
    Mutant("model_in_file_embedded", SETTINGS,
           'embedded = (getattr(args, "model", None) or from_file.get("model")) is None',
           'embedded = getattr(args, "model", None) is None', SETTINGS_TESTS),
    Mutant("config_file_not_a_mapping", SETTINGS, "    if not isinstance(raw, dict):\n", "    if False:\n",
           SETTINGS_TESTS),
    Mutant("config_file_json_error", SETTINGS, "        except json.JSONDecodeError as err:",
           "        except KeyError as err:", SETTINGS_TESTS),
    Mutant("config_file_list_for_scalar", SETTINGS,
           "if isinstance(value, (dict, list)) or isinstance(value, bool) and action.type is not None:",
           "if isinstance(value, dict):", SETTINGS_TESTS),
    Mutant("train_site_dropped", SETTINGS, "layer=settings.layer, site=settings.site,", "layer=settings.layer,",
           SETTINGS_TESTS),
    Mutant("train_grad_scale_dropped", SETTINGS, "grad_scale=settings.grad_scale,", "", SETTINGS_TESTS),
    # transformers' packed-sequence rule for position ids
    Mutant("packing_split_despite_a_mask", PATCHING,
           "if mask is None and cache is None and position_ids is not None and t > 1:",
           "if cache is None and position_ids is not None and t > 1:",
           ("tests/test_patch_model.py", "-k", "split_the_memory")),
    Mutant("packing_split_despite_a_cache", PATCHING,
           "if mask is None and cache is None and position_ids is not None and t > 1:",
           "if mask is None and position_ids is not None and t > 1:",
           ("tests/test_patch_model.py", "-k", "split_the_memory")),
    Mutant("packing_split_on_restarts_only", PATCHING, "starts[:, 1:] = (pos[:, 1:] - pos[:, :-1]) != 1",
           "starts[:, 1:] = (pos[:, 1:] - pos[:, :-1]) < 0", ("tests/test_patch_model.py", "-k", "split_the_memory")),
    # the decode state that follows the cache
    Mutant("reorder_ignored", STATE, "lambda t, beam_idx: t.index_select(0, beam_idx.to(t.device))",
           "lambda t, beam_idx: t", STATE_TESTS),
    Mutant("repeat_not_interleaved", STATE, "lambda t, repeats: t.repeat_interleave(repeats, dim=0)",
           "lambda t, repeats: t.repeat(repeats, *[1] * (t.dim() - 1))", STATE_TESTS),
    Mutant("select_ignored", STATE, "lambda t, indices: t[indices.to(t.device)]", "lambda t, indices: t[:len(indices)]",
           STATE_TESTS),
    Mutant("crop_to_start_keeps_end_state", STATE, "        if keep == 0:\n            return replay.state",
           "        if keep == 0:\n            return entry.slot_sums, entry.value_sums", STATE_TESTS),
    Mutant("crop_replays_one_more", STATE, "replay.hidden[:, :keep], active", "replay.hidden[:, :keep + 1], active",
           STATE_TESTS),
    Mutant("replay_kept_after_reorder", STATE, "entry.replay = None  # a crop", "pass  # a crop", STATE_TESTS),
    Mutant("replay_any_length", STATE, "if replay is not None and replay.hidden.shape[1] > REPLAY_TOKENS:",
           "if replay is not None and replay.hidden.shape[1] > 100 * REPLAY_TOKENS:", STATE_TESTS),
    Mutant("copied_model_shares_states", STATE, "return DecodeStates()  # a copied model",
           "return self  # a copied model", STATE_TESTS),
    Mutant("batch_change_unchecked", STATE, "if entry.slot_sums.shape[0] != batch:", "if False:", STATE_TESTS),
    Mutant("past_from_mask_off_by_one", PATCHING, "return mask.shape[1] - new\n", "return mask.shape[1] - new + 1\n",
           ("tests/test_hosts.py", "-k", "patches_exactly_and_generates and Mamba-pre")),
    Mutant("counted_tokens_layer0_only", PATCHING, "    if isinstance(counted, int) and counted == 0:\n",
           "    if False:\n", ("tests/test_hosts.py", "-k", "minimax_generates")),
    # the fused-LoRA fall-backs to peft's forward, and the DoRA norm cache
    Mutant("merged_adapter_fused", FUSED_LORA, "or layer.disable_adapters or layer.merged:",
           "or layer.disable_adapters:", FUSED_LORA_TESTS),
    Mutant("disabled_adapter_fused", FUSED_LORA, "or layer.disable_adapters or layer.merged:", "or layer.merged:",
           FUSED_LORA_TESTS),
    Mutant("several_adapters_fused", FUSED_LORA, "    if len(active) != 1:\n        return None",
           "    if len(active) < 1:\n        return None", FUSED_LORA_TESTS),
    Mutant("training_dropout_fused", FUSED_LORA, "(dropout.training and dropout.p > 0)", "False", FUSED_LORA_TESTS),
    Mutant("hooked_base_fused", FUSED_LORA,
           'if base._forward_hooks or base._forward_pre_hooks or "forward" in base.__dict__:', "if False:",
           FUSED_LORA_TESTS),
    Mutant("lora_bias_adapter_fused", FUSED_LORA,
           "    if layer.lora_bias.get(name, False) or layer.r[name] > MAX_TRITON_RANK:\n        return None",
           "    if layer.r[name] > MAX_TRITON_RANK:\n        return None", FUSED_LORA_TESTS),
    Mutant("layer_skipped_for_any_adapter", FUSED_LORA, "if reasons and len(reasons) == len(layer.lora_A):",
           "if reasons:", FUSED_LORA_TESTS),
    Mutant("instance_forward_forgotten", FUSED_LORA, 'had = "forward" in layer.__dict__', "had = False",
           FUSED_LORA_TESTS),
    Mutant("backend_not_switched", FUSED_LORA, "            state.backend = backend\n", "            pass\n",
           FUSED_LORA_TESTS),
    Mutant("adapter_names_call_fused", FUSED_LORA, "    if args or kwargs or not isinstance(x, torch.Tensor)",
           "    if not isinstance(x, torch.Tensor)", FUSED_LORA_TESTS),
    Mutant("other_variant_fused", FUSED_LORA,
           "    if variant is not None and type(variant) is not _peft_classes()[2]:\n        return None",
           "    if False:\n        return None", FUSED_LORA_TESTS),
    Mutant("wide_active_rank_fused", FUSED_LORA,
           "    if layer.lora_bias.get(name, False) or layer.r[name] > MAX_TRITON_RANK:\n        return None",
           "    if layer.lora_bias.get(name, False):\n        return None", FUSED_LORA_TESTS),
    Mutant("custom_dropout_fused", FUSED_LORA, "        if not isinstance(dropout, nn.Dropout) or (dropout.training",
           "        if (dropout.training", FUSED_LORA_TESTS),
    Mutant("mixed_dtype_call_fused", FUSED_LORA, "    if x.dtype != weight.dtype or x.dtype not in _FLOATS:",
           "    if x.dtype not in _FLOATS:", FUSED_LORA_TESTS),
    Mutant("linear_subclass_fused", FUSED_LORA, "    if type(base) is not nn.Linear:\n", "    if False:\n",
           FUSED_LORA_TESTS),
    Mutant("norm_cache_ignores_updates", LORA_OP, "(t.data_ptr(), t._version, tuple(t.shape), t.dtype)",
           "(t.data_ptr(), tuple(t.shape), t.dtype)", FUSED_LORA_TESTS),
    Mutant("norm_cache_ignores_scaling", LORA_OP, "                + (float(scaling),)", "                + ()",
           FUSED_LORA_TESTS),
    # checkpoints and the trainer's param groups
    Mutant("load_ignores_layer_count", CHECKPOINT,
           'if host["hidden_size"] != hidden_size or host["num_layers"] != num_layers:',
           'if host["hidden_size"] != hidden_size:', ("tests/test_checkpoint.py",)),
    Mutant("load_ignores_patched_config", CHECKPOINT,
           "if is_patched(model) and not _same_block(talan_config(model), config):", "if False:",
           ("tests/test_checkpoint.py",)),
    Mutant("load_compares_backends", CHECKPOINT, '        d.pop("backend")\n', "", ("tests/test_checkpoint.py",)),
    Mutant("load_backend_override_ignored", CHECKPOINT,
           '        config = TalanConfig.from_dict({**config.to_dict(), "backend": backend})', "        pass",
           ("tests/test_checkpoint.py",)),
    Mutant("resume_true_ignored", TRAINER, "        if resume_from_checkpoint is True:\n", "        if False:\n",
           TRL_TESTS),
    Mutant("resume_true_without_checkpoint_starts_fresh", TRAINER,
           "            if resume_from_checkpoint is None:\n                raise",
           "            if False:\n                raise", TRL_TESTS),
    Mutant("peft_config_leaves_talan_frozen", TRAINER, "        mark_trainable(self.model)\n", "", TRL_TESTS),
    Mutant("talan_lr_ignored", TRAINER, 'lr = group["lr"] if self.talan_lr is None else self.talan_lr',
           'lr = group["lr"]', ("tests/test_train.py", "-k", "own_learning_rate")),
    Mutant("norm_weights_decayed", TRAINER, 'if not n.endswith(f".{BLOCK_NAME}.norm_weight")]', "]",
           ("tests/test_train.py", "-k", "own_learning_rate")),
    Mutant("talan_never_decayed", TRAINER, '"lr": lr, "name": TALAN_GROUP})',
           '"lr": lr, "name": TALAN_GROUP, "weight_decay": 0.0})', ("tests/test_train.py", "-k", "own_learning_rate")),
    # the hosts: the residual streams TALAN reads and writes, hybrids' layers, gates, prefix caches, refusals
    Mutant("altup_reads_first_stream", HOSTS, "            return t[self.active]\n", "            return t[0]\n",
           ("tests/test_hosts.py", "-k", "Gemma3n")),
    Mutant("altup_writes_first_stream", HOSTS, "torch.cat([t[:self.active], new[None], t[self.active + 1:]])",
           "torch.cat([new[None], t[:self.active], t[self.active + 1:]])", ("tests/test_hosts.py", "-k", "Gemma3n")),
    Mutant("hybrid_self_attn_none_kept", HOSTS, 'getattr(layer, "self_attn", None) is None',
           'not hasattr(layer, "self_attn")', ("tests/test_hosts.py", "-k", "GraniteMoeHybrid and not trains")),
    Mutant("meta_gates_read", HOSTS, "if gate is not None and not gate.is_meta and", "if gate is not None and",
           ("tests/test_vl_hosts.py", "-k", "meta_device")),
    Mutant("cartridge_not_a_prefix", HOSTS, '("PREFIX_TUNING", "CARTRIDGE")', '("PREFIX_TUNING",)', PREFIX_TESTS),
    Mutant("every_virtual_token_a_prefix", HOSTS,
           'if str(getattr(cfg.peft_type, "value", cfg.peft_type)) in _PREFIX_CACHE_PEFT_TYPES', "if True",
           PREFIX_TESTS),
    Mutant("excludes_raise_on_unsupported", HOSTS, "    except TypeError:\n        return {}",
           "    except ValueError:\n        return {}", BAD_INPUT_TESTS),
    Mutant("excludes_named_where_absent", HOSTS,
           "    if pattern is None or not any(re.fullmatch(pattern, name) for name, _ in model.named_modules()):",
           "    if pattern is None:", ("tests/test_hosts.py", "-k", "all_linear_excludes_names")),
    Mutant("refusal_hides_the_wrapper", HOSTS,
           'wrapped = f" wrapping {type(host).__name__}" if host is not model else ""', 'wrapped = ""',
           BAD_INPUT_TESTS),
    Mutant("stack_without_layers_taken", HOSTS, "    if stack is None:\n        raise TypeError",
           "    if False:\n        raise TypeError", BAD_INPUT_TESTS),
    # talan analyze's measurements, against their definitions
    Mutant("analyze_adapter_with_talan", ANALYZE, "d_adapter = (seen_off[i] - seen_base[i])[active]",
           "d_adapter = (seen_on[i] - seen_base[i])[active]", STUDY_TESTS),
    Mutant("analyze_talan_from_base", ANALYZE, "d_talan = (seen_on[i] - seen_off[i])[active]",
           "d_talan = (seen_on[i] - seen_base[i])[active]", STUDY_TESTS),
    Mutant("analyze_residual_without_talan", ANALYZE, 'add(f"site{i}.stream", seen_on[i][active]',
           'add(f"site{i}.stream", seen_off[i][active]', STUDY_TESTS),
    Mutant("analyze_abs_of_mean_cosine", ANALYZE, "float(cos.abs().mean())", "float(cos.mean().abs())", STUDY_TESTS),
    Mutant("analyze_median_as_mean", ANALYZE, "float(ratios.median())", "float(ratios.mean())", STUDY_TESTS),
    Mutant("analyze_counts_padding", ANALYZE, "tokens += int(active.sum())", "tokens += active.numel()", STUDY_TESTS),
    Mutant("analyze_layer_adapter_with_talan", ANALYZE, 'add(f"layer{k}.adapter", (off - base)',
           'add(f"layer{k}.adapter", (on - base)', STUDY_TESTS),
    Mutant("analyze_layer_norm_with_talan", ANALYZE, 'add(f"layer{k}.stream", off[active]',
           'add(f"layer{k}.stream", on[active]', STUDY_TESTS),
    Mutant("analyze_ratio_inverted", ANALYZE, 'mean[f"site{i}.adapter"] / talan_norm if',
           'talan_norm / mean[f"site{i}.adapter"] if', STUDY_TESTS),
    Mutant("analyze_amplification_of_the_stream", ANALYZE, '"amplification": diff / site_talan',
           '"amplification": diff / mean[f"layer{k}.stream"]', STUDY_TESTS),
    Mutant("analyze_first_examples", ANALYZE, "return examples[::step][:args.num_prompts]",
           "return examples[:args.num_prompts]", STUDY_TESTS),
    Mutant("analyze_layer_inputs", ANALYZE, '**{("output", k): (decoder[k], "output")',
           '**{("output", k): (decoder[k], "input")', STUDY_TESTS),
    Mutant("analyze_cosine_with_the_stream", ANALYZE, "cosine_similarity(d_adapter[ok], d_talan[ok]",
           "cosine_similarity(d_adapter[ok], seen_on[i][active][ok]", STUDY_TESTS),
    Mutant("analyze_skipped_layer_unread", ANALYZE, 'captured.get(("output", k), rows[-1])', 'captured["output", k]',
           ("tests/test_vl_hosts.py", "-k", "text_only_mllama")),
    Mutant("analyze_skipped_block_measured", ANALYZE, "        if skipped:\n", "        if False:\n",
           ("tests/test_vl_hosts.py", "-k", "text_only_mllama")),
    Mutant("analyze_final_norm_skipped", ANALYZE, '"final": (stack, "output")', '"final": (decoder[-1], "output")',
           STUDY_TESTS),
    # talan study's settings, models, backbone cache and summary
    Mutant("study_difference_reversed", STUDY_REPORT, "acc(with_talan[s], c) - acc(plain[s], c)",
           "acc(plain[s], c) - acc(with_talan[s], c)", STUDY_TESTS),
    Mutant("study_rounding_tie_a_loss", STUDY_REPORT, "sum(d < -_TIE for d in diffs)", "sum(d < 0 for d in diffs)",
           STUDY_TESTS),
    Mutant("study_skills_not_against_backbone", STUDY_REPORT,
           '_avg(per_variant[v]["skill_accuracy"].values()) - base_skill',
           '_avg(per_variant[v]["skill_accuracy"].values())', STUDY_TESTS),
    Mutant("study_gain_not_in_points", STUDY_REPORT, '{k: 100 * paired[k]["mean"]["mean"]',
           '{k: paired[k]["mean"]["mean"]', STUDY_TESTS),
    Mutant("study_mean_column_first_task", STUDY_REPORT, '_avg(run["accuracy"].values()) if column == "mean"',
           'run["accuracy"][tasks[0]] if column == "mean"', STUDY_TESTS),
    Mutant("study_pairs_by_order", STUDY_REPORT,
           'with_talan = {r["seed"]: r for r in runs if r["adapter"] == kind and r["talan"]}',
           'with_talan = dict(enumerate(r for r in runs if r["adapter"] == kind and r["talan"]))', STUDY_TESTS),
    Mutant("study_loss_of_first_seed", STUDY_REPORT, '_avg(r["final_train_loss"] for r in chosen)',
           'chosen[0]["final_train_loss"]', STUDY_TESTS),
    Mutant("study_table_half_width_as_sd", STUDY_REPORT, "{_pct(row['accuracy'][c]['sd'])}",
           "{_pct(row['accuracy'][c]['ci_high'] - row['accuracy'][c]['mean'])}", STUDY_TESTS),
    Mutant("study_table_interval_to_mean", STUDY_REPORT, "{_signed(row[c]['ci_high'])}]", "{_signed(row[c]['mean'])}]",
           STUDY_TESTS),
    Mutant("study_one_seed_interval", STUDY_REPORT, "    if n == 1:\n", "    if False:\n", STUDY_TESTS),
    Mutant("study_talan_lr_flag_ignored", STUDY, '"lr", "talan_lr", "lora_rank", "pretrain_steps"):',
           '"lr", "lora_rank", "pretrain_steps"):', STUDY_TESTS),
    Mutant("study_infinite_lr", STUDY, "if not settings[key] > 0 or not math.isfinite(settings[key]):",
           "if not settings[key] > 0:", STUDY_TESTS),
    Mutant("study_adapter_twice", STUDY, "adapters=list(dict.fromkeys(args.adapters))", "adapters=list(args.adapters)",
           STUDY_TESTS),
    Mutant("study_site_flag_ignored", STUDY, "talan=TalanConfig(layer=args.layer, site=args.site,",
           "talan=TalanConfig(layer=args.layer,", STUDY_TESTS),
    Mutant("study_warmup_from_zero", STUDY, "min(1.0, (step + 1) / warmup)", "min(1.0, step / warmup)", STUDY_TESTS),
    Mutant("study_stale_backbone_reused", STUDY, '        if meta.get("settings") == wanted:\n', "        if True:\n",
           STUDY_TESTS),
    Mutant("study_dora_as_lora", STUDY, 'use_dora=kind == "dora"', "use_dora=False", STUDY_TESTS),
    Mutant("study_checksum_with_talan", STUDY, '        if "lora_" in name:\n', "        if True:\n", STUDY_TESTS),
    # talan study's synthetic tasks: each answer against an independent solver, and the forms they promise
    Mutant("tasks_trace_not_mod_10", TASKS, '"*": values[x] * values[y]}[op] % 10',
           '"*": values[x] * values[y]}[op]', TASKS_TESTS),
    Mutant("tasks_closers_outermost_first", TASKS, '"".join(_PAIRS[c] for c in reversed(stack))',
           '"".join(_PAIRS[c] for c in stack)', TASKS_TESTS),
    Mutant("tasks_add_without_carry", TASKS,
           "        if any(int(x) + int(y) >= 10 for x, y in zip(str(a), str(b))):", "        if True:", TASKS_TESTS),
    Mutant("tasks_add_not_padded", TASKS, '"completion": _rev_digits(a + b, width + 1)}',
           '"completion": _rev_digits(a + b, width)}', TASKS_TESTS),
    Mutant("tasks_reverse_copies", TASKS, '"completion": text[::-1]}', '"completion": text}', TASKS_TESTS),
    Mutant("tasks_add2_narrow", TASKS, '"completion": _rev_digits(a + b, 3)}', '"completion": _rev_digits(a + b, 2)}',
           TASKS_TESTS),
    Mutant("tasks_digits_padded_after_reversing", TASKS, "return str(value).zfill(width)[::-1]",
           "return str(value)[::-1].zfill(width)", TASKS_TESTS),
    Mutant("tasks_trace_one_operation", TASKS, "def _trace(rng: random.Random, ops=(2, 3))",
           "def _trace(rng: random.Random, ops=(1, 3))", TASKS_TESTS),
    Mutant("tasks_add_leading_zero", TASKS, "a, b = rng.randint(10 ** (width - 1), 10**width - 1), "
           "rng.randint(10 ** (width - 1), 10**width - 1)", "a, b = rng.randint(1, 10**width - 1), "
           "rng.randint(1, 10**width - 1)", TASKS_TESTS),
    Mutant("tasks_trace_without_minus", TASKS, 'op = rng.choice("+-*")', 'op = rng.choice("+*")', TASKS_TESTS),
    Mutant("tasks_unknown_unchecked", TASKS, "    if task not in makers:\n", "    if False:\n", TASKS_TESTS),
    Mutant("tasks_too_few_unchecked", TASKS, "    if len(out) < n:\n", "    if False:\n", TASKS_TESTS),
    # talan report's rank, the parameter budget's refusals and units, and the command's one-line ImportError
    Mutant("report_lora_rank_ignored", "talan/cli.py",
           "budget_table(config, lora_rank=args.lora_rank, presets=presets)", "budget_table(config, presets=presets)",
           ("tests/test_demo_cli.py", "-k", "report")),
    Mutant("cli_import_error_traceback", "talan/cli.py",
           "except (FileNotFoundError, FileExistsError, ImportError, ValueError)",
           "except (FileNotFoundError, FileExistsError, ValueError)",
           ("tests/test_qlora.py", "-k", "without_bitsandbytes")),
    Mutant("non_negative_int_takes_minus_one", "talan/cli_types.py", "    if value < 0:\n", "    if value < -1:\n",
           ("tests/test_cli_types.py",)),
    Mutant("non_negative_float_takes_inf", "talan/cli_types.py", ' or value == float("inf"):', ":",
           ("tests/test_cli_types.py",)),
    Mutant("non_negative_float_takes_nan", "talan/cli_types.py", "    if not value >= 0.0", "    if value < 0.0",
           ("tests/test_cli_types.py",)),
    Mutant("cli_number_error_unnamed", "talan/cli_types.py",
           'raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None', "raise",
           ("tests/test_cli_types.py",)),
    Mutant("budget_table_trainable_digits", "talan/report.py", "| {row['trainable_percent']:.3f} |",
           "| {row['trainable_percent']:.4f} |", ("tests/test_report.py", "-k", "format")),
    Mutant("budget_table_first_layer_only", "talan/report.py",
           "layers = config.layer if isinstance(config.layer, tuple) else (config.layer,)", "layers = (config.layer,)",
           ("tests/test_report.py", "-k", "format")),
    Mutant("report_share_of_no_backbone", "talan/report.py", 'if b else "n/a"', 'if b else "0"',
           ("tests/test_report.py", "-k", "format")),
    Mutant("local_checkpoint_in_its_saved_dtype", HOSTS, "dtype=dtype or torch.float32,", "dtype=dtype,",
           ("tests/test_demo_cli.py", "-k", "bf16")),
    Mutant("decode_programs_over_64", DECODE, "    if not (isinstance(programs, int) and 1 <= programs <= 64):",
           "    if not (isinstance(programs, int) and 1 <= programs):",
           ("tests/test_side_path_compile.py", "-k", "decode_variants")),
    # the results file a GPU run writes (benchmarks/collect.py): what it reads, its table, which measurement a row shows
    Mutant("junit_errors_unnamed", COLLECT,
           'if case.find("failure") is not None or case.find("error") is not None:',
           'if case.find("failure") is not None:', RESULTS_TESTS),
    Mutant("junit_bare_suite_uncounted", COLLECT, '[root] if root.tag == "testsuite" else root.findall("testsuite")',
           'root.findall("testsuite")', RESULTS_TESTS),
    Mutant("junit_killed_shard_raises", COLLECT, "        except ET.ParseError as exc:  # a shard killed mid-write\n"
           '            failed.append(f"{path.name}: unreadable ({exc})")\n            continue\n',
           "        except KeyError:\n            pass\n", RESULTS_TESTS),
    Mutant("junit_one_path_as_characters", COLLECT, "[paths] if isinstance(paths, str) else paths or []",
           "paths or []", RESULTS_TESTS),
    Mutant("bench_killed_file_raises", COLLECT, "        except (ValueError, KeyError) as exc:  # a run killed",
           "        except KeyError as exc:  # a run killed", RESULTS_TESTS),
    Mutant("bench_median_in_seconds", COLLECT, '"median_ms": b["stats"]["median"] * 1e3',
           '"median_ms": b["stats"]["median"]', RESULTS_TESTS),
    Mutant("results_cell_keeps_its_pipe", COLLECT, "note.replace('|', '/').splitlines()[0]", "note.splitlines()[0]",
           RESULTS_TESTS),
    Mutant("results_cell_keeps_every_line", COLLECT, "note.replace('|', '/').splitlines()[0]",
           "note.replace('|', '/')", RESULTS_TESTS),
    Mutant("results_failed_tests_unlisted", COLLECT,
           '        lines += [f"- failed: `{name}`" for name in t.get("failed", [])]\n', "", RESULTS_TESTS),
    Mutant("results_target_missing", COLLECT, "target = f\"≤ {r['target']:.3g}\" if r.get(\"target\") else \"\"",
           'target = ""', RESULTS_TESTS),
    Mutant("results_ceilings_missing", COLLECT, '    if report.get("ceilings"):\n', "    if False:\n", RESULTS_TESTS),
    Mutant("steps_status_cut_at_a_tab", COLLECT, 'dict(line.split("\\t", 1) for line',
           'dict(line.split("\\t")[:2] for line', RESULTS_TESTS),
    Mutant("results_name_with_cpu_detail", COLLECT,
           'name = env["device"].split(" (")[0] if env["device"].startswith("cpu") else env["device"]',
           'name = env["device"]', RESULTS_TESTS),
    Mutant("train_row_base_over_peft", COLLECT, "ratio=round(statistics.median(peft_over_base), 4)",
           "ratio=round(statistics.median(base_over_peft), 4)", RESULTS_TESTS),
    Mutant("kernel_row_best_token_count", COLLECT, 'worst = max(res_list, key=lambda r: r["ratio"])',
           'worst = min(res_list, key=lambda r: r["ratio"])', RESULTS_TESTS),
    Mutant("model_row_best_batch", COLLECT, 'b, worst = max(good.items(), key=lambda kv: kv[1]["ratio"])',
           'b, worst = min(good.items(), key=lambda kv: kv[1]["ratio"])', RESULTS_TESTS),
    Mutant("model_row_despite_a_failed_batch", COLLECT, "        if len(good) < len(per_batch):\n",
           "        if False:\n", RESULTS_TESTS),
    # the benchmarks' correctness gates, which a GPU run must pass before it times anything
    Mutant("gate_pair_disabled_unchecked", BENCH_MODELS, "    if not torch.equal(off, ref):\n", "    if False:\n",
           GATE_TESTS),
    Mutant("gate_pair_change_unchecked", BENCH_MODELS, "    if change == 0.0:\n", "    if False:\n", GATE_TESTS),
    Mutant("gate_decode_disabled_unchecked", BENCH_MODELS, "    if not torch.equal(off, want):\n", "    if False:\n",
           GATE_TESTS),
    Mutant("gate_train_gradients_unchecked", BENCH_MODELS,
           '    check_close(grads["fused"][1], grads["peft"][1], "fused LoRA gradients vs peft", tol)', "    pass",
           GATE_TESTS),
    Mutant("gate_train_with_talan_on", BENCH_MODELS,
           'with talan.disabled(model) if name == "fused" else contextlib.nullcontext():',
           "with contextlib.nullcontext():", GATE_TESTS),
    Mutant("gate_block_against_itself", BENCH_MODELS, "        ref, _ = side_path_ref(h, block.params())",
           "        ref, _ = block(h)", GATE_TESTS),
    Mutant("gate_tolerance_ignored", "benchmarks/common.py", "    if not err <= tol:\n", "    if not err <= 1.0:\n",
           GATE_TESTS),
    Mutant("gate_shape_unchecked", "benchmarks/common.py", "    if tuple(out.shape) != tuple(ref.shape):\n",
           "    if False:\n", GATE_TESTS),
    Mutant("gate_finite_unchecked", "benchmarks/common.py", "    if not torch.isfinite(out).all():\n",
           "    if False:\n", GATE_TESTS),
    Mutant("benchmark_gates_left_shut", BENCH_MODELS, "            block.gate.fill_(value)", "            pass",
           GATE_TESTS),
    Mutant("gate_lora_gradients_unchecked", BENCH_CASES,
           '        for name, g, r in zip(("dx", "dA", "dB"), got, want):', "        for name, g, r in []:",
           GATE_TESTS),
    Mutant("gate_lora_gradients_against_themselves", BENCH_CASES,
           "want = torch.autograd.grad(ref_out(), inputs[:1] if provider",
           "want = torch.autograd.grad(forward(), inputs[:1] if provider", GATE_TESTS),
    Mutant("gate_lora_output_against_itself", BENCH_CASES,
           'forward, ref_out = (lambda: lora_linear(x, w, a, b, s, backend="triton")), ref',
           'forward = ref_out = (lambda: lora_linear(x, w, a, b, s, backend="triton"))', GATE_TESTS),
    Mutant("gate_side_path_state_unchecked", BENCH_CASES, "            if st is not None:\n", "            if False:\n",
           GATE_TESTS),
    Mutant("gate_side_path_gradients_unchecked", BENCH_CASES,
           "            if train:\n                got = torch.autograd.grad(out, inputs, dy, allow_unused=True)",
           "            if False:\n                got = torch.autograd.grad(out, inputs, dy, allow_unused=True)",
           GATE_TESTS),
    Mutant("gate_side_path_without_dh", BENCH_CASES, '    inputs = [h] + ([] if provider == "copy" else trainable)',
           '    inputs = [] + ([] if provider == "copy" else trainable)', GATE_TESTS),
    Mutant("report_preset_unchecked", "talan/report.py", "    if name not in MODEL_PRESETS:\n", "    if False:\n",
           ("tests/test_report.py",)),
    Mutant("report_unit_from_above", "talan/report.py", "        if n >= scale:", "        if n > scale:",
           ("tests/test_report.py",)),
]
GLUE = [mutant._replace(interpreter=False) for mutant in GLUE]
MUTANTS += GLUE


def mutated_source(root: Path, mutant: Mutant) -> str:
    """The mutant's file with its one change; a ValueError where ``old`` is not in the file exactly once."""
    source = (root / mutant.path).read_text(encoding="utf-8")
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"mutant {mutant.name}: its text is in {mutant.path} {found} times, not once")
    return source.replace(mutant.old, mutant.new)


def _copy_checkout(to: Path) -> None:
    for name in ("talan", "talan_kernels", "benchmarks", "tests", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, to / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            shutil.copy(src, to / name)


def run(mutants: list[Mutant]) -> list[str]:
    """Runs each mutant's tests on a mutated copy of the checkout (stopping at the first failure); returns the
    names of the mutants that every test passed."""
    survivors = []
    with tempfile.TemporaryDirectory(prefix="talan-mutants-") as tmp:
        copy = Path(tmp)
        _copy_checkout(copy)
        for mutant in mutants:
            # the copy first; then what the caller put on PYTHONPATH (make mutants: TRL, for the trainer's tests)
            path = os.pathsep.join(filter(None, (str(copy), os.environ.get("PYTHONPATH"))))
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": path}
            if mutant.interpreter:
                env["TRITON_INTERPRET"] = "1"
            original = (copy / mutant.path).read_text(encoding="utf-8")
            (copy / mutant.path).write_text(mutated_source(copy, mutant), encoding="utf-8")
            start = time.time()
            result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                     *mutant.tests], cwd=copy, env=env, capture_output=True, text=True)
            (copy / mutant.path).write_text(original, encoding="utf-8")
            failed = next((line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
            if result.returncode == 0:
                survivors.append(mutant.name)
            verdict = "killed" if result.returncode else "SURVIVED"
            print(f"{mutant.name}: {verdict} in {time.time() - start:.0f} s {failed}", flush=True)
    return survivors


def main(names: list[str]) -> int:
    unknown = set(names) - {m.name for m in MUTANTS}
    if unknown:
        print(f"unknown mutants: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    survivors = run([m for m in MUTANTS if not names or m.name in names])
    if survivors:
        print(f"{len(survivors)} mutant(s) passed every test: {', '.join(survivors)}")
        return 1
    print("every mutant was killed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
