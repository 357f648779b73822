"""Culprits from the table alone and from real activation ranges."""

from __future__ import annotations

import numpy as np

from agent.gate.culprits import (
    TensorRange,
    accumulate_range,
    merge_culprits,
    range_issues,
    scale_issues,
    table_scales,
)


def test_zero_negative_and_non_finite_scales_are_named():
    issues = scale_issues({"a": 0.01, "zero": 0.0, "neg": -0.5, "nan": float("nan"), "inf": float("inf")})
    assert {c.tensor: c.reason for c in issues} == {
        "zero": "zero_scale",
        "neg": "negative_scale",
        "nan": "non_finite_scale",
        "inf": "non_finite_scale",
    }


def test_absurd_and_outlier_scales_are_named():
    scales = {f"t{i}": 0.02 * (1 + i / 10) for i in range(10)}
    scales.update(tiny=1e-12, huge=1e5, odd=5e-8)
    reasons = {c.tensor: c.reason for c in scale_issues(scales)}
    assert reasons == {"tiny": "tiny_scale", "huge": "huge_scale", "odd": "outlier_scale"}


def test_a_healthy_table_has_no_issues():
    assert scale_issues({f"t{i}": 0.01 * (i + 1) for i in range(20)}) == []


def test_saturation_and_coarse_ranges_against_real_values():
    values = np.linspace(-10, 10, 1001)
    ranges = {
        "clipped": accumulate_range(values, 0.01, None),  # table range +-1.27 against values to +-10
        "fine": accumulate_range(values, 10 / 127, None),
        "coarse": accumulate_range(values / 1000, 10 / 127, None),
    }
    found = {c.tensor: c for c in range_issues({"clipped": 0.01, "fine": 10 / 127, "coarse": 10 / 127}, ranges)}
    assert set(found) == {"clipped", "coarse"}
    assert found["clipped"].reason == "saturated" and "clipped" in found["clipped"].detail
    assert found["coarse"].reason == "coarse"


def test_ranges_accumulate_over_frames():
    first = accumulate_range(np.array([1.0, -2.0]), 1 / 127, None)
    both = accumulate_range(np.array([3.0]), 1 / 127, first)
    assert both == TensorRange(amax=3.0, clipped=2, count=3)


def test_table_scales_reads_tables_mappings_and_entries():
    class Entry:
        scale = 0.5

    class Table:
        def __init__(self) -> None:
            self.entries = {"a": 0.25, "b": Entry()}

    assert table_scales(Table()) == {"a": 0.25, "b": 0.5}
    assert table_scales({"x": 1}) == {"x": 1.0}
    assert table_scales(None) == {}


def test_merge_keeps_the_worst_of_each():
    a = scale_issues({"z": 0.0})
    b = scale_issues({"z": 0.0, "n": float("nan")})
    merged = merge_culprits(a, b)
    assert sorted(c.tensor for c in merged) == ["n", "z"]
