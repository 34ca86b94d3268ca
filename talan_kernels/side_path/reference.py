"""Reference PyTorch implementation of the TALAN side path (SPEC §1), fp32 compute.

Shapes: ``B`` batch, ``T`` tokens, ``D`` hidden size, ``M`` memory slots, ``R`` latent width.

The block, per token t (``a_t`` the active mask, ``cap`` the score soft-cap):

    x_t = RMSNorm(h_t);  z_t = x_t W_in;  k_t = z_t W_k;  v_t = z_t W_v
    s_tm = cap * tanh(<q_m, k_t> / (sqrt(R) * cap));   w_tm = a_t * exp(s_tm - cap)
    S_tm = sum_{u<=t} w_um;   N_tm = sum_{u<=t} w_um v_u;   mem_tm = N_tm / S_tm  (0 where S = 0)
    c_t  = mixer(z_t, mem_t);   u_t = c_t W_out;   h'_t = h_t + a_t * writeback(u_t, x_t, h_t)

Prefix sums restart at packed-sequence boundaries (``resets``) and continue from a carried decode
state ``(S, N)``. ``slot_memory_oracle`` is an independent O(T^2) masked-softmax form for tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIXERS = ("attn", "linear", "mlp", "glu")
WRITEBACKS = ("zero_add", "tanh_gate", "token_gate", "norm_cap")
RMS_EPS = 1e-6


def _up(x: torch.Tensor) -> torch.Tensor:
    """Compute dtype: fp32 for fp32/bf16/fp16 inputs, fp64 kept (for gradcheck and oracles)."""
    return x if x.dtype == torch.float64 else x.float()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass, gradient times ``scale`` in the backward pass."""
    if scale == 1.0 or not x.requires_grad:
        return x
    return _ScaleGrad.apply(x, scale)


def rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """RMSNorm over the last dim in fp32: ``h / sqrt(mean(h^2) + eps) * weight``."""
    h32 = _up(h)
    return h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps) * _up(weight)


def slot_weights(k: torch.Tensor, slot_queries: torch.Tensor, active: torch.Tensor, cap: float) -> torch.Tensor:
    """Pooling weights ``w = a * exp(cap*tanh(<q,k>/(sqrt(R)*cap)) - cap)`` in (0, 1], ``[B, T, M]``."""
    r = k.shape[-1]
    logits = (_up(k) @ _up(slot_queries).t()) / math.sqrt(r)
    scores = cap * torch.tanh(logits / cap)
    return _up(active).unsqueeze(-1) * torch.exp(scores - cap)


def _segmented_cumsum(x: torch.Tensor, resets: torch.Tensor | None, init: torch.Tensor | None) -> torch.Tensor:
    """Inclusive prefix sum over dim 1 that restarts where ``resets`` is True and starts from
    ``init`` (broadcast over T) before the first reset. With resets it sums in fp64, so the
    subtraction that implements the restart does not lose the small sums of a late segment."""
    if resets is None:
        csum = x.cumsum(1)
        return csum if init is None else csum + init.to(x.dtype).unsqueeze(1)
    csum = x.double().cumsum(1)
    # Subtract the sum up to (and excluding) the latest reset at or before t, gathered per position.
    b, t = resets.shape
    trailing = [1] * (x.dim() - 2)
    idx = torch.arange(t, device=x.device).expand(b, t)
    last_start = torch.where(resets, idx, torch.zeros_like(idx)).cummax(1).values  # [B, T]
    before = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], 1)
    csum = csum - before.gather(1, last_start.view(b, t, *trailing).expand_as(x))
    if init is not None:  # the carried state counts only before the first reset
        no_reset_yet = (resets.long().cumsum(1) == 0).view(b, t, *trailing)
        csum = csum + init.double().unsqueeze(1) * no_reset_yet
    return csum.to(x.dtype)


def slot_memory_ref(k, v, slot_queries, active, cap, resets=None, state=None):
    """Causal attention pooling into ``M`` slots by prefix sums (SPEC §1 stage 1).

    Args:
        k, v: ``[B, T, R]`` keys and values.
        slot_queries: ``[M, R]``.
        active: ``[B, T]`` 0/1 (bool or float); inactive tokens never enter the memory.
        cap: score soft-cap.
        resets: ``[B, T]`` bool or None; True where a packed sequence starts (memory restarts).
        state: ``(S [B, M], N [B, M, R])`` fp32 carried from earlier tokens, or None.

    Returns:
        ``mem`` ``[B, T, M, R]`` fp32 and the final state ``(S [B, M], N [B, M, R])``.
    """
    w = slot_weights(k, slot_queries, active, cap)  # [B, T, M]
    wv = w.unsqueeze(-1) * _up(v).unsqueeze(2)  # [B, T, M, R]
    s0, n0 = state if state is not None else (None, None)
    if k.shape[1] == 1 and resets is None and state is not None:  # decode step: no scan needed
        S, N = s0.to(w.dtype).unsqueeze(1) + w, n0.to(w.dtype).unsqueeze(1) + wv
    else:
        S = _segmented_cumsum(w, resets, s0)  # [B, T, M]
        N = _segmented_cumsum(wv, resets, n0)  # [B, T, M, R]
    positive = S > 0
    mem = torch.where(positive.unsqueeze(-1), N / torch.where(positive, S, 1.0).unsqueeze(-1), 0.0)
    return mem, (S[:, -1], N[:, -1])


def slot_memory_oracle(k, v, slot_queries, active, cap, resets=None):
    """O(T^2) form of ``slot_memory_ref`` without state: a per-slot softmax of the capped scores
    over the active tokens ``u <= t`` of t's own packed sequence. For tiny test shapes only."""
    b, t, r = k.shape
    logits = torch.einsum("bur,mr->bum", k, slot_queries) / math.sqrt(r)
    scores = cap * torch.tanh(logits / cap)  # [B, U, M]
    seg = resets.long().cumsum(1) if resets is not None else torch.zeros(b, t, dtype=torch.long)
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # [T, U]
    allowed = causal & (seg.unsqueeze(2) == seg.unsqueeze(1)) & active.bool().unsqueeze(1)  # [B, T, U]
    s = scores.unsqueeze(1).expand(b, t, t, -1)  # [B, T, U, M]
    s = s.masked_fill(~allowed.unsqueeze(-1), float("-inf"))
    attn = torch.softmax(s, dim=2).nan_to_num(0.0)  # rows with no allowed token -> 0
    return torch.einsum("btum,bur->btmr", attn, v)


def mix_memory(z, mem, params, mixer):
    """Stage 2: remix the slot memory ``mem [B, T, M, R]`` into ``c [B, T, R]``."""
    if mixer == "linear":
        return (_up(params["mix_weights"]) @ mem)  # [B, T, R]
    r = z.shape[-1]
    query = z @ _up(params["w_q"])  # [B, T, R]
    attn = torch.softmax((mem @ query.unsqueeze(-1)).squeeze(-1) / math.sqrt(r), dim=-1)  # [B, T, M]
    read = (attn.unsqueeze(-2) @ mem).squeeze(-2)  # [B, T, R]
    if mixer == "attn":
        return read
    if mixer == "mlp":
        hidden = F.silu(torch.cat([z, read], -1) @ _up(params["w_1"]))
        return hidden @ _up(params["w_2"])
    if mixer == "glu":
        return torch.sigmoid(z @ _up(params["w_glu"])) * read
    raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")


def write_back(h32, x, u, params, writeback, zero_add_scale, norm_cap_ratio):
    """Stage 3: the perturbation added to the residual stream (before the active mask)."""
    if writeback == "zero_add":
        return zero_add_scale * u
    if writeback == "tanh_gate":
        return torch.tanh(_up(params["gate"])) * u
    if writeback == "token_gate":
        gate = torch.sigmoid(x @ _up(params["gate_weight"]) + _up(params["gate_bias"]))
        return gate.unsqueeze(-1) * u
    if writeback == "norm_cap":
        limit = norm_cap_ratio * torch.linalg.vector_norm(h32, dim=-1, keepdim=True)
        length = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        # u * limit / max(|u|, limit): at most `limit` long; the clamp avoids 0/0 when h = u = 0.
        return u * (limit / torch.maximum(length, limit).clamp_min(torch.finfo(torch.float32).tiny))
    raise ValueError(f"writeback must be one of {WRITEBACKS}, got {writeback!r}")


def side_path_ref(h, params, active=None, resets=None, state=None, *, mixer="attn", writeback="tanh_gate",
                  cap=15.0, zero_add_scale=1.0, norm_cap_ratio=1e-2, grad_scale=1.0):
    """The whole TALAN block (stages 1-3) in plain PyTorch.

    Args:
        h: ``[B, T, D]`` residual stream (any float dtype).
        params: dict of the block's tensors: ``norm_weight [D]``, ``w_in [D, R]``, ``w_k [R, R]``,
            ``w_v [R, R]``, ``slot_queries [M, R]``, ``w_out [R, D]`` and, by option, ``w_q [R, R]``
            (attn/mlp/glu), ``mix_weights [M]`` (linear), ``w_1 [2R, R]``, ``w_2 [R, R]`` (mlp),
            ``w_glu [R, R]`` (glu), ``gate [D] or [1]`` (tanh_gate), ``gate_weight [D]`` and
            ``gate_bias [1]`` (token_gate).
        active: ``[B, T]`` 0/1 mask or None (all active). Inactive tokens get a zero perturbation.
        resets: ``[B, T]`` bool or None; True where a packed sequence starts.
        state: ``(S [B, M], N [B, M, R])`` fp32 decode state or None.
        grad_scale: scales the gradient that flows from the side path back into ``h``.

    Returns:
        ``h' [B, T, D]`` in ``h.dtype`` and the new state ``(S, N)``.
    """
    if active is None:
        active = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    compute = torch.float64 if h.dtype == torch.float64 else torch.float32
    params = {name: p if p.dtype == compute else p.to(compute) for name, p in params.items()}
    h_in = scale_grad(h, grad_scale)
    h32 = _up(h_in)
    x = rms_norm(h32, params["norm_weight"])  # [B, T, D]
    z = x @ _up(params["w_in"])  # [B, T, R]
    k = z @ _up(params["w_k"])
    v = z @ _up(params["w_v"])
    mem, new_state = slot_memory_ref(k, v, params["slot_queries"], active, cap, resets, state)
    c = mix_memory(z, mem, params, mixer)  # [B, T, R]
    u = c @ _up(params["w_out"])  # [B, T, D]
    delta = write_back(h32, x, u, params, writeback, zero_add_scale, norm_cap_ratio)
    delta = active.to(delta.dtype).unsqueeze(-1) * delta
    return (_up(h) + delta).to(h.dtype), new_state
