"""The telemetry document's schema, as plain data: one spec drives validation (`validate_document`), the compact
form (short keys, per-core detail dropped) and the field table in docs/telemetry.md.

A spec is a dict: `type` (a JSON type name or a list of them), and for objects `properties` (name -> spec),
`required`, and `additional` (the spec of values under free keys such as thermal-zone names; free keys are
never shortened). Every field also carries `unit`, `source` and `desc` for the documentation, `short` (its
key in the compact form) and `drop` (left out of the compact form).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

Spec = Dict[str, Any]

TELEMETRY_SCHEMA = 1
KIND = "telemetry"

PSUTIL = "psutil"
TEGRASTATS = "tegrastats"
NVML = "NVML (pynvml)"
DAEMON = "daemon provider"
AGENT = "agent"


def _leaf(types: Any, desc: str, *, unit: str = "", source: str = "", short: str = "", drop: bool = False, **extra: Any) -> Spec:
    spec: Spec = {"type": types, "desc": desc, "unit": unit, "source": source}
    if short:
        spec["short"] = short
    if drop:
        spec["drop"] = True
    spec.update(extra)
    return spec


def num(desc: str, unit: str = "", source: str = "", short: str = "", **extra: Any) -> Spec:
    return _leaf(["number", "null"], desc, unit=unit, source=source, short=short, **extra)


def count(desc: str, source: str = "", short: str = "", **extra: Any) -> Spec:
    return _leaf(["integer", "null"], desc, unit="count", source=source, short=short, minimum=0, **extra)


def text(desc: str, source: str = "", short: str = "", **extra: Any) -> Spec:
    return _leaf(["string", "null"], desc, source=source, short=short, **extra)


def flag(desc: str, source: str = "", short: str = "", **extra: Any) -> Spec:
    return _leaf(["boolean", "null"], desc, source=source, short=short, **extra)


def obj(
    desc: str,
    properties: Optional[Dict[str, Spec]] = None,
    *,
    source: str = "",
    short: str = "",
    required: Sequence[str] = (),
    additional: Optional[Spec] = None,
    nullable: bool = True,
    drop: bool = False,
) -> Spec:
    spec = _leaf(["object", "null"] if nullable else "object", desc, source=source, short=short, drop=drop)
    spec["properties"] = properties or {}
    spec["required"] = list(required)
    if additional is not None:
        spec["additional"] = additional
    return spec


def arr(desc: str, items: Spec, *, unit: str = "", source: str = "", short: str = "", drop: bool = False) -> Spec:
    return _leaf(["array", "null"], desc, unit=unit, source=source, short=short, drop=drop, items=items)


def _load(desc: str, source: str, short: str = "", drop: bool = False) -> Spec:
    return obj(
        desc,
        {
            "load_pct": num("busy share of the current clock", "%", source, "l", minimum=0),
            "freq_mhz": num("current clock", "MHz", source, "f", minimum=0),
        },
        source=source,
        short=short,
        drop=drop,
    )


def _mem(source: str, cached: bool = False) -> Dict[str, Spec]:
    props = {
        "used_mb": num("in use", "MB", source, "u", minimum=0),
        "total_mb": num("total", "MB", source, "t", minimum=0),
    }
    if cached:
        props["cached_mb"] = num("swap cache", "MB", source, "c", minimum=0)
    return props


SYSTEM = obj(
    "the host, from psutil and sysfs",
    {
        "cpu": obj(
            "CPU use since the previous document",
            {
                "total_pct": num("mean of all cores", "%", PSUTIL, "t", minimum=0),
                "count": count("logical cores", PSUTIL, "n"),
                "per_core_pct": arr("per logical core", num("one core", "%", PSUTIL), unit="%", source=PSUTIL, drop=True),
            },
            source=PSUTIL,
            short="c",
        ),
        "load": obj(
            "load average (runnable + uninterruptible tasks)",
            {"1m": num("over 1 min", "tasks", "os.getloadavg"), "5m": num("over 5 min", "tasks", "os.getloadavg"),
             "15m": num("over 15 min", "tasks", "os.getloadavg")},
            source="os.getloadavg",
            short="l",
        ),
        "memory": obj(
            "RAM (on a Jetson shared by CPU and GPU)",
            {
                "total_mb": num("installed and visible to Linux", "MB", PSUTIL, "t", minimum=0),
                "used_mb": num("total minus available", "MB", PSUTIL, "u", minimum=0),
                "available_mb": num("available to new allocations without swapping", "MB", PSUTIL, "a", minimum=0),
                "pct": num("used share", "%", PSUTIL, "p", minimum=0, maximum=100),
            },
            source=PSUTIL,
            short="m",
        ),
        "swap": obj(
            "swap (zram on Jetson)",
            {
                "total_mb": num("total", "MB", PSUTIL, "t", minimum=0),
                "used_mb": num("in use", "MB", PSUTIL, "u", minimum=0),
                "pct": num("used share", "%", PSUTIL, "p", minimum=0, maximum=100),
            },
            source=PSUTIL,
            short="s",
        ),
        "disk": obj(
            "the file system holding the agent's state folder (engines, artifacts)",
            {
                "path": text("the folder measured (state folder or its nearest existing parent)", PSUTIL, drop=True),
                "total_mb": num("size", "MB", PSUTIL, "t", minimum=0),
                "used_mb": num("used", "MB", PSUTIL, "u", minimum=0),
                "free_mb": num("free for the agent", "MB", PSUTIL, "f", minimum=0),
                "pct": num("used share", "%", PSUTIL, "p", minimum=0, maximum=100),
            },
            source=PSUTIL,
            short="d",
        ),
        "net": obj(
            "all network interfaces",
            {
                "bytes_sent": count("since boot", PSUTIL, "bs"),
                "bytes_recv": count("since boot", PSUTIL, "br"),
                "sent_bps": num("since the previous document (null on the first)", "bytes/s", PSUTIL, "s", minimum=0),
                "recv_bps": num("since the previous document (null on the first)", "bytes/s", PSUTIL, "r", minimum=0),
            },
            source=PSUTIL,
            short="n",
        ),
        "temps_c": obj(
            "temperature per thermal zone (null: sensor absent or off)",
            source="/sys/class/thermal (else psutil hwmon)",
            short="t",
            additional=num("one zone", "°C", "/sys/class/thermal"),
        ),
        "process": obj(
            "the agent process itself",
            {
                "pid": count("process id", PSUTIL),
                "rss_mb": num("resident memory", "MB", PSUTIL, "rss", minimum=0),
                "cpu_pct": num("CPU since the previous document (100 = one core)", "%", PSUTIL, "cpu", minimum=0),
                "cpu_s": num("user + system CPU time since start", "s", PSUTIL, "cs", minimum=0),
                "threads": count("threads", PSUTIL, "th"),
            },
            source=PSUTIL,
            short="p",
        ),
        "uptime_s": num("time since the host booted", "s", PSUTIL, "up", minimum=0),
    },
    source=PSUTIL,
    short="sys",
    required=("cpu", "load", "memory", "swap", "disk", "net", "temps_c", "process", "uptime_s"),
)

TEGRASTATS_SECTION = obj(
    "the latest tegrastats line, parsed field by field (null: no fresh line)",
    {
        "time": text("the line's own timestamp as printed (JetPack 5+)", TEGRASTATS, drop=True),
        "ram": obj(
            "RAM as tegrastats counts it",
            {
                **_mem(TEGRASTATS),
                "lfb": obj(
                    "largest free block: `blocks` blocks of `block_mb` (fragmentation)",
                    {"blocks": count("number of largest free blocks", TEGRASTATS, "n"),
                     "block_mb": num("size of one block", "MB", TEGRASTATS, "mb", minimum=0)},
                    source=TEGRASTATS,
                ),
            },
            source=TEGRASTATS,
            short="r",
        ),
        "swap": obj("swap", _mem(TEGRASTATS, cached=True), source=TEGRASTATS, short="s"),
        "iram": obj(
            "internal RAM (Nano, TX1)",
            {"used_kb": num("in use", "kB", TEGRASTATS, "u", minimum=0), "total_kb": num("total", "kB", TEGRASTATS, "t", minimum=0),
             "lfb_kb": num("largest free block", "kB", TEGRASTATS, "lfb", minimum=0)},
            source=TEGRASTATS,
            short="i",
        ),
        "cpus": arr("per core; null for a core that is off", _load("one core (null: off)", TEGRASTATS), source=TEGRASTATS, drop=True),
        "emc": _load("external memory controller: bandwidth use and clock", TEGRASTATS, "e"),
        "gpu": obj(
            "the integrated GPU (GR3D_FREQ); null when the line has none (Thor)",
            {
                "load_pct": num("busy share of the current clock", "%", TEGRASTATS, "l", minimum=0),
                "freq_mhz": num("clock (highest GPC where per-GPC clocks are printed)", "MHz", TEGRASTATS, "f", minimum=0),
                "gpc_freq_mhz": arr("clock per GPC (Orin, Thor)", num("one GPC", "MHz", TEGRASTATS), unit="MHz",
                                    source=TEGRASTATS, short="gf"),
            },
            source=TEGRASTATS,
            short="g",
        ),
        "engines": obj(
            "accelerators and media engines by name (NVDLA0, NVDLA1, PVA0, NVENC, NVDEC, NVJPG, VIC, OFA, APE...); null: off",
            source=TEGRASTATS,
            short="en",
            additional=_load("one engine (null: off)", TEGRASTATS),
        ),
        "mts": obj(
            "Denver cores' MTS (TX2)",
            {"fg_pct": num("foreground", "%", TEGRASTATS, "fg"), "bg_pct": num("background", "%", TEGRASTATS, "bg")},
            source=TEGRASTATS,
        ),
        "temps_c": obj(
            "temperature per zone as tegrastats names it (null: sensor absent, -256)",
            source=TEGRASTATS,
            short="t",
            additional=num("one zone", "°C", TEGRASTATS),
        ),
        "temps_max_c": obj(
            "JetPack 7: the second value of `zone@cur/max`",
            source=TEGRASTATS,
            short="tm",
            additional=num("one zone", "°C", TEGRASTATS),
        ),
        "power_mw": obj(
            "power per rail as tegrastats names it (VDD_IN, VDD_CPU_GPU_CV, POM_5V_IN...)",
            source=TEGRASTATS,
            short="p",
            additional=obj(
                "one rail",
                {"now": num("instant", "mW", TEGRASTATS, "n"), "avg": num("average since tegrastats started", "mW", TEGRASTATS, "a"),
                 "max": num("maximum (JetPack 7 three-value form)", "mW", TEGRASTATS, "x")},
                source=TEGRASTATS,
                nullable=False,
            ),
        ),
        "other": obj(
            "fields this parser does not know, raw text by key (kept, never dropped)",
            source=TEGRASTATS,
            short="o",
            additional=text("raw value (null for a lone token)", TEGRASTATS),
        ),
    },
    source=TEGRASTATS,
    short="ts",
    required=("ram", "cpus", "gpu", "temps_c", "power_mw", "other"),
)

JETSON = obj(
    "Jetson only (null elsewhere)",
    {
        "tegrastats": TEGRASTATS_SECTION,
        "nvpmodel": obj(
            "power mode",
            {"name": text("mode name (MAXN, 15W...)", "nvpmodel -q", "n"), "id": count("mode number", "nvpmodel -q", "i")},
            source="nvpmodel -q (cached 60 s)",
            short="pm",
        ),
        "jetson_clocks": obj(
            "whether jetson_clocks pinned the clocks to their maximum",
            {"active": flag("all clocks pinned (min == max)", "jetson_clocks --show or sysfs cpufreq", "a"),
             "source": text("how it was read", AGENT, drop=True)},
            source="jetson_clocks --show as root, else /sys/devices/system/cpu/*/cpufreq (cached 60 s)",
            short="jc",
        ),
    },
    source="tegrastats, nvpmodel, jetson_clocks",
    short="jet",
    required=("tegrastats", "nvpmodel", "jetson_clocks"),
)

_CLOCKS = {
    "graphics": num("graphics clock", "MHz", NVML, "g"),
    "sm": num("SM clock", "MHz", NVML, "s"),
    "mem": num("memory clock", "MHz", NVML, "m"),
}

GPU = obj(
    "discrete NVIDIA GPUs through NVML (null: no NVML, driver or pynvml)",
    {
        "driver_version": text("NVIDIA driver", NVML, "drv"),
        "cuda_driver_version": text("CUDA version the driver supports", NVML, "cuda"),
        "devices": arr(
            "one entry per GPU",
            obj(
                "one GPU; a field the GPU does not support is null",
                {
                    "index": count("NVML index", NVML, "i"),
                    "name": text("product name", NVML, "n"),
                    "uuid": text("GPU UUID", NVML, drop=True),
                    "util_pct": num("time a kernel was running over the last sample period", "%", NVML, "u", minimum=0),
                    "mem_util_pct": num("time memory was read or written", "%", NVML, "mu", minimum=0),
                    "memory_used_mb": num("device memory used", "MB", NVML, "mem", minimum=0),
                    "memory_total_mb": num("device memory", "MB", NVML, "mt", minimum=0),
                    "temp_c": num("GPU die temperature", "°C", NVML, "t"),
                    "power_mw": num("board power draw", "mW", NVML, "p", minimum=0),
                    "power_limit_mw": num("enforced power limit", "mW", NVML, "pl", minimum=0),
                    "energy_j": num("energy since the driver loaded", "J", NVML, "ej", minimum=0),
                    "clocks_mhz": obj("current clocks", _CLOCKS, source=NVML, short="c"),
                    "max_clocks_mhz": obj("maximum clocks", _CLOCKS, source=NVML, drop=True),
                    "fan_pct": num("fan speed (null on passively cooled boards)", "%", NVML, "f"),
                    "pstate": count("performance state (0 = fastest)", NVML, "ps"),
                    "throttle_reasons": arr(
                        "active clock-event reasons (gpu_idle, sw_power_cap, hw_slowdown, sw_thermal_slowdown, "
                        "hw_thermal_slowdown, hw_power_brake_slowdown, ...)",
                        text("one reason", NVML),
                        source=NVML,
                        short="tr",
                    ),
                    "throttled": flag("slowed by power or heat (a power-cap, thermal or hardware slowdown reason is active)", NVML, "th"),
                },
                source=NVML,
                nullable=False,
            ),
            source=NVML,
            short="d",
        ),
    },
    source=NVML,
    required=("devices",),
)

_PERCENTILES = obj(
    "latency of one stage over the last interval",
    {"p50": num("median", "ms", DAEMON), "p90": num("90th percentile", "ms", DAEMON),
     "p99": num("99th percentile", "ms", DAEMON), "max": num("maximum", "ms", DAEMON)},
    source=DAEMON,
    nullable=False,
)

PIPELINE = obj(
    "inference health: the camera pipeline (null: no pipeline running)",
    {
        "fps": num("frames inferred per second over the last interval", "frames/s", DAEMON, "f", minimum=0),
        "frames": count("frames inferred since the pipeline started", DAEMON, "n"),
        "drops": count("frames dropped since start (inference could not keep up or a stage failed)", DAEMON, "d"),
        "camera_reconnects": count("camera reconnects since start", DAEMON, "cr"),
        "cameras": obj(
            "each camera by name: its state and counters since the pipeline started",
            source=DAEMON,
            short="cam",
            additional=obj(
                "one camera",
                {
                    "state": text("opening, streaming, waiting (to reopen), ended or stopped", DAEMON, "s"),
                    "frames": count("frames read", DAEMON, "n"),
                    "drops": count("frames replaced by a newer one before inference took them", DAEMON, "d"),
                    "reconnects": count("successful reopenings after the first open", DAEMON, "r"),
                    "open_failures": count("open attempts that failed", DAEMON, "of"),
                    "disconnects": count("times the stream stopped delivering", DAEMON, "dc"),
                    "stalls": count("of those, times it went silent past read_timeout_s", DAEMON, "st"),
                    "since_frame_s": num("seconds since its last frame", "s", DAEMON, "sf", minimum=0),
                    "width": num("frame width now", "px", DAEMON, "w"),
                    "height": num("frame height now", "px", DAEMON, "h"),
                    "error": text("the last error (what was tried, and why it failed)", DAEMON, "e"),
                },
                source=DAEMON,
                nullable=False,
            ),
        ),
        "latency_ms": obj(
            "per-stage latency percentiles by stage name (capture, preprocess, infer, postprocess, publish, total)",
            source=DAEMON,
            short="lat",
            additional=_PERCENTILES,
        ),
    },
    source=DAEMON,
    short="pipe",
)

ENGINE = obj(
    "the engine serving now and the engine cache (null: none loaded)",
    {
        "id": text("engine cache key", DAEMON, "id"),
        "backend": text("tensorrt or onnxruntime", DAEMON, "b"),
        "precision": text("fp32, fp16 or int8", DAEMON, "p"),
        "target": text("gpu, dla:0, dla:1 or cpu", DAEMON, "t"),
        "dla_layer_share": num("share of layers placed on the DLA (0 to 1)", "ratio", DAEMON, "dla", minimum=0, maximum=1),
        "build_s": num("duration of the last engine build", "s", DAEMON, "bs", minimum=0),
        "builds": count("engine builds since the agent started", DAEMON, "bn"),
        "cache_hits": count("engine loads served from the cache since start", DAEMON, "ch"),
        "cache_misses": count("engine requests that needed a build since start", DAEMON, "cm"),
    },
    source=DAEMON,
    short="eng",
)

AGENT_SECTION = obj(
    "the agent itself",
    {
        "version": text("edge-agent version", DAEMON, "v"),
        "uptime_s": num("since the agent started", "s", DAEMON, "up", minimum=0),
        "mqtt_connected": flag("connected to the broker now", DAEMON, "c"),
        "mqtt_reconnects": count("reconnects since start", DAEMON, "rc"),
        "outbox_depth": count("messages waiting for the broker", DAEMON, "ob"),
        "outbox_dropped": count("messages dropped because the outbox was full", DAEMON, "od"),
    },
    source=DAEMON,
    short="agt",
)

DOCUMENT_SCHEMA: Spec = obj(
    "one telemetry document",
    {
        "schema": _leaf("integer", "document version (this is 1); a consumer rejects a newer major version", source=AGENT, minimum=1),
        "kind": _leaf("string", "always 'telemetry'", source=AGENT, enum=[KIND]),
        "ts": _leaf("number", "when the document was collected (Unix time)", unit="s", source=AGENT, minimum=0),
        "device": _leaf("string", "device id", source=AGENT, short="dev"),
        "compact": _leaf("boolean", "present and true in the compact form", source=AGENT),
        "interval_s": num("publishing interval", "s", AGENT, "int", minimum=0),
        "collect_ms": num("time spent collecting this document", "ms", AGENT, "cms", minimum=0),
        "unavailable": obj(
            "why a source gave null: source name -> reason",
            source=AGENT,
            short="na",
            nullable=False,
            additional=_leaf("string", "reason", source=AGENT),
        ),
        "system": SYSTEM,
        "jetson": JETSON,
        "gpu": GPU,
        "pipeline": PIPELINE,
        "engine": ENGINE,
        "agent": AGENT_SECTION,
    },
    source=AGENT,
    nullable=False,
    required=("schema", "kind", "ts", "device", "system", "jetson", "gpu", "pipeline", "engine", "agent"),
)

# ------------------------------------------------------------------------------------------- validation
_TYPE_CHECKS = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _types(spec: Spec) -> List[str]:
    kinds = spec.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def check(value: Any, spec: Spec, path: str = "$", *, compact_form: bool = False) -> List[str]:
    """Problems of `value` against `spec` (empty: valid). Extra keys without an `additional` spec are allowed,
    so a newer agent's or a provider's extra fields never make a document invalid. `compact_form`: fields the
    compact form drops are not required."""
    problems: List[str] = []
    _check(value, spec, path, problems, compact_form)
    return problems


def _check(value: Any, spec: Spec, path: str, problems: List[str], compact_form: bool = False) -> None:
    kinds = _types(spec)
    if kinds and not any(_TYPE_CHECKS[k](value) for k in kinds):
        problems.append(f"{path}: expected {' or '.join(kinds)}, got {_describe(value)}")
        return
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: must be a finite number, got {value!r}")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in spec and value < spec["minimum"]:
            problems.append(f"{path}: must be >= {spec['minimum']}, got {value!r}")
        if "maximum" in spec and value > spec["maximum"]:
            problems.append(f"{path}: must be <= {spec['maximum']}, got {value!r}")
    if "enum" in spec and value not in spec["enum"]:
        problems.append(f"{path}: must be one of {spec['enum']}, got {value!r}")
    if isinstance(value, dict):
        properties: Dict[str, Spec] = spec.get("properties", {})
        for key in spec.get("required", ()):
            if key not in value and not (compact_form and properties.get(key, {}).get("drop")):
                problems.append(f"{path}: missing required field '{key}'")
        additional: Optional[Spec] = spec.get("additional")
        for key, item in value.items():
            if not isinstance(key, str):  # pragma: no cover - JSON keys are strings
                problems.append(f"{path}: key {key!r} is not a string")
            elif key in properties:
                _check(item, properties[key], f"{path}.{key}", problems, compact_form)
            elif additional is not None:
                _check(item, additional, f"{path}.{key}", problems, compact_form)
    elif isinstance(value, list) and "items" in spec:
        for i, item in enumerate(value):
            _check(item, spec["items"], f"{path}[{i}]", problems, compact_form)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "integer", float: "number"}.get(type(value), type(value).__name__)


# -------------------------------------------------------------------------------------- the compact form
def compact(value: Any, spec: Spec) -> Any:
    """Short keys for fixed fields, `drop` fields left out; free keys (zone, rail, stage names) kept as is."""
    if isinstance(value, dict):
        properties: Dict[str, Spec] = spec.get("properties", {})
        additional: Optional[Spec] = spec.get("additional")
        out: Dict[str, Any] = {}
        for key, item in value.items():
            prop = properties.get(key)
            if prop is not None:
                if prop.get("drop"):
                    continue
                short: str = prop.get("short") or key
                out[short] = compact(item, prop)
            elif additional is not None:
                out[key] = compact(item, additional)
            else:
                out[key] = item
        return out
    if isinstance(value, list) and "items" in spec:
        return [compact(item, spec["items"]) for item in value]
    return value


def expand(value: Any, spec: Spec) -> Any:
    """The inverse of `compact` for the keys it shortened (dropped fields stay absent)."""
    if isinstance(value, dict):
        properties: Dict[str, Spec] = spec.get("properties", {})
        long_of = {prop.get("short", name): name for name, prop in properties.items()}
        additional: Optional[Spec] = spec.get("additional")
        out: Dict[str, Any] = {}
        for key, item in value.items():
            name = long_of.get(key)
            if name is not None:
                out[name] = expand(item, properties[name])
            elif additional is not None:
                out[key] = expand(item, additional)
            else:
                out[key] = item
        return out
    if isinstance(value, list) and "items" in spec:
        return [expand(item, spec["items"]) for item in value]
    return value


def key_clashes(spec: Spec = DOCUMENT_SCHEMA, path: str = "$") -> List[str]:
    """Places where compact keys would be ambiguous (two fields of one object share a short key, or a short key
    equals another field's full name). Empty for a sound schema; the tests check it."""
    problems: List[str] = []
    properties: Dict[str, Spec] = spec.get("properties", {})
    shorts: Dict[str, str] = {}
    for name, prop in properties.items():
        if prop.get("drop"):
            continue
        short = prop.get("short", name)
        if short in shorts:
            problems.append(f"{path}: '{name}' and '{shorts[short]}' both compact to '{short}'")
        if short != name and short in properties:
            problems.append(f"{path}: short key '{short}' of '{name}' is another field's name")
        shorts[short] = name
    for name, prop in properties.items():
        problems += key_clashes(prop, f"{path}.{name}")
    if "additional" in spec:
        problems += key_clashes(spec["additional"], f"{path}.<key>")
    if "items" in spec:
        problems += key_clashes(spec["items"], f"{path}[]")
    return problems


# ----------------------------------------------------------------------------------------- field listing
def fields(spec: Spec = DOCUMENT_SCHEMA, path: str = "") -> Iterator[Tuple[str, Spec]]:
    """(dotted path, spec) for every documented field, depth first; free keys appear as `<name>`."""
    for name, prop in spec.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        yield here, prop
        yield from fields(prop, here)
        if "items" in prop:
            yield from fields(prop["items"], here + "[]")
        if "additional" in prop:
            yield here + ".<name>", prop["additional"]
            yield from fields(prop["additional"], here + ".<name>")
            if "items" in prop["additional"]:  # pragma: no cover - no such field today
                yield from fields(prop["additional"]["items"], here + ".<name>[]")


def markdown_table(spec: Spec = DOCUMENT_SCHEMA) -> str:
    """The field table of docs/telemetry.md: path, type, unit, compact key, source, meaning."""
    rows = ["| field | type | unit | compact | source | meaning |", "|---|---|---|---|---|---|"]
    for path, prop in fields(spec):
        kinds = "/".join(k for k in _types(prop) if k != "null") + ("?" if "null" in _types(prop) else "")
        short = "(dropped)" if prop.get("drop") else prop.get("short", path.rsplit(".", 1)[-1])
        rows.append(
            f"| `{path}` | {kinds} | {prop.get('unit') or ''} | `{short}` | {prop.get('source') or ''} | {prop.get('desc', '')} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m agent.telemetry.schema: the field table for docs/telemetry.md
    import sys

    sys.stdout.write(markdown_table())
