"""A detection validation set from BlazeFace (full range) on real photos and video frames."""

from __future__ import annotations

import numpy as np
import pytest

from agent.gate.gate import run_gate
from agent.gate.thresholds import GateError, GateThresholds
from agent.gate.validation import load_validation
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from tests.gate.conftest import blazeface_decoder, perturbed_copy


def test_detection_set_holds_the_reference_faces(blazeface_validation):
    assert blazeface_validation.task == "detection"
    detections = blazeface_validation.detections
    assert sum(len(d) for d in detections) >= blazeface_validation.count  # about one face a frame or more
    names = blazeface_validation.frame_names
    astronaut = detections[names.index("astronaut.png")]
    # the astronaut's face about [173, 68, 107, 107] in the 512x512 photo
    assert len(astronaut) == 1
    assert np.allclose(astronaut.boxes[0] * 512, [173, 68, 107, 107], atol=4)
    assert blazeface_validation.decoder_config["score_threshold"] == 0.5


def test_fp32_passes_and_reports_iou_matched_recall(blazeface_validation, blazeface_path):
    result = run_gate(OnnxRuntimeRunner(blazeface_path), blazeface_validation, decoder=blazeface_decoder())
    assert result.passed, result.summary()
    assert result.metrics["det_recall"] == 1.0
    assert result.metrics["det_precision"] == 1.0
    detection = result.details["detection"]
    assert detection["matched"] == detection["reference_boxes"] > 0
    assert detection["iou_threshold"] == 0.5


def test_a_degraded_detector_loses_recall(blazeface_validation, blazeface_path, tmp_path):
    damaged = perturbed_copy(blazeface_path, tmp_path / "damaged.onnx", "depthwise_conv2d_26/Kernel", noise=1.0)
    result = run_gate(OnnxRuntimeRunner(damaged), blazeface_validation, GateThresholds(det_recall=0.95), decoder=blazeface_decoder())
    assert not result.passed
    assert result.metrics["det_recall"] < 0.95
    assert result.details["detection"]["missed_frames"]


def test_decoder_found_by_name_from_the_set(blazeface_validation, blazeface_path):
    loaded = load_validation(blazeface_validation.to_bytes())
    assert run_gate(OnnxRuntimeRunner(blazeface_path), loaded).passed


def test_unknown_decoder_is_a_clear_error(blazeface_validation, blazeface_path):
    from agent.gate.validation import ValidationSet

    meta = dict(blazeface_validation.meta, decoder={"kind": "no-such-decoder", "score_threshold": 0.5})
    odd = ValidationSet(meta, blazeface_validation.arrays)
    with pytest.raises(GateError, match="no box decoder of kind 'no-such-decoder'"):
        run_gate(OnnxRuntimeRunner(blazeface_path), odd)
