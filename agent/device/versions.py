"""TensorRT, JetPack and L4T version facts: what each release is, ships, and allows.

Sources: docs/engines.md (the TensorRT version rules) and docs/hardware/ (the device samples); NVIDIA's
JetPack release notes for the L4T -> JetPack and JetPack -> TensorRT/CUDA/cuDNN tables.
- Calibration-cache header versions: 4 digits up to TensorRT 8 (8601 = 8.6.1), 6 digits from 10 (100300 = 10.3.0).
- Implicit INT8 (calibrators, per-tensor dynamic ranges) works on 8.x and 10.x (deprecated from 10.1) and is
  removed in 11.0: there the table must become explicit Q/DQ in the ONNX.
- DLA: present where the module has it; unavailable on TensorRT 10.8 to 11.4.0 packages; 11.4.1+ brings it back
  on AGX Orin with strongly typed (Q/DQ) networks only.
- TensorRT is tied to JetPack on JetPack <= 6: a mismatch means a pip wheel or a half-upgraded system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from agent.errors import AgentError

Version = Tuple[int, int, int]


class VersionError(AgentError):
    """A TensorRT version string or header code could not be read."""


def parse_version(text: str) -> Version:
    """'10.3.0.30' or '8.6.1' or '10.3' -> (major, minor, patch). The build number is dropped."""
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not match:
        raise VersionError(f"not a TensorRT version: {text!r}")
    return int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)


def format_version(version: Version) -> str:
    return f"{version[0]}.{version[1]}.{version[2]}"


def decode_header_version(code: int) -> Version:
    """The number in `TRT-<code>-<algorithm>`: >= 100000 is M*10000+m*100+p (TensorRT 10+), else M*1000+m*100+p."""
    if code < 0:
        raise VersionError(f"negative TensorRT version code {code}")
    if code >= 100000:
        return code // 10000, (code // 100) % 100, code % 100
    return code // 1000, (code // 100) % 10, code % 100


def encode_header_version(version: Version) -> int:
    major, minor, patch = version
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def implicit_int8_supported(trt: Version) -> bool:
    return trt[0] < 11


IMPLICIT_INT8_DEPRECATED: Version = (10, 1, 0)  # calibrators and ITensor.set_dynamic_range: [DEPRECATED] from 10.1
PRECISION_FLAGS_DEPRECATED: Version = (10, 12, 0)  # BuilderFlag.FP16 / INT8: [DEPRECATED] from 10.12


@dataclass(frozen=True)
class DlaSupport:
    available: bool
    reason: str
    qdq_only: bool = False


def dla_support(trt: Optional[Version], dla_cores: Optional[int], module: Optional[str] = None) -> DlaSupport:
    """Can this device build for DLA at all? `dla_cores` from the fingerprint (None: unknown)."""
    where = f" ({module})" if module else ""
    if trt is None:
        return DlaSupport(False, "no TensorRT on this device: DLA needs TensorRT")
    if dla_cores is not None and dla_cores <= 0:
        return DlaSupport(False, f"this module has no DLA cores{where}")
    if (10, 8, 0) <= trt < (11, 4, 1):
        return DlaSupport(False, f"TensorRT {format_version(trt)} has no DLA support (10.8 to 11.4.0); JetPack 6 ships 10.3 with DLA")
    if trt >= (11, 4, 1):
        if module is not None and "agx orin" not in module.lower():
            return DlaSupport(False, f"TensorRT {format_version(trt)} supports DLA on AGX Orin only{where}")
        return DlaSupport(True, "TensorRT 11.4.1+ on AGX Orin: DLA with strongly typed (Q/DQ) networks only", qdq_only=True)
    return DlaSupport(True, "DLA available")


def reported_dla_support(tensorrt: Optional[str], dla_cores: Optional[int], module: Optional[str] = None) -> DlaSupport:
    """`dla_support` from a fingerprint's fields: the TensorRT version as text (missing or unreadable: no TensorRT)."""
    try:
        trt = parse_version(tensorrt) if tensorrt else None
    except VersionError:
        trt = None
    return dla_support(trt, dla_cores, module)


# L4T release -> JetPack (NVIDIA's JetPack archive; the R32.1 / R32.5 / R36.4.7 / R39.2 rows from the device samples).
# Keys with two parts match any patch of that release.
L4T_JETPACK: Dict[str, str] = {
    "32.1.0": "4.2",
    "32.5.0": "4.5",
    "32.5.1": "4.5.1",
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.3": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.4.7": "6.2.1",
    "36.5.0": "6.2.2",
    "38.2": "7.0",
    "38.4": "7.1",
    "39": "7.2",
}


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    """'36.4.3' -> '6.2'; exact release first, then major.minor, then major; None when not in the table."""
    if not l4t:
        return None
    parts = l4t.split(".")
    full = ".".join([*parts, "0", "0"][:3])
    for candidate in (l4t, full, ".".join(parts[:2]), parts[0]):
        if candidate in L4T_JETPACK:
            return L4T_JETPACK[candidate]
    return None


# JetPack release (major.minor) -> (TensorRT major.minor, CUDA major.minor, cuDNN major.minor), from
# NVIDIA's JetPack release notes. TensorRT is tied to JetPack on JetPack <= 6: a mismatch means a
# pip wheel or a half-upgraded system, and engines built with it will not match the fleet's.
JETPACK_STACK: Dict[str, Tuple[str, str, Optional[str]]] = {
    "4.6": ("8.2", "10.2", "8.2"),
    "5.0": ("8.4", "11.4", "8.4"),
    "5.1": ("8.5", "11.4", "8.6"),
    "6.0": ("8.6", "12.2", "8.9"),
    "6.1": ("10.3", "12.6", "9.3"),
    "6.2": ("10.3", "12.6", "9.3"),
    "7.0": ("10.13", "13.0", None),
    "7.1": ("10.13", "13.0", None),
}


def major_minor(version: Optional[str]) -> Optional[str]:
    if not version:
        return None
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]
