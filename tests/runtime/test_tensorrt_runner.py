"""The TensorRT runner's decisions as plain functions; the runner itself on a device with TensorRT only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.lazy import MissingDependency, try_import
from agent.runtime.base import RunnerError, TensorSpec
from agent.runtime.tensorrt_runner import (
    TensorRTRunner,
    check_supported_version,
    dims_of,
    numpy_dtype_for,
    profile_max_batch,
    spec_shape,
)


@pytest.mark.parametrize(
    ("version", "parsed"),
    [
        ("8.5.2.2", (8, 5, 2)),  # JetPack 5.1
        ("8.6.2.3", (8, 6, 2)),  # JetPack 6.0
        ("10.3.0.30", (10, 3, 0)),  # JetPack 6.1/6.2
        ("11.0", (11, 0, 0)),
    ],
)
def test_supported_versions_use_the_name_based_api(version: str, parsed: tuple) -> None:
    assert check_supported_version(version) == parsed


@pytest.mark.parametrize("version", ["8.2.1.8", "8.4.1"])  # JetPack 4.6, 5.0.2
def test_a_tensorrt_older_than_8_5_is_refused_with_the_reason(version: str) -> None:
    with pytest.raises(RunnerError, match=r"older than 8\.5.*onnxruntime"):
        check_supported_version(version)


def test_unreadable_version_is_a_clear_error() -> None:
    with pytest.raises(RunnerError, match="cannot read the TensorRT version"):
        check_supported_version("unknown")


def test_engine_types_map_to_numpy_or_fail_clearly() -> None:
    assert numpy_dtype_for("FLOAT") == "float32"
    assert numpy_dtype_for("DataType.HALF") == "float16"
    assert numpy_dtype_for("INT8") == "int8"
    with pytest.raises(RunnerError, match="BF16"):
        numpy_dtype_for("BF16")


def test_dynamic_dims_become_profile_ranges() -> None:
    shape = spec_shape([-1, 3, 224, 224], ([1, 3, 224, 224], [32, 3, 224, 224]))
    assert shape == ("1..32", 3, 224, 224)
    assert spec_shape([-1, 4]) == ("dynamic", 4)
    assert profile_max_batch(TensorSpec("x", shape, "float32")) == 32
    assert profile_max_batch(TensorSpec("x", (8, 3, 4, 4), "float32")) == 8
    assert profile_max_batch(TensorSpec("x", ("dynamic", 4), "float32")) is None
    assert TensorSpec("x", shape, "float32").accepts(np.zeros((5, 3, 224, 224), np.float32))


def test_dims_of_reads_indexable_dims() -> None:
    assert dims_of((1, 3, -1)) == [1, 3, -1]


@pytest.mark.skipif(try_import("tensorrt") is not None, reason="TensorRT is installed here")
def test_activating_without_tensorrt_says_how_to_get_it(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(MissingDependency, match="JetPack"):
        TensorRTRunner(plan).activate()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime_on_the_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    """Build a real engine from the tiny ONNX model on this device and compare it with onnxruntime."""
    import tensorrt as trt

    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(tiny_model.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    path = tmp_path / "tiny.plan"
    path.write_bytes(bytes(plan))
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with TensorRTRunner(path) as trt_runner, OnnxRuntimeRunner(tiny_model) as ort_runner:
        assert trt_runner.max_batch == 8
        got = trt_runner.infer({"input": x})["logits"]
        want = ort_runner.infer({"input": x})["logits"]
        again = trt_runner.infer({"input": x[:1]})["logits"]  # shape change: set_input_shape again
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(again[0], want[0], rtol=1e-3, atol=1e-4)
