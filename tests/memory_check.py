"""Bounds and race checking for kernels run by Triton's interpreter.

Two kinds of bug pass every interpreter test and first show on a GPU, because the interpreter reads
and writes raw host addresses, checks nothing, and runs a launch's programs one after another:

- a load or store outside the tensors the launch was given (on a GPU an illegal memory access, or,
  inside the caching allocator's block, a silent read of another tensor);
- two programs of one launch touching the same element, one of them writing it (on a GPU they run
  concurrently, so the result depends on their order; the interpreter always takes one order).

``install()`` (tests/conftest.py calls it in every ``TRITON_INTERPRET=1`` session) makes every load
and store check that the addresses its mask lets through lie inside one tensor argument of the launch
(the span from its first to its last element), raising ``OutOfBoundsAccess`` naming the kernel, the
access and the nearest argument otherwise; and at the end of every launch it raises ``RaceBetweenPrograms``
when an element written by one program was read or written by another. Lanes the mask turns off are
not accessed on a GPU either, so they are not checked.
"""

from __future__ import annotations

import numpy as np

# the launch being interpreted: kernel name, [(argument name, first byte, end byte)], and the
# (addresses, program index) of every load and store so far
_launch: dict = {"kernel": None, "extents": [], "loads": [], "stores": []}
_installed = False


class OutOfBoundsAccess(AssertionError):
    pass


class RaceBetweenPrograms(AssertionError):
    pass


def tensor_extents(arg_names, args, kwargs) -> list[tuple[str, int, int]]:
    """``(name, first byte, end byte)`` of every non-empty tensor argument (strides are never negative in torch)."""
    named = list(zip(arg_names, args)) + list(kwargs.items())
    extents = []
    for name, arg in named:
        if not hasattr(arg, "data_ptr") or not hasattr(arg, "numel") or arg.numel() == 0:
            continue
        span = sum((size - 1) * stride for size, stride in zip(arg.shape, arg.stride())) + 1
        start = arg.data_ptr()
        extents.append((name, start, start + span * arg.element_size()))
    return extents


def check_access(kind: str, live: np.ndarray, itemsize: int) -> None:
    """Raise ``OutOfBoundsAccess`` unless every address the mask let through (``live``), with its
    ``itemsize`` bytes, lies inside one tensor argument of the current launch."""
    if live.size == 0:
        return
    lo, hi = int(live.min()), int(live.max()) + itemsize
    extents = _launch["extents"]
    if any(start <= lo and hi <= end for _, start, end in extents):
        return
    where = "no tensor argument"
    holder = [(name, start, end) for name, start, end in extents if start <= lo < end]
    if holder:
        name, start, end = holder[0]
        where = f"`{name}` holds bytes [0, {end - start}) and the access reaches byte {hi - start}"
    elif extents:
        name, start, end = min(extents, key=lambda e: min(abs(lo - e[1]), abs(lo - e[2])))
        where = f"nearest is `{name}`, the access starts at its byte {lo - start} of [0, {end - start})"
    raise OutOfBoundsAccess(f"{_launch['kernel']}: a {kind} of {live.size} elements ({itemsize} B each) leaves "
                            f"the launch's tensors: {where}")


def _live(addresses: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The addresses the mask lets through (an unmasked access comes with an all-true mask)."""
    return addresses[np.broadcast_to(mask, addresses.shape)]


def _pairs(accesses: list) -> tuple[np.ndarray, np.ndarray]:
    """Unique (address, program) pairs of a list of ``(addresses, program)``, sorted by address."""
    if not accesses:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    addr = np.concatenate([a for a, _ in accesses]).astype(np.uint64)
    prog = np.concatenate([np.full(a.size, p, np.int64) for a, p in accesses])
    pairs = np.unique(np.stack([addr, prog.astype(np.uint64)], 1), axis=0)
    return pairs[:, 0], pairs[:, 1].astype(np.int64)


def _argument_of(address: int) -> str:
    for name, start, end in _launch["extents"]:
        if start <= address < end:
            return f"`{name}` (byte {address - start})"
    return "an address outside the tensors"


def check_races(loads: list, stores: list) -> None:
    """Raise ``RaceBetweenPrograms`` if an element stored by one program of the launch is stored or
    loaded by another. ``loads``/``stores``: ``(addresses, program index)`` of every access."""
    w_addr, w_prog = _pairs(stores)
    if w_addr.size == 0:
        return
    shared = np.flatnonzero(w_addr[1:] == w_addr[:-1])  # sorted: the same address from two programs
    if shared.size:
        i = shared[0]
        raise RaceBetweenPrograms(
            f"{_launch['kernel']}: programs {w_prog[i]} and {w_prog[i + 1]} both store to "
            f"{_argument_of(int(w_addr[i]))} ({np.unique(w_addr[shared]).size} elements stored by several programs)")
    r_addr, r_prog = _pairs(loads)
    idx = np.minimum(np.searchsorted(w_addr, r_addr), w_addr.size - 1)
    crossing = np.flatnonzero((w_addr[idx] == r_addr) & (w_prog[idx] != r_prog))
    if crossing.size:
        j = crossing[0]
        raise RaceBetweenPrograms(
            f"{_launch['kernel']}: program {r_prog[j]} loads {_argument_of(int(r_addr[j]))}, which program "
            f"{w_prog[idx[j]]} stores in the same launch ({crossing.size} such loads)")


def _program(builder) -> int:
    (x, y, z), (nx, ny, _) = builder.grid_idx, builder.grid_dim
    return x + nx * (y + ny * z)


def _itemsize(ptrs) -> int:
    return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)


def install() -> None:
    """Patch the interpreter (Triton 3.0 to 3.9 share these names): record each launch's tensor arguments
    when it copies them for the interpreter, check every masked load and store (unmasked ones go through
    these too) and, when the launch returns, the programs' accesses against each other."""
    global _installed
    if _installed:
        return
    from triton.runtime import interpreter

    call = interpreter.GridExecutor.__call__
    init_args = interpreter.GridExecutor._init_args_hst
    masked_load = interpreter.InterpreterBuilder.create_masked_load
    masked_store = interpreter.InterpreterBuilder.create_masked_store

    def record_launch(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        _launch["kernel"] = getattr(self.fn, "__name__", str(self.fn))
        _launch["extents"] = tensor_extents(self.arg_names, args_hst, kwargs_hst)
        return args_hst, kwargs_hst

    def checked_launch(self, *args, **kwargs):
        _launch["loads"], _launch["stores"] = [], []
        try:
            result = call(self, *args, **kwargs)
            check_races(_launch["loads"], _launch["stores"])
            return result
        finally:
            _launch["loads"], _launch["stores"] = [], []

    def record_access(kind, builder, ptrs, mask):
        live = _live(ptrs.data, mask.data)
        check_access(kind, live, _itemsize(ptrs))
        _launch[f"{kind}s"].append((live, _program(builder)))

    def checked_load(self, ptrs, mask, *rest, **kw):
        record_access("load", self, ptrs, mask)
        return masked_load(self, ptrs, mask, *rest, **kw)

    def checked_store(self, ptrs, value, mask, *rest, **kw):
        record_access("store", self, ptrs, mask)
        return masked_store(self, ptrs, value, mask, *rest, **kw)

    interpreter.GridExecutor.__call__ = checked_launch
    interpreter.GridExecutor._init_args_hst = record_launch
    interpreter.InterpreterBuilder.create_masked_load = checked_load
    interpreter.InterpreterBuilder.create_masked_store = checked_store
    _installed = True
