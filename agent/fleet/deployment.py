"""The desired state of a device: one deployment, published retained on `<device>/desired` or
`group/<name>/desired` (Azure IoT Edge's desired twin, per device or per rollout group).

A deployment names its inputs by artifact id (the sha256 of the content), so the device can fetch exactly
those bytes and verify them, and says how to build and judge the engine (precision, target, batch,
accuracy thresholds) and what to serve it on (camera URIs, pre- and postprocessing).

Decoding is strict: an unknown key, a wrong type, an out-of-range value or a malformed artifact id is a
DeploymentError naming the key, so a typo in a rollout becomes a clear report instead of a surprise
default. The device's own desired state wins over its groups'; among groups, the order in `device.groups`
decides (first wins).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from agent.errors import AgentError
from agent.fleet.messages import MessageError, decode, encode
from agent.gate.thresholds import GateError, GateThresholds
from agent.vision.config_schema import from_mapping
from agent.vision.postprocess import PostprocessError, registry
from agent.vision.preprocess import PreprocessError, spec_from
from agent.vision.results import ResultsConfig
from agent.vision.sources import SourceOptions

KIND = "desired"
PRECISIONS = ("fp32", "fp16", "int8", "best")  # best: INT8 with a table, else FP16 (GPU/DLA) or FP32 (CPU)
TARGET_PATTERN = re.compile(r"^(auto|gpu|cpu|dla:[0-9])$")
ARTIFACT_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
DEPLOYMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
MAX_CAMERAS = 16
MAX_BATCH = 256

PreprocessValue = Union[str, Dict[str, Any], None]


class DeploymentError(MessageError):
    """A desired-state message is not a valid deployment; the message names the key and the problem."""


@dataclass(frozen=True)
class Deployment:
    """What a device should serve. Artifact ids are sha256 hex digests of the artifact content."""

    id: str
    model: str
    table: Optional[str] = None
    validation: Optional[str] = None
    labels: Optional[str] = None
    precision: str = "best"
    target: str = "auto"
    gpu_fallback: bool = False  # DLA: allow layers DLA cannot run to fall back to the GPU
    batch: int = 1
    cameras: Tuple[str, ...] = ()
    camera_options: Dict[str, Any] = field(default_factory=dict)  # for every camera (agent.vision.sources.SourceOptions)
    preprocess: PreprocessValue = None  # a preset name or a spec object (agent.vision.preprocess)
    postprocess: Dict[str, Any] = field(default_factory=dict)  # {"type": "classification", ...}
    results: Dict[str, Any] = field(default_factory=dict)  # rate limit / on-change (agent.vision.results.ResultsConfig)
    accuracy: Dict[str, Any] = field(default_factory=dict)  # accuracy gate limits (agent.gate.thresholds)
    telemetry_interval_s: Optional[float] = None  # None: the agent's configured interval

    # derived ------------------------------------------------------------------------------------------
    def artifact_ids(self) -> List[Tuple[str, str]]:
        """(role, artifact id) for every artifact this deployment needs, model first."""
        roles = [("model", self.model), ("table", self.table), ("validation", self.validation), ("labels", self.labels)]
        return [(role, value) for role, value in roles if value]

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["cameras"] = list(self.cameras)
        return data

    def digest(self) -> str:
        """A short content digest: two deployments with the same digest build and serve the same thing."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.id} ({self.precision} on {self.target}, model {self.model[:12]})"


# decoding --------------------------------------------------------------------------------------------
_FIELDS = tuple(Deployment.__dataclass_fields__)


def _artifact_id(data: Mapping[str, Any], key: str, required: bool) -> Optional[str]:
    value = data.get(key)
    if value is None:
        if required:
            raise DeploymentError(f"deployment.{key}: required (the artifact id, a sha256 hex digest)")
        return None
    if not isinstance(value, str):
        raise DeploymentError(f"deployment.{key}: must be an artifact id string, got {type(value).__name__}")
    if not ARTIFACT_ID_PATTERN.match(value):
        raise DeploymentError(f"deployment.{key}: not an artifact id (64 lowercase hex characters): {value[:80]!r}")
    return value


def _number(data: Mapping[str, Any], key: str) -> Optional[float]:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise DeploymentError(f"deployment.{key}: must be a number, got {value!r}")
    return float(value)


def _cameras(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DeploymentError(f"deployment.cameras: must be a list of URIs, got {type(value).__name__}")
    if len(value) > MAX_CAMERAS:
        raise DeploymentError(f"deployment.cameras: at most {MAX_CAMERAS} cameras, got {len(value)}")
    out = []
    for index, uri in enumerate(value):
        if not isinstance(uri, str) or not uri.strip():
            raise DeploymentError(f"deployment.cameras[{index}]: must be a non-empty URI string, got {uri!r}")
        if len(uri) > 2048:
            raise DeploymentError(f"deployment.cameras[{index}]: longer than 2048 characters")
        out.append(uri.strip())
    return tuple(out)


def _camera_options(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeploymentError(f"deployment.camera_options: must be an object, got {type(value).__name__}")

    try:
        SourceOptions.from_dict(value).validate()
    except AgentError as exc:
        raise DeploymentError(f"deployment.camera_options: {exc}") from None
    return dict(value)


def _results(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeploymentError(f"deployment.results: must be an object, got {type(value).__name__}")

    try:
        ResultsConfig.from_dict(value).validate()
    except AgentError as exc:
        raise DeploymentError(f"deployment.results: {exc}") from None
    return dict(value)


def _preprocess(value: Any) -> PreprocessValue:
    if value is None:
        return None
    if not isinstance(value, (str, dict)):
        raise DeploymentError(f"deployment.preprocess: a preset name or an object, got {type(value).__name__}")

    try:
        spec_from(value)
    except PreprocessError as exc:
        raise DeploymentError(f"deployment.{exc}") from None
    except (TypeError, ValueError) as exc:  # a spec built from odd values
        raise DeploymentError(f"deployment.preprocess: {exc}") from None
    return value


def _postprocess(value: Any) -> Dict[str, Any]:
    if value is None or value == {}:
        return {}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise DeploymentError(f"deployment.postprocess: an object like {{\"type\": \"classification\"}}, got {type(value).__name__}")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise DeploymentError(f"deployment.postprocess.type: required, a plugin name, got {kind!r}")

    plugins = registry()
    if kind not in plugins:
        raise DeploymentError(f"deployment.postprocess.type: {kind!r} unknown (known: {', '.join(sorted(plugins))})")
    config_cls = plugins[kind][0]
    try:  # the options' names and types; files they name (labels) are checked on the device
        config = from_mapping(config_cls, value, f"deployment.postprocess ({kind})", PostprocessError, ignore=("type",))
        check = getattr(config, "validate", None)
        if callable(check):
            check()
    except AgentError as exc:
        text = str(exc)
        raise DeploymentError(text if text.startswith("deployment.") else f"deployment.postprocess: {text}") from None
    return dict(value)


def _accuracy(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeploymentError(f"deployment.accuracy: must be an object of thresholds, got {type(value).__name__}")

    try:
        GateThresholds.from_dict(value)
    except GateError as exc:
        raise DeploymentError(f"deployment.{exc}") from None
    return dict(value)


def deployment_from_dict(data: Any) -> Deployment:
    """Validate and convert one deployment object. Raises DeploymentError naming the key."""
    if not isinstance(data, dict):
        raise DeploymentError(f"deployment: must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise DeploymentError(f"deployment: unknown keys {unknown} (known: {', '.join(_FIELDS)})")
    deployment_id = data.get("id")
    if not isinstance(deployment_id, str) or not DEPLOYMENT_ID_PATTERN.match(deployment_id):
        raise DeploymentError(
            f"deployment.id: required, 1 to 128 of letters, digits and ._:@+- starting with a letter or digit, got {deployment_id!r}"
        )
    precision = data.get("precision", "best")
    if precision not in PRECISIONS:
        raise DeploymentError(f"deployment.precision: one of {', '.join(PRECISIONS)}, got {precision!r}")
    target = data.get("target", "auto")
    if not isinstance(target, str) or not TARGET_PATTERN.match(target):
        raise DeploymentError(f"deployment.target: auto, gpu, cpu or dla:N, got {target!r}")
    batch = data.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise DeploymentError(f"deployment.batch: an integer from 1 to {MAX_BATCH}, got {batch!r}")
    gpu_fallback = data.get("gpu_fallback", False)
    if not isinstance(gpu_fallback, bool):
        raise DeploymentError(f"deployment.gpu_fallback: true or false, got {gpu_fallback!r}")
    interval = _number(data, "telemetry_interval_s")
    if interval is not None and not 0.1 <= interval <= 86400:
        raise DeploymentError(f"deployment.telemetry_interval_s: from 0.1 to 86400 seconds, got {interval}")
    table = _artifact_id(data, "table", required=False)
    if precision == "int8" and table is None:
        raise DeploymentError("deployment.table: an INT8 deployment needs a calibration table (artifact id)")
    return Deployment(
        id=deployment_id,
        model=str(_artifact_id(data, "model", required=True)),
        table=table,
        validation=_artifact_id(data, "validation", required=False),
        labels=_artifact_id(data, "labels", required=False),
        precision=precision,
        target=target,
        gpu_fallback=gpu_fallback,
        batch=batch,
        cameras=_cameras(data.get("cameras")),
        camera_options=_camera_options(data.get("camera_options")),
        preprocess=_preprocess(data.get("preprocess")),
        postprocess=_postprocess(data.get("postprocess")),
        results=_results(data.get("results")),
        accuracy=_accuracy(data.get("accuracy")),
        telemetry_interval_s=interval,
    )


def decode_desired(payload: bytes) -> Optional[Deployment]:
    """A retained desired-state payload -> the deployment, or None for an empty payload (retained message
    cleared) or `{"deployment": null}` (nothing desired from this source). Raises DeploymentError."""
    if not payload:
        return None
    try:
        data = decode(payload, expected_kind=KIND)
    except MessageError as exc:
        raise DeploymentError(f"desired state: {exc}") from None
    except RecursionError:
        raise DeploymentError("desired state: the JSON is nested too deeply") from None
    if "deployment" not in data:
        raise DeploymentError("desired state: 'deployment' is required (an object, or null for none)")
    extra = sorted(set(data) - {"schema", "kind", "ts", "deployment"})
    if extra:
        raise DeploymentError(f"desired state: unknown keys {extra}")
    if data["deployment"] is None:
        return None
    return deployment_from_dict(data["deployment"])


def encode_desired(deployment: Optional[Deployment]) -> bytes:
    return encode(KIND, {"deployment": deployment.to_dict() if deployment is not None else None})


# which source wins --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesiredSource:
    """Where the winning desired state came from: 'device' or 'group:<name>'."""

    name: str
    deployment: Deployment


def resolve_desired(
    device: Optional[Deployment], groups: Mapping[str, Optional[Deployment]], group_order: Sequence[str]
) -> Optional[DesiredSource]:
    """The device's own desired state if any, else the first group (in configuration order) that has one."""
    if device is not None:
        return DesiredSource("device", device)
    for name in group_order:
        candidate = groups.get(name)
        if candidate is not None:
            return DesiredSource(f"group:{name}", candidate)
    return None
