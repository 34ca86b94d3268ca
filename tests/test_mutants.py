"""The mutation sweep (tests/mutants.py, ``make mutants``) still applies: every mutant's text stands
once in its file, the mutated file is still Python, and its tests exist, so the sweep cannot rot into
mutants that change nothing or that fail on import."""

import pytest
from mutants import MUTANTS, ROOT, mutated_source


def test_mutant_names_are_unique():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_changes_its_file_once(mutant):
    source = (ROOT / mutant.path).read_text(encoding="utf-8")
    mutated = mutated_source(ROOT, mutant)
    assert mutated != source and len(mutated) - len(source) == len(mutant.new) - len(mutant.old)
    compile(mutated, mutant.path, "exec")  # a syntax error would fail the tests for the wrong reason
    files = [arg for arg in mutant.tests if arg.endswith(".py")]
    assert files and all((ROOT / test).is_file() for test in files)
