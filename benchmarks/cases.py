"""Op workloads of the kernel benchmarks: each is a ``Case`` with a callable to time, a correctness
gate against the reference (run before anything is timed) and a minimum-traffic / FLOP model for
the GB/s and TFLOP/s columns.

Providers
    LoRA linear: ``base`` (``x @ W.T`` alone, the floor), ``triton_base`` (the fused kernel's own
    Triton GEMM with ``HAS_LORA=False``, same tiles: forward only), ``torch`` (``lora_linear_ref``),
    ``triton`` (``lora_linear(..., backend="triton")``), ``peft`` (peft's eager ``lora.Linear``);
    DoRA in eval: ``dora_torch``, ``dora_triton`` (norm cached, as in eval), ``dora_peft``.
    Side path: ``copy`` (read h, write h': the memory floor), ``torch`` (``side_path_ref``),
    ``triton`` (``side_path(..., backend="triton")``), ``triton_tf32`` (the same kernels with one-pass
    TF32 dot products instead of 3xTF32: the precision choice of ``talan_kernels/side_path/precision.py``),
    decode only, the decode kernel's launch choices of ``talan_kernels/side_path/decode.py``:
    ``triton_pipelined`` (its loops over D pipelined 3 deep), ``triton_split`` (its last pass over D split
    between 4 programs a sequence), ``triton_split_pipelined`` (both).
Modes: ``fwd`` (no grad), ``fwdbwd`` (forward + backward to every trainable input), ``decode``
(LoRA: a few tokens, forward; side path: one token per sequence with a carried state).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .common import check_close

LORA_PROVIDERS = ("base", "triton_base", "torch", "triton", "peft")
# Providers with no backward: their ``fwdbwd`` case does not exist.
FORWARD_ONLY_PROVIDERS = ("triton_base",)
DORA_PROVIDERS = ("base", "dora_torch", "dora_triton", "dora_peft")
# (decode_pipeline_stages, decode_programs_per_sequence) of the decode-only providers
DECODE_VARIANTS = {"triton_pipelined": (3, 1), "triton_split": (1, 4), "triton_split_pipelined": (3, 4)}
SIDE_PATH_PROVIDERS = ("copy", "torch", "triton", "triton_tf32", *DECODE_VARIANTS)
# Providers that exist for one side-path mode only.
SIDE_PATH_PROVIDER_MODES = dict.fromkeys(DECODE_VARIANTS, ("decode",))
LORA_ALPHA = 32


@dataclass
class Case:
    fn: Callable[[], object]
    check: Callable[[], float]  # raises AssertionError when the provider is wrong; returns the error
    bytes: float
    flops: float


def _grad_fn(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], dy: torch.Tensor):
    """Forward then ``torch.autograd.grad`` into ``inputs`` (no ``.grad`` accumulates between calls)."""

    def call():
        return torch.autograd.grad(forward(), inputs, dy)

    return call


# ----------------------------------------------------------------------------- LoRA / DoRA

def _peft_linear(weight, lora_A, lora_B, dora_magnitude=None, train: bool = False):
    """peft's own ``lora.Linear`` around an ``nn.Linear`` holding ``weight``, with our A and B."""
    from peft import LoraConfig, get_peft_model

    n, k = weight.shape
    r = lora_A.shape[0]
    holder = torch.nn.Sequential()
    holder.add_module("proj", torch.nn.Linear(k, n, bias=False, device=weight.device, dtype=weight.dtype))
    cfg = LoraConfig(r=r, lora_alpha=LORA_ALPHA, target_modules=["proj"], use_dora=dora_magnitude is not None,
                     lora_dropout=0.0)
    model = get_peft_model(holder, cfg, autocast_adapter_dtype=False)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(weight)
        layer.lora_A["default"].weight.copy_(lora_A)
        layer.lora_B["default"].weight.copy_(lora_B)
        if dora_magnitude is not None:
            layer.lora_magnitude_vector["default"].weight.copy_(dora_magnitude)
    layer.lora_A["default"].weight.requires_grad_(train)
    layer.lora_B["default"].weight.requires_grad_(train)
    return model.eval(), layer


def lora_case(provider: str, tokens: int, hidden: int, rank: int, mode: str, device, dtype, seed: int = 0) -> Case:
    """``y = x W^T + s (x A^T) B^T`` with ``x [tokens, hidden]``, ``W [hidden, hidden]``, ``s = 32/r``
    (peft's ``lora_alpha / r``). ``fwdbwd`` differentiates into x, A and B (W frozen); the ``base``
    provider into x only (what the frozen base layer costs in training). ``triton_base`` (the
    Triton GEMM without the LoRA term, tiles as the fused kernel's at ``rank``) is forward only."""
    from talan_kernels.lora import dora_linear, lora_linear, lora_linear_ref
    from talan_kernels.lora.interface import DoraNormCache, base_linear_triton

    if provider in FORWARD_ONLY_PROVIDERS and mode == "fwdbwd":
        raise ValueError(f"LoRA provider {provider!r} is forward only (no mode {mode!r})")
    from talan_kernels.lora.reference import dora_linear_ref

    gen = torch.Generator(device="cpu").manual_seed(seed)
    k = n = hidden

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    train = mode == "fwdbwd"
    x = rnd(tokens, k).requires_grad_(train)
    w = rnd(n, k, scale=k ** -0.5)
    a = rnd(rank, k, scale=k ** -0.5).requires_grad_(train and provider != "base")
    b = rnd(n, rank, scale=0.1).requires_grad_(train and provider != "base")
    mag = None
    s = LORA_ALPHA / rank
    if provider.startswith("dora"):
        mag = (torch.linalg.vector_norm(w.float() + s * (b.float() @ a.float()), dim=1)
               * (1 + 0.1 * torch.rand(n, generator=gen).to(device))).to(dtype)

    def ref():
        if mag is not None:
            return dora_linear_ref(x, w, a, b, mag, s)
        return lora_linear_ref(x, w, a, b, s)

    if provider == "base":
        forward = lambda: x @ w.t()
        ref_out = lambda: (x.float() @ w.float().t()).to(dtype)
    elif provider == "triton_base":
        forward = lambda: base_linear_triton(x, w, rank=rank)
        ref_out = lambda: (x.float() @ w.float().t()).to(dtype)
    elif provider in ("torch", "dora_torch"):
        forward, ref_out = ref, ref
    elif provider == "triton":
        forward, ref_out = (lambda: lora_linear(x, w, a, b, s, backend="triton")), ref
    elif provider == "dora_triton":
        cache = DoraNormCache()
        forward = lambda: dora_linear(x, w, a, b, mag, s, backend="triton", norm_cache=cache)
        ref_out = ref
    elif provider in ("peft", "dora_peft"):
        _, layer = _peft_linear(w, a.detach(), b.detach(), mag, train)
        a_p, b_p = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        forward, ref_out = (lambda: layer(x)), ref
    else:
        raise ValueError(f"unknown LoRA provider {provider!r}")

    inputs = [x] if provider == "base" else ([x, a_p, b_p] if provider == "peft" else [x, a, b])
    dy = rnd(tokens, n)

    def check() -> float:
        if not train:
            with torch.no_grad():
                return check_close(forward(), ref_out(), f"lora {provider} {mode} output")
        err = check_close(forward(), ref_out(), f"lora {provider} {mode} output")
        got = torch.autograd.grad(forward(), inputs, dy)
        want = torch.autograd.grad(ref_out(), inputs[:1] if provider == "base" else [x, a, b], dy)
        for name, g, r in zip(("dx", "dA", "dB"), got, want):
            err = max(err, check_close(g, r, f"lora {provider} {mode} {name}"))
        return err

    if train:
        fn = _grad_fn(forward, inputs, dy)
    else:
        def fn():
            with torch.no_grad():
                return forward()
    e = torch.finfo(dtype).bits // 8
    lora_flops = 0 if provider in ("base", "triton_base") else 2 * tokens * rank * (k + n)
    flops = 2 * tokens * n * k + lora_flops
    traffic = (tokens * k + n * k + tokens * n) * e
    if train:  # dY read, W read again, dx written; the rank-r terms are small
        flops *= 2 if provider == "base" else 3
        traffic += (tokens * n + n * k + tokens * k) * e
    return Case(fn=fn, check=check, bytes=traffic, flops=flops)


# ----------------------------------------------------------------------------- side path

def side_path_params(hidden: int, latent: int, slots: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """The default block's tensors (attn mixer, tanh_gate per channel) with the gate opened to 0.5,
    so the side path really changes its output."""
    from talan import TalanConfig
    from talan.block import TalanBlock

    torch.manual_seed(seed)
    block = TalanBlock(hidden, TalanConfig(latent_dim=latent, num_slots=slots, backend="torch"))
    with torch.no_grad():
        block.gate.fill_(0.5)
    return {name: p.detach().to(device) for name, p in block.params().items()}


def _within(context: Callable[[], object], fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run inside a fresh ``context()`` each call."""

    def run():
        with context():
            return fn()
    return run


def _provider_context(provider: str) -> Callable[[], object] | None:
    """The launch choice a side-path provider times (None: the defaults)."""
    from talan_kernels.side_path.decode import decode_pipeline_stages, decode_programs_per_sequence
    from talan_kernels.side_path.precision import gpu_dot_precision

    if provider == "triton_tf32":  # one-pass TF32 fp32 dot products
        return lambda: gpu_dot_precision("tf32")
    if provider in DECODE_VARIANTS:
        stages, programs = DECODE_VARIANTS[provider]

        @contextlib.contextmanager
        def both():
            with decode_pipeline_stages(stages), decode_programs_per_sequence(programs):
                yield
        return both
    return None


def side_path_case(provider: str, batch: int, tokens: int, hidden: int, latent: int, slots: int, mode: str,
                   device, dtype, seed: int = 0) -> Case:
    """The TALAN block on ``h [batch, tokens, hidden]`` (``tokens`` = the prompt length for
    ``decode``, which then times one new token per sequence from the prompt's carried state)."""
    from talan_kernels.side_path import side_path, side_path_ref

    params = side_path_params(hidden, latent, slots, device, seed)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    h = torch.randn(batch, tokens, hidden, generator=gen).to(device=device, dtype=dtype)
    train = mode == "fwdbwd"
    state = None
    if mode == "decode":
        with torch.no_grad():
            _, state = side_path_ref(h, params)
        h = torch.randn(batch, 1, hidden, generator=gen).to(device=device, dtype=dtype)
    trainable = [p.requires_grad_(train) for p in params.values()]
    h.requires_grad_(train)

    def ref():
        return side_path_ref(h, params, state=state)

    if provider == "copy":
        forward = ref_out = lambda: (h.clone(), None)  # the floor: its "reference" is itself
    elif provider == "torch":
        forward, ref_out = ref, ref
    elif provider in ("triton", "triton_tf32", *DECODE_VARIANTS):
        if mode not in SIDE_PATH_PROVIDER_MODES.get(provider, (mode,)):
            raise ValueError(f"side path provider {provider!r} has no mode {mode!r}")
        forward, ref_out = (lambda: side_path(h, params, state=state, backend="triton")), ref
    else:
        raise ValueError(f"unknown side path provider {provider!r}")
    inputs = [h] + ([] if provider == "copy" else trainable)
    dy = torch.randn(h.shape, generator=gen).to(device=device, dtype=dtype)

    def check() -> float:
        with torch.set_grad_enabled(train):
            out, st = forward()
            want, want_st = ref_out()
            err = check_close(out, want, f"side path {provider} {mode} output")
            if st is not None:
                err = max(err, check_close(st[0], want_st[0], f"side path {provider} {mode} state S"),
                          check_close(st[1], want_st[1], f"side path {provider} {mode} state N"))
            if train:
                got = torch.autograd.grad(out, inputs, dy, allow_unused=True)
                ref_g = torch.autograd.grad(want, inputs, dy, allow_unused=True)
                for i, (g, r) in enumerate(zip(got, ref_g)):
                    if r is not None:
                        assert g is not None, f"side path {provider}: no gradient for input {i}"
                        err = max(err, check_close(g, r, f"side path {provider} grad {i}"))
        return err

    if train:
        fn = _grad_fn(lambda: forward()[0], inputs, dy)
    else:
        def fn():
            with torch.no_grad():
                return forward()
    context = _provider_context(provider)
    if context is not None:  # forward and backward launches alike
        fn, check = _within(context, fn), _within(context, check)
    e = torch.finfo(dtype).bits // 8
    n_tok = batch * h.shape[1]
    per_token = 2 * hidden * latent * 2 + 3 * 2 * latent * latent + 6 * slots * latent + 6 * hidden
    flops = 0 if provider == "copy" else n_tok * per_token * (3 if train else 1)
    traffic = 2 * n_tok * hidden * e * (2 if train else 1)
    if mode == "decode":
        traffic += 2 * batch * slots * (latent + 1) * 4  # the fp32 state, read and written
        if provider != "copy":  # the fp32 weights, read once (at batch 1 they are nearly all of it)
            traffic += sum(p.numel() for p in params.values()) * 4
    return Case(fn=fn, check=check, bytes=traffic, flops=flops)

