"""How a calibration table becomes INT8 on the device: the route its TensorRT version (or onnxruntime) allows.

The version facts themselves (implicit INT8 removed in TensorRT 11.0, DLA by version) live in
agent/device/versions.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from agent.device.target import Backend, Target
from agent.device.versions import Version, format_version, implicit_int8_supported


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


def choose_int8_route(trt: Optional[Version], target: Union[str, Target], table_portable: bool = False) -> Int8Route:
    """The route a table takes to INT8 on this device. `trt` is None for the onnxruntime CPU backend.

    GPU on 8.x/10.x: per-tensor dynamic ranges, which ignore the table's header (no version check to fail), unless
    the table is declared portable, when a cache-only calibrator with the header rewritten is used (TensorRT
    then also applies its own calibration bookkeeping). DLA on 8.x/10.x: the cache calibrator, since DLA wants
    EntropyCalibration2 scales through the calibrator path and does not take Q/DQ before 11.4.1.
    """
    placement = Target(target)
    if trt is None or placement.backend == Backend.ONNXRUNTIME:
        return Int8Route(Int8Method.QDQ_ONNXRUNTIME, "onnxruntime runs explicit Q/DQ; the table becomes QuantizeLinear/DequantizeLinear")
    if not implicit_int8_supported(trt):
        return Int8Route(Int8Method.QDQ_TENSORRT, f"TensorRT {format_version(trt)} removed implicit INT8 (11.0): explicit Q/DQ only")
    deprecated = trt >= (10, 1, 0)
    if placement.is_dla:
        return Int8Route(Int8Method.CACHE_CALIBRATOR, "DLA takes INT8 scales through an EntropyCalibration2 cache on TensorRT 8.x/10.x", deprecated)
    if table_portable:
        return Int8Route(Int8Method.CACHE_CALIBRATOR, "table declared portable: cache-only calibrator with the header rewritten for this TensorRT", deprecated)
    return Int8Route(Int8Method.DYNAMIC_RANGE, "per-tensor dynamic ranges (amax = scale x 127) from the table; the header version is not consulted", deprecated)
