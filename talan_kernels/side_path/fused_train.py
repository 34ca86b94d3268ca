"""The training path's d-wide stages: the shrink and expand kernels forward, low-rank GEMMs backward.

Forward, the same kernels as inference (``fused.py``): the shrink reads ``h`` once for RMSNorm,
``z = x W_in``, ``k, v, q = z W_k, z W_v, z W_q``, the token-gate logit and ``||h||``; the expand writes
``h' = h + a * wb(c W_out)`` once. Backward, the r x r projections' gradients are r-wide GEMMs, and
every d-wide gradient comes from two GEMMs per stage against ``[N, R]`` operands, with the row
reductions of RMSNorm and the writebacks taken in r-wide space instead of over ``[N, D]``:

- shrink (``x = rmsnorm(h) * w``, ``Y = [dz | dlogit]``, ``Wc = [W_in | gate_weight]``):
  ``H = h^T (rstd * Y)`` gives ``dW_in = w * H_z``, ``dgate_weight = w * H_l`` and
  ``dnorm_weight = sum_j Wc * H``; ``dh = rstd * Y (w * Wc)^T - h * (rstd^2 * m - dhnorm / ||h||)``
  with ``m = <Y, [z | logit - gate_bias]> / D`` (``sum_d dx * w * xhat`` from the forward's own outputs).
- expand (``G = dh'``, ``Q = G W_out^T``): ``dc`` from ``Q``, ``dW_out`` from ``(coef * c)^T G``, and the
  gate, token-gate and norm-cap gradients from ``Q``, ``c`` and ``W_out W_out^T`` (``<G, u> = <Q, c>``,
  ``||u||^2 = c W_out W_out^T c^T``).

HBM bytes per token (bf16 ``h``; ``D`` hidden size): forward 6 D (the kernels), backward about 50 D (``G``
and ``h`` each upcast to fp32 once and read by two GEMMs, ``dh`` written in fp32, updated in place and
cast, then added to the residual's ``dh'``), against about 82 D forward and more backward for autograd
over PyTorch stages. Counts, not timings.
"""

from __future__ import annotations

import torch

from . import ops  # registers torch.ops.talan.*; ops.resolve picks op or implementation
from .reference import RMS_EPS


class ShrinkFunction(torch.autograd.Function):
    """``h [N, D] -> z, k, v [N, R], q [N, R] (or [N, 0] without w_q), logit [N] (or [0]), hnorm [N]``:
    RMSNorm, ``W_in``, the r x r projections, the token-gate logit and ``||h||`` in one read of ``h``."""

    @staticmethod
    def forward(ctx, h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias):
        has_gate = gate_weight is not None
        z, k, v, q, logit, hnorm = ops.resolve("side_path_shrink")(
            h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias, True, True)
        ctx.save_for_backward(h, norm_weight, w_in, w_k, w_v, w_q, gate_weight if has_gate else None,
                              gate_bias if has_gate else None, z, logit, hnorm)
        return z, k, v, q, logit, hnorm

    @staticmethod
    def backward(ctx, dz, dk, dv, dq, dlogit, dhnorm):
        h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias, z, logit, hnorm = ctx.saved_tensors
        d = h.shape[1]
        has_gate = gate_weight is not None
        grads = [None] * 8
        # the r x r projections: z feeds k, v, q
        dz = torch.zeros_like(z) if dz is None else dz.float()
        for i, (w, dy) in ((3, (w_k, dk)), (4, (w_v, dv)), (5, (w_q, dq))):
            if w is None or dy is None:
                continue
            dz = dz + dy @ w.T
            if ctx.needs_input_grad[i]:
                grads[i] = z.T @ dy
        y, proj, w_cat = dz, z, w_in  # [N, R'], [N, R'], [D, R']
        if has_gate:
            dlogit = torch.zeros_like(logit) if dlogit is None else dlogit.float()
            y = torch.cat([dz, dlogit[:, None]], 1)
            proj = torch.cat([z, (logit - gate_bias)[:, None]], 1)  # x @ w_cat
            w_cat = torch.cat([w_in, gate_weight[:, None]], 1)
        rstd = torch.rsqrt(hnorm * hnorm / d + RMS_EPS)  # what the kernel normalised with
        h32 = h.float()
        if any(ctx.needs_input_grad[1:3]) or (has_gate and ctx.needs_input_grad[6]):
            big_h = h32.T @ (rstd[:, None] * y)  # [D, R'] = xhat^T Y
            if ctx.needs_input_grad[1]:
                grads[1] = (w_cat * big_h).sum(1)
            if ctx.needs_input_grad[2]:
                grads[2] = norm_weight[:, None] * big_h[:, :w_in.shape[1]]
            if has_gate and ctx.needs_input_grad[6]:
                grads[6] = norm_weight * big_h[:, -1]
        if has_gate and ctx.needs_input_grad[7]:
            grads[7] = dlogit.sum().reshape(gate_bias.shape)
        if ctx.needs_input_grad[0]:
            m = (y * proj).sum(1) / d  # mean_d(dx * w * xhat), in r-wide space
            row = rstd * rstd * m
            if dhnorm is not None:
                row = row - torch.where(hnorm > 0, dhnorm.float() / hnorm.clamp_min(1e-30), 0.0)
            dh = (rstd[:, None] * y) @ (w_cat * norm_weight[:, None]).T  # the row scale on the r-wide side
            grads[0] = dh.addcmul_(h32, row[:, None], value=-1.0).to(h.dtype)
        return tuple(grads)


class ExpandFunction(torch.autograd.Function):
    """``h' = h + a * writeback(c W_out)`` in one write (the expand kernel). ``gate`` (tanh_gate), ``logit``
    (token_gate) and ``hnorm`` (norm_cap) are None for the other writebacks. The gradient to ``h`` is
    ``dh'`` itself: the residual's; what the writeback owes to ``h`` flows through ``logit``/``hnorm``."""

    @staticmethod
    def forward(ctx, h, c, w_out, active, gate, logit, hnorm, writeback, zero_add_scale, norm_cap_ratio):
        out = ops.resolve("side_path_expand")(h, c, w_out, active, gate, logit, hnorm, writeback,
                                               zero_add_scale, norm_cap_ratio)
        ctx.save_for_backward(c, w_out, active, gate, logit, hnorm)
        ctx.writeback, ctx.zero_add_scale, ctx.norm_cap_ratio = writeback, zero_add_scale, norm_cap_ratio
        return out

    @staticmethod
    def backward(ctx, dout):
        c, w_out, active, gate, logit, hnorm = ctx.saved_tensors
        g = dout.float()  # [N, D]
        wb = ctx.writeback
        need_w = ctx.needs_input_grad[2] or (wb == "tanh_gate" and ctx.needs_input_grad[4])
        dgate = dlogit = dhnorm = dw_out = None
        if wb == "tanh_gate":
            t = torch.tanh(gate)  # [D] or [1]; du = a * G * t
            coef = active
            dc = coef[:, None] * (g @ (w_out * t).T)
        else:
            q = g @ w_out.T  # [N, R]; <G, u> = <Q, c> row by row
            if wb == "zero_add":
                coef = active * ctx.zero_add_scale  # du = coef * G
                dc = coef[:, None] * q
            elif wb == "token_gate":
                sig = torch.sigmoid(logit)
                coef = active * sig
                dc = coef[:, None] * q
                dlogit = active * sig * (1 - sig) * (q * c).sum(1)
            else:  # norm_cap: delta = f u, f = L / max(|u|, L), L = ratio ||h||; capped: du = a f (G - kappa u)
                c_gram = c @ (w_out @ w_out.T)  # [N, R]: u W_out^T, as <u, u> = <c_gram, c>
                usq = (c_gram * c).sum(1)  # ||u||^2
                length, limit = usq.sqrt(), ctx.norm_cap_ratio * hnorm
                capped = length >= limit  # (with L = |u| = 0 the forward's f is 0 / tiny = 0: capped too)
                f = torch.where(capped, limit / length.clamp_min(1e-30), 1.0)
                gu = (q * c).sum(1)
                kappa = torch.where(capped, gu / usq.clamp_min(1e-30), 0.0)  # <G, u> / |u|^2
                coef = active * f
                dc = coef[:, None] * (q - kappa[:, None] * c_gram)
                dhnorm = ctx.norm_cap_ratio * torch.where(capped, active * gu / length.clamp_min(1e-30), 0.0)
        if need_w:
            p = (coef[:, None] * c).T @ g  # [R, D] = (coef c)^T G
            if wb == "tanh_gate":
                dw_out = p * t
                per_channel = (w_out * p).sum(0)  # dL/dt_d = sum_t a G_td u_td
                dgate = (per_channel if gate.numel() > 1 else per_channel.sum(0, keepdim=True)) * (1 - t * t)
            elif wb == "norm_cap":
                dw_out = p - ((coef * kappa)[:, None] * c).T @ c @ w_out
            else:
                dw_out = p
        return (dout if ctx.needs_input_grad[0] else None, dc, dw_out if ctx.needs_input_grad[2] else None, None,
                dgate if ctx.needs_input_grad[4] else None, dlogit, dhnorm, None, None, None)
