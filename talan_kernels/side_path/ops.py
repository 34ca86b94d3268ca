"""``torch.library`` custom ops over the side-path kernels, with fake (meta) implementations, so
``torch.compile`` traces them as opaque nodes instead of breaking the graph at a Triton launch.

The real implementations launch the kernels: on CUDA tensors natively, on CPU tensors under
``TRITON_INTERPRET=1``. Launchers are imported inside the bodies because they import this module.
Callers take an op through ``resolve(name)``: the registered op while something traces, the same
implementation without the dispatcher's overhead in plain eager mode (``launching.use_custom_op``).
"""

# typing.List / Optional, and no `from __future__ import annotations`: torch 2.4's schema inference takes
# only these annotation objects (not list[...] nor strings); later releases accept both.
from typing import List, Optional

import torch
from torch import Tensor

from ..launching import EagerOps

_OPS = EagerOps()
resolve = _OPS.resolve  # callers: ``ops.resolve("<name>")(...)``


@torch.library.custom_op("talan::slot_scan_fwd", mutates_args=())
@_OPS.keep
def slot_scan_fwd(k: Tensor, v: Tensor, slot_queries: Tensor, mix: Tensor, active: Tensor,
                  resets: Optional[Tensor], s0: Optional[Tensor], n0: Optional[Tensor], cap: float, attn: bool,
                  chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from .triton_path import slot_scan_fwd as launch

    return launch(k, v, slot_queries, mix, active, resets, s0, n0, cap, attn, chunk_size)


@slot_scan_fwd.register_fake
def _(k, v, slot_queries, mix, active, resets, s0, n0, cap, attn, chunk_size):
    b, t, r = k.shape
    m = slot_queries.shape[0]
    nc = (t + chunk_size - 1) // chunk_size
    f32 = dict(dtype=torch.float32, device=k.device)
    return (torch.empty(b, t, r, **f32), torch.empty(b, t if attn else 0, **f32), torch.empty(b, nc, m, **f32),
            torch.empty(b, nc, m, r, **f32), torch.empty(b, m, **f32), torch.empty(b, m, r, **f32))


@torch.library.custom_op("talan::slot_scan_bwd", mutates_args=())
@_OPS.keep
def slot_scan_bwd(k: Tensor, v: Tensor, slot_queries: Tensor, mix: Tensor, active: Tensor,
                  resets: Optional[Tensor], cs: Tensor, cn: Tensor, c: Tensor, lse: Tensor, dc: Tensor, cap: float,
                  attn: bool, chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .triton_path import slot_scan_bwd as launch

    return launch(k, v, slot_queries, mix, active, resets, cs, cn, c, lse, dc, cap, attn, chunk_size)


@slot_scan_bwd.register_fake
def _(k, v, slot_queries, mix, active, resets, cs, cn, c, lse, dc, cap, attn, chunk_size):
    f32 = dict(dtype=torch.float32)
    return (torch.empty_like(k, **f32), torch.empty_like(v, **f32), torch.empty_like(slot_queries, **f32),
            torch.empty_like(mix, **f32))


@torch.library.custom_op("talan::side_path_decode", mutates_args=())
@_OPS.keep
def side_path_decode(h: Tensor, core: List[Tensor], mixer_params: List[Tensor], writeback_params: List[Tensor],
                     active: Tensor, resets: Optional[Tensor], s0: Optional[Tensor], n0: Optional[Tensor],
                     mixer: str, writeback: str, cap: float, zero_add_scale: float,
                     norm_cap_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    from .decode import decode_launch

    return decode_launch(h, core, mixer_params, writeback_params, active, resets, s0, n0, mixer, writeback, cap,
                         zero_add_scale, norm_cap_ratio)


@side_path_decode.register_fake
def _(h, core, mixer_params, writeback_params, active, resets, s0, n0, mixer, writeback, cap, zero_add_scale,
      norm_cap_ratio):
    b = h.shape[0]
    m, r = core[4].shape
    return (torch.empty_like(h), h.new_empty(b, m, dtype=torch.float32), h.new_empty(b, m, r, dtype=torch.float32))


@torch.library.custom_op("talan::side_path_shrink", mutates_args=())
@_OPS.keep
def side_path_shrink(h: Tensor, norm_weight: Tensor, w_in: Tensor, w_k: Tensor, w_v: Tensor, w_q: Optional[Tensor],
                     gate_weight: Optional[Tensor], gate_bias: Optional[Tensor], need_z: bool,
                     need_hnorm: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from .fused import shrink_launch

    return shrink_launch(h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias, need_z, need_hnorm)


@side_path_shrink.register_fake
def _(h, norm_weight, w_in, w_k, w_v, w_q, gate_weight, gate_bias, need_z, need_hnorm):
    n, r = h.shape[0], w_in.shape[1]
    f32 = dict(dtype=torch.float32, device=h.device)
    return (torch.empty(n, r if need_z else 0, **f32), torch.empty(n, r, **f32), torch.empty(n, r, **f32),
            torch.empty(n, r if w_q is not None else 0, **f32), torch.empty(n if gate_weight is not None else 0, **f32),
            torch.empty(n if need_hnorm else 0, **f32))


@torch.library.custom_op("talan::side_path_expand", mutates_args=())
@_OPS.keep
def side_path_expand(h: Tensor, c: Tensor, w_out: Tensor, active: Tensor, gate: Optional[Tensor],
                     logit: Optional[Tensor], hnorm: Optional[Tensor], writeback: str, zero_add_scale: float,
                     norm_cap_ratio: float) -> Tensor:
    from .fused import expand_launch

    return expand_launch(h, c, w_out, active, gate, logit, hnorm, writeback, zero_add_scale, norm_cap_ratio)


@side_path_expand.register_fake
def _(h, c, w_out, active, gate, logit, hnorm, writeback, zero_add_scale, norm_cap_ratio):
    return torch.empty_like(h)
