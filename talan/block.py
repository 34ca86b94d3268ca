"""`TalanBlock`: the parameters of one TALAN side path and its forward (SPEC §1).

The math lives in `talan_kernels.side_path` (the PyTorch reference and the Triton kernels); this
module owns the parameters, their initialisation and the trainability scope. Parameters are raw
`nn.Parameter`s, never `nn.Linear` submodules, so peft's `target_modules="all-linear"` never wraps
them, and they are fp32 whatever the host's dtype (as peft keeps adapter weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from talan_kernels.side_path import side_path

from .config import TalanConfig

COMPRESSOR_PARAMS = ("norm_weight", "w_in", "w_k", "w_v", "slot_queries")
WRITEBACK_PARAMS = ("w_out", "gate", "gate_weight", "gate_bias")


class TalanBlock(nn.Module):
    """One TALAN block for a residual stream of width ``hidden_size``.

    ``forward(h [B, T, D], active [B, T], resets [B, T], state) -> (h' [B, T, D], state)``.
    """

    def __init__(self, hidden_size: int, config: TalanConfig, device=None):
        super().__init__()
        self.hidden_size = hidden_size
        self.config = config
        d, r, m = hidden_size, config.latent_dim, config.num_slots
        f32 = {"device": device, "dtype": torch.float32}

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, **f32))

        self.norm_weight = param(d)
        self.w_in = param(d, r)
        self.w_k = param(r, r)
        self.w_v = param(r, r)
        self.slot_queries = param(m, r)
        if config.mixer in ("attn", "mlp", "glu"):
            self.w_q = param(r, r)
        if config.mixer == "linear":
            self.mix_weights = param(m)
        if config.mixer == "mlp":
            self.w_1 = param(2 * r, r)
            self.w_2 = param(r, r)
        if config.mixer == "glu":
            self.w_glu = param(r, r)
        self.w_out = param(r, d)
        if config.writeback == "tanh_gate":
            self.gate = param(d if config.gate_per_channel else 1)
        if config.writeback == "token_gate":
            self.gate_weight = param(d)
            self.gate_bias = param(1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SPEC §1 initialisation: every writeback is an exact identity at init, and the first
        backward step still reaches some parameter (never both the gate and ``w_out`` zero)."""
        if self.norm_weight.is_meta:
            return
        r = self.config.latent_dim
        self.norm_weight.fill_(1.0)
        self.w_in.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
        self.w_k.copy_(torch.eye(r))
        self.w_v.copy_(torch.eye(r))
        self.slot_queries.normal_(0.0, 1.0)
        for name, fan_in in (("w_q", r), ("w_1", 2 * r), ("w_2", r), ("w_glu", r)):
            if hasattr(self, name):
                getattr(self, name).normal_(0.0, 1.0 / math.sqrt(fan_in))
        if hasattr(self, "mix_weights"):
            self.mix_weights.fill_(1.0 / self.config.num_slots)
        if self.config.writeback == "tanh_gate":
            self.w_out.normal_(0.0, 1.0 / math.sqrt(r))
            self.gate.zero_()
        else:
            self.w_out.zero_()
        if self.config.writeback == "token_gate":
            self.gate_weight.normal_(0.0, 1.0 / math.sqrt(self.hidden_size))
            self.gate_bias.fill_(self.config.token_gate_bias)

    def params(self) -> dict[str, torch.Tensor]:
        """The block's tensors by the names `talan_kernels.side_path` expects (its own registered
        parameters: what ``named_parameters(recurse=False)`` yields, without its ~8 µs of generator
        machinery on every call, which a decode step pays per block)."""
        return {name: p for name, p in self._parameters.items() if p is not None}

    def apply_trainable_scope(self) -> None:
        """Set ``requires_grad`` of every parameter from ``config.trainable``."""
        scope = self.config.trainable
        for name, p in self.named_parameters(recurse=False):
            if scope == "joint":
                p.requires_grad_(True)
            elif scope == "freeze_compressor":
                p.requires_grad_(name not in COMPRESSOR_PARAMS)
            else:  # writeback_only
                p.requires_grad_(name in WRITEBACK_PARAMS)

    def forward(self, h, active=None, resets=None, state=None):
        c = self.config
        return side_path(h, self.params(), active, resets, state, mixer=c.mixer, writeback=c.writeback,
                         cap=c.score_cap, zero_add_scale=c.zero_add_scale, norm_cap_ratio=c.norm_cap_ratio,
                         grad_scale=c.grad_scale, backend=c.backend)

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden_size={self.hidden_size}, num_slots={c.num_slots}, latent_dim={c.latent_dim}, "
                f"mixer={c.mixer}, writeback={c.writeback}")
