"""The desired deployment an operator asks for: a deployment file (or none) with fields given one by one over it.

Artifacts may be named by id or by the local file `fleet publish` sent (its sha256 is the id); a deployment
without an id gets one from its model id and the time. The document is then validated by the same strict decoder
the device uses (agent.fleet.deployment), so a typo fails on the operator's machine, not on a thousand devices.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from agent.errors import UsageError
from agent.fleet.deployment import Deployment, DeploymentError, deployment_from_dict
from agent.gate.thresholds import GateThresholds
from agent.models import dump, parse
from agent.store.hashing import sha256_file

ARTIFACT_FIELDS = ("model", "table", "validation", "labels")


def artifact_ref(value: Optional[str]) -> Optional[str]:
    """An artifact id, or the sha256 of a local file of that name (the one `fleet publish` sent)."""
    if value is None:
        return None
    path = Path(value)
    if len(value) != 64 and path.is_file():
        return sha256_file(path)
    return value


def deployment_document(base: Optional[Mapping[str, Any]], fields: Mapping[str, Any], accuracy: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """`base` (a deployment, or a document holding one under 'deployment') with `fields` over it (None values
    skipped; artifact files turned into ids) and `accuracy` thresholds merged into its accuracy block."""
    data: Dict[str, Any] = dict(base or {})
    if isinstance(data.get("deployment"), dict):
        data = dict(data["deployment"])
    for key, value in fields.items():
        if value is not None:
            data[key] = artifact_ref(value) if key in ARTIFACT_FIELDS else value
    if accuracy:  # values from the command line are text: the model converts them and names a bad key
        merged = {**dict(data.get("accuracy") or {}), **accuracy}
        data["accuracy"] = dump(parse(GateThresholds, merged, error=UsageError, root="accuracy", strict=False))
    if "id" not in data and data.get("model"):
        data["id"] = f"{str(data['model'])[:8]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return data


def read_deployment(path: str, option: str = "--deployment") -> Deployment:
    """The deployment in a JSON file (`fleet build`, `fleet rollout start`), validated; a desired-state message
    holding it under 'deployment' is fine too. A file that cannot be read or validated is a UsageError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option} {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("deployment"), dict):
        data = data["deployment"]
    try:
        return deployment_from_dict(data)
    except DeploymentError as exc:
        raise UsageError(f"{option} {path}: {exc}") from None
