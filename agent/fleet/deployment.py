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
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union, get_args

import msgspec

from agent.errors import AgentError
from agent.fleet.messages import ENVELOPE_KEYS, MessageError, decode, encode
from agent.gate.thresholds import GateThresholds
from agent.models import Annotated, FrozenModel, Meta, dump, parse
from agent.vision.options import (
    PRESETS,
    PostprocessConfig,
    PreprocessSpec,
    ResultsConfig,
    SourceOptions,
    spec_from,
)

KIND = "desired"
Precision = Literal["fp32", "fp16", "int8", "best"]  # best: INT8 with a table, else FP16 (GPU/DLA) or FP32 (CPU)
PRECISIONS: Tuple[str, ...] = get_args(Precision)
TARGET_PATTERN = re.compile(r"^(auto|gpu|cpu|dla:[0-9])$")
ARTIFACT_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")
DEPLOYMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
CLASS_KEY_PATTERN = re.compile(r"^(trt|ort)-[a-z0-9.-]{1,64}-[0-9a-f]{12}$")  # agent.engine.hardware_class.key_of
MAX_CAMERAS = 16
MAX_BATCH = 256


class DeploymentError(MessageError):
    """A desired-state message is not a valid deployment; the message names the key and the problem."""


class Deployment(FrozenModel, frozen=True, kw_only=True):
    """What a device should serve. Artifact ids are sha256 hex digests of the artifact content. Every block is
    typed: read one with `deployment_from_dict()` (or `decode_desired()`), never from a dict again."""

    id: str
    model: str
    table: Optional[str] = None
    validation: Optional[str] = None
    labels: Optional[str] = None
    precision: Precision = "best"
    target: str = "auto"  # auto | gpu | cpu | dla:N
    gpu_fallback: bool = False  # DLA: allow layers DLA cannot run to fall back to the GPU
    batch: Annotated[int, Meta(ge=1, le=MAX_BATCH)] = 1
    cameras: Annotated[Tuple[str, ...], Meta(max_length=MAX_CAMERAS)] = ()
    camera_options: SourceOptions = SourceOptions()  # for every camera
    preprocess: Union[str, PreprocessSpec, None] = None  # a preset name (agent.vision.preprocess.PRESETS) or a spec
    postprocess: Optional[PostprocessConfig] = None  # a plugin's config, tagged on "type" (agent.vision.postprocess)
    results: ResultsConfig = ResultsConfig()  # rate limit / on-change
    accuracy: Optional[GateThresholds] = None  # accuracy gate limits; None: none given
    telemetry_interval_s: Optional[Annotated[float, Meta(ge=0.1, le=86400)]] = None  # None: the agent's configured interval
    # shared plans (docs/engines.md): hardware class key -> the prebuilt plan artifact of that class (agent.fleet.plans)
    plans: Annotated[Dict[str, str], Meta(max_length=64)] = msgspec.field(default_factory=dict)
    skip_plan_gate: bool = False  # a device serving a shared plan may rely on the builder's accuracy gate

    def __post_init__(self) -> None:
        if not DEPLOYMENT_ID_PATTERN.match(self.id):
            raise ValueError(f"id: required, 1 to 128 of letters, digits and ._:@+- starting with a letter or digit, got {self.id!r}")
        for role in ("model", "table", "validation", "labels"):
            value = getattr(self, role)
            if value is not None and not ARTIFACT_ID_PATTERN.match(value):
                raise ValueError(f"{role}: not an artifact id (64 lowercase hex characters): {value[:80]!r}")
        if not TARGET_PATTERN.match(self.target):
            raise ValueError(f"target: auto, gpu, cpu or dla:N, got {self.target!r}")
        if self.precision == "int8" and self.table is None:
            raise ValueError("table: an INT8 deployment needs a calibration table (artifact id)")
        for index, uri in enumerate(self.cameras):
            if not uri.strip() or len(uri) > 2048:
                raise ValueError(f"cameras[{index}]: must be a non-empty URI of at most 2048 characters, got {uri[:80]!r}")
        if isinstance(self.preprocess, str) and self.preprocess not in PRESETS:
            raise ValueError(f"preprocess: preset {self.preprocess!r} unknown (known: {', '.join(sorted(PRESETS))})")
        for klass, plan in self.plans.items():
            if not CLASS_KEY_PATTERN.match(klass):
                raise ValueError(f"plans: {klass[:80]!r} is not a hardware class key (edge-agent device --json shows it)")
            if not ARTIFACT_ID_PATTERN.match(plan):
                raise ValueError(f"plans.{klass}: not an artifact id (64 lowercase hex characters): {plan[:80]!r}")

    # derived ------------------------------------------------------------------------------------------
    def artifact_ids(self) -> List[Tuple[str, str]]:
        """(role, artifact id) for every artifact this deployment needs, model first."""
        roles = [("model", self.model), ("table", self.table), ("validation", self.validation), ("labels", self.labels)]
        return [(role, value) for role, value in roles if value]

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """The preprocessing to run: the spec, a preset's, or the default."""
        return spec_from(self.preprocess)

    def to_dict(self) -> Dict[str, Any]:
        """The deployment as a document (blocks without their defaults); `deployment_from_dict` reads it back."""
        data: Dict[str, Any] = dump(self)
        data["cameras"] = list(self.cameras)
        for key in ("postprocess", "accuracy"):  # none given: an empty block, as in the document
            if data[key] is None:
                data[key] = {}
        for name, default in (("plans", {}), ("skip_plan_gate", False)):  # absent when unused: digests stay as before
            if data.get(name) == default:
                data.pop(name, None)
        return data

    def digest(self) -> str:
        """A short content digest: two deployments with the same digest build and serve the same thing."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.id} ({self.precision} on {self.target}, model {self.model[:12]})"


# decoding --------------------------------------------------------------------------------------------
def deployment_from_dict(data: Any) -> Deployment:
    """Validate and convert one deployment document. Raises DeploymentError naming the key.

    The document's short forms are read here, once: `cameras` may be one URI, `postprocess` a plugin key,
    `preprocess` a preset with changes (`{"preset": "blazeface", "size": 192}`); an empty block is none."""
    if not isinstance(data, dict):
        raise DeploymentError(f"deployment: must be an object, got {type(data).__name__}")
    data = dict(data)
    cameras = data.get("cameras")
    if isinstance(cameras, str):
        data["cameras"] = [cameras]
    if isinstance(data.get("cameras"), list):
        data["cameras"] = [uri.strip() if isinstance(uri, str) else uri for uri in data["cameras"]]
    for key in ("camera_options", "results", "postprocess", "accuracy"):
        if key in data and (data[key] is None or data[key] == {}):
            del data[key]
    if isinstance(data.get("postprocess"), str):
        data["postprocess"] = {"type": data["postprocess"]}
    preprocess = data.get("preprocess")
    if isinstance(preprocess, dict):
        try:
            data["preprocess"] = spec_from(preprocess)
        except AgentError as exc:
            raise DeploymentError(f"deployment.{exc}") from None
    return parse(Deployment, data, error=DeploymentError, root="deployment")


def decode_desired(payload: bytes) -> Optional[Deployment]:
    """A retained desired-state payload -> the deployment, or None for an empty payload (retained message
    cleared) or `{"deployment": null}` (nothing desired from this source). Raises DeploymentError."""
    if not payload:
        return None
    try:
        data = decode(payload, expected_kind=KIND)
    except MessageError as exc:
        raise DeploymentError(f"desired state: {exc}") from None
    if "deployment" not in data:
        raise DeploymentError("desired state: 'deployment' is required (an object, or null for none)")
    extra = sorted(set(data) - ENVELOPE_KEYS - {"deployment"})
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
