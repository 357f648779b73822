"""The Jetson section: the latest tegrastats sample, the nvpmodel power mode and the jetson_clocks state.

nvpmodel and jetson_clocks change rarely and cost a process start to read, so they are cached for a minute.
Everything fails soft: off a Jetson the section is null with one log line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.telemetry.soft import SoftSources
from agent.telemetry.tegrastats import TegrastatsReader

_POWER_MODE = re.compile(r"NV Power Mode:\s*(?P<name>.+?)\s*$")
_MODE_ID = re.compile(r"^\s*(?P<id>\d+)\s*$")
_CLOCK_LINE = re.compile(r"^\s*(?P<what>cpu\d+|GPU|EMC|DLA\d*\w*|PVA\w*)\b:?(?P<rest>.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
SLOW_CACHE_S = 60.0


def parse_nvpmodel(text: str) -> Optional[Dict[str, Any]]:
    """`nvpmodel -q` output -> {'name': 'MAXN', 'id': 0 or None}; the last query wins; None if no mode line."""
    result: Optional[Dict[str, Any]] = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _POWER_MODE.search(line)
        if m is None:
            continue
        mode_id: Optional[int] = None
        if i + 1 < len(lines):
            id_match = _MODE_ID.match(lines[i + 1])
            if id_match is not None:
                mode_id = int(id_match.group("id"))
        result = {"name": m.group("name"), "id": mode_id}
    return result


def parse_jetson_clocks_show(text: str) -> Optional[Dict[str, Any]]:
    """`jetson_clocks --show` -> {'active': bool, 'source': ...}. jetson_clocks pins every clock's minimum to
    its maximum, so it is active when each online CPU, the GPU and the EMC show MinFreq == MaxFreq."""
    pinned: List[bool] = []
    for line in text.splitlines():
        m = _CLOCK_LINE.match(line)
        if m is None:
            continue
        values = dict(_KV.findall(m.group("rest")))
        if values.get("Online") == "0":
            continue
        if "MinFreq" in values and "MaxFreq" in values:
            pinned.append(values["MinFreq"] == values["MaxFreq"])
    if not pinned:
        return None
    return {"active": all(pinned), "source": "jetson_clocks --show"}


def jetson_clocks_from_sysfs(cpu_root: Path = Path("/sys/devices/system/cpu")) -> Optional[Dict[str, Any]]:
    """Without root: jetson_clocks is active when every online CPU's scaling_min_freq equals its
    scaling_max_freq (what jetson_clocks sets). None when cpufreq is not readable."""
    pinned: List[bool] = []
    for cpufreq in sorted(cpu_root.glob("cpu[0-9]*/cpufreq")):
        try:
            low = (cpufreq / "scaling_min_freq").read_text().strip()
            high = (cpufreq / "scaling_max_freq").read_text().strip()
        except OSError:
            continue
        pinned.append(low == high)
    if not pinned:
        return None
    return {"active": all(pinned), "source": "sysfs cpufreq"}


def is_jetson(root: Path = Path("/")) -> bool:
    """An L4T release file, or a Tegra device tree."""
    if (root / "etc/nv_tegra_release").is_file():
        return True
    try:
        compatible = (root / "proc/device-tree/compatible").read_bytes()
    except OSError:
        return False
    return b"nvidia,tegra" in compatible or b"nvidia,p3" in compatible


def _run_text(command: List[str], timeout: float = 5.0) -> str:
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    return done.stdout


def read_nvpmodel() -> Optional[Dict[str, Any]]:
    binary = shutil.which("nvpmodel")
    if binary is None:
        raise FileNotFoundError("nvpmodel is not on PATH")
    mode = parse_nvpmodel(_run_text([binary, "-q"]))
    if mode is None:
        raise ValueError("nvpmodel -q printed no 'NV Power Mode' line")
    return mode


def read_jetson_clocks() -> Optional[Dict[str, Any]]:
    binary = shutil.which("jetson_clocks")
    if binary is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
        state = parse_jetson_clocks_show(_run_text([binary, "--show"]))
        if state is not None:
            return state
    state = jetson_clocks_from_sysfs()
    if state is None:
        raise FileNotFoundError("neither 'jetson_clocks --show' (needs root) nor cpufreq in sysfs is readable")
    return state


class _Cached:
    """A slow read, repeated at most every `ttl_s` seconds."""

    def __init__(self, read: Callable[[], Optional[Dict[str, Any]]], ttl_s: float) -> None:
        self.read = read
        self.ttl_s = ttl_s
        self._value: Tuple[float, Optional[Dict[str, Any]]] = (-1e18, None)

    def get(self, sources: SoftSources, name: str) -> Optional[Dict[str, Any]]:
        at, value = self._value
        now = time.monotonic()
        if now - at >= self.ttl_s:
            value = sources.call(name, self.read)
            self._value = (now, value)
        return value


class JetsonCollector:
    """Holds the tegrastats reader; `collect()` gives the `jetson` section or None off a Jetson."""

    def __init__(
        self,
        interval_s: float = 1.0,
        *,
        tegrastats: bool = True,
        tegrastats_command: Optional[List[str]] = None,
        on_jetson: Optional[bool] = None,
        sources: Optional[SoftSources] = None,
    ) -> None:
        self.sources = sources or SoftSources()
        self.on_jetson = is_jetson() if on_jetson is None else on_jetson
        self.reader: Optional[TegrastatsReader] = None
        if tegrastats and (self.on_jetson or tegrastats_command is not None):
            self.reader = TegrastatsReader(interval_s, tegrastats_command)
        self._nvpmodel = _Cached(read_nvpmodel, SLOW_CACHE_S)
        self._clocks = _Cached(read_jetson_clocks, SLOW_CACHE_S)

    def start(self) -> None:
        if self.reader is not None and not self.reader.start():
            self.sources.fail("tegrastats", self.reader.last_error)
        if not self.on_jetson and self.reader is None:
            self.sources.fail("jetson", "not a Jetson (no /etc/nv_tegra_release)", level=20)

    def wait_first(self, timeout: float) -> None:
        if self.reader is not None and self.reader.running:
            self.reader.wait_first(timeout)

    def collect(self) -> Optional[Dict[str, Any]]:
        if not self.on_jetson and self.reader is None:
            return None
        sample = self.reader.latest() if self.reader is not None else None
        if self.reader is not None and self.reader.running:
            if sample is None and self.reader.lines:
                self.sources.fail("tegrastats", f"no fresh line ({self.reader.last_error or 'stalled'})")
            elif sample is not None:
                self.sources.ok("tegrastats")
        section: Dict[str, Any] = {"tegrastats": sample.to_dict() if sample is not None else None}
        if self.on_jetson:
            section["nvpmodel"] = self._nvpmodel.get(self.sources, "nvpmodel")
            section["jetson_clocks"] = self._clocks.get(self.sources, "jetson_clocks")
        else:
            section["nvpmodel"] = None
            section["jetson_clocks"] = None
        return section

    def close(self) -> None:
        if self.reader is not None:
            self.reader.stop()
