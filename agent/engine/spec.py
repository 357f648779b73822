"""What shapes an engine, and the cache key made from it.

An engine is reused only when everything that shaped it is equal: the `BuildSpec` (model and table hashes,
precision, target, GPU fallback, batch profile, workspace, plugins and their hashes, timing cache, table route)
and the parts of the device fingerprint the backend depends on (TensorRT to the build number, CUDA, compute
capability, module, SoC, L4T, CPU architecture; onnxruntime's version for the CPU backend).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from agent.device.fingerprint import DeviceFingerprint
from agent.device.target import Backend, Target, TargetError
from agent.errors import AgentError

KEY_SCHEMA = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SpecError(AgentError):
    """A build spec asks for something that cannot be built; the message says what and why."""


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BEST = "best"  # the fastest this target offers: INT8 with a table, else FP16 (GPU/DLA) or FP32 (CPU)


@dataclass(frozen=True)
class BatchProfile:
    """The batch dimension's optimization profile; DLA needs min == opt == max."""

    min: int = 1
    opt: int = 1
    max: int = 1

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """'4' -> 4:4:4; '1:4:8' -> min 1, opt 4, max 8."""
        parts = text.split(":")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise SpecError(f"batch profile {text!r}: give N or MIN:OPT:MAX with whole numbers") from None
        if len(numbers) == 1:
            return cls(numbers[0], numbers[0], numbers[0])
        if len(numbers) == 3:
            return cls(*numbers)
        raise SpecError(f"batch profile {text!r}: give N or MIN:OPT:MAX")

    @property
    def fixed(self) -> bool:
        return self.min == self.opt == self.max

    def __str__(self) -> str:
        return str(self.min) if self.fixed else f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class PluginLib:
    """A TensorRT plugin library, by file name inside `engine.plugin_dir`, and the sha256 it must have."""

    name: str
    sha256: str

    @classmethod
    def parse(cls, text: str) -> PluginLib:
        name, sep, digest = text.rpartition(":")
        if not sep:
            raise SpecError(f"plugin {text!r}: give NAME.so:SHA256")
        return cls(name, digest.lower())


@dataclass(frozen=True)
class BuildSpec:
    model_sha256: str
    precision: Precision = Precision.FP32
    target: str = "cpu"  # "gpu" | "dla:N" | "cpu"; a Target once validated
    calib_sha256: Optional[str] = None
    gpu_fallback: bool = False  # DLA only: let layers DLA cannot run fall back to the GPU
    batch: BatchProfile = field(default_factory=BatchProfile)
    workspace_mb: int = 1024
    plugins: Tuple[PluginLib, ...] = ()
    timing_cache: bool = True
    calib_portable: bool = False  # the table is declared portable: cache-only calibrator (see agent.calib.routes)

    # --- derived --------------------------------------------------------------------------------------
    @property
    def placement(self) -> Target:
        """The target as a Target (SpecError when it is none)."""
        try:
            return Target.of_engine(self.target)
        except TargetError as exc:
            raise SpecError(str(exc)) from None

    @property
    def backend(self) -> Backend:
        return self.placement.backend

    @property
    def dla_core(self) -> Optional[int]:
        return self.placement.dla_core

    def validate(self) -> BuildSpec:
        """Raise SpecError for a spec nothing could build; return the spec normalised for its backend (the
        fields a backend ignores are reset, so they do not split the cache)."""
        if not _SHA256.match(self.model_sha256 or ""):
            raise SpecError(f"model_sha256 must be 64 lowercase hex digits, got {self.model_sha256!r}")
        if self.calib_sha256 is not None and not _SHA256.match(self.calib_sha256):
            raise SpecError(f"calib_sha256 must be 64 lowercase hex digits, got {self.calib_sha256!r}")
        target = self.placement
        precision = Precision(self.precision)
        if precision == Precision.INT8 and self.calib_sha256 is None:
            raise SpecError("precision int8 needs a calibration table (calib_sha256): this agent never calibrates with random data")
        batch = self.batch
        if not 1 <= batch.min <= batch.opt <= batch.max:
            raise SpecError(f"batch profile {batch}: need 1 <= min <= opt <= max")
        if self.dla_core is not None:
            if not batch.fixed:
                raise SpecError(f"DLA needs a fixed batch (min = opt = max), got {batch}: build one engine per batch size")
            if precision == Precision.FP32:
                raise SpecError("DLA runs FP16 or INT8 only: ask for fp16, int8 or best")
        elif self.gpu_fallback:
            raise SpecError("gpu_fallback applies to DLA targets only")
        for plugin in self.plugins:
            if "/" in plugin.name or "\\" in plugin.name or plugin.name in ("", ".", ".."):
                raise SpecError(f"plugin {plugin.name!r}: a file name inside engine.plugin_dir, not a path")
            if not _SHA256.match(plugin.sha256):
                raise SpecError(f"plugin {plugin.name}: sha256 must be 64 lowercase hex digits")
        if self.workspace_mb < 0:
            raise SpecError(f"workspace_mb must be >= 0, got {self.workspace_mb}")
        if target.backend == Backend.ONNXRUNTIME:
            if precision == Precision.FP16:
                raise SpecError("the cpu target (onnxruntime) runs FP32 or INT8: ask for fp32, int8 or best")
            if self.plugins:
                raise SpecError("plugin libraries are TensorRT plugins: the cpu target takes none")
            return replace(self, target=target, precision=precision, gpu_fallback=False, workspace_mb=0, timing_cache=False, calib_portable=False)
        return replace(self, target=target, precision=precision, plugins=tuple(sorted(self.plugins, key=lambda p: p.name)))

    def effective_precision(self) -> Precision:
        """`best` resolved: INT8 where a table is given, else FP16 on GPU/DLA and FP32 on the CPU."""
        precision = Precision(self.precision)
        if precision != Precision.BEST:
            return precision
        if self.calib_sha256 is not None:
            return Precision.INT8
        return Precision.FP32 if self.backend == Backend.ONNXRUNTIME else Precision.FP16

    # --- plain data -----------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["precision"] = Precision(self.precision).value
        data["plugins"] = [asdict(p) for p in self.plugins]
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> BuildSpec:
        try:
            batch = data.get("batch") or {}
            return cls(
                model_sha256=str(data["model_sha256"]),
                precision=Precision(data.get("precision", "fp32")),
                target=str(data.get("target", "cpu")),
                calib_sha256=data.get("calib_sha256"),
                gpu_fallback=bool(data.get("gpu_fallback", False)),
                batch=BatchProfile(int(batch.get("min", 1)), int(batch.get("opt", 1)), int(batch.get("max", 1))),
                workspace_mb=int(data.get("workspace_mb", 1024)),
                plugins=tuple(PluginLib(str(p["name"]), str(p["sha256"])) for p in data.get("plugins", [])),
                timing_cache=bool(data.get("timing_cache", True)),
                calib_portable=bool(data.get("calib_portable", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"not a build spec: {exc}") from None


@dataclass(frozen=True)
class BuildPolicy:
    """Acceptance rules applied to the build report. They do not shape the engine, so they are not in the key:
    changing them re-judges a cached engine without rebuilding it."""

    min_dla_layer_fraction: float = 0.0
    require_int8: bool = False


# The device fields each backend's engines depend on. Module, SoC, L4T and CPU architecture for both; TensorRT
# plans also carry the TensorRT build, CUDA and SM; onnxruntime's optimized model carries its version.
COMMON_DEVICE_FIELDS = ("module", "soc", "l4t", "cpu_arch")
BACKEND_DEVICE_FIELDS: Dict[Backend, Tuple[str, ...]] = {
    Backend.TENSORRT: ("tensorrt", "cuda", "compute_capability"),
    Backend.ONNXRUNTIME: ("onnxruntime",),
}


def device_fields(backend: str) -> Tuple[str, ...]:
    return COMMON_DEVICE_FIELDS + BACKEND_DEVICE_FIELDS[Backend.parse(backend)]


def device_key(fp: DeviceFingerprint, backend: str) -> Dict[str, Any]:
    """The fingerprint fields that decide whether an engine of `backend` built on one device loads on another.
    CUDA is compared at major.minor (a patch update keeps the driver API)."""
    out: Dict[str, Any] = {}
    for name in device_fields(backend):
        value = getattr(fp, name)
        if name == "cuda" and value:
            value = ".".join(str(value).split(".")[:2])
        out[name] = value
    return out


def key_material(spec: BuildSpec, fp: DeviceFingerprint) -> Dict[str, Any]:
    normalised = spec.validate()
    return {"schema": KEY_SCHEMA, "backend": normalised.backend, "spec": normalised.to_dict(), "device": device_key(fp, normalised.backend)}


def cache_key(spec: BuildSpec, fp: DeviceFingerprint) -> str:
    """'trt-int8-dla0-3f2a9c0b1d4e5f60': readable prefix, then 16 hex digits of sha256 over everything in
    key_material (canonical JSON)."""
    material = key_material(spec, fp)
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    normalised = spec.validate()
    prefix = "trt" if normalised.backend == Backend.TENSORRT else "ort"
    target = normalised.target.replace(":", "")
    return f"{prefix}-{Precision(normalised.precision).value}-{target}-{digest[:16]}"


def key_differences(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted names where two key materials differ (for 'why was this rebuilt')."""
    out: List[str] = []
    for name in sorted(set(a) | set(b)):
        left, right = a.get(name), b.get(name)
        if isinstance(left, dict) and isinstance(right, dict):
            out.extend(key_differences(left, right, f"{prefix}{name}."))
        elif left != right:
            out.append(f"{prefix}{name}")
    return out


def is_key(text: str) -> bool:
    return bool(re.match(r"^(trt|ort)-[a-z0-9]+-[a-z0-9]+-[0-9a-f]{16}$", text))
