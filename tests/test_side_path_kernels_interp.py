"""Triton side-path kernels vs the PyTorch reference under ``TRITON_INTERPRET=1`` (fp32, tiny shapes).

Run in their own process: ``TRITON_INTERPRET=1 pytest -m interpreter``. On CPU the launchers fill
every kernel output with NaN first (``triton_path.new_output``), and ``assert_rel_rms`` rejects
non-finite values, so an element a kernel forgets to write fails these tests.
"""

import os

import pytest
import torch
from conftest import record_calls, tiny_qwen3

from talan_kernels.side_path import side_path, side_path_ref
from talan_kernels.testing import assert_rel_rms, rel_rms
from talan_kernels.testing import random_side_path_inputs as make_inputs
from talan_kernels.testing import random_side_path_params as make_params

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
needs_interpreter = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 set before triton is imported")
TOL = 1e-5
# zero_add's fixed scale, not its default 1 (and ignored by the other writebacks): a kernel that drops it fails
ZERO_ADD_SCALE = 0.5


# (mixer, writeback, B, T, D, M, R, pad, resets, with_state, chunk): T not a multiple of the chunk,
# T < chunk, T = 1 (with grad: the chunk path), T a multiple; M above the 16-slot block of the
# state kernels; R padded to the tile (8 -> 16, 24 -> 32); a reset at a chunk's first token.
CASES = [
    ("attn", "tanh_gate", 2, 37, 32, 5, 16, 3, (1, 20), True, 16),
    ("linear", "zero_add", 2, 10, 24, 16, 8, 4, (), True, 16),
    ("mlp", "token_gate", 3, 33, 32, 3, 24, 7, (0, 16, 17), False, 16),
    ("glu", "norm_cap", 2, 1, 16, 4, 16, 0, (), True, 16),
    ("attn", "norm_cap", 1, 40, 16, 17, 16, 0, (16, 39), True, 32),
]


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1]}-T{c[3]}" for c in CASES])
def test_kernels_match_reference_outputs_state_and_every_gradient(case):
    from talan_kernels.side_path.triton_path import side_path_triton

    mixer, writeback, b, t, d, m, r, pad, reset_at, with_state, chunk = case
    params = {k: v.requires_grad_() for k, v in make_params(d, r, m, mixer, writeback).items()}
    h, active, resets, state = make_inputs(b, t, d, m, r, pad, reset_at)
    h.requires_grad_()
    state = state if with_state else None
    kw = dict(mixer=mixer, writeback=writeback, grad_scale=0.7, zero_add_scale=ZERO_ADD_SCALE)
    out, (s, n) = side_path_triton(h, params, active, resets, state, chunk_size=chunk, **kw)
    ref, (s_ref, n_ref) = side_path_ref(h, params, active, resets, state, **kw)
    assert_rel_rms(out, ref, TOL, "h'")
    assert_rel_rms(out - h, ref - h, TOL, "perturbation")
    assert_rel_rms(s, s_ref, TOL, "S")
    assert_rel_rms(n, n_ref, TOL, "N")
    assert not s.requires_grad and not n.requires_grad
    _check_every_gradient(out, ref, h, params)



def _check_every_gradient(out, ref, h, params):
    """The gradients of ``h`` (where it needs one) and of every parameter against the reference's."""
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    inputs = ({"h": h} if h.requires_grad else {}) | params
    grads = torch.autograd.grad((out * weight).sum(), list(inputs.values()))
    grads_ref = torch.autograd.grad((ref * weight).sum(), list(inputs.values()))
    for name, got, want in zip(inputs, grads, grads_ref):
        assert want.abs().sum() > 0, f"d{name} is zero in the reference: the case would not test it"
        assert_rel_rms(got, want, TOL, f"d{name}")


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("t", [1, 19])
def test_an_input_that_needs_no_gradient_still_trains_the_blocks_parameters(t):
    """TALAN at the first layer's input under a frozen embedding: ``h`` needs no gradient but the block's parameters
    do, so the training path must run, not the inference prefill or the decode kernel (which build no graph)."""
    from talan_kernels.side_path.triton_path import side_path_triton

    params = {k: v.requires_grad_() for k, v in make_params(32, 16, 4, "attn", "tanh_gate").items()}
    # with a carried state: one token alone makes every slot's memory its own value, which no key then weighs
    h, active, _, state = make_inputs(2, t, 32, 4, 16, 0 if t == 1 else 3, ())
    out, _ = side_path_triton(h, params, active, state=state)
    ref, _ = side_path_ref(h, params, active, state=state)
    assert_rel_rms(out, ref, TOL, "h'")
    _check_every_gradient(out, ref, h, params)


@pytest.mark.interpreter
@needs_interpreter
def test_scalar_gate_and_partly_capped_norm_cap_gradients():
    """The two writeback regimes the cases above leave out: one tanh gate for all channels, and norm_cap
    with a ratio that caps about half of the tokens (the uncapped ones pass u through unchanged)."""
    from talan_kernels.side_path.triton_path import side_path_triton

    h, active, _, _ = make_inputs(2, 21, 32, 4, 16, 5, ())
    h.requires_grad_()
    params = {k: v.requires_grad_() for k, v in make_params(32, 16, 4, "attn", "tanh_gate", scalar_gate=True).items()}
    out, _ = side_path_triton(h, params, active, grad_scale=0.5)
    ref, _ = side_path_ref(h, params, active, grad_scale=0.5)
    assert_rel_rms(out, ref, TOL, "h' (scalar gate)")
    _check_every_gradient(out, ref, h, params)

    params = {k: v.requires_grad_() for k, v in make_params(32, 16, 4, "glu", "norm_cap").items()}
    with torch.no_grad():  # |u| per token from zero_add (h' - h = u where active), then a ratio between
        u_norm = (side_path_ref(h, params, active, writeback="zero_add")[0] - h).norm(dim=-1)[active]
        ratio = float((u_norm / h.norm(dim=-1)[active]).median())
    kw = dict(mixer="glu", writeback="norm_cap", norm_cap_ratio=ratio)
    out, _ = side_path_triton(h, params, active, **kw)
    ref, _ = side_path_ref(h, params, active, **kw)
    assert_rel_rms(out, ref, TOL, "h' (norm_cap)")
    _check_every_gradient(out, ref, h, params)


@pytest.mark.interpreter
@needs_interpreter
def test_a_score_cap_reaches_every_kernel_path_and_bad_launch_arguments_are_refused():
    """score_cap (SPEC §1's cap on the slot scores) at 2, where it bends most scores, on the training path (with
    gradients), the inference prefill and the decode steps (every other test leaves it at its default 15); a chunk
    size that is not a power of 2 >= 16, and more than one token for the decode step, are refused by name."""
    from talan_kernels.side_path.decode import side_path_decode
    from talan_kernels.side_path.triton_path import side_path_triton

    b, t, d, m, r, prefill = 2, 20, 32, 5, 16, 13
    params = {k: v.requires_grad_() for k, v in make_params(d, r, m, "attn", "tanh_gate", seed=5).items()}
    h, active, resets, _ = make_inputs(b, t, d, m, r, pad=2, reset_at=(9,), seed=6)
    h.requires_grad_()
    ref, (s_ref, n_ref) = side_path_ref(h, params, active, resets, cap=2.0)
    with torch.no_grad():  # the cap matters here: at the default the output is another
        assert rel_rms(side_path_ref(h, params, active, resets)[0] - h, ref - h) > 1e-2
    out, _ = side_path_triton(h, params, active, resets, cap=2.0)
    assert_rel_rms(out, ref, TOL, "h' (training path)")
    _check_every_gradient(out, ref, h, params)
    with torch.no_grad():
        out, state = side_path_triton(h[:, :prefill], params, active[:, :prefill], resets[:, :prefill], cap=2.0)
        outs = [out]
        for i in range(prefill, t):
            step, state = side_path_triton(h[:, i:i + 1], params, active[:, i:i + 1], resets[:, i:i + 1], state,
                                           cap=2.0)
            outs.append(step)
    assert_rel_rms(torch.cat(outs, 1), ref, TOL, "h' (prefill, then decode steps)")
    assert_rel_rms(state[0], s_ref, TOL, "S")
    assert_rel_rms(state[1], n_ref, TOL, "N")
    for chunk_size in (8, 24):  # a power of 2 >= 16
        with pytest.raises(ValueError, match=f"chunk_size must be a power of 2 >= 16; got {chunk_size}"):
            side_path_triton(h, params, active, chunk_size=chunk_size)
    with torch.no_grad(), pytest.raises(ValueError, match="one token per sequence, h \\[B, 1, D\\]; got T=2"):
        side_path_decode(h[:, :2], params)


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("mixer,writeback,scalar_gate,r,m", [
    ("attn", "tanh_gate", False, 16, 5), ("linear", "norm_cap", False, 16, 21), ("mlp", "zero_add", False, 24, 5),
    ("glu", "token_gate", False, 40, 5), ("attn", "tanh_gate", True, 16, 21)])
def test_prefill_then_decode_steps_equal_the_full_sequence(mixer, writeback, scalar_gate, r, m):
    """A prefill on the chunk kernels, then one-token steps on the decode kernel carrying (S, N),
    reproduce the reference over the whole sequence, incl. padding and a reset during decoding.
    r = 24 and 40 run the decode kernel's r x r matvecs in 16-row steps (the last one partial);
    m = 21 runs its loop over 16-slot blocks (the attn softmax online across the blocks)."""
    b, t, d, prefill = 2, 12, 40, 7
    params = make_params(d, r, m, mixer, writeback, seed=3, scalar_gate=scalar_gate)
    h, active, resets, _ = make_inputs(b, t, d, m, r, pad=3, reset_at=(2, 9), seed=4)
    active[0, 8] = False  # an inactive token while decoding
    kw = dict(mixer=mixer, writeback=writeback, zero_add_scale=ZERO_ADD_SCALE)
    with torch.no_grad():
        ref, (s_ref, n_ref) = side_path_ref(h, params, active, resets, **kw)
        out, state = side_path(h[:, :prefill], params, active[:, :prefill], resets[:, :prefill], backend="triton",
                               **kw)
        outs = [out]
        for i in range(prefill, t):
            step, state = side_path(h[:, i:i + 1], params, active[:, i:i + 1], resets[:, i:i + 1], state,
                                    backend="triton", **kw)
            outs.append(step)
    out = torch.cat(outs, 1)
    assert_rel_rms(out, ref, TOL, "h'")
    assert_rel_rms(out - h, ref - h, TOL, "perturbation")
    assert_rel_rms(state[0], s_ref, TOL, "S")
    assert_rel_rms(state[1], n_ref, TOL, "N")



# Inference (no autograd) prefill on the shrink/scan/expand kernels: (mixer, writeback, B, T, D, M, R,
# pad, resets, with_state, h dtype). B*T not a multiple of the 16-token tile; D = 72 spans two
# 64-channel expand programs and three 32-channel tiles (the last one partial), D = 40 two tiles;
# R = 24 pads to 32 and spans two 16-column tiles of the k/v/q projections.
INFER_CASES = [
    ("attn", "tanh_gate", 2, 37, 72, 5, 24, 3, (1, 20), True, torch.float32),
    ("linear", "zero_add", 2, 10, 40, 16, 8, 4, (), True, torch.float32),
    ("mlp", "token_gate", 3, 33, 72, 3, 24, 7, (0, 16, 17), False, torch.float32),
    ("glu", "norm_cap", 2, 19, 40, 4, 16, 5, (), True, torch.float32),
    ("attn", "norm_cap", 1, 40, 72, 17, 16, 0, (16, 39), False, torch.float32),
    ("attn", "tanh_gate", 2, 21, 40, 4, 16, 2, (), False, torch.float16),
]


def _norm_cap_ratio_at_median(h, params, active, resets, state, mixer):
    """A cap ratio that half of the active tokens exceed, so both sides of the max() are tested."""
    delta = side_path_ref(h, params, active, resets, state, mixer=mixer, writeback="zero_add")[0] - h
    ratio = delta.norm(dim=-1) / h.norm(dim=-1)
    return ratio[active].median().item()


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("case", INFER_CASES, ids=[f"{c[0]}-{c[1]}-T{c[3]}-{str(c[-1])[6:]}" for c in INFER_CASES])
def test_inference_prefill_on_fused_kernels_matches_reference(case, monkeypatch):
    """Without autograd, a prefill runs shrink -> slot scan -> expand (no d-wide PyTorch op) and gives
    the reference's h' and final state; NaN-poisoned buffers catch any element left unwritten."""
    from talan_kernels.side_path import triton_path

    mixer, writeback, b, t, d, m, r, pad, reset_at, with_state, dtype = case
    params = make_params(d, r, m, mixer, writeback, seed=7, scalar_gate=dtype == torch.float16)
    h, active, resets, state = make_inputs(b, t, d, m, r, pad, reset_at, seed=8)
    h, state = h.to(dtype), state if with_state else None
    kw = dict(mixer=mixer, writeback=writeback, zero_add_scale=ZERO_ADD_SCALE)
    if writeback == "norm_cap":
        kw["norm_cap_ratio"] = _norm_cap_ratio_at_median(h, params, active, resets, state, mixer)
    calls = record_calls(monkeypatch, triton_path, "side_path_infer")
    with torch.no_grad():
        out, (s, n) = side_path(h, params, active, resets, state, backend="triton", **kw)
    ref, (s_ref, n_ref) = side_path_ref(h, params, active, resets, state, **kw)
    assert len(calls) == 1, "the no-grad prefill must take the fused inference path"
    assert out.dtype == dtype
    tol = TOL if dtype == torch.float32 else 5e-3
    assert_rel_rms(out, ref, tol, "h'")
    assert_rel_rms(out.float() - h.float(), ref.float() - h.float(), tol, "perturbation")
    assert torch.equal(out[~active], h[~active]), "padding must pass through unchanged"
    assert_rel_rms(s, s_ref, TOL, "S")
    assert_rel_rms(n, n_ref, TOL, "N")
    # params that require grad, but no grad mode: still the fused path
    grad_params = {k: v.clone().requires_grad_() for k, v in params.items()}
    with torch.no_grad():
        out2, _ = side_path(h, grad_params, active, resets, state, backend="triton", **kw)
    assert len(calls) == 2 and torch.equal(out2, out)


@pytest.mark.interpreter
@needs_interpreter
def test_shrink_kernel_outputs_match_the_reference_projections():
    """Each output of the shrink kernel on its own: z, k, v, q, the token-gate logit and ||h||."""
    from talan_kernels.side_path.fused import shrink_launch
    from talan_kernels.side_path.reference import rms_norm

    n, d, r, m = 37, 72, 24, 3
    p = make_params(d, r, m, "mlp", "token_gate", seed=9)
    h = torch.randn(n, d, generator=torch.Generator().manual_seed(10)) * 3
    got = shrink_launch(h, p["norm_weight"], p["w_in"], p["w_k"], p["w_v"], p["w_q"], p["gate_weight"],
                        p["gate_bias"], True, True)
    x = rms_norm(h, p["norm_weight"])
    z = x @ p["w_in"]
    want = (z, z @ p["w_k"], z @ p["w_v"], z @ p["w_q"], x @ p["gate_weight"] + p["gate_bias"], h.norm(dim=-1))
    for name, a, b in zip(("z", "k", "v", "q", "logit", "||h||"), got, want):
        assert_rel_rms(a, b, TOL, name)
    z, k, v, q, logit, hnorm = shrink_launch(h, p["norm_weight"], p["w_in"], p["w_k"], p["w_v"], None, None, None,
                                             False, False)
    assert z.shape == q.shape == (n, 0) and logit.shape == hnorm.shape == (0,)
    assert_rel_rms(k, want[1], TOL, "k without the optional outputs")


@pytest.mark.interpreter
@needs_interpreter
def test_every_kernel_buffer_is_written():
    """The launchers' own intermediates (chunk states, partial gradients) are NaN-poisoned too:
    each one must come back finite, or some program skipped part of its tile."""
    from talan_kernels.side_path.triton_path import slot_scan_bwd, slot_scan_fwd

    b, t, r, m = 2, 21, 8, 17
    g = torch.Generator().manual_seed(5)
    k, v, query, dc = (torch.randn(b, t, r, generator=g) for _ in range(4))
    qs = torch.randn(m, r, generator=g)
    active = torch.ones(b, t)
    resets = torch.zeros(b, t, dtype=torch.int8)
    resets[1, 5] = 1
    for attn, mix in ((True, query), (False, torch.randn(m, generator=g))):
        fwd = slot_scan_fwd(k, v, qs, mix, active, resets, None, None, 15.0, attn, 16)
        c, lse, cs, cn = fwd[:4]
        bwd = slot_scan_bwd(k, v, qs, mix, active, resets, cs, cn, c, lse, dc, 15.0, attn, 16)
        for name, x in zip(["c", "lse", "cs", "cn", "S", "N", "dk", "dv", "dq_slots", "dmix"], fwd + bwd):
            assert torch.isfinite(x).all(), f"{name} (attn={attn}) has unwritten elements"



@pytest.mark.interpreter
@needs_interpreter
def test_custom_ops_pass_opcheck():
    """Schemas, fake implementations and dispatch of the torch.library ops are consistent, with the optional
    inputs given and left out (an empty output, such as the linear mixer's log-sum-exp, must match too)."""
    from talan_kernels.side_path.decode import CORE_PARAMS, MIXER_PARAMS, WRITEBACK_PARAMS
    from talan_kernels.side_path.triton_path import slot_scan_fwd

    b, t, d, r, m = 1, 18, 16, 16, 3
    g = torch.Generator().manual_seed(6)
    k, v, query, dc = (torch.randn(b, t, r, generator=g) for _ in range(4))
    qs = torch.randn(m, r, generator=g)
    active = torch.ones(b, t)
    state = (torch.rand(b, m, generator=g), torch.randn(b, m, r, generator=g))
    resets = torch.zeros(b, t, dtype=torch.int8)
    resets[0, 7] = 1
    beta = torch.rand(m, generator=g)  # the linear mixer's slot weights
    for mix, attn, res, s0_n0 in ((query, True, None, state), (beta, False, resets, (None, None))):
        fwd_args = (k, v, qs, mix, active, res, *s0_n0, 15.0, attn, 16)
        torch.library.opcheck(torch.ops.talan.slot_scan_fwd.default, fwd_args)
        c, lse, cs, cn, _, _ = slot_scan_fwd(*fwd_args)
        torch.library.opcheck(torch.ops.talan.slot_scan_bwd.default,
                              (k, v, qs, mix, active, res, cs, cn, c, lse, dc, 15.0, attn, 16))
    p = make_params(d, r, m, "mlp", "token_gate")
    torch.library.opcheck(torch.ops.talan.side_path_decode.default, (
        torch.randn(2, d, generator=g), [p[n] for n in CORE_PARAMS], [p[n] for n in MIXER_PARAMS["mlp"]],
        [p[n] for n in WRITEBACK_PARAMS["token_gate"]], torch.ones(2), torch.tensor([0, 1], dtype=torch.int8),
        torch.rand(2, m, generator=g), torch.randn(2, m, r, generator=g), "mlp", "token_gate", 15.0, 1.0, 0.01))
    hf = torch.randn(5, d, generator=g, dtype=torch.float16)
    torch.library.opcheck(torch.ops.talan.side_path_shrink.default, (
        hf, p["norm_weight"], p["w_in"], p["w_k"], p["w_v"], p["w_q"], p["gate_weight"], p["gate_bias"], True, True))
    torch.library.opcheck(torch.ops.talan.side_path_shrink.default, (
        hf, p["norm_weight"], p["w_in"], p["w_k"], p["w_v"], None, None, None, False, False))
    c = torch.randn(5, r, generator=g)
    for writeback, gate, logit, hnorm in (("norm_cap", None, None, torch.rand(5, generator=g)),
                                          ("token_gate", None, torch.randn(5, generator=g), None),
                                          ("tanh_gate", torch.randn(1, generator=g), None, None)):
        torch.library.opcheck(torch.ops.talan.side_path_expand.default, (
            hf, c, p["w_out"], torch.ones(5), gate, logit, hnorm, writeback, 1.0, 0.01))



@pytest.mark.skipif(INTERP, reason="checks the error raised without the interpreter")
def test_triton_backend_on_cpu_without_interpreter_raises_clearly():
    p = make_params(16, 16, 4, "attn", "tanh_gate")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        side_path(torch.randn(1, 3, 16), p, backend="triton")


def _train_tiny_qwen3(backend, site, mixer, writeback, steps=5):
    """Losses of 5 AdamW steps on a tiny Qwen3 with peft LoRA and TALAN (left-padded batch)."""
    peft = pytest.importorskip("peft")
    import talan

    model = tiny_qwen3(seed=0, train=True, num_hidden_layers=2)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    talan.patch(model, talan.TalanConfig(layer=(0, 1), site=site, num_slots=4, latent_dim=16, mixer=mixer,
                                         writeback=writeback, backend=backend))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 19), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("site,mixer,writeback", [("mid", "attn", "tanh_gate"), ("post", "mlp", "token_gate")])
def test_tiny_qwen3_with_lora_trains_the_same_on_triton_as_on_torch(site, mixer, writeback, monkeypatch):
    from talan_kernels.side_path import triton_path

    calls = record_calls(monkeypatch, triton_path, "side_path_triton")
    torch_losses = _train_tiny_qwen3("torch", site, mixer, writeback)
    assert not calls
    triton_losses = _train_tiny_qwen3("triton", site, mixer, writeback)
    assert len(calls) >= 10, "both blocks must run on the kernels in each of the 5 steps"
    assert len(set(torch_losses)) == len(torch_losses), "the loss must move for the comparison to mean anything"
    for step, (a, b) in enumerate(zip(triton_losses, torch_losses)):
        assert abs(a - b) <= 1e-4, f"step {step}: triton loss {a:.6f} vs torch {b:.6f}"


@pytest.mark.interpreter
@needs_interpreter
def test_generate_on_triton_uses_the_decode_kernel_and_matches_torch(monkeypatch):
    """Cached greedy generation (prefill on the chunk kernels, then the decode kernel per token)
    gives the same scores as the reference backend, for a left-padded batch."""
    import talan
    from talan_kernels.side_path import triton_path

    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    calls = record_calls(monkeypatch, triton_path, "side_path_decode")
    prefills = record_calls(monkeypatch, triton_path, "side_path_infer")
    scores = {}
    for backend in ("torch", "triton"):
        model = tiny_qwen3(seed=0, num_hidden_layers=2)
        talan.patch(model, talan.TalanConfig(layer=(0, 1), num_slots=4, latent_dim=16, backend=backend))
        with torch.no_grad():
            blocks = [m for m in model.modules() if isinstance(m, talan.TalanBlock)]
            assert len(blocks) == 2
            for block in blocks:  # open the gate: at init the block is an exact identity
                block.gate.fill_(0.5)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        scores[backend] = torch.stack(out.scores)
    assert len(calls) == 2 * 3, "3 decode steps through 2 blocks on the decode kernel"
    assert len(prefills) == 2, "the prefill through 2 blocks on the fused inference kernels"
    assert_rel_rms(scores["triton"], scores["torch"], TOL, "generation scores")


@pytest.mark.interpreter
@needs_interpreter
@pytest.mark.parametrize("site,mixer,writeback", [("post", "glu", "norm_cap"), ("mid", "linear", "token_gate")])
def test_no_grad_forward_on_triton_matches_torch(site, mixer, writeback, monkeypatch):
    """A left-padded batch through a tiny Qwen3 under ``torch.no_grad()``: the blocks take the fused
    inference kernels and the logits equal the reference backend's."""
    import talan
    from talan_kernels.side_path import triton_path

    host = dict(num_hidden_layers=2, hidden_size=72)  # 72: the expand kernel's partial channel tiles
    ids = torch.randint(0, 128, (2, 23), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    prefills = record_calls(monkeypatch, triton_path, "side_path_infer")
    logits = {}
    for backend in ("torch", "triton"):
        model = tiny_qwen3(seed=0, **host)
        talan.patch(model, talan.TalanConfig(layer=(0, 1), site=site, num_slots=4, latent_dim=16, mixer=mixer,
                                             writeback=writeback, norm_cap_ratio=0.5, backend=backend))
        with torch.no_grad():
            for p in talan.talan_parameters(model):  # off the init, where W_out = 0 hides the side path
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
            logits[backend] = model(input_ids=ids, attention_mask=mask).logits
    assert len(prefills) == 2
    with torch.no_grad():
        plain = tiny_qwen3(seed=0, **host)(input_ids=ids, attention_mask=mask).logits
    assert (logits["torch"] - plain)[mask.bool()].abs().max() > 1e-3, \
        "the side path must change the logits for the comparison to mean anything"
    assert_rel_rms(logits["triton"], logits["torch"], TOL, "logits")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERP, reason="needs a CUDA device (native Triton)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mixer,writeback,m,r", [("attn", "tanh_gate", 16, 64), ("linear", "zero_add", 16, 64),
                                                 ("mlp", "token_gate", 16, 64), ("glu", "norm_cap", 16, 64),
                                                 ("attn", "tanh_gate", 80, 64), ("attn", "norm_cap", 16, 200)])
def test_gpu_kernels_error_vs_fp64_within_twice_torchs_own(dtype, mixer, writeback, m, r):
    """Native kernels in fp32/bf16/fp16 against an fp64 reference: the error of the output, final
    state and every gradient is at most 2x that of the PyTorch reference in the same dtype plus a
    small floor; then prefill + decode steps against the same fp64 reference. M = 80 runs the slot
    loops of the carry (16-slot blocks) and decode (64-slot blocks) kernels; R = 200 (tiles of 256) the
    products over R in slices read from memory."""
    b, t, d = 3, 300, 256
    params = {k: v.cuda().requires_grad_() for k, v in make_params(d, r, m, mixer, writeback).items()}
    h, active, resets, state = make_inputs(b, t, d, m, r, pad=17, reset_at=(5, 130))
    h, active, resets, state = h.cuda().to(dtype), active.cuda(), resets.cuda(), tuple(x.cuda() for x in state)
    weight = torch.randn(b, t, d, device="cuda", dtype=torch.float64)
    kw = dict(mixer=mixer, writeback=writeback, grad_scale=0.7, zero_add_scale=ZERO_ADD_SCALE)

    def run(hx, px, backend):
        hx = hx.detach().requires_grad_()
        out, st = side_path(hx, px, active, resets, state, backend=backend, **kw)
        grads = torch.autograd.grad((out.double() * weight).sum(), [hx, *px.values()])
        return [out, *st, *grads]

    p64 = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    gold = run(h.double(), p64, "torch")
    torch_own = run(h, params, "torch")
    kern = run(h, params, "triton")
    names = ["h'", "S", "N", "dh", *(f"d{n}" for n in params)]
    for name, got, own, want in zip(names, kern, torch_own, gold):
        assert rel_rms(got, want) <= 2 * rel_rms(own, want) + 1e-6, name
    with torch.no_grad():
        out, st = side_path(h[:, :t - 3], params, active[:, :t - 3], resets[:, :t - 3], state, backend="triton", **kw)
        outs = [out]
        for i in range(t - 3, t):
            step, st = side_path(h[:, i:i + 1], params, active[:, i:i + 1], resets[:, i:i + 1], st, backend="triton",
                                 **kw)
            outs.append(step)
    assert rel_rms(torch.cat(outs, 1), gold[0]) <= 2 * rel_rms(torch_own[0], gold[0]) + 1e-6, "prefill + decode"
