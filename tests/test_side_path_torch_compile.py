"""``torch.compile(fullgraph=True)`` over a `TalanBlock`: the reference path, and the Triton path
through its autograd Function and ``torch.library`` custom ops (under the interpreter on CPU)."""

import os

import pytest
import torch
from conftest import record_calls

from talan import TalanBlock, TalanConfig
from talan_kernels.testing import assert_rel_rms

INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def _block(backend, mixer="attn", writeback="tanh_gate"):
    torch.manual_seed(0)
    block = TalanBlock(32, TalanConfig(num_slots=4, latent_dim=16, mixer=mixer, writeback=writeback,
                                       backend=backend, grad_scale=0.5))
    with torch.no_grad():  # off the init, so that every parameter gets a gradient
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _inputs(t=21):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, t, 32, generator=g)
    active = torch.ones(2, t, dtype=torch.bool)
    active[1, :4] = False
    resets = torch.zeros(2, t, dtype=torch.bool)
    resets[0, 9] = True
    return h, active, resets


def _run(fn, block, h, active, resets):
    h = h.clone().requires_grad_()
    out, (s, n) = fn(h, active, resets)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {"h": h.grad, **{name: p.grad.clone() for name, p in block.named_parameters()}}
    block.zero_grad()
    return out, s, n, grads


def _assert_compiled_matches_eager(block, compile_backend, tol):
    h, active, resets = _inputs()
    compiled = torch.compile(block, fullgraph=True, backend=compile_backend)
    eager = _run(block, block, h, active, resets)
    got = _run(compiled, block, h, active, resets)
    for name, a, b in zip(("h'", "S", "N"), got[:3], eager[:3]):
        assert_rel_rms(a, b, tol, name)
    for name, g in eager[3].items():
        assert_rel_rms(got[3][name], g, tol, f"d{name}")


def test_reference_block_compiles_fullgraph_aot_eager():
    torch._dynamo.reset()
    _assert_compiled_matches_eager(_block("torch", "glu", "token_gate"), "aot_eager", 1e-6)


@pytest.mark.slow
def test_reference_block_compiles_fullgraph_inductor():
    torch._dynamo.reset()
    _assert_compiled_matches_eager(_block("torch"), "inductor", 1e-5)


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 set before triton is imported")
@pytest.mark.parametrize("mixer,writeback", [("attn", "tanh_gate"), ("linear", "norm_cap")])
def test_triton_block_compiles_fullgraph_through_the_custom_ops(mixer, writeback):
    """No graph break at the kernels: the traced graph holds the talan custom ops and the compiled
    block (forward, final state and every gradient) equals the eager one."""
    torch._dynamo.reset()
    block = _block("triton", mixer, writeback)
    _assert_compiled_matches_eager(block, "aot_eager", 1e-6)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    torch.compile(block, fullgraph=True, backend=capture)(*_inputs())
    # the autograd Function is a higher-order op whose forward/backward bodies are submodules
    text = "\n".join(str(m.graph) for m in graphs[0].modules() if isinstance(getattr(m, "graph", None),
                                                                              torch.fx.Graph))
    assert len(graphs) == 1 and "talan.slot_scan_fwd" in text and "talan.slot_scan_bwd" in text


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 set before triton is imported")
def test_triton_block_inference_compiles_fullgraph_through_the_fused_ops():
    """Under ``torch.no_grad()`` the block traces to the shrink/scan/expand custom ops in one graph
    and the compiled output and final state equal the eager ones."""
    torch._dynamo.reset()
    block = _block("triton", "mlp", "norm_cap")
    h, active, resets = _inputs()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    with torch.no_grad():
        eager = block(h, active, resets)
        got = torch.compile(block, fullgraph=True, backend=capture)(h, active, resets)
    for name, a, b in zip(("h'", "S", "N"), (got[0], *got[1]), (eager[0], *eager[1])):
        assert_rel_rms(a, b, 1e-6, name)
    text = str(graphs[0].graph)
    assert len(graphs) == 1
    for op in ("talan.side_path_shrink", "talan.slot_scan_fwd", "talan.side_path_expand"):
        assert op in text, f"{op} missing from the traced graph"


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1 set before triton is imported")
def test_eager_launches_directly_and_fake_tensor_mode_gets_the_fake_ops(monkeypatch):
    """Plain eager calls the launchers without the dispatcher (``ops.resolve``); under a dispatch
    mode the ops run instead, so ``FakeTensorMode`` gets their fake implementations (shapes and
    dtypes, no kernel) rather than a Triton launch on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from talan_kernels.side_path import decode, fused

    block = _block("triton", "mlp", "token_gate")
    h, active, resets = _inputs()
    shrinks = record_calls(monkeypatch, fused, "shrink_launch")
    decodes = record_calls(monkeypatch, decode, "decode_launch")
    with torch.no_grad():
        out, (s, n) = block(h, active, resets)
        step, _ = block(h[:, :1], active[:, :1], state=(s, n))
    assert len(shrinks) == 1 and len(decodes) == 1
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        fake_out, (fake_s, fake_n) = block(h, active, resets)
        fake_step, _ = block(h[:, :1], active[:, :1], state=(fake_s, fake_n))
    assert len(shrinks) == 1 and len(decodes) == 1, "a launcher ran on fake tensors"
    for fake, real in ((fake_out, out), (fake_s, s), (fake_n, n), (fake_step, step)):
        assert fake.shape == real.shape and fake.dtype == real.dtype


_ON_KERNELS = [pytest.mark.interpreter, pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1")]


@pytest.mark.parametrize("backend,mixer,writeback", [("torch", "mlp", "tanh_gate"),
                                                     pytest.param("triton", "glu", "norm_cap", marks=_ON_KERNELS)])
def test_block_compiles_fullgraph_under_autocast_and_stays_fp32(backend, mixer, writeback, monkeypatch):
    """Compiled under a bf16 autocast (Trainer's mixed precision), the block traces whole (on the kernels, through
    the custom ops) and its forward computes in fp32, as eager does without autocast: it turns autocast off for
    itself. Its backward, traced with the forward, follows torch's ``backward_pass_autocast`` as the host's does
    (torch 2.13's default, "same_as_forward", runs every compiled backward under the forward's autocast,
    pytorch/pytorch#179804): with it "off" the gradients are eager's too."""
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "backward_pass_autocast"):
        monkeypatch.setattr(functorch_config, "backward_pass_autocast", "off")
    torch._dynamo.reset()
    block = _block(backend, mixer, writeback)
    h, active, resets = _inputs()
    eager = _run(block, block, h, active, resets)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")

    def under_autocast(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return compiled(*args)

    got = _run(under_autocast, block, h, active, resets)
    for name, a, b in zip(("h'", "S", "N"), got[:3], eager[:3]):
        assert_rel_rms(a, b, 1e-6, name)
    if hasattr(functorch_config, "backward_pass_autocast"):
        for name, g in eager[3].items():
            assert_rel_rms(got[3][name], g, 1e-6, f"d{name}")
