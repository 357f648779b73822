"""The reported state (Azure's reported twin): the retained `<device>/status` document and the status file.

    {schema, kind: "status", ts, device, online, state, version, fingerprint, versions, broken_imports,
     desired:  {deployment_id, digest, source, hold?, invalid?},
     serving:  {deployment_id, digest, since, engine: {backend, cache_hit, key, build_s}, gate, warmup_ms} | null,
     applying: {deployment_id, digest, step, started_at, attempts, job_id, progress?} | null,
     last_error: {step, reason, deployment_id, digest, at} | null,
     blocked: [{digest, deployment_id, step, reason}], started_at, pid}

`state` is one word for dashboards: serving, applying, degraded (nothing serves), offline (the last will and
the clean shutdown). The last will carries the same device and version so a dashboard keeps its row.
`status.json` beside state.json holds the same document plus live counters, written atomically, for
`edge-agent status` on the device.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent import __version__
from agent.device.fingerprint import fingerprint
from agent.engine.cache import pid_alive
from agent.fleet.messages import encode
from agent.lazy import broken_imports, module_version
from agent.store.atomic import atomic_write_json
from agent.store.state import STATE_FILE, AgentState

STATUS_KIND = "status"
STATUS_FILE = "status.json"
STATUS_FRESH_S = 15.0  # the daemon rewrites status.json every few seconds; older than this, it is not running


def versions() -> Dict[str, Optional[str]]:
    """Versions that decide what the agent can do, for the status document and `doctor`."""
    return {
        "agent": __version__,
        "python": platform.python_version(),
        "tensorrt": module_version("tensorrt"),
        "onnxruntime": module_version("onnxruntime"),
        "numpy": module_version("numpy"),
        "paho_mqtt": module_version("paho.mqtt"),
        "opencv": module_version("cv2"),
    }


def device_fingerprint() -> Dict[str, Any]:
    """agent.device.fingerprint() as a dict; a minimal one (arch, OS) if reading the device fails."""
    try:
        return dict(fingerprint().to_dict())
    except Exception as exc:  # a fingerprint must never stop the agent
        return {"arch": platform.machine(), "system": platform.system(), "error": f"{type(exc).__name__}: {exc}"}


def _serving_view(record: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not record:
        return None
    deployment = record.get("deployment") or {}
    engine = record.get("engine") or {}
    return {
        "deployment_id": deployment.get("id"),
        "digest": record.get("digest"),
        "since": record.get("since"),
        "precision": deployment.get("precision"),
        "target": deployment.get("target"),
        "cameras": len(deployment.get("cameras") or []),
        "engine": {k: engine.get(k) for k in ("backend", "cache_hit", "key", "build_s", "plan")},
        "gate": _gate_summary(record.get("gate")),
        "warmup_ms": record.get("warmup_ms"),
    }


def _gate_summary(gate: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(gate, dict) or not gate:
        return None
    keep = ("passed", "skipped", "task", "frames", "metrics", "failed", "notes", "better_than_reference", "reason", "count")
    return {k: gate[k] for k in keep if k in gate}


def _applying_view(record: Optional[Dict[str, Any]], progress: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not record:
        return None
    deployment = record.get("deployment") or {}
    view = {
        "deployment_id": deployment.get("id"),
        "digest": record.get("digest"),
        "step": record.get("step"),
        "started_at": record.get("started_at"),
        "step_started_at": record.get("step_started_at"),
        "attempts": record.get("attempts"),
        "job_id": record.get("job_id") or None,
    }
    if progress and record.get("step") == "fetch":
        view["progress"] = progress
    return view


def status_document(
    *,
    device_id: str,
    state: AgentState,
    serving_digest: Optional[str],
    desired: Dict[str, Any],
    fingerprint: Dict[str, Any],
    started_at: float,
    progress: Optional[Dict[str, Any]] = None,
    groups: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """The reported state, from the saved state plus what is loaded now (`serving_digest`)."""
    serving = state.serving if state.serving and state.serving.get("digest") == serving_digest else None
    if state.applying:
        word = "applying"
    elif serving is not None:
        word = "serving"
    else:
        word = "degraded"
    blocked = [
        {"digest": digest, "deployment_id": info.get("deployment_id"), "step": info.get("step"), "reason": info.get("reason")}
        for digest, info in sorted(state.blocked.items(), key=lambda item: float(item[1].get("at") or 0))[-5:]
    ]
    return {
        "device": device_id,
        "online": True,
        "groups": list(groups or []),
        "state": word,
        "version": __version__,
        "fingerprint": fingerprint,
        "versions": versions(),
        "broken_imports": broken_imports(),  # the same diagnosis as `edge-agent doctor` and last_error
        "desired": desired,
        "serving": _serving_view(serving),
        "previous": (state.previous or {}).get("deployment", {}).get("id") if state.previous else None,
        "applying": _applying_view(state.applying, progress),
        "last_error": state.last_error,
        "blocked": blocked,
        "started_at": round(started_at, 3),
        "pid": os.getpid(),
    }


def encode_status(document: Dict[str, Any]) -> bytes:
    return encode(STATUS_KIND, document)


def offline_payload(device_id: str, reason: str, serving_id: Optional[str] = None, groups: Optional[List[str]] = None) -> bytes:
    """The last will (reason 'connection lost') and the clean-shutdown status (reason 'stopped'). The groups stay
    in it, so a staged rollout still counts an offline device in its group (and sends it what it should have)."""
    return encode(
        STATUS_KIND,
        {"device": device_id, "online": False, "state": "offline", "reason": reason, "version": __version__, "serving_id": serving_id,
         "groups": list(groups or [])},
    )


def write_status_file(state_dir: Path, document: Dict[str, Any], live: Dict[str, Any]) -> None:
    atomic_write_json(Path(state_dir) / STATUS_FILE, {"status": document, "live": live, "written_at": round(time.time(), 3)})


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def live_status(state_dir: Path) -> Dict[str, Any]:
    """Is an agent running on this machine, from its state folder (works without the broker): the one rule for
    `edge-agent status` and `doctor`. Running = status.json written within STATUS_FRESH_S by a live process
    that has not written its clean stop."""
    state_dir = Path(state_dir)
    status_file = _read_json(state_dir / STATUS_FILE) or {}
    state = _read_json(state_dir / STATE_FILE)
    live = status_file.get("live") or {}
    age = time.time() - float(status_file.get("written_at") or 0) if status_file else None
    stopped = (status_file.get("status") or {}).get("online") is False  # written last by a clean stop
    running = bool(status_file) and not stopped and pid_alive(int(live.get("pid") or 0)) and age is not None and age < STATUS_FRESH_S
    return {
        "running": running,
        "status_age_s": None if age is None else round(age, 1),
        "state_dir": str(state_dir),
        "status": status_file.get("status"),
        "live": live or None,
        "state": state,
    }
