"""open_runner: backend by name or by the artifact's suffix; the runner comes back not yet activated."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.device.target import Backend, TargetError
from agent.runtime.base import RunnerError
from agent.runtime.factory import open_runner
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.runtime.tensorrt_runner import TensorRTRunner


@pytest.mark.parametrize(
    ("backend", "path", "expected"),
    [
        ("auto", "m.onnx", "onnxruntime"),
        ("auto", "m.plan", "tensorrt"),
        ("auto", "m.engine", "tensorrt"),
        ("ORT", "m.bin", "onnxruntime"),
        ("trt", "m.bin", "tensorrt"),
    ],
)
def test_backend_names_and_suffixes(backend: str, path: str, expected: str) -> None:
    assert Backend.for_file(backend, path) == expected


def test_unknown_backend_or_suffix_says_what_is_known() -> None:
    with pytest.raises(TargetError, match="onnxruntime, tensorrt"):
        Backend.for_file("openvino", "m.onnx")
    with pytest.raises(TargetError, match="suffix"):
        Backend.for_file("auto", "m.bin")


def test_open_runner_is_lazy(tiny_model: Path) -> None:
    runner = open_runner("auto", tiny_model, threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and not runner.is_active and runner.threads == 1


def test_open_runner_for_a_plan_needs_no_tensorrt_until_activated(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    runner = open_runner("auto", plan, dla_core=0)
    assert isinstance(runner, TensorRTRunner) and runner.dla_core == 0 and not runner.is_active


def test_dla_core_with_onnxruntime_is_refused(tiny_model: Path) -> None:
    with pytest.raises(RunnerError, match="TensorRT"):
        open_runner("onnxruntime", tiny_model, dla_core=0)


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="not found"):
        open_runner("auto", tmp_path / "gone.onnx")
