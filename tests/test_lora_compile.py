"""Every fused-LoRA kernel, at the launch configuration its launcher picks for prefill and decode
shapes, compiles for sm_80 and sm_90 with Triton's own ptxas and spills no registers."""

import pytest

pytest.importorskip("triton")

from talan_kernels.lora import interface  # noqa: E402
from talan_kernels.testing import compile_for_gpu  # noqa: E402

pytestmark = pytest.mark.compile

_PTR, _I, _F = "*bf16", "i32", "fp32"


def _split(cfg):
    meta = {k: v for k, v in cfg.items() if k.startswith("BLOCK_")}
    return meta, cfg["num_warps"], cfg["num_stages"]


def _fwd_case(M, R):
    from talan_kernels.lora.kernels import _lora_fwd_kernel

    meta, warps, stages = _split(interface.fwd_config(M, 4096, 4096, R))
    flags = dict(HAS_BIAS=True, HAS_SCALE=True, SAVE_S=True, SAVE_Z=True)
    sig = {n: _PTR for n in ("X", "W", "A", "B", "BIAS", "Y", "Z_OUT")}
    sig.update(SCALE="*fp32", S_OUT="*fp32", scaling=_F)
    sig.update({n: _I for n in ("M", "N", "K", "R", "stride_xm", "stride_xk", "stride_wn", "stride_wk",
                                "stride_ar", "stride_ak", "stride_bn", "stride_br")})
    consts = {**flags, **meta}
    sig.update({k: "constexpr" for k in consts})
    return _lora_fwd_kernel, sig, consts, warps, stages


def _dx_case(M, R):
    from talan_kernels.lora.kernels import _lora_bwd_dx_kernel

    meta, warps, stages = _split(interface.bwd_dx_config(M, 4096, 4096, R))
    sig = {n: _PTR for n in ("DY", "W", "A", "B", "DX")}
    sig.update(SCALE="*fp32", DS_OUT="*fp32", scaling=_F)
    sig.update({n: _I for n in ("M", "N", "K", "R", "stride_dym", "stride_dyn", "stride_wn", "stride_wk",
                                "stride_ar", "stride_ak", "stride_bn", "stride_br")})
    consts = dict(HAS_SCALE=True, HAS_DX=True, SAVE_DS=True, **meta)
    sig.update({k: "constexpr" for k in consts})
    return _lora_bwd_dx_kernel, sig, consts, warps, stages


def _wgrad_case(M, R):
    from talan_kernels.lora.kernels import _lora_wgrad_kernel

    meta, warps, stages = _split(interface.wgrad_config(M, 4096, R))
    sig = {"X": _PTR, "Y": "*fp32", "Z": _PTR, "SCALE": "*fp32", "C": _PTR, "CSUM": "*fp32", "alpha": _F}
    sig.update({n: _I for n in ("M", "P", "R", "stride_xm", "stride_xp", "stride_ym", "stride_yr",
                                "stride_cp", "stride_cr")})
    consts = dict(HAS_SCALE=True, HAS_CSUM=True, **meta)
    sig.update({k: "constexpr" for k in consts})
    return _lora_wgrad_kernel, sig, consts, warps, stages


def _norm_case(M, R):
    from talan_kernels.lora.kernels import _dora_norm_kernel

    meta, warps, stages = _split(interface.norm_config(4096, 4096, R))
    sig = {"W": _PTR, "A": _PTR, "B": _PTR, "GRAM": "*fp32", "NORM": "*fp32", "scaling": _F}
    sig.update({n: _I for n in ("N", "K", "R", "stride_wn", "stride_wk", "stride_ar", "stride_ak",
                                "stride_bn", "stride_br")})
    sig.update({k: "constexpr" for k in meta})
    return _dora_norm_kernel, sig, meta, warps, stages


_CASES = {"fwd": _fwd_case, "bwd_dx": _dx_case, "wgrad": _wgrad_case, "dora_norm": _norm_case}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("M,R", [(4096, 16), (4096, 64), (4096, 128), (1, 16), (16, 128)],
                         ids=["prefill-r16", "prefill-r64", "prefill-r128", "decode-r16", "decode-r128"])
@pytest.mark.parametrize("kernel", sorted(_CASES))
def test_kernel_compiles_without_spills(kernel, M, R, arch):
    if kernel == "dora_norm" and M != 4096:
        pytest.skip("the norm kernel does not depend on the token count")
    fn, sig, consts, warps, stages = _CASES[kernel](M, R)
    info = compile_for_gpu(fn, sig, consts, arch=arch, num_warps=warps, num_stages=stages)
    assert info.spill_stores == 0, f"{kernel} M={M} r={R} sm_{arch}: {info.spill_stores} bytes spilled"
    assert info.spill_loads == 0, f"{kernel} M={M} r={R} sm_{arch}: {info.spill_loads} bytes reloaded"
    assert info.registers <= 255
