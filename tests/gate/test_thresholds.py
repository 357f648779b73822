"""GateThresholds: the deployment's accuracy block."""

from __future__ import annotations

import pytest

from agent.gate.thresholds import GateError, GateThresholds, parse_thresholds


def test_defaults_are_sensible():
    thresholds = GateThresholds()
    assert thresholds.top1_agreement == 0.85
    assert thresholds.top5_containment == 0.95
    assert thresholds.cosine == 0.98
    assert (thresholds.det_recall, thresholds.det_precision, thresholds.iou) == (0.8, 0.8, 0.5)
    assert thresholds.fallback == "none"


def test_round_trip_through_dict():
    thresholds = GateThresholds(top1_agreement=0.9, max_abs_error=0.5, fallback="fp16_layers")
    assert parse_thresholds(thresholds.to_dict()) == thresholds


def test_missing_keys_keep_defaults_and_none_is_default():
    assert parse_thresholds({"det_recall": 0.9}).det_precision == 0.8
    assert parse_thresholds(None) == GateThresholds()


@pytest.mark.parametrize(
    "block, word",
    [
        ({"top1_agreemnt": 0.9}, "unknown key"),
        ({"top1_agreement": 1.5}, "top1_agreement"),
        ({"cosine": "high"}, "cosine"),
        ({"fallback": "int4"}, "fallback"),
        ({"max_abs_error": -1}, "max_abs_error"),
        ({"det_recall": True}, "det_recall"),
        ([0.9], "object"),
    ],
)
def test_bad_blocks_are_refused_with_the_key_named(block, word):
    with pytest.raises(GateError, match=word):
        parse_thresholds(block)


def test_gated_metrics_depend_on_the_task():
    thresholds = GateThresholds(max_abs_error=0.1)
    assert [name for name, _, _ in thresholds.gated("classification")] == ["top1_agreement", "top5_containment"]
    assert [name for name, _, _ in thresholds.gated("detection")] == ["det_recall", "det_precision"]
    assert [(name, direction) for name, direction, _ in thresholds.gated("generic")] == [("cosine", "min"), ("max_abs_error", "max")]
