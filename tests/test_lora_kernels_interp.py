"""The fused LoRA / DoRA Triton kernels under TRITON_INTERPRET=1 against peft's eager lora.Linear:
outputs and the gradients of x, A, B (and m for DoRA), fp32 relative RMS <= 1e-5, on odd shapes
(M, N, K not multiples of any tile), r in {1, 8, 16, 64}, prefill and decode (1-16 token) configs,
train and eval, with and without bias. Every kernel output starts as NaN (POISON_OUTPUTS), so an
element a kernel fails to write fails the comparison."""

import os

import pytest
import torch

from talan_kernels.launching import dot_tile
from talan_kernels.lora import dora_linear, dora_linear_ref, dora_weight_norm, interface, lora_linear, lora_linear_ref
from talan_kernels.lora.reference import dora_weight_norm_oracle
from talan_kernels.testing import assert_rel_rms

peft = pytest.importorskip("peft")
from conftest import record_calls  # noqa: E402
from lora_layers import layer_params, make_peft_layer, run_fused  # noqa: E402

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"),
]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(interface, "POISON_OUTPUTS", True)


def _out_grads(fn, layer, x, dy, x_grad=True):
    x = x.detach().clone().requires_grad_(x_grad)
    y = fn(x)
    wrt = ([x] if x_grad else []) + layer_params(layer)
    return [y.detach()] + list(torch.autograd.grad(y, wrt, dy))


# (M, N, K, r): decode M in {1, 5, 16}; prefill M > 16 with every dimension off the tile grid.
SHAPES = [(1, 45, 70, 8), (5, 33, 47, 1), (16, 80, 36, 16), (37, 45, 53, 64), (83, 70, 100, 16)]


@pytest.mark.parametrize("M,N,K,r", SHAPES)
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_kernels_match_peft_eager(M, N, K, r, dora):
    # Alternate train/eval and bias over the shapes so every combination is covered without a
    # full cross product (the interpreter is slow).
    i = SHAPES.index((M, N, K, r))
    layer = make_peft_layer(K, N, r, bias=i % 2 == 0, dora=dora, seed=i)
    layer.train(i % 2 == 1)
    x = torch.randn(M, K)
    dy = torch.randn(M, N)
    ref = _out_grads(layer, layer, x, dy)
    out = _out_grads(lambda t: run_fused(layer, t, "triton"), layer, x, dy)
    for o, e, n in zip(out, ref, ["y", "dx", "dA", "dB", "dm"]):
        assert_rel_rms(o, e, 1e-5, n)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_kernels_without_x_gradient_and_batched_noncontiguous_input(dora):
    # x needing no gradient takes the dS-only branch of the dx kernel; a transposed view checks strides.
    layer = make_peft_layer(40, 24, 8, bias=True, dora=dora, seed=7)
    x = torch.randn(2, 40, 9).transpose(1, 2)            # [2, 9, 40], non-contiguous
    dy = torch.randn(2, 9, 24)
    ref = _out_grads(layer, layer, x, dy, x_grad=False)
    out = _out_grads(lambda t: run_fused(layer, t, "triton"), layer, x, dy, x_grad=False)
    for o, e, n in zip(out, ref, ["y", "dA", "dB", "dm"]):
        assert_rel_rms(o, e, 1e-5, n)


def test_dora_magnitude_only_gradient():
    # Only m trains: the dB kernel still runs for dg (HAS_CSUM) while no dx/dA/dB is requested.
    layer = make_peft_layer(30, 20, 4, bias=False, dora=True, seed=8)
    for p in layer_params(layer)[:2]:
        p.requires_grad_(False)
    m = layer.lora_magnitude_vector["default"].weight
    x, dy = torch.randn(19, 30), torch.randn(19, 20)
    (want,) = torch.autograd.grad(layer(x), [m], dy)
    (got,) = torch.autograd.grad(run_fused(layer, x, "triton"), [m], dy)
    assert_rel_rms(got, want, 1e-5, "dm")


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_a_frozen_down_projection_still_trains_the_up_projection(dora):
    """LoRA-FA freezes A and trains B (and DoRA's magnitude): dB needs the rank-r ``x Aᵀ`` saved in the forward
    although A takes no gradient."""
    layer = make_peft_layer(30, 20, 4, bias=False, dora=dora, seed=9)
    layer.lora_A["default"].weight.requires_grad_(False)
    trained = layer_params(layer)[1:]
    x, dy = torch.randn(19, 30, requires_grad=True), torch.randn(19, 20)
    want = torch.autograd.grad(layer(x), [x, *trained], dy)
    got = torch.autograd.grad(run_fused(layer, x, "triton"), [x, *trained], dy)
    for o, e, n in zip(got, want, ["dx", "dB", "dm"]):
        assert_rel_rms(o, e, 1e-5, n)


@pytest.mark.parametrize("r", [3, 64])
def test_norm_kernel_matches_explicit_norm(r):
    torch.manual_seed(r)
    W, A, B = torch.randn(70, 45), torch.randn(r, 45) / 6, torch.randn(70, r)
    got = dora_weight_norm(W, A, B, 0.8, backend="triton")
    assert_rel_rms(got, dora_weight_norm_oracle(W.double(), A.double(), B.double(), 0.8), 1e-5, "norm")


def test_fp16_inputs_within_fp16_tolerance():
    torch.manual_seed(9)
    M, N, K, r = 21, 40, 50, 8
    x = torch.randn(M, K).half()
    W, A, B = (torch.randn(N, K) / 7).half(), torch.randn(r, K) / 7, torch.randn(N, r)
    m, bias = torch.rand(N) + 0.5, torch.randn(N).half()
    want = lora_linear_ref(x.double(), W.double(), A.double(), B.double(), 0.5, bias.double())
    assert_rel_rms(lora_linear(x, W, A, B, 0.5, bias, backend="triton"), want, 5e-3, "lora fp16")
    want = dora_linear_ref(x.double(), W.double(), A.double(), B.double(), m.double(), 0.5, bias.double())
    assert_rel_rms(dora_linear(x, W, A, B, m, 0.5, bias, backend="triton"), want, 5e-3, "dora fp16")


def test_empty_batch():
    W, A, B = torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)
    y = lora_linear(torch.randn(0, 16), W, A, B, 1.0, backend="triton")
    assert y.shape == (0, 8)


def _small_tiles(monkeypatch, group):
    # 16-wide tiles and groups of `group` tiles that do not divide the tile count, so the grouped
    # loops (S reused across N tiles, dS across K tiles) and their partial last group both run.
    def fwd(M, N, K, R, fp32):
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_R=dot_tile(R), GROUP_N=group,
                    num_warps=4, num_stages=1)

    def dx(M, N, K, R, fp32):
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, BLOCK_R=dot_tile(R), GROUP_K=group,
                    num_warps=4, num_stages=1)

    monkeypatch.setattr(interface, "fwd_config", fwd)
    monkeypatch.setattr(interface, "bwd_dx_config", dx)


def test_the_kernels_refuse_a_rank_wider_than_their_tile_and_fp64():
    r = interface.MAX_TRITON_RANK + 1
    x, W = torch.randn(3, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=f"<= {interface.MAX_TRITON_RANK} for the Triton kernels.*got r={r}"):
        lora_linear(x, W, torch.randn(r, 8), torch.randn(4, r), 1.0, backend="triton")
    lora_linear(x, W, torch.randn(r, 8), torch.randn(4, r), 1.0, backend="torch")  # the reference takes any rank
    with pytest.raises(ValueError, match="x must have a dtype in"):
        lora_linear(x.double(), W.double(), torch.randn(2, 8).double(), torch.randn(4, 2).double(), 1.0,
                    backend="triton")


@pytest.mark.parametrize("group", [2, 3])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_grouped_tiles_match_peft_eager(group, dora, monkeypatch):
    _small_tiles(monkeypatch, group)
    layer = make_peft_layer(70, 45, 8, bias=True, dora=dora, seed=11).train()   # 5 K tiles, 3 N tiles
    x, dy = torch.randn(37, 70), torch.randn(37, 45)
    ref = _out_grads(layer, layer, x, dy)
    out = _out_grads(lambda t: run_fused(layer, t, "triton"), layer, x, dy)
    for o, e, n in zip(out, ref, ["y", "dx", "dA", "dB", "dm"]):
        assert_rel_rms(o, e, 1e-5, n)


def test_launch_configs_group_tiles_for_large_prefill_only():
    # 4096 tokens x 4096 features: 32 x 32 tiles of 128 -> 8 N tiles per program (128 programs);
    # decode keeps one tile per program, the most programs for a W-bandwidth-bound stream.
    assert interface.fwd_config(4096, 4096, 4096, 16, False)["GROUP_N"] == 8
    assert interface.bwd_dx_config(4096, 4096, 4096, 16, False)["GROUP_K"] == 8
    assert interface.fwd_config(1, 4096, 4096, 16, False)["GROUP_N"] == 1
    assert interface.fwd_config(256, 4096, 4096, 16, False)["GROUP_N"] == 1


@pytest.mark.parametrize("adapter_dtype", [torch.float16, torch.float32], ids=["fp16-adapters", "fp32-adapters"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_native_fp16_dot_path_within_twice_pytorch_fp16_error(adapter_dtype, dora, monkeypatch):
    # The GPU path (fp16 tiles into tl.dot, S and dS rounded to fp16) run by the interpreter,
    # which multiplies fp16 tiles exactly into an fp32 result as a tensor core does; small tiles
    # and groups of 2 so the grouped loops run too.
    from test_lora_kernels_gpu import check_low_precision

    monkeypatch.setattr(interface, "INTERPRETER_NATIVE_FP16_DOTS", True)
    assert not interface.dot_in_fp32(torch.float16) and interface.dot_in_fp32(torch.bfloat16)
    _small_tiles(monkeypatch, 2)
    layer = make_peft_layer(70, 45, 8, bias=True, dora=dora, seed=12).train()
    x, dy = torch.randn(37, 70), torch.randn(37, 45)
    check_low_precision(layer, x, dy, torch.float16, adapter_dtype)


@pytest.mark.parametrize("M,N,K,r", [(300, 384, 520, 16), (5, 384, 520, 16), (257, 320, 448, 64)],
                         ids=["prefill-r16", "decode-r16", "prefill-r64"])
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_native_fp16_dot_path_at_the_gpu_launch_tiles(M, N, K, r, dora, monkeypatch):
    # The same path at the tiles the launchers pick for fp16/bf16 on a GPU (128x128x32 prefill tiles,
    # 64-row tiles at r = 64, 16-row decode tiles with 256-deep K steps, 128-wide dx tiles), at the GPU
    # test's shapes: every dimension ends in a partial tile.
    from test_lora_kernels_gpu import check_low_precision

    monkeypatch.setattr(interface, "INTERPRETER_NATIVE_FP16_DOTS", True)
    monkeypatch.setattr(interface, "POISON_OUTPUTS", True)
    configs = record_calls(monkeypatch, interface, "fwd_config", lambda *args: args)
    layer = make_peft_layer(K, N, r, bias=True, dora=dora, seed=M).train()
    x, dy = torch.randn(M, K), torch.randn(M, N)
    check_low_precision(layer, x, dy, torch.float16, torch.float16)
    assert configs and all(args[-1] is False for args in configs), "the fp16 (GPU) tiles must have been used"


def _base_ref(x, W, bias):
    y = x.double() @ W.double().t()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("M,N,K,bias", [(83, 70, 100, True), (37, 45, 53, False), (5, 33, 47, True)],
                         ids=["prefill-bias", "prefill", "decode-bias"])
def test_base_linear_triton_matches_plain_product(M, N, K, bias):
    # The HAS_LORA=False kernel (the benchmarks' "Triton GEMM without the LoRA term"), fp32, odd
    # shapes, every output element starting as NaN; a transposed x view checks its strides.
    torch.manual_seed(M)
    x = torch.randn(K, M).t() if M > 16 else torch.randn(M, K)
    W, b = torch.randn(N, K), (torch.randn(N) if bias else None)
    y = interface.base_linear_triton(x, W, b)
    assert y.shape == (M, N) and y.dtype == torch.float32
    assert_rel_rms(y, _base_ref(x, W, b), 1e-5, "base_linear_triton")


@pytest.mark.parametrize("group", [2, 3])
def test_base_linear_triton_grouped_tiles(group, monkeypatch):
    # The launcher takes fwd_config like the fused one: small tiles and partial groups of N tiles.
    _small_tiles(monkeypatch, group)
    torch.manual_seed(group)
    x, W, b = torch.randn(37, 70), torch.randn(45, 70), torch.randn(45)
    assert_rel_rms(interface.base_linear_triton(x, W, b), _base_ref(x, W, b), 1e-5, "base grouped")
    assert interface.base_linear_triton(torch.randn(0, 70), W).shape == (0, 45)
