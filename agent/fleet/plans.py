"""Shared plans on the wire: the engine artifact, its index, and the builder's request/reply topics.

A plan is an ordinary artifact of kind `engine` (blocks, resume, signature: agent.fleet.artifact_protocol and
agent.fleet.transfer) whose signed manifest embeds, under `engine`:

    {"class": {key, schema, fields}, "engine": <the engine manifest (agent.engine.manifest)>,
     "gate": <the builder's accuracy gate summary>, "spec_digest": ..., "builder": <device id>, "deployment_id": ...}

The embedded part is inside the signed body, so changing one byte of it fails the signature. Topics:

    <prefix>/artifacts/plans/<class>/<spec digest>   retained {artifact_id, manifest, class, spec_digest, builder}:
                                                     the plan's signed manifest for this class (one plan file can be
                                                     the plan of two classes, so the manifest at the artifact's own
                                                     topic is not used for plans); checked like any manifest
    <prefix>/fleet/plan-build/<class>                the operator asks the builder of a class for a build
    <prefix>/fleet/plan-built/<request id>           the builder's answer
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import msgspec

from agent.device.target import Backend
from agent.fleet.artifact_protocol import ArtifactError, ArtifactManifest, decode_manifest, describe_file
from agent.fleet.artifact_trust import ENGINE_KIND
from agent.fleet.messages import ENVELOPE_KEYS, MessageError, decode, encode
from agent.models import Annotated, FrozenModel, Meta, parse

PLAN_KIND = ENGINE_KIND
EMBED_FIELD = "engine"
INDEX_KIND = "plan-index"
REQUEST_KIND = "plan-build"
REPLY_KIND = "plan-built"


class PlanRefusedError(ArtifactError):
    """A shared plan was refused before a byte of it was stored: wrong class, spec, device or gate."""

    code = "plan_refused"

    def __init__(self, message: str, field: str = "", reasons: Optional[list] = None) -> None:
        super().__init__(message)
        self.field = field
        self.reasons = list(reasons or [message])


def spec_digest(spec: Mapping[str, Any]) -> str:
    """16 hex digits over the canonical JSON of a normalised build spec (BuildSpec.validate().to_dict())."""
    return hashlib.sha256(json.dumps(dict(spec), sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()[:16]


def index_topic(prefix: str, class_key: str, digest: str) -> str:
    return f"{prefix}/artifacts/plans/{class_key}/{digest}"


def request_topic(prefix: str, class_key: str) -> str:
    return f"{prefix}/fleet/plan-build/{class_key}"


def reply_topic(prefix: str, request_id: str) -> str:
    return f"{prefix}/fleet/plan-built/{request_id}"


def describe_plan(
    engine_path: Path,
    engine_manifest: Dict[str, Any],
    hardware_class: Dict[str, Any],
    gate: Dict[str, Any],
    *,
    builder: str,
    deployment_id: str,
    chunk_size: int,
) -> ArtifactManifest:
    """The (unsigned) artifact manifest of a plan file, with the engine manifest embedded."""
    name = f"{engine_manifest.get('key', 'engine')}.{'plan' if engine_manifest.get('backend') == Backend.TENSORRT else 'opt.onnx'}"
    manifest = describe_file(engine_path, PLAN_KIND, name, chunk_size)
    embedded = {
        "class": dict(hardware_class),
        "engine": dict(engine_manifest),
        "gate": dict(gate),
        "spec_digest": spec_digest(engine_manifest.get("spec") or {}),
        "builder": builder,
        "deployment_id": deployment_id,
    }
    return ArtifactManifest(
        manifest.artifact_id, manifest.size, manifest.kind, manifest.name, manifest.chunk_size, manifest.created,
        manifest.block_sha256, extra={EMBED_FIELD: embedded},
    )


def embedded_of(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """The embedded engine part of a plan artifact's manifest fields (empty when there is none)."""
    value = fields.get(EMBED_FIELD)
    return dict(value) if isinstance(value, dict) else {}


def encode_index(manifest: ArtifactManifest) -> bytes:
    """The retained index of a class and spec: the plan's whole signed manifest (the bytes of one plan may be the
    plan of two classes, so its class-specific manifest travels here rather than at the artifact's topic)."""
    embedded = embedded_of(manifest.to_dict())
    klass = embedded.get("class") or {}
    return encode(INDEX_KIND, {
        "artifact_id": manifest.artifact_id,
        "manifest": manifest.to_dict(),
        "class": klass.get("key"),
        "spec_digest": embedded.get("spec_digest"),
        "builder": embedded.get("builder"),
        "deployment_id": embedded.get("deployment_id"),
    })


def decode_index(payload: bytes) -> Optional[ArtifactManifest]:
    """The plan manifest an index message carries, or None (empty or unreadable). Its signature, kind trust and
    verdicts are checked by the puller like any other manifest's: the index is never trusted by itself."""
    if not payload:
        return None
    try:
        data = decode(payload, expected_kind=INDEX_KIND)
        return decode_manifest(data.get("manifest") or {})
    except (MessageError, RecursionError, ArtifactError, TypeError, ValueError):
        return None


class BuildRequest(FrozenModel, frozen=True, kw_only=True):
    """The operator's plan-build request to the builder of a class (`fleet build`). The deployment stays a
    document here: the builder validates it and answers a bad one with the reason."""

    id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]  # the reply topic's last level
    class_key: str = msgspec.field(name="class")
    deployment: Dict[str, Any]


def encode_build_request(request_id: str, class_key: str, deployment: Dict[str, Any]) -> bytes:
    return encode(REQUEST_KIND, {"id": request_id, "class": class_key, "deployment": deployment})


def decode_build_request(payload: bytes) -> BuildRequest:
    """Raises MessageError naming the field."""
    data = decode(payload, expected_kind=REQUEST_KIND)
    body = {key: value for key, value in data.items() if key not in ENVELOPE_KEYS}
    return parse(BuildRequest, body, error=MessageError, root="plan-build")


def encode_build_reply(request_id: str, result: Dict[str, Any]) -> bytes:
    return encode(REPLY_KIND, {"id": request_id, **result})


def decode_build_reply(payload: bytes) -> Dict[str, Any]:
    return decode(payload, expected_kind=REPLY_KIND)
