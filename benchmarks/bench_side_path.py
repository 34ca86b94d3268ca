"""The TALAN side path (slot scan + mixer + writeback): reference vs Triton, with a copy of ``h`` as
the memory floor. Groups are ``side_path <mode> B<batch> T<tokens> D<hidden> r<latent> M<slots>``;
for ``decode`` T is the prompt whose state the timed one-token step continues.
"""

from __future__ import annotations

import pytest

from .cases import SIDE_PATH_PROVIDER_MODES, SIDE_PATH_PROVIDERS, side_path_case
from .common import bench_device, side_path_triton_status


def side_path_grid(quick: bool, cuda: bool) -> list[tuple[str, int, int, int, int, int]]:
    """(mode, batch, tokens, hidden, latent, slots)."""
    if quick:
        return [(m, 2, 32, 64, 16, 4) for m in ("fwd", "fwdbwd", "decode")]
    if cuda:
        big = [(1, 4096, d, 64, 16) for d in (1024, 2048, 4096)] + [(1, 4096, 1024, 16, 16), (8, 512, 2048, 64, 16)]
        return ([("fwd", *s) for s in big] + [("fwdbwd", *s) for s in big]
                + [("decode", b, 512, d, 64, 16) for b in (1, 16) for d in (1024, 4096)])
    return [("fwd", 1, 256, 1024, 64, 16), ("fwdbwd", 1, 256, 1024, 64, 16),
            ("decode", 1, 64, 1024, 64, 16), ("decode", 16, 64, 1024, 64, 16)]


def pytest_generate_tests(metafunc):
    if "sp_shape" in metafunc.fixturenames:
        shapes = side_path_grid(metafunc.config.getoption("--quick"), bench_device().type == "cuda")
        pairs = [(shape, provider) for provider in SIDE_PATH_PROVIDERS for shape in shapes
                 if shape[0] in SIDE_PATH_PROVIDER_MODES.get(provider, (shape[0],))]
        metafunc.parametrize("sp_shape,provider", pairs,
                             ids=[f"{p}-{m}-B{b}-T{t}-D{d}-r{r}-M{s}" for (m, b, t, d, r, s), p in pairs])


def test_side_path(run_case, device, dtype, sp_shape, provider):
    mode, batch, tokens, hidden, latent, slots = sp_shape
    if provider.startswith("triton"):
        ok, why = side_path_triton_status(device)
        if not ok:
            pytest.skip(why)
    case = side_path_case(provider, batch, tokens, hidden, latent, slots, mode, device, dtype)
    run_case(case, f"side_path {mode} B{batch} T{tokens} D{hidden} r{latent} M{slots}", provider=provider,
             mode=mode, batch=batch, tokens=tokens, hidden=hidden, latent=latent, slots=slots, dtype=str(dtype))
