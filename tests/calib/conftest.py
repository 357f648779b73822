"""Fixtures for the calibration-table tests: the real EfficientNet-Lite0 (made from PyPI, tests/helpers.testdata)
with the table shipped for it in calibtables/, and a tiny classifier with a table computed from drawn frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

from tests.helpers import EFFNET_TABLE, drawn_frames, testdata, tiny_classifier_onnx

TINY_SIZE = 8


def tiny_inputs(count: int = 6) -> List[np.ndarray]:
    """Drawn frames prepared for the tiny classifier: [1, 3, 8, 8] float32 in 0..1."""
    from agent.vision.preprocess import PreprocessSpec, prepare

    spec = PreprocessSpec(size=(TINY_SIZE, TINY_SIZE), resize="stretch", interpolation="area")
    return [prepare(frame, spec)[0][None] for frame in drawn_frames(count)]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx", size=TINY_SIZE)


@pytest.fixture(scope="session")
def tiny_table(tiny_onnx: Path) -> Any:
    from agent.calib.make import make_table

    return make_table(tiny_onnx, tiny_inputs(), "minmax")


@pytest.fixture(scope="session")
def effnet_path() -> Path:
    return testdata("models", "efficientnet_lite0.onnx")


@pytest.fixture(scope="session")
def effnet(effnet_path: Path) -> Any:
    import onnx

    return onnx.load(str(effnet_path))


@pytest.fixture(scope="session")
def effnet_table() -> Any:
    from agent.calib.table import read_table

    return read_table(EFFNET_TABLE)


@pytest.fixture(scope="session")
def photos() -> List[np.ndarray]:
    """Four photos whose top-1 is clear (espresso 0.95, tripod 0.97, moped 0.60, missile), prepared for EfficientNet-Lite0."""
    import cv2

    from agent.vision.preprocess import prepare, spec_from

    spec = spec_from("efficientnet_lite")
    names = ("coffee.png", "camera.png", "motorcycle_right.png", "rocket.jpg")
    return [prepare(cv2.imread(str(testdata("images", name))), spec)[0][None] for name in names]
