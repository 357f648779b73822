"""What the build report says about deprecated TensorRT APIs, the build log filter, and the model facts the
route choice reads. Plain code; the TensorRT builds themselves are in tests/engine/test_tensorrt_builds.py."""

from __future__ import annotations

import pytest

from agent.calib.routes import Int8Method, builder_flags, choose_int8_route
from agent.engine.manifest import BuildReport
from agent.engine.report import deprecation_warnings, precision_route
from agent.engine.trt_builder import keep_log_line


def test_report_names_the_deprecated_apis_and_why_they_were_kept() -> None:
    route = choose_int8_route((10, 13, 3), "gpu", qdq_allowed=False)
    chosen = builder_flags((10, 13, 3), "int8", route.method, None)
    entry = precision_route((10, 13, 3), chosen, route)
    assert entry["typing"] == "weakly_typed" and entry["int8_route"] == "dynamic_range"
    (line,) = deprecation_warnings(entry)
    assert "TensorRT 10.13.3" in line
    assert "ITensor.set_dynamic_range; deprecated since TensorRT 10.1" in line
    assert "BuilderFlag.FP16 (deprecated since TensorRT 10.12)" in line
    assert "explicit Q/DQ, the non-deprecated route, is not possible" in line
    report = BuildReport.from_dict({"precision_route": entry})
    assert report.to_dict()["precision_route"] == entry  # kept in the manifest


def test_report_says_which_non_deprecated_route_was_chosen() -> None:
    route = choose_int8_route((10, 13, 3), "gpu", qdq_allowed=True)
    chosen = builder_flags((10, 13, 3), "int8", route.method, "float16")
    entry = precision_route((10, 13, 3), chosen, route)
    assert entry["int8_route"] == Int8Method.QDQ_TENSORRT.value and entry["typing"] == "strongly_typed"
    assert entry["flags"] == [] and entry["deprecated_apis"] == []
    assert "explicit Q/DQ chosen" in entry["int8_reason"] and "strongly typed network chosen" in entry["reason"]
    assert deprecation_warnings(entry) == []


def test_nothing_is_deprecated_on_8x() -> None:
    chosen = builder_flags((8, 6, 2), "int8", Int8Method.DYNAMIC_RANGE, None)
    assert deprecation_warnings(precision_route((8, 6, 2), chosen, None)) == []


def test_the_build_log_keeps_verbose_placement_lines_on_dla_builds_only() -> None:
    placement = "[GpuLayer] CONVOLUTION: conv1"
    assert keep_log_line(2, "a warning", verbose=False)
    assert keep_log_line(3, "an info line", verbose=False)
    assert not keep_log_line(4, placement, verbose=False)  # an ILogger sees VERBOSE too: the filter is ours
    assert keep_log_line(4, placement, verbose=True)
    assert not keep_log_line(4, "Tactic 0x01 time 0.1 ms", verbose=True)


def test_model_facts_float_type_and_quantized() -> None:
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from agent.calib.graph import is_quantized, model_float_type

    def model(dtype: int, nodes: list) -> object:
        weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float16 if dtype == TensorProto.FLOAT16 else np.float32), "w")
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, 4])], [helper.make_tensor_value_info("y", dtype, [1, 4])], [weight])
        return helper.make_model(graph)

    matmul = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    assert model_float_type(model(TensorProto.FLOAT, matmul)) == "float32"
    assert model_float_type(model(TensorProto.FLOAT16, matmul)) == "float16"
    mixed = model(TensorProto.FLOAT, matmul)
    mixed.graph.initializer.append(numpy_helper.from_array(np.ones(2, np.float16), "h"))
    assert model_float_type(mixed) == "mixed"
    assert not is_quantized(model(TensorProto.FLOAT, matmul))
    qdq = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    assert is_quantized(model(TensorProto.FLOAT, qdq))
    assert onnx is not None
