"""The `system` section, from psutil and sysfs: CPU per core and total, load, memory, swap, disk use of the state
folder, network bytes, temperatures, and the agent process's own RSS and CPU.

Each part fails on its own (null and one log line), so a container without /sys/class/thermal still reports
memory. Cheap enough for a 1 s interval on a small ARM core: thermal zones are found once and only their
`temp` files are read each time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

from agent.telemetry.soft import SoftSources

MB = 1024.0 * 1024.0
THERMAL_ROOT = Path("/sys/class/thermal")
MEMINFO = Path("/proc/meminfo")
TEMPS_RECHECK_S = 300.0
SLOW_CACHE_S = 60.0


def _mb(value: float) -> float:
    return round(value / MB, 1)


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 1) if whole > 0 else 0.0


def read_meminfo(path: Optional[Path] = None) -> Optional[Dict[str, int]]:
    """/proc/meminfo as bytes per key; None where there is no such file (not Linux)."""
    try:
        text = (path or MEMINFO).read_text()
    except OSError:
        return None
    values: Dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return values


def existing_ancestor(path: Path) -> Path:
    """The path itself or its nearest existing parent (the state folder may not exist yet)."""
    path = path.absolute()
    for candidate in [path, *path.parents]:
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def discover_thermal_zones(root: Path = THERMAL_ROOT) -> List[Tuple[str, Path]]:
    """(zone type, temp file) for every thermal zone with a readable temperature."""
    zones: List[Tuple[str, Path]] = []
    seen: Dict[str, int] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        temp = zone / "temp"
        try:
            name = (zone / "type").read_text().strip() or zone.name
            int(temp.read_text().strip())
        except (OSError, ValueError):
            continue
        seen[name] = seen.get(name, 0) + 1
        zones.append((name if seen[name] == 1 else f"{name}#{seen[name]}", temp))
    return zones


def read_thermal_zones(zones: List[Tuple[str, Path]]) -> Dict[str, Optional[float]]:
    temps: Dict[str, Optional[float]] = {}
    for name, temp in zones:
        try:
            millideg = int(temp.read_text().strip())
        except (OSError, ValueError):
            temps[name] = None  # a zone that powers down (some Jetson zones do) reads as an error
            continue
        temps[name] = None if millideg <= -200000 else round(millideg / 1000.0, 2)
    return temps


def psutil_temperatures() -> Dict[str, Optional[float]]:
    readings = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    temps: Dict[str, Optional[float]] = {}
    for chip, entries in readings.items():
        for i, entry in enumerate(entries):
            temps[f"{chip}/{entry.label or i}"] = round(float(entry.current), 2)
    return temps


class SystemCollector:
    """`collect()` gives the `system` section. Keep one instance: CPU percentages and network rates are
    measured between consecutive calls."""

    def __init__(self, state_dir: Path, *, sources: Optional[SoftSources] = None, thermal_root: Path = THERMAL_ROOT) -> None:
        self.state_dir = Path(state_dir)
        self.sources = sources or SoftSources()
        self._process = psutil.Process()
        self._thermal_root = thermal_root
        self._zones: List[Tuple[str, Path]] = []
        self._temps_source: Optional[str] = None  # "sysfs", "psutil" or None (none found)
        self._temps_checked = -1e18
        self._meminfo_ok = MEMINFO.is_file()
        self._meminfo: Optional[Dict[str, int]] = None
        self._disk_path: Tuple[float, Path] = (-1e18, self.state_dir)
        self._net_last: Optional[Tuple[float, int, int]] = None
        self._boot_time: Optional[float] = None
        self.prime()

    def prime(self) -> None:
        """Start the CPU-percent windows so the first collect() has numbers."""
        try:
            psutil.cpu_percent(percpu=True)
            self._process.cpu_percent()
        except Exception:  # the real call in collect() reports the failure once
            pass

    def collect(self) -> Dict[str, Any]:
        call = self.sources.call
        self._meminfo = read_meminfo() if self._meminfo_ok else None  # one read for memory and swap
        return {
            "cpu": call("system.cpu", self._cpu),
            "load": call("system.load", self._load),
            "memory": call("system.memory", self._memory),
            "swap": call("system.swap", self._swap),
            "disk": call("system.disk", self._disk),
            "net": call("system.net", self._net),
            "temps_c": call("system.temps", self._temps),
            "process": call("system.process", self._process_info),
            "uptime_s": call("system.uptime", self._uptime),
        }

    def _cpu(self) -> Dict[str, Any]:
        per_core = [round(float(v), 1) for v in psutil.cpu_percent(percpu=True)]
        total = round(sum(per_core) / len(per_core), 1) if per_core else None
        return {"total_pct": total, "count": len(per_core), "per_core_pct": per_core}

    def _load(self) -> Dict[str, float]:
        one, five, fifteen = os.getloadavg()
        return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}

    def _memory(self) -> Dict[str, Any]:
        info = self._meminfo
        if info is not None and "MemTotal" in info and "MemAvailable" in info:
            total, available = info["MemTotal"], info["MemAvailable"]
        else:
            mem = psutil.virtual_memory()
            total, available = int(mem.total), int(mem.available)
        return {
            "total_mb": _mb(total),
            "used_mb": _mb(total - available),
            "available_mb": _mb(available),
            "pct": _pct(total - available, total),
        }

    def _swap(self) -> Dict[str, Any]:
        # /proc/meminfo directly: psutil.swap_memory() also parses /proc/vmstat, which costs more than the rest
        info = self._meminfo
        if info is not None and "SwapTotal" in info and "SwapFree" in info:
            total, used = info["SwapTotal"], info["SwapTotal"] - info["SwapFree"]
        else:
            swap = psutil.swap_memory()
            total, used = int(swap.total), int(swap.used)
        return {"total_mb": _mb(total), "used_mb": _mb(used), "pct": _pct(used, total)}

    def _disk(self) -> Dict[str, Any]:
        at, path = self._disk_path
        if time.monotonic() - at > SLOW_CACHE_S:  # the state folder appears once; no need to look each second
            path = existing_ancestor(self.state_dir)
            self._disk_path = (time.monotonic(), path)
        usage = psutil.disk_usage(str(path))
        return {
            "path": str(path),
            "total_mb": _mb(usage.total),
            "used_mb": _mb(usage.used),
            "free_mb": _mb(usage.free),
            "pct": round(float(usage.percent), 1),
        }

    def _net(self) -> Dict[str, Any]:
        counters = psutil.net_io_counters(pernic=False)
        now = time.monotonic()
        sent, recv = int(counters.bytes_sent), int(counters.bytes_recv)
        out: Dict[str, Any] = {"bytes_sent": sent, "bytes_recv": recv, "sent_bps": None, "recv_bps": None}
        if self._net_last is not None:
            at, last_sent, last_recv = self._net_last
            elapsed = now - at
            if elapsed > 0 and sent >= last_sent and recv >= last_recv:
                out["sent_bps"] = round((sent - last_sent) / elapsed, 1)
                out["recv_bps"] = round((recv - last_recv) / elapsed, 1)
        self._net_last = (now, sent, recv)
        return out

    def _find_temps(self) -> None:
        """Which temperature source this host has; looked for again every few minutes while there is none
        (searching costs more than reading, and most hosts without sensors never grow one)."""
        self._temps_checked = time.monotonic()
        self._zones = discover_thermal_zones(self._thermal_root)
        if self._zones:
            self._temps_source = "sysfs"
        elif psutil_temperatures():
            self._temps_source = "psutil"
        else:
            self._temps_source = None

    def _temps(self) -> Optional[Dict[str, Optional[float]]]:
        if self._temps_source is None and time.monotonic() - self._temps_checked >= TEMPS_RECHECK_S:
            self._find_temps()
        if self._temps_source is None:
            raise FileNotFoundError("no thermal zones or hwmon sensors are readable")
        temps = read_thermal_zones(self._zones) if self._temps_source == "sysfs" else psutil_temperatures()
        if not temps:
            self._temps_source = None
            raise FileNotFoundError("the temperature sensors went away")
        return temps

    def _process_info(self) -> Dict[str, Any]:
        proc = self._process
        with proc.oneshot():
            times = proc.cpu_times()
            info: Dict[str, Any] = {
                "pid": proc.pid,
                "rss_mb": _mb(proc.memory_info().rss),
                "cpu_pct": round(float(proc.cpu_percent()), 1),
                "cpu_s": round(float(times.user + times.system), 2),
                "threads": proc.num_threads(),
            }
        return info

    def _uptime(self) -> float:
        if self._boot_time is None:
            self._boot_time = float(psutil.boot_time())
        return round(time.time() - self._boot_time, 1)
