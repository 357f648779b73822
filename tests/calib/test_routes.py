"""The version decisions of agent/calib/routes.py that pick between a deprecated and a non-deprecated TensorRT
route: the INT8 route (explicit Q/DQ preferred on 10.1+) and the network typing / builder flags (strongly
typed preferred on 10.12+). The deprecation versions come from the real bindings (docs/hardware/trt-api-matrix.md)."""

from __future__ import annotations

from typing import Optional, Tuple

import pytest

from agent.calib.routes import Int8Method, NetworkTyping, builder_flags, choose_int8_route


@pytest.mark.parametrize(
    ("trt", "target", "portable", "qdq_allowed", "method", "deprecated"),
    [
        ((8, 6, 2), "gpu", False, True, Int8Method.DYNAMIC_RANGE, False),  # 8.x: implicit INT8 is not deprecated
        ((10, 0, 1), "gpu", False, True, Int8Method.DYNAMIC_RANGE, False),  # deprecated from 10.1 only
        ((10, 1, 0), "gpu", False, True, Int8Method.QDQ_TENSORRT, False),
        ((10, 3, 0), "gpu", True, True, Int8Method.QDQ_TENSORRT, False),  # Q/DQ beats the (deprecated) cache route
        ((10, 3, 0), "gpu", False, False, Int8Method.DYNAMIC_RANGE, True),  # the model cannot take Q/DQ here
        ((10, 3, 0), "gpu", True, False, Int8Method.CACHE_CALIBRATOR, True),
        ((10, 3, 0), "dla:0", False, True, Int8Method.CACHE_CALIBRATOR, True),  # DLA takes no Q/DQ before 11.4.1
        ((11, 0, 0), "gpu", False, False, Int8Method.QDQ_TENSORRT, False),  # the only route on 11
    ],
)
def test_int8_route_prefers_explicit_qdq_where_implicit_int8_is_deprecated(
    trt: Tuple[int, int, int], target: str, portable: bool, qdq_allowed: bool, method: Int8Method, deprecated: bool
) -> None:
    route = choose_int8_route(trt, target, portable, qdq_allowed=qdq_allowed)
    assert route.method is method
    assert route.deprecated is deprecated
    if deprecated and not target.startswith("dla"):
        assert "not possible" in route.reason  # says why the non-deprecated route was not taken


def test_without_qdq_allowed_the_route_is_what_it_was() -> None:
    assert choose_int8_route((10, 3, 0), "gpu").method is Int8Method.DYNAMIC_RANGE
    assert choose_int8_route(None, "cpu").method is Int8Method.QDQ_ONNXRUNTIME


@pytest.mark.parametrize(
    ("trt", "precision", "method", "model", "typing", "flags", "deprecated"),
    [
        ((8, 6, 2), "fp16", None, "float32", NetworkTyping.WEAK, ("FP16",), ()),
        ((8, 6, 2), "int8", Int8Method.DYNAMIC_RANGE, None, NetworkTyping.WEAK, ("FP16", "INT8"), ()),
        ((10, 3, 0), "int8", Int8Method.DYNAMIC_RANGE, None, NetworkTyping.WEAK, ("FP16", "INT8"), ("implicit INT8",)),
        ((10, 3, 0), "int8", Int8Method.QDQ_TENSORRT, "float32", NetworkTyping.WEAK, ("FP16", "INT8"), ()),
        ((10, 11, 0), "fp16", None, "float16", NetworkTyping.WEAK, ("FP16",), ()),  # FP16 flag still fine on 10.11
        ((10, 12, 0), "fp16", None, "float16", NetworkTyping.STRONG, (), ()),
        ((10, 13, 3), "int8", Int8Method.QDQ_TENSORRT, "float16", NetworkTyping.STRONG, (), ()),
        ((10, 13, 3), "fp16", None, "float32", NetworkTyping.WEAK, ("FP16",), ("BuilderFlag.FP16",)),
        ((10, 13, 3), "int8", Int8Method.QDQ_TENSORRT, "float32", NetworkTyping.WEAK, ("FP16", "INT8"), ("BuilderFlag.FP16", "BuilderFlag.INT8")),
        ((10, 13, 3), "int8", Int8Method.CACHE_CALIBRATOR, "float16", NetworkTyping.WEAK, ("FP16", "INT8"), ("implicit INT8", "BuilderFlag.FP16", "BuilderFlag.INT8")),
        ((10, 16, 1), "fp16", None, None, NetworkTyping.WEAK, ("FP16",), ("BuilderFlag.FP16",)),  # no onnx: type unknown
        ((10, 16, 1), "fp32", None, "float32", NetworkTyping.WEAK, (), ()),
        ((11, 4, 0), "int8", Int8Method.QDQ_TENSORRT, "float32", NetworkTyping.STRONG, (), ()),
    ],
)
def test_builder_flags_prefer_strong_typing_where_the_flags_are_deprecated_and_the_model_allows(
    trt: Tuple[int, int, int],
    precision: str,
    method: Optional[Int8Method],
    model: Optional[str],
    typing: NetworkTyping,
    flags: Tuple[str, ...],
    deprecated: Tuple[str, ...],
) -> None:
    chosen = builder_flags(trt, precision, method, model)
    assert chosen.typing is typing
    assert chosen.flags == flags
    assert [d.split(" (")[0] for d in chosen.deprecated] == list(deprecated)
    if chosen.typing is NetworkTyping.STRONG and trt < (11, 0, 0):
        assert "deprecated" in chosen.reason and "strongly typed network chosen" in chosen.reason
    if "BuilderFlag.FP16" in deprecated:
        assert "kept" in chosen.reason  # says why the non-deprecated route was not taken
