"""The onnxruntime runner on a real (tiny) ONNX model: specs from the session, inference, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.runtime.base import RunnerError
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner, numpy_dtype_of, spec_dims

pytest.importorskip("onnxruntime")


def test_specs_come_from_the_session_with_dynamic_dims_as_text(tiny_model: Path) -> None:
    with OnnxRuntimeRunner(tiny_model, threads=1) as runner:
        (spec,) = runner.inputs
        assert spec.name == "input" and spec.dtype == "float32"
        assert spec.shape == ("batch", 3, 8, 8)
        assert runner.outputs[0].shape == ("batch", 4)
        assert runner.max_batch is None


def test_infer_runs_any_batch_and_is_deterministic(tiny_model: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with OnnxRuntimeRunner(tiny_model, threads=1) as runner:
        first = runner.infer({"input": x})["logits"]
        again = runner.infer({"input": x})["logits"]
        single = runner.infer({"input": x[1:2]})["logits"]
    assert first.shape == (3, 4)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(single[0], first[1], rtol=1e-5, atol=1e-6)


def test_a_wrong_dtype_is_a_clear_error(tiny_model: Path) -> None:
    with OnnxRuntimeRunner(tiny_model) as runner, pytest.raises(RunnerError, match=r"float64.*float32"):
        runner.infer({"input": np.zeros((1, 3, 8, 8), np.float64)})


def test_a_wrong_shape_is_refused_before_the_backend(tiny_model: Path) -> None:
    with OnnxRuntimeRunner(tiny_model) as runner, pytest.raises(RunnerError, match="expected"):
        runner.infer({"input": np.zeros((1, 3, 9, 9), np.float32)})


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx").activate()


def test_a_corrupt_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    runner = OnnxRuntimeRunner(bad)
    with pytest.raises(RunnerError, match="cannot load"):
        runner.activate()
    assert not runner.is_active


def test_negative_threads_are_refused(tiny_model: Path) -> None:
    with pytest.raises(RunnerError, match="threads"):
        OnnxRuntimeRunner(tiny_model, threads=-1)


def test_type_and_dim_mapping() -> None:
    assert numpy_dtype_of("tensor(float)") == "float32"
    assert numpy_dtype_of("tensor(uint8)") == "uint8"
    assert spec_dims([None, 3, "h", -1]) == ("dim0", 3, "h", "dim3")
