"""The transformers/peft floors in pyproject.toml are the versions `make test` runs the suite on a second
time (the Makefile's HF_FLOOR), and that run really imports them; the torch floor is the release line that
the opt-in `make test-old-torch` installs by default."""

import os
import re
from pathlib import Path

import peft
import pytest
import transformers
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _makefile_floor() -> dict[str, Version]:
    """``{"transformers": Version("4.57.6"), ...}`` from the Makefile's ``HF_FLOOR := name==version ...``."""
    found = re.search(r"^HF_FLOOR\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile has no HF_FLOOR line"
    return {name: Version(version) for name, version in (pin.split("==") for pin in found.group(1).split())}


def test_pyproject_floors_are_the_versions_make_test_runs_on():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(line).name: Requirement(line) for line in project["dependencies"]}
    tested = _makefile_floor()
    assert set(tested) == {"transformers", "peft"}
    for name, version in tested.items():
        specifier = requirements[name].specifier
        floors = [Version(spec.version) for spec in specifier if spec.operator == ">="]
        assert version in specifier, f"{name}=={version} (tested) is outside pyproject's {specifier}"
        # the floor names the tested release line, so a user on an older one is refused, not untested
        assert len(floors) == 1 and floors[0].release[:2] == version.release[:2], (name, str(specifier))


def test_pyproject_torch_floor_is_what_make_test_old_torch_runs_on():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(Requirement(line) for line in project["dependencies"] if Requirement(line).name == "torch")
    found = re.search(r"^OLD_TORCH\s*\?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile has no OLD_TORCH line"
    tested = Version(found.group(1))
    floors = [Version(spec.version) for spec in torch_req.specifier if spec.operator == ">="]
    assert tested in torch_req.specifier and len(floors) == 1 and floors[0].release[:2] == tested.release[:2]


def test_runs_against_the_hf_stack_make_test_asked_for():
    """``make test`` puts HF_FLOOR (or HF_MID: transformers alone) first on PYTHONPATH and names it here, so that
    run cannot quietly use the venv's own transformers and peft."""
    expected = os.environ.get("TALAN_EXPECT_HF")
    if not expected:
        pytest.skip("no TALAN_EXPECT_HF: the venv's own transformers and peft")
    modules = {"transformers": transformers, "peft": peft}
    pins = dict(pin.split("==") for pin in expected.split())
    assert pins and set(pins) <= set(modules), expected
    imported = {name: modules[name].__version__ for name in pins}
    assert imported == pins, f"imported {imported} from {[modules[name].__file__ for name in pins]}"
