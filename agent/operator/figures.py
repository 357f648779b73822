"""The few figures an operator reads from a device's telemetry document (full or compact form) and status.

Every device publishes what it likes (an old version, a bug, an attacker with its credentials), so each reader
takes a plain decoded document, never raises, and gives None for anything missing, mistyped or not finite.
Used by `fleet status`/`watch`, the rollout's abort criteria and the Prometheus exporter, so they all agree.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from agent.telemetry.document import from_compact

MB = 1024 * 1024
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_IN_SYS")  # the rail that measures the whole module


def section(document: Any, *keys: str) -> Dict[str, Any]:
    """document[k1][k2]... as a dict; {} where a level is missing or not an object."""
    value: Any = document
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or abs(value) == float("inf"):
        return None
    return float(value)


def expand(telemetry: Any) -> Dict[str, Any]:
    """The full form of a telemetry document (a compact one is expanded; anything odd gives {})."""
    if not isinstance(telemetry, dict):
        return {}
    if telemetry.get("compact") is True:
        try:
            return from_compact(telemetry)
        except Exception:  # a malformed compact document is one device's problem, not the operator's
            return {}
    return telemetry


def fps(telemetry: Any) -> Optional[float]:
    return number(section(telemetry, "pipeline").get("fps"))


def hottest_c(telemetry: Any) -> Optional[float]:
    """The hottest zone the device reports: tegrastats on a Jetson, thermal zones elsewhere, NVML GPUs."""
    values: List[float] = []
    for temps in (section(telemetry, "jetson", "tegrastats", "temps_c"), section(telemetry, "system", "temps_c")):
        values += [v for v in (number(x) for x in temps.values()) if v is not None]
    devices = section(telemetry, "gpu").get("devices")
    for gpu in devices if isinstance(devices, list) else []:
        value = number(gpu.get("temp_c")) if isinstance(gpu, dict) else None
        if value is not None:
            values.append(value)
    return max(values) if values else None


def error_pct(telemetry: Any) -> Optional[float]:
    """Dropped frames per frame handled, in percent (counters since the pipeline started, so a restart resets
    both and the ratio stays meaningful)."""
    pipeline = section(telemetry, "pipeline")
    frames, drops = number(pipeline.get("frames")), number(pipeline.get("drops"))
    if frames is None or drops is None or frames + drops <= 0:
        return None
    return 100.0 * drops / (frames + drops)


def power_w(telemetry: Any) -> Optional[float]:
    """The module's input power (tegrastats' input rail, else the sum of its rails), else the NVML GPUs' sum."""
    rails = section(telemetry, "jetson", "tegrastats", "power_mw")
    for name in INPUT_RAILS:
        now = number(section(rails, name).get("now"))
        if now is not None:
            return now / 1000.0
    values = [number(section(rails, name).get("now")) for name in rails]
    known = [v for v in values if v is not None]
    if known:
        return sum(known) / 1000.0
    devices = section(telemetry, "gpu").get("devices")
    milliwatts = [number(g.get("power_mw")) for g in devices if isinstance(g, dict)] if isinstance(devices, list) else []
    found = [w for w in milliwatts if w is not None]
    return sum(found) / 1000.0 if found else None


def ram_bytes(telemetry: Any) -> Optional[float]:
    """RAM in use (tegrastats on a Jetson, where CPU and GPU share it; psutil elsewhere)."""
    used = number(section(telemetry, "jetson", "tegrastats", "ram").get("used_mb"))
    if used is None:
        used = number(section(telemetry, "system", "memory").get("used_mb"))
    return used * MB if used is not None else None


def ram_total_bytes(telemetry: Any) -> Optional[float]:
    total = number(section(telemetry, "jetson", "tegrastats", "ram").get("total_mb"))
    if total is None:
        total = number(section(telemetry, "system", "memory").get("total_mb"))
    return total * MB if total is not None else None


def latency_ms(telemetry: Any) -> Dict[str, Dict[str, float]]:
    """{stage: {p50: ms, p99: ms, ...}} with only the finite numbers kept."""
    out: Dict[str, Dict[str, float]] = {}
    for stage, values in section(telemetry, "pipeline", "latency_ms").items():
        if isinstance(values, dict):
            kept = {q: v for q, v in ((q, number(x)) for q, x in values.items()) if v is not None}
            if kept:
                out[str(stage)] = kept
    return out


def groups_of(status: Any) -> List[str]:
    """The groups a device says it belongs to (its status and last will carry `device.groups`)."""
    groups = status.get("groups") if isinstance(status, dict) else None
    return [g for g in groups if isinstance(g, str) and g] if isinstance(groups, list) else []


def module_of(status: Any) -> str:
    value = section(status, "fingerprint").get("module")
    return value if isinstance(value, str) and value else ""
