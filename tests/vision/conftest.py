"""Fixtures of the vision tests: a short real video file and a folder of stills drawn with OpenCV, the tiny
ONNX classifier, and a runner wrapper that is slow on purpose (a real runner that sleeps, not a fake one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator, Mapping

import numpy as np
import pytest

from agent.runtime.base import Runner
from tests.helpers import drawn_frames, tiny_classifier_onnx

cv2 = pytest.importorskip("cv2")


def write_video(path: Path, frames: int = 24, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for frame in drawn_frames(frames, 64, 48):
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "short.avi")


@pytest.fixture()
def stills(tmp_path: Path) -> Path:
    folder = tmp_path / "stills"
    folder.mkdir()
    for index, frame in enumerate(drawn_frames(5, 64, 48)):
        cv2.imwrite(str(folder / f"frame{index:02d}.png"), frame)
    return folder


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


TINY_PREPROCESS = {"size": [8, 8], "resize": "stretch"}


class SlowRunner(Runner):
    """A real runner that sleeps `delay_s` before each inference: an engine slower than the camera."""

    def __init__(self, inner: Runner, delay_s: float) -> None:
        super().__init__(f"slow-{inner.name}")
        self.backend = inner.backend
        self.inner = inner
        self.delay_s = delay_s

    def _activate(self) -> None:
        self.inner.activate()
        self.inputs, self.outputs = self.inner.inputs, self.inner.outputs

    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        time.sleep(self.delay_s)
        return self.inner.infer(feed)

    def _deactivate(self) -> None:
        self.inner.deactivate()


@pytest.fixture()
def tiny_runner(tiny_onnx: Path) -> Iterator[Runner]:
    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(tiny_onnx, threads=1, name="tiny")
    yield runner
    runner.deactivate()
