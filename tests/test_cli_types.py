"""The argparse value types of the ``talan`` commands (talan/cli_types.py): what each takes and the message of what
it refuses."""

import argparse
import re

import pytest

from talan.cli_types import non_negative_float, non_negative_int, positive_int


def test_each_type_takes_its_values():
    assert [positive_int(t) for t in ("1", "64")] == [1, 64]
    assert [non_negative_int(t) for t in ("0", "7")] == [0, 7]
    assert [non_negative_float(t) for t in ("0", "2.5", "1e-4")] == [0.0, 2.5, 1e-4]


@pytest.mark.parametrize("kind, text, message", [
    (positive_int, "0", "expected a positive integer, got 0"),
    (positive_int, "1.5", "expected a positive integer, got '1.5'"),
    (non_negative_int, "-1", "expected a non-negative integer, got -1"),
    (non_negative_int, "x", "expected a non-negative integer, got 'x'"),
    (non_negative_float, "-0.1", "expected a finite number >= 0, got '-0.1'"),
    (non_negative_float, "inf", "expected a finite number >= 0, got 'inf'"),
    (non_negative_float, "nan", "expected a finite number >= 0, got 'nan'"),
    (non_negative_float, "lots", "expected a number, got 'lots'"),
])
def test_each_type_names_what_it_refuses(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        kind(text)
