"""Table diff: added, removed, changed beyond a relative tolerance."""

from __future__ import annotations

import math

import pytest

from agent.calib.diff import diff_tables, relative_difference
from agent.calib.table import CalibError, parse_table

A = parse_table(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\nconv: 3d000000\nrelu: 3e000000\ngone: 3c000000\n")
B = parse_table(b"TRT-100300-MinMaxCalibration\ninput: 3c010a14\nconv: 3d010000\nrelu: 3f000000\nnew: 3c000000\n")


def test_diff_lists_added_removed_and_changed() -> None:
    result = diff_tables(A, B, rel_tol=0.05)
    assert result.added == ["new"] and result.removed == ["gone"]
    assert [c.name for c in result.changed] == ["relu"]  # conv moved 0.8%, within tolerance
    assert result.changed[0].rel == pytest.approx(0.75)
    assert result.unchanged == 2 and not result.identical
    assert result.header == {"trt_version": ("8.6.1", "10.3.0"), "algorithm": ("EntropyCalibration2", "MinMaxCalibration")}
    assert [c.name for c in diff_tables(A, B, rel_tol=0.001).changed] == ["relu", "conv"]  # largest first


def test_identical_tables() -> None:
    assert diff_tables(A, A).identical


def test_relative_difference_of_degenerate_scales() -> None:
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(0.0, 1.0) == 1.0
    assert relative_difference(math.inf, math.inf) == 0.0
    assert relative_difference(math.inf, 1.0) == math.inf
    assert relative_difference(math.nan, math.nan) == 0.0
    assert relative_difference(math.nan, 1.0) == math.inf


def test_tolerance_must_be_sane() -> None:
    with pytest.raises(CalibError):
        diff_tables(A, B, rel_tol=-1)
    with pytest.raises(CalibError):
        diff_tables(A, B, rel_tol=math.nan)
