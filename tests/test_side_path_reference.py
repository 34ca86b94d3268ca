"""The reference side path: prefix-sum form vs the O(T^2) oracle, gradients, state, SPEC §1 backward."""

import functools
import math
import os

import pytest
import torch

from talan_kernels.side_path import (
    MIXERS,
    WRITEBACKS,
    scale_grad,
    side_path,
    side_path_ref,
    slot_memory_oracle,
    slot_memory_ref,
)
from talan_kernels.side_path.reference import slot_weights
from talan_kernels.testing import random_side_path_inputs, random_side_path_params

CAP = 15.0


def _inputs(b=2, t=11, r=8, m=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, t, r, generator=g, dtype=dtype)
    v = torch.randn(b, t, r, generator=g, dtype=dtype)
    q = torch.randn(m, r, generator=g, dtype=dtype) * 2
    return k, v, q


def _left_padded(b, t, pad=3):
    active = torch.ones(b, t, dtype=torch.bool)
    active[0, :pad] = False
    return active


_params = functools.partial(random_side_path_params, seed=1, dtype=torch.float64)


@pytest.mark.parametrize("with_resets", [False, True])
def test_prefix_sum_memory_matches_softmax_oracle_fp64(with_resets):
    k, v, q = _inputs(b=3, t=13)
    active = _left_padded(3, 13)
    resets = None
    if with_resets:
        resets = torch.zeros(3, 13, dtype=torch.bool)
        resets[0, 6] = resets[1, 4] = resets[1, 9] = True
    mem, _ = slot_memory_ref(k, v, q, active, CAP, resets)
    oracle = slot_memory_oracle(k, v, q, active, CAP, resets)
    assert mem.dtype == torch.float64
    torch.testing.assert_close(mem, oracle, rtol=1e-12, atol=1e-12)
    # before the first active token the memory is exactly 0
    assert torch.all(mem[0, :3] == 0)


def test_memory_is_causal_and_ignores_padding():
    k, v, q = _inputs(b=1, t=10)
    active = torch.ones(1, 10, dtype=torch.bool)
    mem, _ = slot_memory_ref(k, v, q, active, CAP)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6:] += 3.0
    v2[:, 6:] -= 2.0
    mem2, _ = slot_memory_ref(k2, v2, q, active, CAP)
    assert torch.equal(mem[:, :6], mem2[:, :6])
    assert not torch.allclose(mem[:, 6:], mem2[:, 6:])
    # a padded token's key/value never reach the memory
    active[0, 2] = False
    mem3, _ = slot_memory_ref(k, v, q, active, CAP)
    k3, v3 = k.clone(), v.clone()
    k3[0, 2], v3[0, 2] = 100.0, -100.0
    mem4, _ = slot_memory_ref(k3, v3, q, active, CAP)
    assert torch.equal(mem3, mem4)


def test_slot_weights_stay_in_unit_interval_in_fp32_even_for_extreme_scores():
    k = torch.tensor([[[1e4, -1e4], [-1e4, 1e4]]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = slot_weights(k, q, torch.ones(1, 2), CAP)
    assert w.dtype == torch.float32
    assert torch.all(w > 0) and torch.all(w <= 1)
    assert math.isclose(w.min().item(), math.exp(-2 * CAP), rel_tol=1e-4)


def test_state_carry_equals_full_sequence():
    k, v, q = _inputs(b=2, t=12)
    active = _left_padded(2, 12, pad=2)
    full, final = slot_memory_ref(k, v, q, active, CAP)
    split = 7
    first, state = slot_memory_ref(k[:, :split], v[:, :split], q, active[:, :split], CAP)
    rest = []
    for t in range(split, 12):  # one-token decode steps
        step, state = slot_memory_ref(k[:, t:t + 1], v[:, t:t + 1], q, active[:, t:t + 1], CAP, state=state)
        rest.append(step)
    torch.testing.assert_close(torch.cat([first, *rest], 1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[0], final[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[1], final[1], rtol=1e-12, atol=1e-12)


def test_reset_ignores_carried_state():
    k, v, q = _inputs(b=1, t=6)
    active = torch.ones(1, 6, dtype=torch.bool)
    resets = torch.zeros(1, 6, dtype=torch.bool)
    resets[0, 3] = True
    state = (torch.rand(1, 4, dtype=torch.float64) + 0.5, torch.randn(1, 4, 8, dtype=torch.float64))
    with_state, _ = slot_memory_ref(k, v, q, active, CAP, resets, state)
    without, _ = slot_memory_ref(k, v, q, active, CAP, resets)
    assert not torch.allclose(with_state[:, :3], without[:, :3])
    torch.testing.assert_close(with_state[:, 3:], without[:, 3:], rtol=1e-12, atol=1e-12)


def test_spec_stage1_backward_formulas_match_autograd():
    """SPEC §1: dL/dv_u = sum_m w R1, dL/ds = w(<v, R1> - R2) with reverse cumulative sums."""
    b, t, r, m = 2, 9, 6, 3
    g = torch.Generator().manual_seed(3)
    s = torch.randn(b, t, m, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, t, r, generator=g, dtype=torch.float64, requires_grad=True)
    active = _left_padded(b, t, pad=2).double()
    w = active.unsqueeze(-1) * torch.exp(s - CAP)
    S = w.cumsum(1)
    N = (w.unsqueeze(-1) * v.unsqueeze(2)).cumsum(1)
    pos = S > 0
    mem = torch.where(pos.unsqueeze(-1), N / torch.where(pos, S, 1.0).unsqueeze(-1), 0.0)
    gmem = torch.randn(mem.shape, generator=g, dtype=torch.float64)
    ds_auto, dv_auto = torch.autograd.grad(mem, (s, v), gmem)
    with torch.no_grad():
        inv_s = torch.where(pos, 1.0 / torch.where(pos, S, 1.0), 0.0)
        r1 = (gmem * inv_s.unsqueeze(-1)).flip(1).cumsum(1).flip(1)  # [B, T, M, R]
        r2 = ((gmem * mem).sum(-1) * inv_s).flip(1).cumsum(1).flip(1)  # [B, T, M]
        dv = torch.einsum("btm,btmr->btr", w, r1)
        ds = w * (torch.einsum("btr,btmr->btm", v, r1) - r2)
    torch.testing.assert_close(dv, dv_auto, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ds, ds_auto, rtol=1e-10, atol=1e-12)


def test_gradcheck_slot_memory():
    k, v, q = _inputs(b=2, t=5, r=3, m=2)
    active = _left_padded(2, 5, pad=1)
    resets = torch.zeros(2, 5, dtype=torch.bool)
    resets[1, 3] = True
    state = (torch.rand(2, 2, dtype=torch.float64) + 0.5, torch.randn(2, 2, 3, dtype=torch.float64))
    k, v, q = (x.requires_grad_() for x in (k, v, q))

    def f(k, v, q):
        return slot_memory_ref(k, v, q, active, 2.0, resets, state)[0]

    assert torch.autograd.gradcheck(f, (k, v, q))


@pytest.mark.parametrize("mixer,writeback", [(mx, wb) for mx in MIXERS for wb in WRITEBACKS
                                             if mx == "attn" or wb == "tanh_gate"])
def test_gradcheck_side_path(mixer, writeback):
    d, r, m = 6, 3, 2
    params = _params(d, r, m, mixer, writeback)
    if writeback in ("zero_add", "norm_cap"):
        params["w_out"] = params["w_out"] * 50  # norm_cap: exercise both branches of the length cap
    h = torch.randn(2, 4, d, dtype=torch.float64, requires_grad=True)
    active = _left_padded(2, 4, pad=1)
    names = sorted(params)
    tensors = [params[n].requires_grad_() for n in names]

    def f(h, *ts):
        out, _ = side_path_ref(h, dict(zip(names, ts)), active, mixer=mixer, writeback=writeback, cap=3.0)
        return out

    assert torch.autograd.gradcheck(f, (h, *tensors))


def test_norm_cap_bounds_the_update_length():
    d, r, m = 16, 4, 2
    params = _params(d, r, m, "attn", "norm_cap", dtype=torch.float32)
    params["w_out"] = params["w_out"] * 1e3
    h = torch.randn(2, 5, d)
    out, _ = side_path_ref(h, params, norm_cap_ratio=1e-2, writeback="norm_cap")
    ratio = torch.linalg.vector_norm(out - h, dim=-1) / torch.linalg.vector_norm(h, dim=-1)
    assert torch.all(ratio <= 1e-2 * (1 + 1e-4)) and torch.all(ratio > 0.5e-2)


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.randn(4, requires_grad=True)
    y = scale_grad(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((4,), 0.25))


def test_padding_gets_zero_perturbation_and_output_keeps_dtype():
    d, r, m = 16, 4, 3
    params = _params(d, r, m, "attn", "tanh_gate", dtype=torch.float32)
    h = torch.randn(2, 6, d, dtype=torch.bfloat16)
    active = _left_padded(2, 6, pad=3)
    out, _ = side_path_ref(h, params, active)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, :3], h[0, :3])
    assert not torch.equal(out[0, 3:], h[0, 3:])


def _spec_mixer(z, mem, p, mixer):
    """SPEC §1 stage 2 for one token: ``c`` from ``z [R]`` and ``mem [M, R]``."""
    if mixer == "linear":
        return p["mix_weights"] @ mem
    read = torch.softmax(mem @ (z @ p["w_q"]) / math.sqrt(z.shape[0]), 0) @ mem
    if mixer == "mlp":
        return torch.nn.functional.silu(torch.cat([z, read]) @ p["w_1"]) @ p["w_2"]
    if mixer == "glu":
        return torch.sigmoid(z @ p["w_glu"]) * read
    return read


def _spec_writeback(h, x, u, p, writeback, lam, rho):
    """SPEC §1 stage 3 for one token: the update added to ``h`` (before the active mask)."""
    if writeback == "zero_add":
        return lam * u
    if writeback == "tanh_gate":
        return torch.tanh(p["gate"]) * u
    if writeback == "token_gate":
        return torch.sigmoid(x @ p["gate_weight"] + p["gate_bias"]) * u
    limit = rho * torch.linalg.vector_norm(h)
    return u * limit / torch.maximum(torch.linalg.vector_norm(u), limit)


def _spec_block_token_by_token(h, p, active, resets, mixer, writeback, cap, lam, rho):
    """SPEC §1 transcribed a token at a time in fp64, sharing no code with the reference: the slot sums over the
    active tokens u <= t of t's packed sequence, then the mixer and writeback tables row by row."""
    b_size, t_size, _ = h.shape
    r = p["w_in"].shape[1]
    out = h.clone()
    for b in range(b_size):
        xs = [h[b, t] / torch.sqrt((h[b, t] ** 2).mean() + 1e-6) * p["norm_weight"] for t in range(t_size)]
        zs = [x @ p["w_in"] for x in xs]
        ks, vs = [z @ p["w_k"] for z in zs], [z @ p["w_v"] for z in zs]
        start = 0
        for t in range(t_size):
            if resets is not None and resets[b, t]:
                start = t
            if not active[b, t]:
                continue
            mem = []
            for q in p["slot_queries"]:
                big_s, big_n = 0.0, torch.zeros(r, dtype=h.dtype)
                for u in range(start, t + 1):
                    if active[b, u]:
                        w = math.exp(cap * math.tanh(float(q @ ks[u]) / (math.sqrt(r) * cap)) - cap)
                        big_s, big_n = big_s + w, big_n + w * vs[u]
                mem.append(big_n / big_s)  # t itself is active, so big_s > 0
            c = _spec_mixer(zs[t], torch.stack(mem), p, mixer)
            out[b, t] = h[b, t] + _spec_writeback(h[b, t], xs[t], c @ p["w_out"], p, writeback, lam, rho)
    return out


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("writeback", WRITEBACKS)
def test_reference_block_is_the_spec_written_a_token_at_a_time(mixer, writeback):
    """The reference's vectorised stages against SPEC §1's formulas, at options off their defaults (cap, lam, rho),
    with left padding and a packed-sequence restart: the kernels are tested against the reference, so this is
    where the reference itself is tied to the SPEC."""
    d, r, m, cap, lam, rho = 12, 5, 3, 2.5, 0.5, 0.5  # at this rho some updates are capped, some not
    params = _params(d, r, m, mixer, writeback)
    h = torch.randn(2, 7, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    active = _left_padded(2, 7, pad=2)
    resets = torch.zeros(2, 7, dtype=torch.bool)
    resets[1, 4] = True
    out, _ = side_path_ref(h, params, active, resets, mixer=mixer, writeback=writeback, cap=cap,
                           zero_add_scale=lam, norm_cap_ratio=rho)
    expected = _spec_block_token_by_token(h, params, active, resets, mixer, writeback, cap, lam, rho)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    if writeback == "norm_cap":  # both sides of the cap were reached
        lengths = torch.linalg.vector_norm(out - h, dim=-1)[active] / torch.linalg.vector_norm(h, dim=-1)[active]
        assert (lengths < rho * (1 - 1e-6)).any() and torch.isclose(lengths, torch.tensor(rho, dtype=h.dtype)).any()


def test_side_path_bad_inputs_raise_value_errors_that_name_them():
    d, r, m = 8, 4, 2
    params = _params(d, r, m, "attn", "tanh_gate", dtype=torch.float32)
    h = torch.randn(2, 5, d)
    state = (torch.ones(2, m), torch.zeros(2, m, r))
    side_path(h, params, torch.ones(2, 5), torch.zeros(2, 5, dtype=torch.bool), state, backend="torch")  # valid
    for kwargs, message in [
        (dict(backend="cuda"), "backend must be one of"),
        (dict(mixer="conv"), "mixer must be one of"),
        (dict(writeback="add"), "writeback must be one of"),
        (dict(h=h[0]), r"h must be a floating \[B, T, D\] tensor; got torch.float32 of shape \(5, 8\)"),
        (dict(h=h.long()), "h must be a floating"),
        (dict(params={**params, "w_in": params["w_in"][1:]}), r"w_in must be \[D=8, R\]; got \(7, 4\)"),
        (dict(active=torch.ones(2, 4)), r"active must be \[B=2, T=5\]; got \(2, 4\)"),
        (dict(resets=torch.zeros(1, 5, dtype=torch.bool)), r"resets must be \[B=2, T=5\]"),
        (dict(state=(state[0][:1], state[1])), r"state must be \(S \[B=2, M=2\]"),
        (dict(state=(state[0], state[1][..., :3])), r"N \[B, M, R=4\]\); got \(2, 2\) and \(2, 2, 3\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            side_path(**{"h": h, "params": params, "backend": "torch", **kwargs})


_INTERP = os.environ.get("TRITON_INTERPRET") == "1"
_ON_KERNELS = [pytest.mark.interpreter, pytest.mark.skipif(not _INTERP, reason="needs TRITON_INTERPRET=1")]
_ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or _INTERP, reason="needs a CUDA device")]


@pytest.mark.parametrize("device,backend", [("cpu", "torch"), pytest.param("cpu", "triton", marks=_ON_KERNELS),
                                            pytest.param("cuda", "torch", marks=_ON_GPU),
                                            pytest.param("cuda", "triton", marks=_ON_GPU)])
@pytest.mark.parametrize("mixer,writeback", [("attn", "tanh_gate"), ("glu", "norm_cap"), ("mlp", "token_gate"),
                                             ("linear", "zero_add")])
@pytest.mark.parametrize("h_dtype", [torch.float32, torch.float16])
def test_autocast_leaves_the_block_in_fp32(device, backend, mixer, writeback, h_dtype):
    """Under a mixed-precision forward (Trainer's bf16: torch.autocast) the block computes as without it, in fp32:
    the same h', state and gradients (backward outside autocast, as Trainer and accelerate call it), on the
    training path, the inference prefill and a decode step; with autocast its products ran in bf16 and its state
    drifted by 2-4 %."""
    params = {k: v.to(device).requires_grad_()
              for k, v in random_side_path_params(32, 16, 5, mixer, writeback).items()}
    h, active, resets, state = (x.to(device) if isinstance(x, torch.Tensor) else tuple(y.to(device) for y in x)
                                for x in random_side_path_inputs(2, 19, 32, 5, 16, pad=3, reset_at=(7,)))
    h = h.to(h_dtype).requires_grad_()
    weights = torch.randn(h.shape, generator=torch.Generator().manual_seed(2)).to(device)

    def run(autocast: bool, t: int = 19, grad: bool = True):
        for x in (h, *params.values()):
            x.grad = None
        with torch.set_grad_enabled(grad), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out, (s, n) = side_path(h[:, :t], params, active[:, :t], resets[:, :t], state, mixer=mixer,
                                    writeback=writeback, backend=backend)
        if grad:
            ((out.float() * weights[:, :t]).sum() + s.sum() + n.sum()).backward()
        return [out, s, n] + ([h.grad, *(p.grad for p in params.values())] if grad else [])

    for t, grad in ((19, True), (19, False), (1, False)):  # training, inference prefill, a decode step
        expected, got = run(False, t, grad), run(True, t, grad)
        for i, (a, b) in enumerate(zip(got, expected)):
            assert a.dtype == b.dtype and torch.equal(a, b), f"T={t} grad={grad}: tensor {i} differs under autocast"
