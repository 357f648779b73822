"""The pipeline end to end on real video and stills: results, bounded latency with a slow engine, engine swap
while the camera runs, snapshots, metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.vision.capture import Capture
from agent.vision.pipeline import FrameResult, Pipeline, PipelineError
from agent.vision.sources import SourceOptions
from deploy.demo.material import OBJECTS_VIDEO
from tests.helpers import testdata as data_file
from tests.helpers import tiny_classifier_onnx
from tests.vision.conftest import TINY_PREPROCESS, SlowRunner

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


def test_every_frame_of_a_real_video_gets_a_result(tiny_runner: OnnxRuntimeRunner) -> None:
    video = data_file("video", OBJECTS_VIDEO.name)
    results: List[FrameResult] = []
    capture = Capture(f"file://{video}", SourceOptions(loop=False), stop_at_end=True, depth=8)
    pipeline = Pipeline(capture, tiny_runner, TINY_PREPROCESS, {"type": "classification", "top_k": 2}, results.append, batch=4)
    try:
        pipeline.start()
        assert pipeline.wait_finished(60)
        metrics = pipeline.metrics()
    finally:
        pipeline.stop()
    frames = OBJECTS_VIDEO.frames
    assert [r.frame_id for r in results] == list(range(frames))
    assert results[0].width == OBJECTS_VIDEO.size[0] and len(results[0].findings.classes) == 2
    assert metrics["results"] == frames and metrics["drops"] == 0 and metrics["errors"] == 0
    assert metrics["stages"]["infer"]["count"] == frames and metrics["batch"] == 4
    assert all(1 <= r.batch <= 4 for r in results)  # a fast engine takes what has been decoded


def test_the_real_classifier_through_the_pipeline_on_stills(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, name in enumerate(["chelsea.png", "coffee.png", "camera.png"]):
        (folder / f"{index}_{name}").write_bytes(data_file("images", name).read_bytes())
    labels = str(data_file("models", "imagenet_labels.txt"))
    runner = OnnxRuntimeRunner(data_file("models", "efficientnet_lite0.onnx"), threads=2)
    results: List[FrameResult] = []
    capture = Capture(f"images://{folder}", SourceOptions(loop=False), stop_at_end=True, depth=3)
    pipeline = Pipeline(capture, runner, "efficientnet_lite", {"type": "classification", "labels": labels}, results.append, batch=3)
    try:
        pipeline.start()
        assert pipeline.wait_finished(60)
    finally:
        pipeline.stop()
        runner.deactivate()
    top = [r.findings.classes[0].label for r in results]
    assert top[0] in ("tiger cat", "Egyptian cat", "tabby") and top[1:] == ["espresso", "tripod"]


def test_a_slow_engine_keeps_latency_bounded_and_counts_drops(tiny_runner: OnnxRuntimeRunner, short_video: Path) -> None:
    slow = SlowRunner(tiny_runner, delay_s=0.1)  # 10 inferences a second against a 100 fps camera
    capture = Capture(f"file://{short_video}", SourceOptions(loop=True, realtime=True, fps=100))
    results: List[FrameResult] = []
    pipeline = Pipeline(capture, slow, TINY_PREPROCESS, "classification", results.append)
    try:
        pipeline.start()
        time.sleep(2.0)
        metrics = pipeline.metrics()
    finally:
        pipeline.stop()
    assert metrics["drops"] > 50  # the camera did not wait for the engine
    assert 8 <= len(results) <= 25
    # one batch in each stage at most: capture wait + preprocess + one queued + one inference, never a backlog
    assert metrics["latency"]["p99_ms"] < 500
    late = [r.latency_ms for r in results[len(results) // 2 :]]
    assert max(late) < 500  # and it does not grow with time


def test_swap_runner_while_the_camera_runs(tiny_runner: OnnxRuntimeRunner, short_video: Path, tmp_path: Path) -> None:
    other = OnnxRuntimeRunner(tiny_classifier_onnx(tmp_path / "other.onnx", seed=7), threads=1, name="other")
    capture = Capture(f"file://{short_video}", SourceOptions(loop=True, realtime=True, fps=200))
    results: List[FrameResult] = []
    pipeline = Pipeline(capture, tiny_runner, TINY_PREPROCESS, "classification", results.append)
    try:
        pipeline.start()
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
        old = pipeline.swap_runner(other)
        assert old is tiny_runner and pipeline.runner is other
        seen = len(results)
        while len(results) < seen + 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        misfit = OnnxRuntimeRunner(tiny_classifier_onnx(tmp_path / "big.onnx", size=16), threads=1)
        with pytest.raises(PipelineError, match="fix the deployment"):
            pipeline.swap_runner(misfit)  # 16x16 input vs 8x8 preprocessing: refused, nothing changes
        assert pipeline.runner is other
        metrics = pipeline.metrics()
    finally:
        pipeline.stop()
        other.deactivate()
        misfit.deactivate()
    assert results[-1].engine == "other" and results[0].engine == "tiny"
    assert metrics["errors"] == 0 and metrics["engine"] == "other"
    assert capture.stats().reconnects == 0  # the camera never stopped


def test_snapshot_is_a_jpeg_of_the_newest_frame_with_results(tiny_runner: OnnxRuntimeRunner, short_video: Path) -> None:
    capture = Capture(f"file://{short_video}", SourceOptions(loop=False), stop_at_end=True, depth=4)
    pipeline = Pipeline(capture, tiny_runner, TINY_PREPROCESS, "classification")
    assert pipeline.snapshot() is None
    try:
        pipeline.start()
        assert pipeline.wait_finished(30)
        jpeg = pipeline.snapshot(quality=90)
    finally:
        pipeline.stop()
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (48, 64, 3)
    latest = pipeline.latest()
    assert latest is not None and latest.frame_id == 23


def test_metrics_name_every_stage(tiny_runner: OnnxRuntimeRunner, short_video: Path) -> None:
    capture = Capture(f"file://{short_video}", SourceOptions(loop=False), stop_at_end=True, depth=4)
    pipeline = Pipeline(capture, tiny_runner, TINY_PREPROCESS, "classification", batch=2)
    try:
        pipeline.start()
        assert pipeline.wait_finished(30)
        metrics = pipeline.metrics()
    finally:
        pipeline.stop()
    assert set(metrics["stages"]) == {"capture", "preprocess", "batch", "infer", "postprocess", "publish"}
    for stage in metrics["stages"].values():
        assert stage["count"] == 24 and stage["p50_ms"] <= stage["p95_ms"] <= stage["p99_ms"]
    assert {"fps", "drops", "reconnects", "latency", "added_latency", "sources"} <= set(metrics)
    assert metrics["sources"][0]["state"] == "ended"


def test_a_preprocessing_that_does_not_fit_the_engine_is_refused_at_start(tiny_runner: OnnxRuntimeRunner, short_video: Path) -> None:
    capture = Capture(f"file://{short_video}")
    pipeline = Pipeline(capture, tiny_runner, "efficientnet_lite", "classification")
    with pytest.raises(PipelineError, match=r"\(3, 224, 224\)"):
        pipeline.start()
    pipeline.stop()


def test_a_fixed_batch_engine_gets_padded_batches(tmp_path: Path, short_video: Path) -> None:
    fixed = OnnxRuntimeRunner(tiny_classifier_onnx(tmp_path / "b1.onnx", dynamic_batch=False), threads=1)
    results: List[FrameResult] = []
    capture = Capture(f"file://{short_video}", SourceOptions(loop=False), stop_at_end=True, depth=4)
    pipeline = Pipeline(capture, fixed, TINY_PREPROCESS, "classification", results.append, batch=4)
    try:
        pipeline.start()
        assert pipeline.batch == 1  # the engine's fixed batch wins
        assert pipeline.wait_finished(30)
    finally:
        pipeline.stop()
        fixed.deactivate()
    assert len(results) == 24


def test_two_cameras_share_one_pipeline_and_batch(tiny_runner: OnnxRuntimeRunner, short_video: Path, stills: Path) -> None:
    from agent.vision.pipeline import build_pipeline

    results: List[FrameResult] = []
    pipeline = build_pipeline(
        [f"file://{short_video}", f"images://{stills}"], tiny_runner, TINY_PREPROCESS, "classification", results.append,
        batch=2, source_options=SourceOptions(realtime=True, fps=50),
    )
    try:
        pipeline.start()
        deadline = time.monotonic() + 10
        while len({r.source for r in results}) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        metrics = pipeline.metrics()
    finally:
        pipeline.stop()
    assert {r.source for r in results} == {f"file://{short_video}", f"images://{stills}"}
    assert len(metrics["sources"]) == 2 and metrics["errors"] == 0


def test_snapshot_and_latest_per_camera(tiny_runner: OnnxRuntimeRunner, short_video: Path, stills: Path) -> None:
    video = Capture(f"file://{short_video}", SourceOptions(loop=False), name="camera0", stop_at_end=True)
    folder = Capture(f"images://{stills}", SourceOptions(loop=False), name="camera1", stop_at_end=True)
    pipeline = Pipeline([video, folder], tiny_runner, TINY_PREPROCESS, "classification")
    try:
        pipeline.start()
        assert pipeline.wait_finished(30)
    finally:
        pipeline.stop()
    first, second = pipeline.latest("camera0"), pipeline.latest("camera1")
    assert first is not None and first.frame_id == 23 and second is not None and second.frame_id == 4
    assert pipeline.latest("camera9") is None and pipeline.snapshot(source="camera9") is None
    jpeg = pipeline.snapshot(source="camera1")
    assert jpeg is not None and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
