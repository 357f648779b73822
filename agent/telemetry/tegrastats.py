"""tegrastats: a parser for its lines from every JetPack generation, and a reader that keeps the latest sample.

The format drifts between releases (kB or MB, `CPU [..]@f` or `CPU [x%@f,off]`, `GR3D 3%@76`, `GR3D_FREQ 0%`,
`GR3D_FREQ 43%@[305,0]`, no GR3D at all on Thor, `CPU@29.5C` or JetPack 7's `cpu@52.9C/52.9C`, rails with two or
three values with or without `mW`). So the parser never matches a whole line: one precompiled alternation of
per-field patterns walks the line token by token, each field parses on its own, and whatever no pattern knows
lands in `other` with its raw text, so a field from a future JetPack is kept, never dropped, and never fails the
line. It runs every second on a small ARM core: one regex pass per line, no per-line compilation.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

log = logging.getLogger(__name__)

Number = Union[int, float]

_NUM = r"-?\d+(?:\.\d+)?"
_END = r"(?=\s|$)"

# One alternative per field; every alternative ends on a token boundary so a half-match falls through to the
# generic ones. Order matters: specific first, `unknown` (any token) last.
_FIELDS = re.compile(
    "|".join(
        [
            r"(?P<time>\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})" + _END,
            r"(?P<ram>RAM (?P<ram_used>\d+)/(?P<ram_total>\d+)(?P<ram_unit>[kMG]B)"
            r"(?: ?\(lfb (?:(?P<ram_lfb_n>\d+)x)?(?P<ram_lfb_size>\d+)(?P<ram_lfb_unit>[kMG]B)\))?)" + _END,
            r"(?P<swap>SWAP (?P<swap_used>\d+)/(?P<swap_total>\d+)(?P<swap_unit>[kMG]B)"
            r"(?: ?\(cached (?P<swap_cached>\d+)(?P<swap_cached_unit>[kMG]B)\))?)" + _END,
            r"(?P<iram>IRAM (?P<iram_used>\d+)/(?P<iram_total>\d+)(?P<iram_unit>[kMG]B)"
            r"(?: ?\(lfb (?P<iram_lfb>\d+)(?P<iram_lfb_unit>[kMG]B)\))?)" + _END,
            r"(?P<cpu>[Cc][Pp][Uu] \[(?P<cpu_list>[^\]]*)\](?:@(?P<cpu_freq>\d+))?)" + _END,
            r"(?P<mts>MTS fg (?P<mts_fg>\d+)% bg (?P<mts_bg>\d+)%)" + _END,
            rf"(?P<temp>(?P<temp_zone>[A-Za-z][\w-]*)@(?P<temp_cur>{_NUM})C(?:/(?P<temp_max>{_NUM})C?)?)" + _END,
            rf"(?P<rail>(?P<rail_name>[A-Za-z][\w-]*) (?P<rail_now>{_NUM})(?:mW)?/(?P<rail_avg>{_NUM})(?:mW)?"
            rf"(?:/(?P<rail_max>{_NUM})(?:mW)?)?)" + _END,
            r"(?P<value>(?P<value_key>[A-Z][A-Z0-9_]*) (?P<value_raw>off|\d+%@\[[\d,]*\]|@\[[\d,]*\]|\d+%@\d+|\d+%|@\d+|\d+))"
            + _END,
            r"(?P<unknown>\S+)",
        ]
    )
)
_VALUE = re.compile(r"(?:(?P<load>\d+)%)?(?:@(?:(?P<freq>\d+)|\[(?P<gpcs>[\d,]*)\]))?$|(?P<bare>\d+)$")
_CPU_ENTRY = re.compile(r"(?P<load>\d+)%(?:@(?P<freq>\d+))?$")
_EMC_KEYS = frozenset(("EMC_FREQ", "EMC"))
_GPU_KEYS = frozenset(("GR3D_FREQ", "GR3D"))
# Accelerators and media engines: frequencies (and load where printed). `PVA0_FREQ` is stored as `PVA0`.
_ENGINE_KEY = re.compile(r"(?:NVDLA\d*|PVA\d*|NVENC\d*|NVDEC\d*|NVJPG\d*|MSENC|VIC\d*|OFA|APE|SE|CVNAS|NVCSI|ISP\d*)$")
_UNIT_TO_MB = {"kB": 1.0 / 1024.0, "MB": 1.0, "GB": 1024.0}
# thermal zones report -256 (or lower) when the sensor is absent or powered down
_NO_SENSOR_C = -200.0


@dataclass
class Load:
    """Utilisation (percent of the current clock) and clock of a core or engine; either may be unknown."""

    load_pct: Optional[int] = None
    freq_mhz: Optional[int] = None


@dataclass
class Rail:
    """One power rail: instant and average power, and the maximum where JetPack 7 prints it (milliwatts)."""

    now: Number
    avg: Number
    max: Optional[Number] = None


@dataclass
class TegrastatsSample:
    """One tegrastats line. Every field is optional: a line from another JetPack fills what it has."""

    time: Optional[str] = None
    ram: Optional[Dict[str, Any]] = None  # used_mb, total_mb, lfb {blocks, block_mb}
    swap: Optional[Dict[str, Any]] = None  # used_mb, total_mb, cached_mb
    iram: Optional[Dict[str, Any]] = None  # used_kb, total_kb, lfb_kb
    cpus: Optional[List[Optional[Load]]] = None  # None entry: core off
    emc: Optional[Load] = None
    gpu: Optional[Load] = None
    gpc_freq_mhz: Optional[List[int]] = None  # per-GPC clocks (Orin, Thor)
    engines: Dict[str, Optional[Load]] = field(default_factory=dict)  # None: engine off
    mts: Optional[Dict[str, int]] = None  # TX2 Denver: fg_pct, bg_pct
    temps_c: Dict[str, Optional[float]] = field(default_factory=dict)  # None: sensor absent (-256)
    temps_max_c: Dict[str, float] = field(default_factory=dict)  # JetPack 7 `cur/max`
    power_mw: Dict[str, Rail] = field(default_factory=dict)
    other: Dict[str, Optional[str]] = field(default_factory=dict)  # fields this parser does not know, raw

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready data (the `parse-tegrastats` line format and the document's `jetson.tegrastats`)."""
        gpu: Optional[Dict[str, Any]] = None
        if self.gpu is not None:
            gpu = _load_dict(self.gpu)
            if self.gpc_freq_mhz is not None:
                gpu["gpc_freq_mhz"] = list(self.gpc_freq_mhz)
        return {
            "time": self.time,
            "ram": self.ram,
            "swap": self.swap,
            "iram": self.iram,
            "cpus": None if self.cpus is None else [None if c is None else _load_dict(c) for c in self.cpus],
            "emc": None if self.emc is None else _load_dict(self.emc),
            "gpu": gpu,
            "engines": {k: None if v is None else _load_dict(v) for k, v in self.engines.items()},
            "mts": self.mts,
            "temps_c": dict(self.temps_c),
            "temps_max_c": dict(self.temps_max_c),
            "power_mw": {k: _rail_dict(v) for k, v in self.power_mw.items()},
            "other": dict(self.other),
        }


def _load_dict(load: Load) -> Dict[str, Any]:
    return {"load_pct": load.load_pct, "freq_mhz": load.freq_mhz}


def _rail_dict(rail: Rail) -> Dict[str, Any]:
    out: Dict[str, Any] = {"now": rail.now, "avg": rail.avg}
    if rail.max is not None:
        out["max"] = rail.max
    return out


def _number(text: str) -> Number:
    return float(text) if "." in text else int(text)


def _mb(value: str, unit: Optional[str]) -> Number:
    scaled = int(value) * _UNIT_TO_MB.get(unit or "MB", 1.0)
    return int(scaled) if scaled == int(scaled) else round(scaled, 3)


def _kb(value: str, unit: Optional[str]) -> Number:
    scaled = int(value) * _UNIT_TO_MB.get(unit or "kB", 1.0) * 1024.0
    return int(scaled) if scaled == int(scaled) else round(scaled, 3)


def _parse_value(raw: str) -> Optional[Load]:
    """`off` -> None; `40%@115`, `3%`, `@1300`, `1075` (a bare clock), `43%@[305,0]` -> Load."""
    if raw == "off":
        return None
    m = _VALUE.match(raw)
    if m is None:  # pragma: no cover - the field regex admits only forms _VALUE accepts
        return Load()
    if m.group("bare") is not None:
        return Load(freq_mhz=int(m.group("bare")))
    load = int(m.group("load")) if m.group("load") is not None else None
    freq: Optional[int] = int(m.group("freq")) if m.group("freq") is not None else None
    if m.group("gpcs") is not None:
        gpcs = _gpcs(m.group("gpcs"))
        freq = max(gpcs) if gpcs else None
    return Load(load_pct=load, freq_mhz=freq)


def _gpcs(text: str) -> List[int]:
    return [int(part) for part in text.split(",") if part]


def _parse_cpus(listing: str, shared_freq: Optional[str]) -> List[Optional[Load]]:
    cpus: List[Optional[Load]] = []
    common = int(shared_freq) if shared_freq else None
    for entry in listing.split(","):
        entry = entry.strip()
        if entry == "off" or not entry:
            cpus.append(None)
            continue
        m = _CPU_ENTRY.match(entry)
        if m is None:
            cpus.append(Load())  # an unknown form: the core is there, its numbers are not
            continue
        freq = int(m.group("freq")) if m.group("freq") is not None else common
        cpus.append(Load(load_pct=int(m.group("load")), freq_mhz=freq))
    return cpus


def _put_other(sample: TegrastatsSample, key: str, value: Optional[str]) -> None:
    name, n = key, 2
    while name in sample.other:
        name = f"{key}#{n}"
        n += 1
    sample.other[name] = value


def parse_line(line: str) -> TegrastatsSample:
    """Parse one tegrastats line. Never raises: an unexpected field goes to `other`, an unexpected failure
    keeps what was parsed so far and records the rest of the line under `other['_unparsed']`."""
    sample = TegrastatsSample()
    pos = 0
    try:
        for m in _FIELDS.finditer(line):
            pos = m.start()
            _apply(sample, m)
    except Exception as exc:  # a parser bug must cost one field, never the telemetry loop
        log.debug("tegrastats: parse failure at %d in %r: %s", pos, line, exc)
        _put_other(sample, "_unparsed", line[pos:].strip())
    return sample


def _apply(sample: TegrastatsSample, m: re.Match) -> None:  # type: ignore[type-arg]
    kind = m.lastgroup
    g = m.group
    if kind == "time":
        sample.time = g("time")
    elif kind == "ram":
        ram: Dict[str, Any] = {"used_mb": _mb(g("ram_used"), g("ram_unit")), "total_mb": _mb(g("ram_total"), g("ram_unit"))}
        if g("ram_lfb_size") is not None:
            blocks = int(g("ram_lfb_n")) if g("ram_lfb_n") is not None else 1
            ram["lfb"] = {"blocks": blocks, "block_mb": _mb(g("ram_lfb_size"), g("ram_lfb_unit"))}
        sample.ram = ram
    elif kind == "swap":
        swap: Dict[str, Any] = {"used_mb": _mb(g("swap_used"), g("swap_unit")), "total_mb": _mb(g("swap_total"), g("swap_unit"))}
        if g("swap_cached") is not None:
            swap["cached_mb"] = _mb(g("swap_cached"), g("swap_cached_unit"))
        sample.swap = swap
    elif kind == "iram":
        iram: Dict[str, Any] = {"used_kb": _kb(g("iram_used"), g("iram_unit")), "total_kb": _kb(g("iram_total"), g("iram_unit"))}
        if g("iram_lfb") is not None:
            iram["lfb_kb"] = _kb(g("iram_lfb"), g("iram_lfb_unit"))
        sample.iram = iram
    elif kind == "cpu":
        sample.cpus = _parse_cpus(g("cpu_list"), g("cpu_freq"))
    elif kind == "mts":
        sample.mts = {"fg_pct": int(g("mts_fg")), "bg_pct": int(g("mts_bg"))}
    elif kind == "temp":
        celsius = float(g("temp_cur"))
        sample.temps_c[g("temp_zone")] = None if celsius <= _NO_SENSOR_C else celsius
        if g("temp_max") is not None:
            sample.temps_max_c[g("temp_zone")] = float(g("temp_max"))
    elif kind == "rail":
        rail_max = g("rail_max")
        sample.power_mw[g("rail_name")] = Rail(
            now=_number(g("rail_now")), avg=_number(g("rail_avg")), max=_number(rail_max) if rail_max is not None else None
        )
    elif kind == "value":
        _apply_value(sample, g("value_key"), g("value_raw"))
    else:
        _put_other(sample, m.group(0), None)


def _apply_value(sample: TegrastatsSample, key: str, raw: str) -> None:
    if key in _GPU_KEYS:
        sample.gpu = _parse_value(raw) or Load()  # `GR3D_FREQ off`: the GPU is rail-gated, load unknown
        if "[" in raw:
            sample.gpc_freq_mhz = _gpcs(raw[raw.index("[") + 1 : raw.index("]")])
    elif key in _EMC_KEYS:
        sample.emc = _parse_value(raw)
    else:
        name = key[: -len("_FREQ")] if key.endswith("_FREQ") else key
        if _ENGINE_KEY.match(name):
            sample.engines[name] = _parse_value(raw)
        else:
            _put_other(sample, key, raw)


def parse_lines(lines: List[str]) -> List[TegrastatsSample]:
    """Parse the data lines of a tegrastats log; `#` comments and blank lines are skipped."""
    return [parse_line(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ---------------------------------------------------------------------------------------------- the reader
class TegrastatsReader:
    """Runs `tegrastats --interval <ms>` in a thread and keeps the latest parsed sample.

    Fails soft: no tegrastats on PATH (not a Jetson) gives `start() == False` and one log line; a tegrastats
    that dies is restarted with a growing pause (one log line per outage), and `latest()` returns None once the
    sample is older than `stale_after` intervals.
    """

    def __init__(
        self,
        interval_s: float = 1.0,
        command: Optional[List[str]] = None,
        *,
        stale_after: float = 3.0,
        max_backoff_s: float = 300.0,
        on_sample: Optional[Callable[[TegrastatsSample], None]] = None,
    ) -> None:
        self.interval_s = max(0.01, float(interval_s))
        self.command = list(command) if command else None
        self.stale_after = stale_after
        self.max_backoff_s = max_backoff_s
        self.on_sample = on_sample
        self.lines = 0
        self.restarts = 0
        self.last_error = ""
        self._latest: Optional[TegrastatsSample] = None
        self._latest_at = 0.0
        self._lock = threading.Lock()
        self._have_sample = threading.Event()
        self._stop = threading.Event()
        self._proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self._thread: Optional[threading.Thread] = None

    def resolve_command(self) -> Optional[List[str]]:
        if self.command is not None:
            return self.command
        binary = shutil.which("tegrastats") or next(
            (p for p in ("/usr/bin/tegrastats", "/usr/sbin/tegrastats") if Path(p).is_file()), None
        )
        if binary is None:
            return None
        return [binary, "--interval", str(max(1, round(self.interval_s * 1000)))]

    def start(self) -> bool:
        """Start the reader thread; False (and one log line) when tegrastats is not there."""
        if self._thread is not None:
            return True
        command = self.resolve_command()
        if command is None:
            self.last_error = "tegrastats not found (not a Jetson, or JetPack's tools are not on PATH)"
            log.info("telemetry: %s; the jetson.tegrastats section stays null", self.last_error)
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(command,), name="tegrastats-reader", daemon=True)
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def latest(self) -> Optional[TegrastatsSample]:
        """The newest sample, or None if there is none yet or it is stale."""
        with self._lock:
            if self._latest is None:
                return None
            if time.monotonic() - self._latest_at > self.stale_after * self.interval_s + 1.0:
                return None
            return self._latest

    def wait_first(self, timeout: float) -> Optional[TegrastatsSample]:
        self._have_sample.wait(timeout)
        return self.latest()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def _run(self, command: List[str]) -> None:
        first_pause = min(self.max_backoff_s, max(1.0, self.interval_s))
        backoff = first_pause
        failing = False
        while not self._stop.is_set():
            got_line = self._run_once(command)
            if self._stop.is_set():
                break
            if got_line:  # it worked for a while: this is a new outage, with a fresh backoff
                failing = False
                backoff = first_pause
            if not failing:
                log.warning("telemetry: tegrastats stopped (%s); restarting with backoff", self.last_error)
                failing = True
            self.restarts += 1
            if self._stop.wait(backoff):
                break
            backoff = min(self.max_backoff_s, backoff * 2)

    def _run_once(self, command: List[str]) -> bool:
        got_line = False
        try:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, errors="replace"
            )
        except OSError as exc:
            self.last_error = f"cannot run {command[0]}: {exc}"
            return False
        proc = self._proc
        assert proc.stdout is not None
        for line in proc.stdout:
            if self._stop.is_set():
                break
            if not line.strip():
                continue
            sample = parse_line(line)
            got_line = True
            self.lines += 1
            with self._lock:
                self._latest = sample
                self._latest_at = time.monotonic()
            self._have_sample.set()
            if self.on_sample is not None:
                self.on_sample(sample)
        code = proc.wait()
        stderr = proc.stderr.read().strip() if proc.stderr is not None else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if not self._stop.is_set():  # our own terminate() is not an error worth reporting
            self.last_error = f"exit code {code}" + (f": {stderr[-300:]}" if stderr else "")
        return got_line
