"""The interpreter's bounds and race checks (tests/memory_check.py, installed by conftest in every
interpreter run) fail a kernel whose mask lets a load or store leave its tensors, or whose programs touch
an element another program of the launch stores, and pass kernels that do neither."""

import os

import pytest
import torch

pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")]

triton = pytest.importorskip("triton")
tl = triton.language


@triton.jit
def _copy_kernel(src, dst, n, limit, BLOCK: tl.constexpr):
    # ``limit`` sets the mask: n is right, anything larger lets lanes past the end through
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < limit, other=0.0), mask=offs < n)


@triton.jit
def _store_kernel(dst, limit, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(dst + offs, offs.to(tl.float32), mask=offs < limit)


@triton.jit
def _sum_into_kernel(dst, src, BLOCK: tl.constexpr):
    # every program stores its block's sum to dst[0]: on a GPU the last one to finish wins
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst, tl.sum(tl.load(src + offs), 0))


@triton.jit
def _neighbour_kernel(buf, out, n):
    # each program stores its own element, then reads its neighbour's: written by another program
    pid = tl.program_id(0)
    tl.store(buf + pid, pid.to(tl.float32))
    tl.store(out + pid, tl.load(buf + (pid + 1) % n))


def _copy(n, limit):
    src = torch.arange(float(n))
    dst = torch.full((n,), float("nan"))
    _copy_kernel[(triton.cdiv(n, 16),)](src, dst, n, limit, BLOCK=16)
    return src, dst


def test_a_kernel_that_stays_inside_its_tensors_passes():
    src, dst = _copy(37, 37)  # odd length: the last tile's mask turns off 11 lanes
    assert torch.equal(dst, src)
    base = torch.zeros(40)
    _store_kernel[(1,)](base[8:], 32, BLOCK=32)  # a view: its span ends where the storage does
    assert torch.equal(base[8:], torch.arange(32.0))


def test_a_load_past_the_end_fails_with_the_kernel_and_the_tensor_named():
    with pytest.raises(Exception, match=r"_copy_kernel: a load of .* leaves the launch's tensors: `src` holds "
                                         r"bytes \[0, 148\) and the access reaches byte 152"):
        _copy(37, 38)


def test_a_store_past_the_end_of_a_view_fails():
    base = torch.zeros(64)
    view = base[8:40]  # 32 elements inside a larger storage: its neighbours are not the kernel's to write
    with pytest.raises(Exception, match=r"_store_kernel: a store of 33 elements .* `dst` holds bytes \[0, 128\)"):
        _store_kernel[(1,)](view, 33, BLOCK=64)


def test_programs_storing_to_one_element_fail():
    with pytest.raises(Exception, match=r"_sum_into_kernel: programs 0 and 1 both store to `dst` \(byte 0\)"):
        _sum_into_kernel[(2,)](torch.zeros(1), torch.ones(32), BLOCK=16)
    _sum_into_kernel[(1,)](dst := torch.zeros(1), torch.ones(16), BLOCK=16)  # one program: no race
    assert dst.item() == 16


def test_a_program_loading_what_another_stores_fails():
    with pytest.raises(Exception, match=r"_neighbour_kernel: program 3 loads `buf` \(byte 0\), which program 0 "
                                         r"stores in the same launch \(4 such loads\)"):
        _neighbour_kernel[(4,)](torch.zeros(4), torch.zeros(4), 4)
