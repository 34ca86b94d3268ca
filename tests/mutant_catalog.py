"""The mutants that tests/mutants.py runs (its docstring says what they are and what is left out): the `Mutant`
type, the files and tests they name, the kernel path's mutants (run under the interpreter) and the core glue's; the
tools' (talan train, study, analyze, report, the demo, benchmarks/) are in mutant_catalog_tools.py."""

from __future__ import annotations

from typing import NamedTuple

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
LORA_OPS = "talan_kernels/lora/ops.py"
OPCHECK_TESTS = "tests/test_lora_ops_opcheck.py"
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


KERNEL = [
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
    Mutant("lora_op_frozen_a_trains_no_b", LORA_OP, "need_ab = grad and (lora_A.requires_grad or lora_B.requires_grad)",
           "need_ab = grad and lora_A.requires_grad", ("tests/test_lora_kernels_interp.py", "-k", "frozen_down")),
    Mutant("lora_kernel_empty_dg_in_dy_dtype", LORA_OP, "dy.new_empty(0, dtype=torch.float32)  # dg: fp32",
           "dy.new_empty(0)  # dg: fp32", (OPCHECK_TESTS,)),
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
    Mutant("block_ignores_its_backend", BLOCK, "backend=c.backend)", 'backend="auto")',
           ("tests/test_side_path_kernels_interp.py", "-k", "trains_the_same")),
    Mutant("triton_no_graph_when_only_the_parameters_need_one", TRITON_PATH,
           "(h.requires_grad or any(x.requires_grad for x in params.values()))", "h.requires_grad",
           ("tests/test_side_path_kernels_interp.py", "-k", "needs_no_gradient")),
    Mutant("decode_step_of_two_tokens", DECODE, '    if t != 1:\n        raise ValueError(f"side_path_decode',
           '    if False:\n        raise ValueError(f"side_path_decode', CAP_TESTS),
]


# the glue (CPU tests, run without the interpreter): the masks, config, reference, block, patching, decode state,
# fused LoRA, checkpoints and trainer, and hosts
CORE_GLUE = [
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
    Mutant("config_takes_negative_zero_add_scale", "talan/config.py", '("zero_add_scale", 0.0, False)',
           '("zero_add_scale", -1.0, False)', ("tests/test_config.py",)),
    Mutant("config_takes_a_bool_for_a_number", "talan/config.py",
           "            if isinstance(value, bool) or not isinstance(value, numbers.Real) or",
           "            if not isinstance(value, numbers.Real) or", ("tests/test_config.py",)),
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
    # patch, unpatch and disabled; the op's input checks and launch helpers
    Mutant("patch_skips_trainable_scope", PATCHING,
           "        block.apply_trainable_scope()\n        layers[i].add_module", "        layers[i].add_module",
           PATCH_TESTS),
    Mutant("disabled_exit_enables", PATCHING, "        state.enabled = previous\n", "        state.enabled = True\n",
           PATCH_TESTS),
    Mutant("unpatch_stays_patched", PATCHING, "    delattr(state.stack, _PATCH_ATTR)\n", "    pass\n", PATCH_TESTS),
    Mutant("post_hook_after_the_recorders", PATCHING, "register_forward_hook(hook, with_kwargs=True, prepend=True)",
           "register_forward_hook(hook, with_kwargs=True)",
           ("tests/test_patch_model.py", "-k", "output_hidden_states")),
    Mutant("block_made_on_the_default_device", PATCHING,
           "TalanBlock(hidden_size, config, device=_layer_device(layers[i]))", "TalanBlock(hidden_size, config)",
           ("tests/test_patch_model.py", "-k", "layers_device")),
    Mutant("pre_site_keyword_hidden_states_kept", PATCHING,
           '        return args, {**kwargs, "hidden_states": new_hidden}', "        return None",
           ("tests/test_patch_model.py", "-k", "by_keyword")),
    Mutant("short_mask_unchecked", PATCHING, "            if mask.shape[0] != b or mask.shape[1] < t:\n",
           "            if False:\n", PATCH_TESTS),
    Mutant("op_backend_unchecked", OP, "    if backend not in BACKENDS:\n", "    if False:\n", REFERENCE_TESTS),
    Mutant("op_integer_h", OP, "    if h.dim() != 3 or not h.is_floating_point():\n", "    if h.dim() != 3:\n",
           REFERENCE_TESTS),
    Mutant("op_autocast_left_on", OP, "and torch.is_autocast_enabled(h.device.type):", "and False:",
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
    # the fused LoRA ops' fake implementations (what torch.compile traces with) against the real ones
    Mutant("lora_fake_s_always_fp32", LORA_OPS, "else (0,), dtype=torch.promote_types(x.dtype, torch.float32))",
           "else (0,), dtype=torch.float32)", (OPCHECK_TESTS,)),
    Mutant("lora_fake_dg_always_fp32", LORA_OPS, "(0,), dtype=torch.promote_types(dy.dtype, torch.float32))",
           "(0,), dtype=torch.float32)", (OPCHECK_TESTS,)),
    Mutant("lora_ref_empty_dg_in_dy_dtype", "talan_kernels/lora/reference.py",
           "if need_dscale else dy.new_empty(0, dtype=cd)", "if need_dscale else dy.new_empty(0)", (OPCHECK_TESTS,)),
    Mutant("checkpoint_folder_unchecked", CHECKPOINT,
           '    if not folder.is_dir():\n        raise FileNotFoundError(f"no TALAN',
           '    if False:\n        raise FileNotFoundError(f"no TALAN', ("tests/test_checkpoint.py", "-k", "missing")),
    Mutant("dot_tile_under_16", "talan_kernels/launching.py", "    return max(16, next_power_of_2(n))\n",
           "    return next_power_of_2(n)\n", ("tests/test_launching.py",)),
    # transformers' packed-sequence rule for position ids
    Mutant("packing_split_despite_a_mask", PATCHING,
           "if mask is None and cache is None and position_ids is not None and t > 1:",
           "if cache is None and position_ids is not None and t > 1:",
           ("tests/test_patch_model.py", "-k", "split_the_memory")),
    Mutant("packing_split_despite_a_cache", PATCHING,
           "if mask is None and cache is None and position_ids is not None and t > 1:",
           "if mask is None and position_ids is not None and t > 1:",
           ("tests/test_patch_model.py", "-k", "split_the_memory")),
    Mutant("mrope_time_row_read_as_text_positions", PATCHING,
           "position_ids[0] if position_ids.shape[0] == 4 else None", "position_ids[0]",
           ("tests/test_vl_hosts.py", "-k", "without_an_attention_mask")),
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
    Mutant("counted_tokens_layer0_only", PATCHING, "    if int(counted) == 0:\n",
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
]
