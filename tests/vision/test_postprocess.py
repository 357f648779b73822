"""Postprocessing plugins: the real classifier and face detector on real photos, YOLO layouts and NMS on
tensors built here, and the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from agent.vision import postprocess
from agent.vision.postprocess.base import Findings, PostprocessError
from agent.vision.postprocess.blazeface import anchors
from agent.vision.postprocess.nms import nms
from agent.vision.preprocess import EFFICIENTNET_LITE, FrameGeometry, prepare, spec_from
from tests.helpers import testdata as data_file

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


def run_model(model: Path, spec: object, image_names: List[str], post: postprocess.Postprocessor) -> Dict[str, Findings]:
    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    frames = [cv2.imread(str(data_file("images", name))) for name in image_names]
    prepared = [prepare(frame, spec_from(spec)) for frame in frames]
    with OnnxRuntimeRunner(model, threads=2) as runner:
        found = []
        for tensor, geometry in prepared:  # batch 1: BlazeFace has a fixed batch
            found += post(runner.infer({runner.first_input().name: tensor[None]}), [geometry])
    return dict(zip(image_names, found))


def test_the_real_classifier_names_the_cat_the_espresso_and_the_tripod() -> None:
    post = postprocess.create({"type": "classification", "labels": str(data_file("models", "imagenet_labels.txt")), "top_k": 3})
    found = run_model(data_file("models", "efficientnet_lite0.onnx"), EFFICIENTNET_LITE, ["chelsea.png", "coffee.png", "camera.png"], post)
    assert found["chelsea.png"].classes[0].label in ("tiger cat", "Egyptian cat", "tabby")
    assert found["coffee.png"].classes[0].label == "espresso" and found["coffee.png"].classes[0].score > 0.9
    assert found["camera.png"].classes[0].label == "tripod" and found["camera.png"].classes[0].score > 0.9
    assert found["camera.png"].classes[0].index == 872
    assert len(found["coffee.png"].classes) == 3


def test_blazeface_full_range_finds_the_astronauts_face_and_no_face_on_the_cat() -> None:
    post = postprocess.create({"type": "blazeface", "score_threshold": 0.5, "nms_threshold": 0.3, "keypoints": True})
    spec = {"preset": "blazeface", "size": [192, 192]}
    found = run_model(data_file("models", "blazeface_full_range.onnx"), spec, ["astronaut.png", "chelsea.png"], post)
    (face,) = found["astronaut.png"].detections
    np.testing.assert_allclose(face.box, [173, 68, 107, 107], atol=3)
    assert face.score > 0.9 and face.label == "face" and len(face.keypoints) == 6
    assert found["chelsea.png"].detections == []


def test_blazeface_short_range_maps_letterboxed_boxes_back_to_the_frame() -> None:
    post = postprocess.create("blazeface")
    found = run_model(data_file("models", "blazeface_short_range.onnx"), "blazeface", ["astronaut.png"], post)
    (face,) = found["astronaut.png"].detections
    x, y, w, h = face.box
    assert 160 < x + w / 2 < 250 and 90 < y + h / 2 < 150  # the face centre, in 512x512 frame pixels


def test_blazeface_anchor_layouts() -> None:
    short, full = anchors("short"), anchors("full")
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    np.testing.assert_allclose(short[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[1], short[0])  # two anchors per stride-8 cell
    np.testing.assert_allclose(short[512], [0.5 / 8, 0.5 / 8])  # then the stride-16 layer
    np.testing.assert_allclose(full[-1], [47.5 / 48, 47.5 / 48])


def test_classification_softmax_top_k_and_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("zero, nought\none\ntwo\n")
    post = postprocess.create({"type": "classification", "labels": str(labels), "top_k": 2})
    geometry = FrameGeometry(10, 10, 1.0, 1.0, 0.0, 0.0, 10, 10)
    (found,) = post({"logits": np.array([[2.0, 0.0, 1.0]], np.float32)}, [geometry])
    assert [c.label for c in found.classes] == ["zero", "two"]
    assert sum(np.exp([2.0, 0.0, 1.0]) / np.exp([2.0, 0.0, 1.0]).sum()) == pytest.approx(1.0)
    assert found.classes[0].score == pytest.approx(np.exp(2) / (np.exp(2) + 1 + np.exp(1)), rel=1e-5)
    probabilities = postprocess.create({"type": "classification", "top_k": 1, "min_score": 0.9})
    (kept,) = probabilities({"p": np.array([[0.2, 0.8]], np.float32)}, [geometry])  # already a distribution
    assert kept.classes == []  # 0.8 < min_score; softmax was not applied again


def letterbox_geometry() -> FrameGeometry:
    """A 200x100 frame letterboxed into a 100x100 input: scale 0.5, 25 px of padding above."""
    return FrameGeometry(200, 100, 0.5, 0.5, 0.0, 25.0, 100, 100)


# YOLO on synthetic arrays (layouts, thresholds, NMS). The real detector, decoded here and by its own package,
# is in test_yolo_real.py.
def test_yolo_v5_layout_with_objectness_and_class_aware_nms() -> None:
    rows = np.zeros((100, 5 + 3), np.float32)  # boxes outnumber channels, as in every real export
    rows[0, :5], rows[0, 5 + 1] = [50, 50, 20, 10, 0.9], 1.0  # class 1, score 0.9
    rows[1, :5], rows[1, 5 + 1] = [51, 50, 20, 10, 0.8], 1.0  # overlaps box 0, same class: suppressed
    rows[2, :5], rows[2, 5 + 2] = [51, 50, 20, 10, 0.7], 1.0  # overlaps, other class: kept
    rows[3, :5], rows[3, 5 + 0] = [10, 40, 4, 4, 0.1], 1.0  # under the threshold
    post = postprocess.create({"type": "yolo", "layout": "auto", "score_threshold": 0.25})
    (found,) = post({"output0": rows[None]}, [letterbox_geometry()])
    assert [(d.class_id, round(d.score, 2)) for d in found.detections] == [(1, 0.9), (2, 0.7)]
    x, y, w, h = found.detections[0].box
    assert (x, y, w, h) == pytest.approx((80.0, 40.0, 40.0, 20.0))  # input (40..60, 45..55) -> frame pixels


def test_yolo_v8_layout_channels_first_without_objectness(tmp_path: Path) -> None:
    labels = tmp_path / "coco.txt"
    labels.write_text("person\nbicycle\ncar\n")
    columns = np.zeros((4 + 3, 10), np.float32)  # [4 + classes, boxes]
    columns[:4, 3] = [50, 50, 20, 10]
    columns[4 + 2, 3] = 0.6
    post = postprocess.create({"type": "yolo", "labels": str(labels)})
    (found,) = post({"output0": columns[None]}, [letterbox_geometry()])
    (car,) = found.detections
    assert car.label == "car" and car.score == pytest.approx(0.6)


def test_yolo_layout_of_transposed_v8_told_by_class_count() -> None:
    rows = np.zeros((10, 4 + 2), np.float32)
    rows[0] = [50, 50, 10, 10, 0.0, 0.5]
    post = postprocess.create({"type": "yolo", "classes": 2})
    (found,) = post({"o": rows[None]}, [letterbox_geometry()])
    assert [d.class_id for d in found.detections] == [1]


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 5, 5]], np.float32)
    scores = np.array([0.7, 0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.3, class_ids=np.array([0, 1, 0])).tolist() == [1, 2, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def test_registry_by_key_and_clear_config_errors() -> None:
    assert set(postprocess.registry()) >= {"classification", "blazeface", "yolo"}
    with pytest.raises(PostprocessError, match=r"postprocess\.type: one of classification, blazeface, yolo, got 'segmentation'"):
        postprocess.create({"type": "segmentation"})
    with pytest.raises(PostprocessError, match=r"postprocess\.iou: unknown key \(known: type, layout"):
        postprocess.create({"type": "yolo", "iou": 0.5})
    with pytest.raises(PostprocessError, match=r"postprocess\.top_k: expected int >= 1, got 0"):
        postprocess.create({"type": "classification", "top_k": 0})
    with pytest.raises(PostprocessError, match="labels"):
        postprocess.create({"type": "classification", "labels": "/nonexistent/labels.txt"})
