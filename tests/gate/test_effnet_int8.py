"""The issue's acceptance tests on the real EfficientNet-Lite0 and its Q/DQ INT8 builds (TensorRT placement,
run by onnxruntime): the good table passes, a corrupted one fails and names the damaged tensors."""

from __future__ import annotations

import json

from agent.gate.gate import run_gate
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from tests.gate.conftest import VALIDATION_FRAMES, ZEROED


def test_fp32_engine_agrees_with_its_reference(effnet_validation, effnet_path):
    result = run_gate(OnnxRuntimeRunner(effnet_path), effnet_validation)
    assert result.passed
    assert result.metrics["top1_agreement"] == 1.0


def test_int8_build_from_the_good_table_passes_with_top1_agreement(effnet_validation, effnet_int8_good, effnet_table, effnet_path):
    result = run_gate(OnnxRuntimeRunner(effnet_int8_good), effnet_validation, table=effnet_table, reference_model=effnet_path)
    assert result.passed, result.summary()
    # Every frame FP32 is sure of keeps its top-1; the misses are near ties, where FP32 itself hesitates (the
    # photos include textures, cells and a silhouette with no clear ImageNet class, so there are several).
    ties = set(effnet_validation.near_tie_frames())
    assert len(ties) <= VALIDATION_FRAMES // 2  # most frames have a clear class: the agreement measures something
    assert result.metrics["top1_agreement"] == 1.0
    assert result.metrics["top5_containment"] == 1.0
    disagreements = result.details["classification"]["disagreements"]
    assert disagreements and set(disagreements) <= ties
    assert result.table_issues == [] and result.culprits == []
    assert "top1_agreement" in result.summary()


def test_corrupted_table_fails_the_gate(corrupted_gate):
    assert not corrupted_gate.passed
    failed = {f.metric: f for f in corrupted_gate.failed}
    assert "top1_agreement" in failed
    assert failed["top1_agreement"].by > 0.5  # far below the limit, and the report says by how much


def test_corrupted_table_report_names_the_damaged_tensors(corrupted_gate, corrupted_table):
    reasons = {c.tensor: c.reason for c in corrupted_gate.culprits}
    for name in ZEROED:
        assert reasons[name] == "zero_scale"
    # the /100 scales pass every table-only check; the FP32 ranges show them clipped
    saturated = [name for name, reason in reasons.items() if reason == "saturated"]
    assert "input" in saturated
    assert len(saturated) >= len(corrupted_table.entries) // 2
    assert {c.tensor for c in corrupted_gate.table_issues} == set(ZEROED)


def test_corrupted_table_report_ranks_divergent_layers_and_recommends_fp16(corrupted_gate):
    assert corrupted_gate.divergent_layers
    assert all(layer.local_drop > 0 for layer in corrupted_gate.divergent_layers)
    assert corrupted_gate.diagnosis["frames"] == 2
    assert corrupted_gate.diagnosis["first_divergent_layer"] is not None
    fallback = corrupted_gate.fallback
    assert fallback["policy"] == "fp16_layers"
    assert fallback["layers"] and set(ZEROED) <= set(fallback["tensors"])
    assert "engine layer" in fallback["applies"]
    json.dumps(corrupted_gate.to_dict(), allow_nan=False)
