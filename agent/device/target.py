"""Where an engine runs on this device, and which inference stack runs it: the two types every layer shares.

    Target("dla:1").kind == "dla", .dla_core == 1, .backend == Backend.TENSORRT
    Target("cpu").backend == Backend.ONNXRUNTIME

They live in `device` (below calib, engine, runtime) because the INT8 route of a calibration table (agent.calib)
already depends on the target, and the device is what a target names: its CPU, its GPU, one of its DLA cores.
`Target` is a `str` ("cpu", "gpu", "dla:N") and `Backend` a `str` enum, so build specs, manifests, cache keys
and deployment documents keep their plain form.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Optional, Union

from agent.device.fingerprint import DeviceFingerprint
from agent.errors import AgentError
from agent.lazy import try_import

_TARGET = re.compile(r"^(cpu|gpu|dla(:\d)?)$")
AUTO = "auto"
TENSORRT_SUFFIXES = (".plan", ".engine", ".trt")


class TargetError(AgentError):
    """A target or backend name that is none of the known ones."""


class Backend(str, enum.Enum):
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"

    def __str__(self) -> str:  # 'tensorrt' in messages and f-strings on every Python (3.12 changed the default)
        return str(self.value)

    @classmethod
    def parse(cls, text: str) -> Backend:
        """'tensorrt' | 'trt' | 'onnxruntime' | 'ort' | 'cpu' (any case) -> Backend."""
        if isinstance(text, Backend):
            return text
        key = str(text or "").strip().lower()
        found = _BACKEND_NAMES.get(key)
        if found is None:
            raise TargetError(f"unknown backend {text!r}; known: onnxruntime, tensorrt")
        return found

    @classmethod
    def for_file(cls, text: str, path: Union[str, Path]) -> Backend:
        """`text`, or for 'auto' the backend the file's suffix names (.onnx: onnxruntime; .plan, .engine, .trt:
        TensorRT)."""
        if str(text or AUTO).strip().lower() != AUTO:
            return cls.parse(text)
        suffix = Path(path).suffix.lower()
        if suffix == ".onnx":
            return cls.ONNXRUNTIME
        if suffix in TENSORRT_SUFFIXES:
            return cls.TENSORRT
        raise TargetError(f"cannot tell the backend of {Path(path).name} from its suffix; name one: onnxruntime or tensorrt")


_BACKEND_NAMES = {
    "tensorrt": Backend.TENSORRT,
    "trt": Backend.TENSORRT,
    "onnxruntime": Backend.ONNXRUNTIME,
    "ort": Backend.ONNXRUNTIME,
    "cpu": Backend.ONNXRUNTIME,
}


class Target(str):
    """'cpu' (onnxruntime), 'gpu' or 'dla:N' (TensorRT): checked when made, so holding one means it is valid.
    'dla' alone names any DLA core (enough to judge a calibration table; an engine build needs the core)."""

    def __new__(cls, text: str) -> Target:
        if isinstance(text, Target):
            return text
        canonical = str(text or "").strip().lower()
        if not _TARGET.match(canonical):
            raise TargetError(f"target must be gpu, dla:N or cpu, got {text!r}")
        return super().__new__(cls, canonical)

    @classmethod
    def of_engine(cls, text: str) -> Target:
        """A target an engine can be built for: 'dla' must name its core."""
        target = cls(text)
        if target.is_dla and target.dla_core is None:
            raise TargetError(f"target must be gpu, dla:N or cpu, got {text!r}: a DLA engine runs on one core")
        return target

    @property
    def kind(self) -> str:
        """'cpu', 'gpu' or 'dla'."""
        return "dla" if self.startswith("dla") else str(self)

    @property
    def dla_core(self) -> Optional[int]:
        return int(self[4:]) if self.startswith("dla:") else None

    @property
    def is_dla(self) -> bool:
        return self.kind == "dla"

    @property
    def backend(self) -> Backend:
        return Backend.ONNXRUNTIME if self.kind == "cpu" else Backend.TENSORRT


def tensorrt_usable(fp: DeviceFingerprint) -> bool:
    """TensorRT is on this device and its Python module imports."""
    return bool(fp.tensorrt) and try_import("tensorrt") is not None


def resolve_target(requested: Optional[str], engine_backend: str, have_tensorrt: bool) -> Target:
    """The one rule for the build target, from a deployment's or the command line's `target` ('auto' or None,
    or a target) and the agent's `engine.backend` ('auto', 'tensorrt' or 'onnxruntime'): `onnxruntime` pins
    everything to the CPU; `auto` is the GPU where TensorRT is usable (or `engine.backend = tensorrt`) and the
    CPU elsewhere."""
    if engine_backend == Backend.ONNXRUNTIME.value:
        return Target("cpu")
    if requested and requested != AUTO:
        return Target.of_engine(requested)
    if engine_backend == Backend.TENSORRT.value or have_tensorrt:
        return Target("gpu")
    return Target("cpu")
