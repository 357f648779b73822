"""The manifest beside every engine file: what shaped the engine, on which device, and how it came out.

`<state>/engines/<key>/manifest.json` sits beside `engine.plan` (TensorRT) or `model.opt.onnx` (onnxruntime).
It is written last and atomically, so an engine folder without a manifest is an unfinished build, never a
usable engine.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent import __version__
from agent.device.target import Backend
from agent.engine.spec import BuildPolicy, BuildSpec
from agent.errors import AgentError
from agent.store.atomic import atomic_write_json

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
ENGINE_FILES = {Backend.TENSORRT: "engine.plan", Backend.ONNXRUNTIME: "model.opt.onnx"}

STATUS_OK = "ok"
STATUS_REJECTED = "rejected"  # built, but the policy refused it (the report says why); kept for inspection


class ManifestError(AgentError):
    """A manifest is missing, unreadable or not one of ours."""


@dataclass
class BuildReport:
    """How the engine came out: where its layers run, in which precision, what fell back and why."""

    source: str = ""  # "inspector", "build log", "onnx graph"
    layers: int = 0
    layers_dla: int = 0
    layers_gpu: int = 0
    layers_cpu: int = 0
    dla_fraction: Optional[float] = None  # layers_dla / (layers_dla + layers_gpu) on DLA targets
    precisions: Dict[str, int] = field(default_factory=dict)  # "int8": 40, "fp16": 3, ...
    layer_precisions: List[Dict[str, str]] = field(default_factory=list)  # [{"name", "precision", "device"}]
    fallbacks: List[Dict[str, str]] = field(default_factory=list)  # [{"layer", "reason"}]: DLA -> GPU
    tensors_without_scale: List[str] = field(default_factory=list)
    int8_layers: int = 0
    warnings: List[str] = field(default_factory=list)
    problems: List[Dict[str, Any]] = field(default_factory=list)  # classified log lines (agent.engine.diagnose)
    # how the precision was obtained on this TensorRT: typing, builder flags, INT8 route, deprecated APIs used
    precision_route: Dict[str, Any] = field(default_factory=dict)
    unsupported_ops: List[str] = field(default_factory=list)  # operators the parser could not import (with node, opset)
    missing_plugins: List[str] = field(default_factory=list)  # plugins not registered (name and version)
    build_seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> BuildReport:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class Manifest:
    key: str
    backend: str
    spec: BuildSpec
    device: Dict[str, Any]  # the fingerprint at build time (all fields)
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    backend_version: str  # TensorRT or onnxruntime version that built it
    built_at: str = ""
    build_seconds: float = 0.0
    status: str = STATUS_OK
    int8: Dict[str, Any] = field(default_factory=dict)  # {"route", "reason", "flavor", "notes"}
    report: BuildReport = field(default_factory=BuildReport)
    policy: Dict[str, Any] = field(default_factory=dict)
    policy_violations: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    inputs: Dict[str, Optional[str]] = field(default_factory=dict)  # {"model": sha256, "calib": sha256 or None}
    agent_version: str = __version__
    schema: int = MANIFEST_SCHEMA

    @property
    def versions(self) -> Dict[str, Any]:
        """TensorRT, CUDA, cuDNN, L4T, JetPack, compute capability and module at build time."""
        names = ("tensorrt", "cuda", "cudnn", "l4t", "jetpack", "compute_capability", "module", "onnxruntime")
        return {name: self.device.get(name) for name in names}

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        data["report"] = self.report.to_dict()
        data["versions"] = self.versions
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        if data.get("schema") != MANIFEST_SCHEMA:
            raise ManifestError(f"manifest schema {data.get('schema')!r} is not {MANIFEST_SCHEMA} (written by another agent version)")
        try:
            return cls(
                key=str(data["key"]),
                backend=str(data["backend"]),
                spec=BuildSpec.from_dict(data["spec"]),
                device=dict(data.get("device") or {}),
                engine_file=str(data["engine_file"]),
                engine_sha256=str(data["engine_sha256"]),
                engine_bytes=int(data["engine_bytes"]),
                backend_version=str(data.get("backend_version") or ""),
                built_at=str(data.get("built_at") or ""),
                build_seconds=float(data.get("build_seconds") or 0.0),
                status=str(data.get("status") or STATUS_OK),
                int8=dict(data.get("int8") or {}),
                report=BuildReport.from_dict(data.get("report") or {}),
                policy=dict(data.get("policy") or {}),
                policy_violations=list(data.get("policy_violations") or []),
                notes=list(data.get("notes") or []),
                inputs=dict(data.get("inputs") or {}),
                agent_version=str(data.get("agent_version") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is missing or has a bad field: {exc}") from None

    def policy_obj(self) -> BuildPolicy:
        return BuildPolicy(
            min_dla_layer_fraction=float(self.policy.get("min_dla_layer_fraction", 0.0)),
            require_int8=bool(self.policy.get("require_int8", False)),
        )


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_NAME
    atomic_write_json(path, manifest.to_dict())
    return path


def read_manifest(path: Path) -> Manifest:
    """A manifest file, or the folder holding one, or an engine file with its manifest beside it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    elif path.name != MANIFEST_NAME:
        path = path.parent / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {path}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    return Manifest.from_dict(data)
