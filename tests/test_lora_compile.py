"""Every fused-LoRA kernel, at the launch configuration its launcher picks for prefill and decode
shapes, compiles for sm_80 and sm_90 with Triton's own ptxas: no register spills, shared memory
within the architecture's per-block limit, and for bf16 inputs the products run on bf16 tensor
cores (``mma.sync ... .bf16.bf16`` on sm_80, ``wgmma`` or ``mma.sync`` with bf16 operands on sm_90)
with no TF32 conversion left in the PTX; for fp32 inputs no TF32 tensor-core instruction at all
(the fp32 path is IEEE fp32)."""

import re

import pytest

pytest.importorskip("triton")

from talan_kernels.launching import GPU_KERNELS_UNAVAILABLE  # noqa: E402

if GPU_KERNELS_UNAVAILABLE:  # the launchers never compile the kernels for a GPU with this Triton
    pytest.skip(GPU_KERNELS_UNAVAILABLE, allow_module_level=True)

from talan_kernels.lora import interface  # noqa: E402
from talan_kernels.testing import SHARED_MEMORY_LIMIT, compile_for_gpu  # noqa: E402

pytestmark = pytest.mark.compile

_MMA = re.compile(r"\b(w?gmma\.mma_async\S*|mma\.sync\S*)")


def _split(cfg):
    meta = {k: v for k, v in cfg.items() if k.startswith(("BLOCK_", "GROUP_"))}
    return meta, cfg["num_warps"], cfg["num_stages"]


def _specialize_int(value: int) -> tuple:
    """A launch's ``(type, specialisation)`` of an int argument: ``("constexpr", 1)`` for 1, ``"D"`` for a
    multiple of 16. Triton's own function where it has one (>= 3.4), else the same rule for i32 values."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        return ("constexpr", 1) if value == 1 else ("i32", "D" if value % 16 == 0 else "")
    return native_specialize_impl(BaseBackend, value, False, True, True)


def _case(fn, ptrs: dict, ints: dict, floats: tuple, consts: dict):
    """Signature, constexprs and attributes as a real launch specialises them: 16-byte aligned
    pointers and ints divisible by 16 get ``tt.divisibility`` 16 (what lets the loads be vectorised
    and pipelined through shared memory), ints equal to 1 (unit strides, M = 1) become constexprs."""
    sig, consts, attrs = {}, dict(consts), {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = f"*{ptrs[name]}"
            attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
        elif name in floats:
            sig[name] = "fp32"
        else:
            ty, spec = _specialize_int(ints[name])
            if ty == "constexpr":
                sig[name], consts[name] = "constexpr", spec
            else:
                sig[name] = ty
                if spec == "D":
                    attrs[(fn.arg_names.index(name),)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _fwd_case(M, R, dtype):
    from talan_kernels.lora.kernels import _lora_fwd_kernel

    fp32 = dtype == "fp32"
    meta, warps, stages = _split(interface.fwd_config(M, 4096, 4096, R, fp32))
    consts = dict(HAS_BIAS=True, HAS_SCALE=True, SAVE_S=True, SAVE_Z=True, DOT_IN_FP32=fp32, HAS_LORA=True, **meta)
    ptrs = {n: dtype for n in ("X", "W", "A", "B", "BIAS", "Y", "Z_OUT")}
    ptrs.update(SCALE="fp32", S_OUT="fp32")
    ints = dict(M=M, N=4096, K=4096, R=R, stride_xm=4096, stride_xk=1, stride_wn=4096, stride_wk=1,
                stride_ar=4096, stride_ak=1, stride_bn=R, stride_br=1)
    return (_lora_fwd_kernel, *_case(_lora_fwd_kernel, ptrs, ints, ("scaling",), consts), warps, stages)


def _fwd_base_case(M, R, dtype):
    """The HAS_LORA=False forward as ``base_linear_triton`` launches it (with a bias): A, B, SCALE,
    S_OUT, Z_OUT are None (constexprs in a real launch), R and the adapter strides 0, tiles from
    ``fwd_config`` at rank R as the fused kernel's."""
    from talan_kernels.lora.kernels import _lora_fwd_kernel

    fp32 = dtype == "fp32"
    meta, warps, stages = _split(interface.fwd_config(M, 4096, 4096, R, fp32))
    consts = dict(A=None, B=None, SCALE=None, S_OUT=None, Z_OUT=None, HAS_BIAS=True, HAS_SCALE=False,
                  SAVE_S=False, SAVE_Z=False, DOT_IN_FP32=fp32, HAS_LORA=False, **meta)
    ptrs = {n: dtype for n in ("X", "W", "BIAS", "Y")}
    ints = dict(M=M, N=4096, K=4096, R=0, stride_xm=4096, stride_xk=1, stride_wn=4096, stride_wk=1,
                stride_ar=0, stride_ak=0, stride_bn=0, stride_br=0)
    return (_lora_fwd_kernel, *_case(_lora_fwd_kernel, ptrs, ints, ("scaling",), consts), warps, stages)


def _dx_case(M, R, dtype):
    from talan_kernels.lora.kernels import _lora_bwd_dx_kernel

    fp32 = dtype == "fp32"
    meta, warps, stages = _split(interface.bwd_dx_config(M, 4096, 4096, R, fp32))
    consts = dict(HAS_SCALE=True, HAS_DX=True, SAVE_DS=True, DOT_IN_FP32=fp32, **meta)
    ptrs = {n: dtype for n in ("DY", "W", "A", "B", "DX")}
    ptrs.update(SCALE="fp32", DS_OUT="fp32")
    ints = dict(M=M, N=4096, K=4096, R=R, stride_dym=4096, stride_dyn=1, stride_wn=4096, stride_wk=1,
                stride_ar=4096, stride_ak=1, stride_bn=R, stride_br=1)
    return (_lora_bwd_dx_kernel, *_case(_lora_bwd_dx_kernel, ptrs, ints, ("scaling",), consts), warps, stages)


def _wgrad_case(M, R, dtype):
    from talan_kernels.lora.kernels import _lora_wgrad_kernel

    fp32 = dtype == "fp32"
    meta, warps, stages = _split(interface.wgrad_config(M, 4096, R, fp32))
    # The dB launch: X = dY, Y = S (fp32), Z (DoRA), C = dB.
    consts = dict(HAS_SCALE=True, HAS_CSUM=True, DOT_IN_FP32=fp32, **meta)
    ptrs = dict(X=dtype, Y="fp32", Z=dtype, SCALE="fp32", C=dtype, CSUM="fp32")
    ints = dict(M=M, P=4096, R=R, stride_xm=4096, stride_xp=1, stride_ym=R, stride_yr=1, stride_cp=R, stride_cr=1)
    return (_lora_wgrad_kernel, *_case(_lora_wgrad_kernel, ptrs, ints, ("alpha",), consts), warps, stages)


def _norm_case(M, R, dtype):
    from talan_kernels.lora.kernels import _dora_norm_kernel

    fp32 = dtype == "fp32"
    meta, warps, stages = _split(interface.norm_config(4096, 4096, R, fp32))
    consts = dict(DOT_IN_FP32=fp32, **meta)
    ptrs = dict(W=dtype, A=dtype, B=dtype, GRAM="fp32", NORM="fp32")
    ints = dict(N=4096, K=4096, R=R, stride_wn=4096, stride_wk=1, stride_ar=4096, stride_ak=1, stride_bn=R,
                stride_br=1)
    return (_dora_norm_kernel, *_case(_dora_norm_kernel, ptrs, ints, ("scaling",), consts), warps, stages)


_CASES = {"fwd": _fwd_case, "fwd_base": _fwd_base_case, "bwd_dx": _dx_case, "wgrad": _wgrad_case,
          "dora_norm": _norm_case}
_SHAPES = {"prefill-r16": (4096, 16), "prefill-r64": (4096, 64), "prefill-r128": (4096, 128),
           "decode-r16": (1, 16), "decode-r128": (16, 128)}
# bf16 (the fast path) at every shape; fp32 (IEEE, CUDA cores) at the r=16 prefill shape.
_PARAMS = [(s, "bf16") for s in _SHAPES] + [("prefill-r16", "fp32")]


def _compile(kernel, shape, dtype, arch):
    """Compile for ``sm_<arch>`` without a GPU, with the divisibility attributes a real launch has; returns
    (registers, spill bytes, PTX, shared bytes) from Triton's own ptxas -v."""
    M, R = _SHAPES[shape]
    fn, sig, consts, attrs, warps, stages = _CASES[kernel](M, R, dtype)
    info = compile_for_gpu(fn, sig, consts, arch, num_warps=warps, num_stages=stages, attrs=attrs)
    return info.registers, info.spill_stores + info.spill_loads, info.ptx, info.shared_bytes


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("shape,dtype", _PARAMS, ids=[f"{s}-{d}" for s, d in _PARAMS])
@pytest.mark.parametrize("kernel", sorted(k for k in _CASES if k != "fwd_base"))
def test_kernel_compiles_on_tensor_cores_without_spills(kernel, shape, dtype, arch):
    if kernel == "dora_norm" and not shape.startswith("prefill"):
        pytest.skip("the norm kernel does not depend on the token count")
    regs, spills, ptx, smem = _compile(kernel, shape, dtype, arch)
    where = f"{kernel} {shape} {dtype} sm_{arch}"
    assert spills == 0, f"{where}: {spills} bytes of spill stores and loads ({regs} registers)"
    assert smem <= SHARED_MEMORY_LIMIT[arch], f"{where}: {smem} bytes of shared memory > {SHARED_MEMORY_LIMIT[arch]}"
    mmas = set(_MMA.findall(ptx))
    if dtype == "bf16":
        assert mmas, f"{where}: no tensor-core instruction in the PTX"
        assert all(".bf16" in m for m in mmas), f"{where}: non-bf16 tensor-core instructions {sorted(mmas)}"
        assert "tf32" not in ptx, f"{where}: TF32 conversions or products left in the bf16 path"
        if arch == 80:
            assert all(m.startswith("mma.sync") for m in mmas), sorted(mmas)
    else:
        assert not any("tf32" in m for m in mmas), f"{where}: TF32 products on the fp32 path {sorted(mmas)}"


def test_prefill_forward_uses_wgmma_on_sm90():
    # The 128x128 bf16 forward tile is warpgroup-sized: Hopper's asynchronous wgmma must be used.
    _, _, ptx, _ = _compile("fwd", "prefill-r16", "bf16", 90)
    mmas = set(_MMA.findall(ptx))
    assert any(m.startswith("wgmma.mma_async") and ".bf16.bf16" in m for m in mmas), sorted(mmas)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("shape", ["prefill-r16", "decode-r16"])
def test_base_forward_without_lora_compiles_on_bf16_tensor_cores(shape, arch):
    # The HAS_LORA=False forward (benchmarks' "same Triton GEMM without the LoRA term"): same tiles
    # as the fused kernel, no spill, bf16 tensor cores (wgmma for the 128x128 prefill tile on
    # sm_90), and strictly fewer tensor-core instructions than the fused kernel (no x Aᵀ, no S Bᵀ).
    regs, spills, ptx, smem = _compile("fwd_base", shape, "bf16", arch)
    where = f"fwd_base {shape} bf16 sm_{arch}"
    assert spills == 0, f"{where}: {spills} bytes of spill stores and loads ({regs} registers)"
    assert smem <= SHARED_MEMORY_LIMIT[arch], f"{where}: {smem} bytes of shared memory > {SHARED_MEMORY_LIMIT[arch]}"
    mmas = set(_MMA.findall(ptx))
    assert mmas and all(".bf16" in m for m in mmas), f"{where}: {sorted(mmas)}"
    assert "tf32" not in ptx, f"{where}: TF32 left in the bf16 path"
    if arch == 80:
        assert all(m.startswith("mma.sync") for m in mmas), sorted(mmas)
    elif shape.startswith("prefill"):
        assert any(m.startswith("wgmma.mma_async") and ".bf16.bf16" in m for m in mmas), sorted(mmas)
    fused_ptx = _compile("fwd", shape, "bf16", arch)[2]
    assert len(_MMA.findall(ptx)) < len(_MMA.findall(fused_ptx)), f"{where}: no fewer MMAs than the fused kernel"
