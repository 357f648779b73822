"""How a calibration table becomes INT8 on the device: the route its TensorRT version (or onnxruntime) allows,
and how a build gets its precision there.

The version facts themselves (implicit INT8 removed in TensorRT 11.0, what is deprecated from which release,
DLA by version) live in agent/device/versions.py. Where a non-deprecated route exists (explicit Q/DQ on 10.1+, a
strongly typed network on 10.12+) and the model allows it, `choose_int8_route` and `builder_flags` prefer it and
say which was chosen (the real bindings of every version: docs/hardware/trt-api-matrix.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from agent.device.target import Backend, Target
from agent.device.versions import (
    IMPLICIT_INT8_DEPRECATED,
    PRECISION_FLAGS_DEPRECATED,
    Version,
    format_version,
    implicit_int8_supported,
)


class Int8Method(str, enum.Enum):
    """How a calibration table becomes INT8 on a backend."""

    DYNAMIC_RANGE = "dynamic_range"  # ITensor.set_dynamic_range(-amax, amax) per tensor (TensorRT 8.x/10.x)
    CACHE_CALIBRATOR = "cache_calibrator"  # a calibrator that only returns the table (header rewritten)
    QDQ_TENSORRT = "qdq_tensorrt"  # explicit Q/DQ ONNX, TensorRT placement (TensorRT 11+, or by choice on 10.x)
    QDQ_ONNXRUNTIME = "qdq_onnxruntime"  # onnxruntime's own QDQ placement: the fast CPU flavour


@dataclass(frozen=True)
class Int8Route:
    method: Int8Method
    reason: str
    deprecated: bool = False


def choose_int8_route(
    trt: Optional[Version], target: Union[str, Target], table_portable: bool = False, qdq_allowed: bool = False
) -> Int8Route:
    """The route a table takes to INT8 on this device. `trt` is None for the onnxruntime CPU backend.
    `qdq_allowed`: the model can take the explicit Q/DQ rewrite here (onnx is installed and the model is not
    quantized already); it decides between a deprecated and a non-deprecated route on 10.1+.

    GPU on 10.1 to 10.x, when Q/DQ is allowed: explicit Q/DQ (implicit INT8 is deprecated there). GPU on 8.x/10.x
    otherwise: per-tensor dynamic ranges, which ignore the table's header (no version check to fail), unless
    the table is declared portable, when a cache-only calibrator with the header rewritten is used (TensorRT
    then also applies its own calibration bookkeeping). DLA on 8.x/10.x: the cache calibrator, since DLA wants
    EntropyCalibration2 scales through the calibrator path and does not take Q/DQ before 11.4.1.
    """
    placement = Target(target)
    if trt is None or placement.backend == Backend.ONNXRUNTIME:
        return Int8Route(Int8Method.QDQ_ONNXRUNTIME, "onnxruntime runs explicit Q/DQ; the table becomes QuantizeLinear/DequantizeLinear")
    if not implicit_int8_supported(trt):
        return Int8Route(Int8Method.QDQ_TENSORRT, f"TensorRT {format_version(trt)} removed implicit INT8 (11.0): explicit Q/DQ only")
    deprecated = trt >= IMPLICIT_INT8_DEPRECATED
    if deprecated and not placement.is_dla and qdq_allowed:
        return Int8Route(
            Int8Method.QDQ_TENSORRT,
            f"implicit INT8 is deprecated on TensorRT {format_version(trt)} (since 10.1): explicit Q/DQ chosen, the non-deprecated route",
        )
    if placement.is_dla:
        return Int8Route(Int8Method.CACHE_CALIBRATOR, "DLA takes INT8 scales through an EntropyCalibration2 cache on TensorRT 8.x/10.x", deprecated)
    unavailable = "; explicit Q/DQ, the non-deprecated route, is not possible: the model cannot take the rewrite here (onnx missing or the model already quantized)" if deprecated else ""
    if table_portable:
        return Int8Route(Int8Method.CACHE_CALIBRATOR, "table declared portable: cache-only calibrator with the header rewritten for this TensorRT" + unavailable, deprecated)
    return Int8Route(Int8Method.DYNAMIC_RANGE, "per-tensor dynamic ranges (amax = scale x 127) from the table; the header version is not consulted" + unavailable, deprecated)


class NetworkTyping(str, enum.Enum):
    WEAK = "weakly_typed"  # builder flags let TensorRT pick precisions (BuilderFlag.FP16 / INT8)
    STRONG = "strongly_typed"  # types come from the ONNX itself (FP16 tensors, Q/DQ nodes); no precision flags


@dataclass(frozen=True)
class BuildPrecision:
    """How a build gets its precision on this TensorRT, and which deprecated APIs that uses."""

    typing: NetworkTyping
    flags: Tuple[str, ...]  # BuilderFlag members to set ("FP16", "INT8")
    reason: str
    deprecated: Tuple[str, ...] = ()  # "BuilderFlag.FP16 (deprecated since TensorRT 10.12)", ...


def builder_flags(trt: Version, precision: str, int8_method: Optional[Int8Method] = None, model_float: Optional[str] = None) -> BuildPrecision:
    """Network typing and builder flags for `precision` ("fp32", "fp16", "int8") on TensorRT `trt`, the INT8 route
    taken (if any) and the model's float type ("float32", "float16", "mixed", None when unknown).

    11+: strongly typed always (the flags are gone). 8.x: flags. 10.x: flags, except on 10.12+ (where FP16/INT8
    are deprecated) when the model is FP16 and INT8 (if asked) comes as Q/DQ: then a strongly typed network gives
    the same precisions without the deprecated flags. With an FP32 model a strongly typed network would run the
    layers without INT8 in FP32 instead of FP16, so the flags stay and the report says they are deprecated.
    """
    version = format_version(trt)
    deprecated = []
    if int8_method in (Int8Method.DYNAMIC_RANGE, Int8Method.CACHE_CALIBRATOR) and trt >= IMPLICIT_INT8_DEPRECATED:
        api = "ITensor.set_dynamic_range" if int8_method == Int8Method.DYNAMIC_RANGE else "IInt8EntropyCalibrator2 / IBuilderConfig.int8_calibrator"
        deprecated.append(f"implicit INT8 ({api}; deprecated since TensorRT 10.1)")
    if not implicit_int8_supported(trt):
        return BuildPrecision(NetworkTyping.STRONG, (), f"TensorRT {version} builds strongly typed networks only: types come from the ONNX")
    if precision == "fp32":
        return BuildPrecision(NetworkTyping.WEAK, (), "FP32: no precision flags")
    flags: Tuple[str, ...] = ("FP16", "INT8") if precision == "int8" else ("FP16",)
    if trt < PRECISION_FLAGS_DEPRECATED:
        return BuildPrecision(NetworkTyping.WEAK, flags, f"builder flags {' + '.join(flags)} (not deprecated on TensorRT {version})", tuple(deprecated))
    explicit = precision == "fp16" or int8_method == Int8Method.QDQ_TENSORRT
    if explicit and model_float == "float16":
        return BuildPrecision(
            NetworkTyping.STRONG,
            (),
            f"strongly typed network chosen: BuilderFlag {'/'.join(flags)} is deprecated on TensorRT {version} (since 10.12) and the "
            "model is FP16" + (" with explicit Q/DQ" if precision == "int8" else "") + ", so its own types give the same precisions",
            tuple(deprecated),
        )
    if not explicit:
        why = "implicit INT8 needs the flags"
    elif model_float is None:
        why = "the model's float type is unknown here (onnx is not installed)"
    else:
        why = f"the model is {model_float}: a strongly typed network would run the layers without INT8 in FP32, not FP16"
    deprecated.extend(f"BuilderFlag.{flag} (deprecated since TensorRT 10.12)" for flag in flags)
    return BuildPrecision(NetworkTyping.WEAK, flags, f"builder flags {' + '.join(flags)} kept: {why}", tuple(deprecated))
