"""The kernel mutation sweep (tests/kernel_mutants.py, ``make mutants``) still applies: every mutant's text stands
once in its kernel file, the mutated file is still Python, and its tests exist, so the sweep cannot rot into
mutants that change nothing or that fail on import."""

import pytest
from kernel_mutants import MUTANTS, ROOT, mutated_source


def test_mutant_names_are_unique():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_kernel_mutant_changes_its_kernel_once(mutant):
    source = (ROOT / mutant.path).read_text(encoding="utf-8")
    mutated = mutated_source(ROOT, mutant)
    assert mutated != source and len(mutated) - len(source) == len(mutant.new) - len(mutant.old)
    compile(mutated, mutant.path, "exec")  # a syntax error would fail the tests for the wrong reason
    assert all((ROOT / test).is_file() for test in mutant.tests)
