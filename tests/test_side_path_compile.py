"""Every side-path kernel, at the meta-parameters its launcher uses, compiles for sm_80 and sm_90
with Triton's own ptxas (no GPU needed), spills no registers and fits the GPU's shared memory.

Shapes: the defaults r = 64, M = 16 (and M = 32, R = 128 for the decode kernel and the fused
inference kernels; R = 128 and the widest R with many slots in a test of their own), hidden size 4096; the
residual stream in bf16 (and fp32 for the fused kernels).
"""

import os

import pytest

triton = pytest.importorskip("triton")

from talan_kernels.launching import GPU_KERNELS_UNAVAILABLE  # noqa: E402

if GPU_KERNELS_UNAVAILABLE:  # the launchers never compile the kernels for a GPU with this Triton
    pytest.skip(GPU_KERNELS_UNAVAILABLE, allow_module_level=True)

from talan_kernels.side_path import fused_kernels as FK  # noqa: E402
from talan_kernels.side_path import kernels as K  # noqa: E402
from talan_kernels.side_path.decode import MIXER_IDS, WRITEBACK_IDS, decode_config  # noqa: E402
from talan_kernels.side_path.fused import fused_kernel_configs  # noqa: E402
from talan_kernels.side_path.interface import MAX_TRITON_LATENT_DIM  # noqa: E402
from talan_kernels.side_path.triton_path import DEFAULT_CHUNK, chunk_kernel_configs  # noqa: E402
from talan_kernels.testing import SHARED_MEMORY_LIMIT, compile_for_gpu  # noqa: E402

pytestmark = pytest.mark.compile

FLOAT_ARGS = {"scale", "cap", "eps", "zero_add_scale", "norm_cap_ratio"}


def _signature(kernel, h_type: str = "*bf16") -> dict:
    """Triton types from the argument names: ``*_ptr`` pointers (the residual stream ``h_type``,
    resets int8, everything else fp32), the scalar hyper-parameters fp32, sizes i32."""
    sig = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = {"resets_ptr": "*i8", "h_ptr": h_type, "out_ptr": h_type}.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def _chunk_cases(r: int = 64, m: int = 16):
    kernels = {"state_fwd": K._slot_state_fwd_kernel, "scan_fwd": K._slot_scan_fwd_kernel,
               "scan_bwd": K._slot_scan_bwd_kernel, "state_bwd": K._slot_state_bwd_kernel,
               "carry_bwd": K._slot_carry_bwd_kernel}
    flags = {"state_fwd": dict(HAS_RESETS=True, HAS_STATE=True), "scan_fwd": dict(ATTN=True, HAS_RESETS=True),
             "scan_bwd": dict(ATTN=True, HAS_RESETS=True), "state_bwd": dict(HAS_RESETS=True),
             "carry_bwd": dict(HAS_RESETS=True)}
    cfgs = chunk_kernel_configs(r, m, DEFAULT_CHUNK, "cuda")
    cases = [(name, kernels[name], {**flags[name], **cfgs[name]}) for name in kernels]
    # the linear mixer takes the other branch of the two heaviest kernels
    cases += [(f"{name}-linear", kernels[name], {**flags[name], **cfgs[name], "ATTN": False})
              for name in ("scan_fwd", "scan_bwd")]
    return cases


def _decode_case(mixer: int, writeback: int, m: int, r: int):
    consts = dict(MIXER=mixer, WRITEBACK=writeback, GATE_PER_CHANNEL=True, HAS_RESETS=True, HAS_STATE=True,
                  **decode_config(4096, m, r))
    return f"decode-mixer{mixer}-wb{writeback}-R{r}-M{m}", K._side_path_decode_kernel, consts


def _decode_cases():
    """Every mixer with every writeback at the default size (16 slots, latent_dim 64), and a wider one."""
    every_pair = [(mixer, writeback, 16, 64) for mixer in MIXER_IDS.values() for writeback in WRITEBACK_IDS.values()]
    return [_decode_case(*c) for c in every_pair + [(3, 2, 32, 128)]]


def _shrink_case(r: int, h_type: str):
    """The inference shrink kernel with every optional output/branch."""
    cfg = fused_kernel_configs(4096, r, "tanh_gate", "cuda")["shrink"]
    flags = dict(STORE_Z=True, HAS_Q=True, HAS_GATE=True, HAS_HNORM=True)
    return f"shrink-R{r}-{h_type[1:]}", FK._side_path_shrink_kernel, {**flags, **cfg}, h_type


def _expand_case(writeback: str, r: int, h_type: str):
    cfg = fused_kernel_configs(4096, r, writeback, "cuda")["expand"]
    cfg = {k: v for k, v in cfg.items() if k != "D_PER_PROG"}
    flags = dict(WRITEBACK=WRITEBACK_IDS[writeback], GATE_PER_CHANNEL=True)
    return f"expand-{writeback}-R{r}-{h_type[1:]}", FK._side_path_expand_kernel, {**flags, **cfg}, h_type


def _fused_cases():
    """The inference shrink/expand kernels, the heaviest writebacks, both residual dtypes."""
    return ([_shrink_case(r, h_type) for r, h_type in ((64, "*bf16"), (64, "*fp32"), (128, "*bf16"))]
            + [_expand_case(*c) for c in (("tanh_gate", 64, "*bf16"), ("norm_cap", 64, "*fp32"),
                                          ("norm_cap", 128, "*bf16"), ("tanh_gate", 128, "*fp32"))])


def _compile(kernel, config: dict, h_type: str, arch: int):
    """Compile as launched: num_stages as the fused kernels set it, the others take Triton's default (3)."""
    consts = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages", "maxnreg")}
    return compile_for_gpu(kernel, _signature(kernel, h_type), consts, arch, num_warps=config["num_warps"],
                           num_stages=config.get("num_stages", 3), maxnreg=config.get("maxnreg"))


CASES = [(*c, "*bf16") for c in _chunk_cases() + _decode_cases()] + _fused_cases()


def test_runs_against_the_triton_make_test_asked_for():
    """``make test`` runs the compile tests a second time with an older Triton first on PYTHONPATH
    (the Makefile's TRITON_COMPAT) and names it here, so that run cannot quietly use the venv's own."""
    expected = os.environ.get("TALAN_EXPECT_TRITON")
    if not expected:
        pytest.skip("no TALAN_EXPECT_TRITON: the venv's own Triton")
    assert triton.__version__ == expected, f"imported Triton {triton.__version__} from {triton.__file__}"


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("name,kernel,config,h_type", CASES, ids=[c[0] for c in CASES])
def test_kernel_compiles_without_spills(name, kernel, config, h_type, arch):
    info = _compile(kernel, config, h_type, arch)
    assert info.registers <= 255
    assert info.spill_stores == 0, f"{name} on sm_{arch}: {info.spill_stores} bytes of spill stores\n{info.ptxas_log}"
    assert info.shared_bytes <= SHARED_MEMORY_LIMIT[arch], f"{name} on sm_{arch}: {info.shared_bytes} B shared"


# Slots for the largest-size test: the kernels take any number, so one well past the defaults, where the
# decode kernel walks the slots in blocks (BM <= 64) and the carry kernel in 16-slot blocks.
MANY_SLOTS = 256


def _largest_cases(r: int):
    """Every kernel at a wide block (up to interface.MAX_TRITON_LATENT_DIM) and many slots, as the launchers
    configure it; and the decode kernel's slot loop at the default width."""
    m = MANY_SLOTS
    return ([(f"{name}-R{r}-M{m}", kernel, config, "*bf16") for name, kernel, config in _chunk_cases(r, m)]
            + [_shrink_case(r, "*bf16"), _shrink_case(r, "*fp32"), _expand_case("norm_cap", r, "*bf16"),
               _expand_case("tanh_gate", r, "*fp32")]
            + [(*_decode_case(*c), "*bf16") for c in ((2, 3, m, r), (0, 1, m, 64), (1, 2, m, 64))])


@pytest.mark.parametrize("r", [128, MAX_TRITON_LATENT_DIM])
@pytest.mark.parametrize("arch", [80, 90])
def test_the_widest_blocks_the_kernels_take_fit_shared_memory_and_spill_little(arch, r):
    """Beyond the defaults (which spill nothing) up to the width the launchers accept, with many slots:
    every kernel fits the GPU's shared memory, so it launches, and spills at most 1 KB a thread (measured
    with Triton 3.9 / 3.6: <= 260 B, the backward kernels at R = 128; <= 172 / 228 B, the backward scan
    kernel at R = 256, where the products over R read their operands in slices: whole [16, 256] operands
    spilled up to 11 KB). One width further, R = 512, the backward kernels spill up to 4 KB: such blocks
    run on the PyTorch path."""
    worst = {}
    for name, kernel, config, h_type in _largest_cases(r):
        info = _compile(kernel, config, h_type, arch)
        assert info.shared_bytes <= SHARED_MEMORY_LIMIT[arch], f"{name}: {info.shared_bytes} B shared"
        worst[name] = info.spill_stores
    assert max(worst.values()) <= 1024, worst


def test_one_pass_tf32_reaches_every_gpu_config_and_compiles_without_spills():
    """The benchmarks' ``triton_tf32`` provider (precision.py): inside ``gpu_dot_precision("tf32")`` every
    GPU launch config carries it (the CPU's stays IEEE), the heaviest kernel compiles spill-free with it,
    and the default comes back after the block."""
    from talan_kernels.side_path.precision import gpu_dot_precision

    def gpu_precisions():
        configs = [*chunk_kernel_configs(64, 16, DEFAULT_CHUNK, "cuda").values(),
                   *fused_kernel_configs(4096, 64, "tanh_gate", "cuda").values()]
        return {c["DOT_PREC"] for c in configs if "DOT_PREC" in c}

    assert gpu_precisions() == {"tf32x3"}
    with gpu_dot_precision("tf32"):
        assert gpu_precisions() == {"tf32"}
        assert chunk_kernel_configs(64, 16, DEFAULT_CHUNK, "cpu")["scan_bwd"]["DOT_PREC"] == "ieee"
        config = chunk_kernel_configs(64, 16, DEFAULT_CHUNK, "cuda")["scan_bwd"]
        info = _compile(K._slot_scan_bwd_kernel, {**config, "ATTN": True, "HAS_RESETS": True}, "*bf16", 90)
        assert info.spill_stores == 0, info.ptxas_log
    assert gpu_precisions() == {"tf32x3"}
    with pytest.raises(ValueError, match="precision must be one of"):
        with gpu_dot_precision("fp16"):
            pass


@pytest.mark.parametrize("arch", [80, 90])
def test_decode_variants_reach_the_gpu_config_and_compile_without_spills(arch):
    """The benchmarks' decode providers (decode.py): inside ``decode_pipeline_stages(s)`` and
    ``decode_programs_per_sequence(p)`` the GPU decode config carries ``D_STAGES = s`` and whole-BD shares of D
    (the CPU's stays one plain program); pipelined, the loops over D become cp.async copies into shared memory.
    Each variant spills nothing and fits shared memory, at the default size with every writeback and at
    R = 128 with many slots. The defaults come back after the blocks."""
    from benchmarks.cases import DECODE_VARIANTS
    from talan_kernels.side_path.decode import decode_pipeline_stages, decode_programs_per_sequence

    assert (decode_config(4096, 16, 64)["D_STAGES"], decode_config(4096, 16, 64)["D_PER_PROG"]) == (1, 0)
    for stages, programs in DECODE_VARIANTS.values():
        with decode_pipeline_stages(stages), decode_programs_per_sequence(programs):
            cpu = decode_config(4096, 16, 64, "cpu")
            assert (cpu["D_STAGES"], cpu["D_PER_PROG"]) == (1, 0)
            cases = ([_decode_case(0, wb, 16, 64) for wb in WRITEBACK_IDS.values()]
                     + [_decode_case(3, 3, MANY_SLOTS, 128)])
            for name, kernel, config in cases:
                assert config["D_STAGES"] == stages
                assert config["D_PER_PROG"] == (4096 // programs if programs > 1 else 0)
                info = _compile(kernel, config, "*bf16", arch)
                where = f"{name} stages {stages} programs {programs} on sm_{arch}"
                assert info.spill_stores == 0, f"{where}: {info.spill_stores} B spilled\n{info.ptxas_log}"
                assert info.shared_bytes <= SHARED_MEMORY_LIMIT[arch], f"{where}: {info.shared_bytes} B shared"
                if stages > 1:  # Triton's pipeliner keeps stages - 1 fp32 [BD, BR] weight tiles in shared memory
                    assert info.shared_bytes >= 2 * config["BD"] * config["BR"] * 4, f"{where}: W tiles not staged"
    assert (decode_config(4096, 16, 64)["D_STAGES"], decode_config(4096, 16, 64)["D_PER_PROG"]) == (1, 0)
    with pytest.raises(ValueError, match="stages must be one of"):
        with decode_pipeline_stages(0):
            pass
    for programs in (0, 65, 2.0):  # [1, 64]: a share of D per program; an int
        with pytest.raises(ValueError, match=r"programs must be an int in \[1, 64\]"):
            with decode_programs_per_sequence(programs):
                pass
