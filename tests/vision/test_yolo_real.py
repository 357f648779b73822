"""A real YOLO detector from a registry package: NudeNet's YOLOv8n (`nudenet==3.4.2` ships `320n.onnx` and its
own decoding; tests/registry_material.py fetches the wheel once into the user's cache). It runs on the shared
photos and videos, is decoded by the project's YOLO postprocessor with NMS, and is checked against the
package's own decoding of the same raw output; then its INT8 route: calibration tables from frames, the Q/DQ
model, and the accuracy gate's detection metrics (IoU-matched recall and precision against FP32).

Its 18 classes are body parts; on these photos and videos it finds faces (FACE_FEMALE, FACE_MALE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import pytest

from agent.gate.metrics import iou_matrix
from agent.vision import postprocess
from agent.vision.framesets import collect_frames
from agent.vision.preprocess import FrameGeometry, prepare, spec_from
from tests.helpers import testdata as shared_file
from tests.registry_material import (
    NUDENET,
    NUDENET_CLASSES,
    NUDENET_DECODER,
    NUDENET_MODEL,
    NUDENET_SIZE,
    load_module,
    wheel_file,
)

# the package's decoding, in the project's terms: v8 layout, score 0.25, one NMS over all classes at IoU 0.45
YOLO_CONFIG = {
    "layout": "v8",
    "classes": NUDENET_CLASSES,
    "score_threshold": 0.25,
    "nms_threshold": 0.45,
    "class_agnostic": True,
    "max_detections": 300,
}
PREPROCESS = {"size": [NUDENET_SIZE, NUDENET_SIZE], "resize": "letterbox", "color": "rgb", "scale": 1 / 255, "offset": 0.0}


@pytest.fixture(scope="module")
def yolo_model() -> Path:
    return wheel_file(NUDENET, NUDENET_MODEL)


@pytest.fixture(scope="module")
def reference(yolo_model: Path) -> Any:
    """The package's own module (its preprocessing `_read_image`, decoding `_postprocess`, `NudeDetector`)."""
    return load_module(wheel_file(NUDENET, NUDENET_DECODER), "nudenet_reference")


@pytest.fixture(scope="module")
def session(yolo_model: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(yolo_model), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames() -> List[Tuple[str, np.ndarray]]:
    """The 24 shared photos, 24 frames of Megamind.avi (faces) and 8 of vtest.avi (a street)."""
    return (
        collect_frames([shared_file("images")], 24)
        + collect_frames([shared_file("video", "Megamind.avi")], 24)
        + collect_frames([shared_file("video", "vtest.avi")], 8)
    )


def test_our_decoding_equals_the_packages_on_the_same_raw_output(
    tmp_path: Path, frames: List[Tuple[str, np.ndarray]], reference: Any, session: Any
) -> None:
    labels = tmp_path / "nudenet_labels.txt"
    labels.write_text("\n".join(vars(reference)["__labels"]) + "\n", encoding="utf-8")  # the package's class names
    ours = postprocess.create({"type": "yolo", "labels": str(labels), **YOLO_CONFIG})
    compared = 0
    for name, frame in frames:
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = reference._read_image(frame, NUDENET_SIZE)
        raw = session.run(None, {"images": blob})
        theirs = reference._postprocess(raw, x_pad, y_pad, x_ratio, y_ratio, width, height, NUDENET_SIZE, NUDENET_SIZE)
        # the package pads the frame to a square at the bottom right, then resizes: model pixels x side/320
        side = max(width, height)
        geometry = FrameGeometry(width, height, NUDENET_SIZE / side, NUDENET_SIZE / side, 0.0, 0.0, NUDENET_SIZE, NUDENET_SIZE)
        found = ours.frame({"output0": raw[0]}, geometry).detections
        assert len(found) == len(theirs), name
        for mine, their in zip(found, theirs):  # both best score first
            assert mine.label == their["class"], name
            assert mine.score == pytest.approx(their["score"], abs=1e-6), name
            assert np.allclose(mine.box, their["box"], atol=1.0), (name, mine.box, their["box"])  # theirs truncated to int
        compared += len(theirs)
    assert compared >= 40  # measured: 50 (3 on the photos, about 2 a frame in Megamind.avi, none in vtest.avi)


def test_our_pipeline_finds_what_the_package_finds(frames: List[Tuple[str, np.ndarray]], reference: Any, yolo_model: Path) -> None:
    """End to end: our letterbox (centred) and runner against the package's detect() (bottom-right padding):
    every box the package is sure of (score >= 0.5) is found, at IoU >= 0.5."""
    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    ours = postprocess.create({"type": "yolo", **YOLO_CONFIG})
    spec = spec_from(PREPROCESS)
    detector = reference.NudeDetector(str(yolo_model))
    sure = matched = 0
    ious: List[float] = []
    with OnnxRuntimeRunner(yolo_model) as runner:
        for _, frame in frames:
            theirs = [d for d in detector.detect(frame) if d["score"] >= 0.5]
            tensor, geometry = prepare(frame, spec)
            found = ours.frame(runner.infer({"images": tensor[None]}), geometry).detections
            sure += len(theirs)
            if theirs and found:
                overlap = iou_matrix(np.array([d["box"] for d in theirs], np.float64), np.array([d.box for d in found], np.float64))
                best = overlap.max(axis=1)
                matched += int((best >= 0.5).sum())
                ious.extend(best[best >= 0.5].tolist())
    assert sure >= 30
    assert matched == sure
    assert float(np.mean(ious)) > 0.85


def test_int8_route_gated_against_fp32(capsys: pytest.CaptureFixture, tmp_path: Path, yolo_model: Path) -> None:
    """calib tables from frames (every method), each as the Q/DQ model TensorRT builds, run on onnxruntime and
    judged by the gate's detection metrics against FP32 on other frames. Measured (64 street frames + 24 photos
    for calibration, 32 Megamind frames to validate): minmax recall 0.79, precision 0.86; entropy 0.03 / 0.06,
    its thresholds landing on SiLU's minimum (|x| = 0.28) and clipping the head."""
    from agent.calib.make import auto_candidates, make_tables
    from agent.gate.autocalib import choose_table
    from agent.gate.validation import make_validation
    from agent.vision.framesets import iter_sources

    spec = spec_from(PREPROCESS)
    calibration = [prepare(frame, spec)[0] for frame in iter_sources([shared_file("video", "vtest.avi"), shared_file("images")], 24)]
    tables = make_tables(yolo_model, calibration, auto_candidates())
    for table in tables.values():  # the anchor grid (Shape -> ConstantOfShape ...) is not calibrated: no false zero scales
        assert not any("ConstantOfShape" in name for name in table.entries)
        assert all(scale > 0 for scale in table.entries.values())
    decoder = {"kind": "yolo", "input_size": [NUDENET_SIZE, NUDENET_SIZE], **YOLO_CONFIG}
    validation_frames = collect_frames([shared_file("video", "Megamind.avi")], 16)
    validation = make_validation(yolo_model, (f for _, f in validation_frames), n=16, preprocess=PREPROCESS, task="detection", decoder_config=decoder)
    assert validation.arrays["det.boxes"].shape[0] >= 20
    report = choose_table(yolo_model, tables, validation)
    with capsys.disabled():
        print("\nNudeNet YOLOv8n, INT8 (Q/DQ, TensorRT placement) against FP32:")
        widths = [max(len(str(c)) for c in column) for column in zip(report.header(), *report.rows())]
        for row in [report.header(), *report.rows()]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    by_label = {o.label: o for o in report.outcomes}
    minmax, entropy = by_label["minmax"], by_label["entropy"]
    assert all(o.error is None and not o.problems for o in report.outcomes)
    assert minmax.metrics["det_recall"] >= 0.6 and minmax.metrics["det_precision"] >= 0.6  # type: ignore[operator]
    assert entropy.metrics["det_f1"] < minmax.metrics["det_f1"]  # type: ignore[operator]  # the forum's advice, measured
    assert report.chosen is not None and report.chosen.label == "minmax"
