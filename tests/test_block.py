"""TalanBlock: identity at init, first-step gradients, trainability scopes, grad_scale, parameter count."""

import pytest
import torch

from talan import TalanBlock, TalanConfig
from talan_kernels.side_path import MIXERS, WRITEBACKS, side_path_ref
from talan_kernels.testing import random_side_path_params

D = 32


def _block(**kw):
    torch.manual_seed(0)
    return TalanBlock(D, TalanConfig(latent_dim=16, num_slots=4, backend="torch", **kw))


@pytest.mark.parametrize("writeback", WRITEBACKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_writeback_is_an_exact_identity_at_init(writeback, dtype):
    block = _block(writeback=writeback)
    h = torch.randn(3, 9, D).to(dtype)
    active = torch.ones(3, 9, dtype=torch.bool)
    active[0, :4] = False
    out, _ = block(h, active)
    assert out.dtype == dtype
    assert torch.equal(out, h)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("writeback", WRITEBACKS)
def test_first_backward_step_gives_talan_a_finite_nonzero_gradient(mixer, writeback):
    block = _block(mixer=mixer, writeback=writeback)
    h = torch.randn(2, 7, D)
    out, _ = block(h)
    (out * torch.randn_like(out)).sum().backward()
    grads = {n: p.grad for n, p in block.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for g in grads.values())
    # the zero-initialised side of the writeback is the one that learns first
    assert grads["gate"].abs().sum() > 0 if writeback == "tanh_gate" else grads["w_out"].abs().sum() > 0


def _trainable_names(block):
    return {n for n, p in block.named_parameters() if p.requires_grad}


def test_trainability_scopes():
    for scope, expected in [
        ("joint", {"norm_weight", "w_in", "w_k", "w_v", "slot_queries", "w_q", "w_out", "gate"}),
        ("freeze_compressor", {"w_q", "w_out", "gate"}),
        ("writeback_only", {"w_out", "gate"}),
    ]:
        block = _block(trainable=scope)
        block.apply_trainable_scope()
        assert _trainable_names(block) == expected, scope
    block = _block(trainable="writeback_only", writeback="token_gate", mixer="mlp")
    block.apply_trainable_scope()
    assert _trainable_names(block) == {"w_out", "gate_weight", "gate_bias"}


def _grads(grad_scale):
    block = _block(grad_scale=grad_scale)
    with torch.no_grad():
        block.gate.fill_(0.7)
    h = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(5), requires_grad=True)
    out, _ = block(h)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return h.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


def test_grad_scale_scales_only_the_gradient_flowing_upstream_through_the_side_path():
    h1, p1 = _grads(1.0)
    h_half, p_half = _grads(0.5)
    h0, p0 = _grads(0.0)
    residual_only = torch.linspace(-1, 1, h1.numel()).view_as(h1)  # d(out)/d(h) through the identity path
    for name in p1:  # TALAN's own parameter gradients do not change
        torch.testing.assert_close(p_half[name], p1[name], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p0[name], p1[name], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(h0, residual_only)  # 0 = stop-gradient through the side path
    side = h1 - residual_only
    assert side.abs().sum() > 0
    torch.testing.assert_close(h_half - residual_only, 0.5 * side, rtol=1e-5, atol=1e-7)


def test_parameter_count_matches_the_spec_formula():
    d, r, m = 1024, 64, 16
    block = TalanBlock(d, TalanConfig())
    count = sum(p.numel() for p in block.parameters())
    # d + 2dr + 3r^2 (W_k, W_v and the attn mixer's W_q) + Mr, plus the per-channel gate (d)
    assert count == d + 2 * d * r + 3 * r * r + m * r + d


def test_parameters_are_fp32_raw_parameters_without_linear_submodules():
    block = _block(mixer="mlp", writeback="token_gate")
    assert list(block.children()) == []
    assert all(p.dtype == torch.float32 for p in block.parameters())


@pytest.mark.parametrize("mixer,writeback,per_channel", [
    ("attn", "tanh_gate", True), ("linear", "token_gate", True), ("mlp", "tanh_gate", False), ("glu", "norm_cap", True),
    ("attn", "zero_add", True),
])
def test_initialisation_follows_the_spec(mixer, writeback, per_channel):
    """SPEC §1: W_in ~ N(0, 1/d), W_k = W_v = I, q_m ~ N(0, 1), W_q, W_g, W_1, W_2 ~ N(0, 1/fan_in), RMSNorm weight 1,
    beta = 1/M; W_out ~ N(0, 1/r) for tanh_gate (gamma zero, scalar or per channel), zero otherwise (b_g the
    config's). Standard deviations within 5 % (the smallest sample holds 4096 values: about 1 % standard error)."""
    d, r, m = 512, 64, 64
    torch.manual_seed(0)
    block = TalanBlock(d, TalanConfig(latent_dim=r, num_slots=m, mixer=mixer, writeback=writeback,
                                      gate_per_channel=per_channel, token_gate_bias=-2.5))
    p = block.params()
    assert torch.equal(p["norm_weight"], torch.ones(d))
    assert torch.equal(p["w_k"], torch.eye(r)) and torch.equal(p["w_v"], torch.eye(r))
    stds = {"w_in": d, "slot_queries": 1, "w_q": r, "w_1": 2 * r, "w_2": r, "w_glu": r}  # name -> fan_in
    if writeback == "tanh_gate":
        stds["w_out"] = r
        assert torch.equal(p["gate"], torch.zeros(d if per_channel else 1))
    else:
        assert torch.equal(p["w_out"], torch.zeros(r, d))
    for name, fan_in in stds.items():
        if name in p:
            assert abs(p[name].std().item() * fan_in ** 0.5 - 1) < 0.05, name
            assert abs(p[name].mean().item()) * fan_in ** 0.5 < 0.05, name
    if mixer == "linear":
        assert torch.equal(p["mix_weights"], torch.full((m,), 1 / m))
    if writeback == "token_gate":  # d values only: a 10 % bound on the standard deviation
        assert abs(p["gate_weight"].std().item() * d ** 0.5 - 1) < 0.1
        assert torch.equal(p["gate_bias"], torch.tensor([-2.5]))


@pytest.mark.parametrize("writeback", WRITEBACKS)
def test_forward_runs_the_op_at_the_configs_options(writeback):
    """The block hands the op its config's score_cap, zero_add_scale and norm_cap_ratio (here off their defaults,
    with a norm_cap_ratio that caps the updates)."""
    options = {"cap": 2.0, "zero_add_scale": 0.25, "norm_cap_ratio": 0.05}
    block = _block(writeback=writeback, mixer="glu", score_cap=options["cap"],
                   zero_add_scale=options["zero_add_scale"], norm_cap_ratio=options["norm_cap_ratio"])
    params = random_side_path_params(D, 16, 4, "glu", writeback, seed=2)
    with torch.no_grad():
        for name, value in params.items():
            getattr(block, name).copy_(value)
    h = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(1))
    active = torch.ones(2, 6, dtype=torch.bool)
    active[1, :2] = False
    out, _ = block(h, active)
    expected, _ = side_path_ref(h, params, active, mixer="glu", writeback=writeback, **options)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
