"""The telemetry document as msgspec Structs: one model drives validation (`check`), the compact form (short
keys, per-core detail dropped), the field table and the JSON Schema in docs/telemetry.md.

Every field carries its documentation in `Meta(description=..., extra={unit, source, short, drop})` (see
`doc()`): `short` is its key in the compact form, `drop` leaves it out of the compact form; the JSON Schema
shows them as `x-unit`, `x-source`, `x-compact` and `x-compact-dropped`. Free keys (thermal
zones, power rails, engines, pipeline stages) are `Dict[str, ...]` and are never shortened.

Unlike the agent's other documents, telemetry sections accept keys they do not know: a consumer of an older
version, or a provider's extra fields, must never make a document invalid (docs/telemetry.md, "Rules").

    python -m agent.telemetry.schema            # the field table for docs/telemetry.md
    python -m agent.telemetry.schema --json     # the JSON Schema (draft 2020-12)
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple

import msgspec
import msgspec.inspect as mi

from agent.models import Annotated, Meta, explain

TELEMETRY_SCHEMA = 1
KIND = "telemetry"

PSUTIL = "psutil"
TEGRASTATS = "tegrastats"
NVML = "NVML (pynvml)"
DAEMON = "daemon provider"
AGENT = "agent"
THERMAL = "/sys/class/thermal"


def doc(desc: str, unit: str = "", source: str = "", short: str = "", *, drop: bool = False) -> Meta:
    """A field's documentation: what it means, its unit, where it comes from, its compact key."""
    extra: Dict[str, Any] = {"unit": unit, "source": source}
    if short:
        extra["short"] = short
    if drop:
        extra["drop"] = True
    schema: Dict[str, Any] = {f"x-{key}": value for key, value in (("unit", unit), ("source", source), ("compact", "" if drop else short)) if value}
    if drop:
        schema["x-compact-dropped"] = True
    return Meta(description=desc, extra=extra, extra_json_schema=schema)


NonNeg = Annotated[float, Meta(ge=0)]
Percent = Annotated[float, Meta(ge=0, le=100)]
Ratio = Annotated[float, Meta(ge=0, le=1)]
Count = Annotated[int, Meta(ge=0)]


class Section(msgspec.Struct, kw_only=True):
    """A part of the telemetry document; unknown keys pass (see the module's docstring)."""


# system -----------------------------------------------------------------------------------------------
class SystemCpu(Section, kw_only=True):
    total_pct: Annotated[Optional[NonNeg], doc("mean of all cores", "%", PSUTIL, "t")] = None
    count: Annotated[Optional[Count], doc("logical cores", "count", PSUTIL, "n")] = None
    per_core_pct: Annotated[
        Optional[List[Annotated[Optional[float], doc("one core", "%", PSUTIL)]]], doc("per logical core", "%", PSUTIL, drop=True)
    ] = None


class LoadAverage(Section, kw_only=True):
    m1: Annotated[Optional[float], doc("over 1 min", "tasks", "os.getloadavg")] = msgspec.field(default=None, name="1m")
    m5: Annotated[Optional[float], doc("over 5 min", "tasks", "os.getloadavg")] = msgspec.field(default=None, name="5m")
    m15: Annotated[Optional[float], doc("over 15 min", "tasks", "os.getloadavg")] = msgspec.field(default=None, name="15m")


class Memory(Section, kw_only=True):
    total_mb: Annotated[Optional[NonNeg], doc("installed and visible to Linux", "MB", PSUTIL, "t")] = None
    used_mb: Annotated[Optional[NonNeg], doc("total minus available", "MB", PSUTIL, "u")] = None
    available_mb: Annotated[Optional[NonNeg], doc("available to new allocations without swapping", "MB", PSUTIL, "a")] = None
    pct: Annotated[Optional[Percent], doc("used share", "%", PSUTIL, "p")] = None


class Swap(Section, kw_only=True):
    total_mb: Annotated[Optional[NonNeg], doc("total", "MB", PSUTIL, "t")] = None
    used_mb: Annotated[Optional[NonNeg], doc("in use", "MB", PSUTIL, "u")] = None
    pct: Annotated[Optional[Percent], doc("used share", "%", PSUTIL, "p")] = None


class Disk(Section, kw_only=True):
    path: Annotated[Optional[str], doc("the folder measured (state folder or its nearest existing parent)", "", PSUTIL, drop=True)] = None
    total_mb: Annotated[Optional[NonNeg], doc("size", "MB", PSUTIL, "t")] = None
    used_mb: Annotated[Optional[NonNeg], doc("used", "MB", PSUTIL, "u")] = None
    free_mb: Annotated[Optional[NonNeg], doc("free for the agent", "MB", PSUTIL, "f")] = None
    pct: Annotated[Optional[Percent], doc("used share", "%", PSUTIL, "p")] = None


class Net(Section, kw_only=True):
    bytes_sent: Annotated[Optional[Count], doc("since boot", "count", PSUTIL, "bs")] = None
    bytes_recv: Annotated[Optional[Count], doc("since boot", "count", PSUTIL, "br")] = None
    sent_bps: Annotated[Optional[NonNeg], doc("since the previous document (null on the first)", "bytes/s", PSUTIL, "s")] = None
    recv_bps: Annotated[Optional[NonNeg], doc("since the previous document (null on the first)", "bytes/s", PSUTIL, "r")] = None


class Process(Section, kw_only=True):
    pid: Annotated[Optional[Count], doc("process id", "count", PSUTIL)] = None
    rss_mb: Annotated[Optional[NonNeg], doc("resident memory", "MB", PSUTIL, "rss")] = None
    cpu_pct: Annotated[Optional[NonNeg], doc("CPU since the previous document (100 = one core)", "%", PSUTIL, "cpu")] = None
    cpu_s: Annotated[Optional[NonNeg], doc("user + system CPU time since start", "s", PSUTIL, "cs")] = None
    threads: Annotated[Optional[Count], doc("threads", "count", PSUTIL, "th")] = None


ZoneTemps = Dict[str, Annotated[Optional[float], doc("one zone", "°C", THERMAL)]]


class System(Section, kw_only=True):
    cpu: Annotated[Optional[SystemCpu], doc("CPU use since the previous document", "", PSUTIL, "c")]
    load: Annotated[Optional[LoadAverage], doc("load average (runnable + uninterruptible tasks)", "", "os.getloadavg", "l")]
    memory: Annotated[Optional[Memory], doc("RAM (on a Jetson shared by CPU and GPU)", "", PSUTIL, "m")]
    swap: Annotated[Optional[Swap], doc("swap (zram on Jetson)", "", PSUTIL, "s")]
    disk: Annotated[Optional[Disk], doc("the file system holding the agent's state folder (engines, artifacts)", "", PSUTIL, "d")]
    net: Annotated[Optional[Net], doc("all network interfaces", "", PSUTIL, "n")]
    temps_c: Annotated[
        Optional[ZoneTemps], doc("temperature per thermal zone (null: sensor absent or off)", "", f"{THERMAL} (else psutil hwmon)", "t")
    ]
    process: Annotated[Optional[Process], doc("the agent process itself", "", PSUTIL, "p")]
    uptime_s: Annotated[Optional[NonNeg], doc("time since the host booted", "s", PSUTIL, "up")]


# jetson: tegrastats, nvpmodel, jetson_clocks -----------------------------------------------------------
class LoadClock(Section, kw_only=True):
    load_pct: Annotated[Optional[NonNeg], doc("busy share of the current clock", "%", TEGRASTATS, "l")] = None
    freq_mhz: Annotated[Optional[NonNeg], doc("current clock", "MHz", TEGRASTATS, "f")] = None


class LargestFreeBlock(Section, kw_only=True):
    blocks: Annotated[Optional[Count], doc("number of largest free blocks", "count", TEGRASTATS, "n")] = None
    block_mb: Annotated[Optional[NonNeg], doc("size of one block", "MB", TEGRASTATS, "mb")] = None


class TegrastatsRam(Section, kw_only=True):
    used_mb: Annotated[Optional[NonNeg], doc("in use", "MB", TEGRASTATS, "u")] = None
    total_mb: Annotated[Optional[NonNeg], doc("total", "MB", TEGRASTATS, "t")] = None
    lfb: Annotated[Optional[LargestFreeBlock], doc("largest free block: `blocks` blocks of `block_mb` (fragmentation)", "", TEGRASTATS)] = None


class TegrastatsSwap(Section, kw_only=True):
    used_mb: Annotated[Optional[NonNeg], doc("in use", "MB", TEGRASTATS, "u")] = None
    total_mb: Annotated[Optional[NonNeg], doc("total", "MB", TEGRASTATS, "t")] = None
    cached_mb: Annotated[Optional[NonNeg], doc("swap cache", "MB", TEGRASTATS, "c")] = None


class Iram(Section, kw_only=True):
    used_kb: Annotated[Optional[NonNeg], doc("in use", "kB", TEGRASTATS, "u")] = None
    total_kb: Annotated[Optional[NonNeg], doc("total", "kB", TEGRASTATS, "t")] = None
    lfb_kb: Annotated[Optional[NonNeg], doc("largest free block", "kB", TEGRASTATS, "lfb")] = None


class TegrastatsGpu(Section, kw_only=True):
    load_pct: Annotated[Optional[NonNeg], doc("busy share of the current clock", "%", TEGRASTATS, "l")] = None
    freq_mhz: Annotated[Optional[NonNeg], doc("clock (highest GPC where per-GPC clocks are printed)", "MHz", TEGRASTATS, "f")] = None
    gpc_freq_mhz: Annotated[
        Optional[List[Annotated[Optional[float], doc("one GPC", "MHz", TEGRASTATS)]]], doc("clock per GPC (Orin, Thor)", "MHz", TEGRASTATS, "gf")
    ] = None


class Mts(Section, kw_only=True):
    fg_pct: Annotated[Optional[float], doc("foreground", "%", TEGRASTATS, "fg")] = None
    bg_pct: Annotated[Optional[float], doc("background", "%", TEGRASTATS, "bg")] = None


class Rail(Section, kw_only=True):
    now: Annotated[Optional[float], doc("instant", "mW", TEGRASTATS, "n")] = None
    avg: Annotated[Optional[float], doc("average since tegrastats started", "mW", TEGRASTATS, "a")] = None
    max: Annotated[Optional[float], doc("maximum (JetPack 7 three-value form)", "mW", TEGRASTATS, "x")] = None


TegraTemps = Dict[str, Annotated[Optional[float], doc("one zone", "°C", TEGRASTATS)]]


class Tegrastats(Section, kw_only=True):
    time: Annotated[Optional[str], doc("the line's own timestamp as printed (JetPack 5+)", "", TEGRASTATS, drop=True)] = None
    ram: Annotated[Optional[TegrastatsRam], doc("RAM as tegrastats counts it", "", TEGRASTATS, "r")]
    swap: Annotated[Optional[TegrastatsSwap], doc("swap", "", TEGRASTATS, "s")] = None
    iram: Annotated[Optional[Iram], doc("internal RAM (Nano, TX1)", "", TEGRASTATS, "i")] = None
    cpus: Annotated[
        Optional[List[Annotated[Optional[LoadClock], doc("one core (null: off)", "", TEGRASTATS)]]],
        doc("per core; null for a core that is off", "", TEGRASTATS, drop=True),
    ] = None
    emc: Annotated[Optional[LoadClock], doc("external memory controller: bandwidth use and clock", "", TEGRASTATS, "e")] = None
    gpu: Annotated[Optional[TegrastatsGpu], doc("the integrated GPU (GR3D_FREQ); null when the line has none (Thor)", "", TEGRASTATS, "g")]
    engines: Annotated[
        Optional[Dict[str, Annotated[Optional[LoadClock], doc("one engine (null: off)", "", TEGRASTATS)]]],
        doc("accelerators and media engines by name (NVDLA0, NVDLA1, PVA0, NVENC, NVDEC, NVJPG, VIC, OFA, APE...); null: off", "", TEGRASTATS, "en"),
    ] = None
    mts: Annotated[Optional[Mts], doc("Denver cores' MTS (TX2)", "", TEGRASTATS)] = None
    temps_c: Annotated[Optional[TegraTemps], doc("temperature per zone as tegrastats names it (null: sensor absent, -256)", "", TEGRASTATS, "t")]
    temps_max_c: Annotated[Optional[TegraTemps], doc("JetPack 7: the second value of `zone@cur/max`", "", TEGRASTATS, "tm")] = None
    power_mw: Annotated[
        Optional[Dict[str, Annotated[Rail, doc("one rail", "", TEGRASTATS)]]],
        doc("power per rail as tegrastats names it (VDD_IN, VDD_CPU_GPU_CV, POM_5V_IN...)", "", TEGRASTATS, "p"),
    ]
    other: Annotated[
        Optional[Dict[str, Annotated[Optional[str], doc("raw value (null for a lone token)", "", TEGRASTATS)]]],
        doc("fields this parser does not know, raw text by key (kept, never dropped)", "", TEGRASTATS, "o"),
    ]


class NvpModel(Section, kw_only=True):
    name: Annotated[Optional[str], doc("mode name (MAXN, 15W...)", "", "nvpmodel -q", "n")] = None
    id: Annotated[Optional[Count], doc("mode number", "count", "nvpmodel -q", "i")] = None


class JetsonClocks(Section, kw_only=True):
    active: Annotated[Optional[bool], doc("all clocks pinned (min == max)", "", "jetson_clocks --show or sysfs cpufreq", "a")] = None
    source: Annotated[Optional[str], doc("how it was read", "", AGENT, drop=True)] = None


class Jetson(Section, kw_only=True):
    tegrastats: Annotated[Optional[Tegrastats], doc("the latest tegrastats line, parsed field by field (null: no fresh line)", "", TEGRASTATS, "ts")]
    nvpmodel: Annotated[Optional[NvpModel], doc("power mode", "", "nvpmodel -q (cached 60 s)", "pm")]
    jetson_clocks: Annotated[
        Optional[JetsonClocks],
        doc("whether jetson_clocks pinned the clocks to their maximum", "", "jetson_clocks --show as root, else /sys/devices/system/cpu/*/cpufreq (cached 60 s)", "jc"),
    ]


# gpu: NVML ---------------------------------------------------------------------------------------------
class Clocks(Section, kw_only=True):
    graphics: Annotated[Optional[float], doc("graphics clock", "MHz", NVML, "g")] = None
    sm: Annotated[Optional[float], doc("SM clock", "MHz", NVML, "s")] = None
    mem: Annotated[Optional[float], doc("memory clock", "MHz", NVML, "m")] = None


class GpuDevice(Section, kw_only=True):
    index: Annotated[Optional[Count], doc("NVML index", "count", NVML, "i")] = None
    name: Annotated[Optional[str], doc("product name", "", NVML, "n")] = None
    uuid: Annotated[Optional[str], doc("GPU UUID", "", NVML, drop=True)] = None
    util_pct: Annotated[Optional[NonNeg], doc("time a kernel was running over the last sample period", "%", NVML, "u")] = None
    mem_util_pct: Annotated[Optional[NonNeg], doc("time memory was read or written", "%", NVML, "mu")] = None
    memory_used_mb: Annotated[Optional[NonNeg], doc("device memory used", "MB", NVML, "mem")] = None
    memory_total_mb: Annotated[Optional[NonNeg], doc("device memory", "MB", NVML, "mt")] = None
    temp_c: Annotated[Optional[float], doc("GPU die temperature", "°C", NVML, "t")] = None
    power_mw: Annotated[Optional[NonNeg], doc("board power draw", "mW", NVML, "p")] = None
    power_limit_mw: Annotated[Optional[NonNeg], doc("enforced power limit", "mW", NVML, "pl")] = None
    energy_j: Annotated[Optional[NonNeg], doc("energy since the driver loaded", "J", NVML, "ej")] = None
    clocks_mhz: Annotated[Optional[Clocks], doc("current clocks", "", NVML, "c")] = None
    max_clocks_mhz: Annotated[Optional[Clocks], doc("maximum clocks", "", NVML, drop=True)] = None
    fan_pct: Annotated[Optional[float], doc("fan speed (null on passively cooled boards)", "%", NVML, "f")] = None
    pstate: Annotated[Optional[Count], doc("performance state (0 = fastest)", "count", NVML, "ps")] = None
    throttle_reasons: Annotated[
        Optional[List[Annotated[Optional[str], doc("one reason", "", NVML)]]],
        doc(
            "active clock-event reasons (gpu_idle, sw_power_cap, hw_slowdown, sw_thermal_slowdown, "
            "hw_thermal_slowdown, hw_power_brake_slowdown, ...)",
            "",
            NVML,
            "tr",
        ),
    ] = None
    throttled: Annotated[
        Optional[bool], doc("slowed by power or heat (a power-cap, thermal or hardware slowdown reason is active)", "", NVML, "th")
    ] = None


class Gpu(Section, kw_only=True):
    driver_version: Annotated[Optional[str], doc("NVIDIA driver", "", NVML, "drv")] = None
    cuda_driver_version: Annotated[Optional[str], doc("CUDA version the driver supports", "", NVML, "cuda")] = None
    devices: Annotated[
        Optional[List[Annotated[GpuDevice, doc("one GPU; a field the GPU does not support is null", "", NVML)]]], doc("one entry per GPU", "", NVML, "d")
    ]


# pipeline, engine, agent: the daemon's providers ------------------------------------------------------------
class Percentiles(Section, kw_only=True):
    p50: Annotated[Optional[float], doc("median", "ms", DAEMON)] = None
    p90: Annotated[Optional[float], doc("90th percentile", "ms", DAEMON)] = None
    p99: Annotated[Optional[float], doc("99th percentile", "ms", DAEMON)] = None
    max: Annotated[Optional[float], doc("maximum", "ms", DAEMON)] = None


class Camera(Section, kw_only=True):
    state: Annotated[Optional[str], doc("opening, streaming, waiting (to reopen), ended or stopped", "", DAEMON, "s")] = None
    frames: Annotated[Optional[Count], doc("frames read", "count", DAEMON, "n")] = None
    drops: Annotated[Optional[Count], doc("frames replaced by a newer one before inference took them", "count", DAEMON, "d")] = None
    reconnects: Annotated[Optional[Count], doc("successful reopenings after the first open", "count", DAEMON, "r")] = None
    open_failures: Annotated[Optional[Count], doc("open attempts that failed", "count", DAEMON, "of")] = None
    disconnects: Annotated[Optional[Count], doc("times the stream stopped delivering", "count", DAEMON, "dc")] = None
    stalls: Annotated[Optional[Count], doc("of those, times it went silent past read_timeout_s", "count", DAEMON, "st")] = None
    since_frame_s: Annotated[Optional[NonNeg], doc("seconds since its last frame", "s", DAEMON, "sf")] = None
    width: Annotated[Optional[Count], doc("frame width now", "px", DAEMON, "w")] = None
    height: Annotated[Optional[Count], doc("frame height now", "px", DAEMON, "h")] = None
    error: Annotated[Optional[str], doc("the last error (what was tried, and why it failed)", "", DAEMON, "e")] = None


class Pipeline(Section, kw_only=True):
    fps: Annotated[Optional[NonNeg], doc("frames inferred per second over the last interval", "frames/s", DAEMON, "f")] = None
    frames: Annotated[Optional[Count], doc("frames inferred since the pipeline started", "count", DAEMON, "n")] = None
    drops: Annotated[Optional[Count], doc("frames dropped since start (inference could not keep up or a stage failed)", "count", DAEMON, "d")] = None
    camera_reconnects: Annotated[Optional[Count], doc("camera reconnects since start", "count", DAEMON, "cr")] = None
    latency_ms: Annotated[
        Optional[Dict[str, Annotated[Percentiles, doc("latency of one stage over the last interval", "", DAEMON)]]],
        doc("per-stage latency percentiles by stage name (capture, preprocess, infer, postprocess, publish, total)", "", DAEMON, "lat"),
    ] = None
    cameras: Annotated[
        Optional[Dict[str, Annotated[Camera, doc("one camera", "", DAEMON)]]],
        doc("each camera by name: its state and counters since the pipeline started", "", DAEMON, "cam"),
    ] = None


class Engine(Section, kw_only=True):
    id: Annotated[Optional[str], doc("engine cache key", "", DAEMON, "id")] = None
    backend: Annotated[Optional[str], doc("tensorrt or onnxruntime", "", DAEMON, "b")] = None
    precision: Annotated[Optional[str], doc("fp32, fp16 or int8", "", DAEMON, "p")] = None
    target: Annotated[Optional[str], doc("gpu, dla:0, dla:1 or cpu", "", DAEMON, "t")] = None
    dla_layer_share: Annotated[Optional[Ratio], doc("share of layers placed on the DLA (0 to 1)", "ratio", DAEMON, "dla")] = None
    build_s: Annotated[Optional[NonNeg], doc("duration of the last engine build", "s", DAEMON, "bs")] = None
    builds: Annotated[Optional[Count], doc("engine builds since the agent started", "count", DAEMON, "bn")] = None
    cache_hits: Annotated[Optional[Count], doc("engine loads served from the cache since start", "count", DAEMON, "ch")] = None
    cache_misses: Annotated[Optional[Count], doc("engine requests that needed a build since start", "count", DAEMON, "cm")] = None


class AgentSection(Section, kw_only=True):
    version: Annotated[Optional[str], doc("edge-agent version", "", DAEMON, "v")] = None
    uptime_s: Annotated[Optional[NonNeg], doc("since the agent started", "s", DAEMON, "up")] = None
    mqtt_connected: Annotated[Optional[bool], doc("connected to the broker now", "", DAEMON, "c")] = None
    mqtt_reconnects: Annotated[Optional[Count], doc("reconnects since start", "count", DAEMON, "rc")] = None
    outbox_depth: Annotated[Optional[Count], doc("messages waiting for the broker", "count", DAEMON, "ob")] = None
    outbox_dropped: Annotated[Optional[Count], doc("messages dropped because the outbox was full", "count", DAEMON, "od")] = None


class TelemetryDocument(Section, kw_only=True):
    """One telemetry document (the full form; `from_compact` turns the compact form into it)."""

    schema: Annotated[int, Meta(ge=1), doc("document version (this is 1); a consumer rejects a newer major version", "", AGENT)]
    kind: Annotated[Literal["telemetry"], doc("always 'telemetry'", "", AGENT)]
    ts: Annotated[float, Meta(ge=0), doc("when the document was collected (Unix time)", "s", AGENT)]
    device: Annotated[str, doc("device id", "", AGENT, "dev")]
    compact: Annotated[bool, doc("present and true in the compact form", "", AGENT)] = False
    interval_s: Annotated[Optional[NonNeg], doc("publishing interval", "s", AGENT, "int")] = None
    collect_ms: Annotated[Optional[NonNeg], doc("time spent collecting this document", "ms", AGENT, "cms")] = None
    unavailable: Annotated[
        Dict[str, Annotated[str, doc("reason", "", AGENT)]], doc("why a source gave null: source name -> reason", "", AGENT, "na")
    ] = msgspec.field(default_factory=dict)
    system: Annotated[Optional[System], doc("the host, from psutil and sysfs", "", PSUTIL, "sys")]
    jetson: Annotated[Optional[Jetson], doc("Jetson only (null elsewhere)", "", "tegrastats, nvpmodel, jetson_clocks", "jet")]
    gpu: Annotated[Optional[Gpu], doc("discrete NVIDIA GPUs through NVML (null: no NVML, driver or pynvml)", "", NVML)]
    pipeline: Annotated[Optional[Pipeline], doc("inference health: the camera pipeline (null: no pipeline running)", "", DAEMON, "pipe")]
    engine: Annotated[Optional[Engine], doc("the engine serving now and the engine cache (null: none loaded)", "", DAEMON, "eng")]
    agent: Annotated[Optional[AgentSection], doc("the agent itself", "", DAEMON, "agt")]


SECTIONS = TelemetryDocument.__struct_encode_fields__  # the document's top-level keys


# ------------------------------------------------------------------------------------------ the model's view
def _info(model: Any) -> Any:
    return model if isinstance(model, mi.Type) else mi.type_info(model)


class FieldDoc(msgspec.Struct, frozen=True):
    """What the docs and the compact form need to know about one field."""

    types: Tuple[str, ...]  # JSON types, "null" included when it may be null
    desc: str = ""
    unit: str = ""
    source: str = ""
    short: str = ""
    drop: bool = False


_JSON_TYPES = (
    (mi.FloatType, "number"),
    (mi.IntType, "integer"),
    (mi.StrType, "string"),
    (mi.BoolType, "boolean"),
    (mi.StructType, "object"),
    (mi.DictType, "object"),
    (mi.ListType, "array"),
    (mi.NoneType, "null"),
)


def _unwrap(node: Any) -> Tuple[Any, Dict[str, Any], str, bool]:
    """(concrete type, doc extra, description, nullable) of a field's type."""
    extra: Dict[str, Any] = {}
    desc = ""
    nullable = False
    while True:
        if isinstance(node, mi.Metadata):
            extra = {**(node.extra or {}), **extra}
            desc = desc or (node.extra_json_schema or {}).get("description", "")
            node = node.type
        elif isinstance(node, mi.UnionType):
            options = [t for t in node.types if not isinstance(t, mi.NoneType)]
            nullable = nullable or len(options) < len(node.types)
            node = options[0]
        else:
            return node, extra, desc, nullable


def _json_type(node: Any) -> str:
    if isinstance(node, mi.LiteralType):
        return "string" if isinstance(node.values[0], str) else "integer"
    return next((name for kind, name in _JSON_TYPES if isinstance(node, kind)), "any")


def _field_doc(node: Any) -> Tuple[Any, FieldDoc]:
    concrete, extra, desc, nullable = _unwrap(node)
    types = (_json_type(concrete), "null") if nullable else (_json_type(concrete),)
    return concrete, FieldDoc(
        types, desc, extra.get("unit", ""), extra.get("source", ""), extra.get("short", ""), bool(extra.get("drop", False))
    )


def _members(node: Any) -> Iterator[Tuple[str, Any, FieldDoc]]:
    """(key, concrete type, doc) of a Struct's fields."""
    if isinstance(node, mi.StructType):
        for field in node.fields:
            concrete, info = _field_doc(field.type)
            yield field.encode_name, concrete, info


def fields(model: Any = TelemetryDocument, path: str = "") -> Iterator[Tuple[str, FieldDoc]]:
    """(dotted path, FieldDoc) for every documented field, depth first; free keys appear as `<name>`."""
    yield from _fields(_info(model), path)


def _fields(node: Any, path: str) -> Iterator[Tuple[str, FieldDoc]]:
    for name, concrete, info in _members(node):
        here = f"{path}.{name}" if path else name
        yield here, info
        yield from _nested(concrete, here)


def _nested(concrete: Any, here: str) -> Iterator[Tuple[str, FieldDoc]]:
    if isinstance(concrete, mi.StructType):
        yield from _fields(concrete, here)
    elif isinstance(concrete, mi.ListType):
        item, _info = _field_doc(concrete.item_type)
        if isinstance(item, mi.StructType):
            yield from _fields(item, here + "[]")
    elif isinstance(concrete, mi.DictType):
        value, info = _field_doc(concrete.value_type)
        yield here + ".<name>", info
        yield from _nested(value, here + ".<name>")


# -------------------------------------------------------------------------------------- the compact form
def compact(value: Any, model: Any = TelemetryDocument) -> Any:
    """Short keys for fixed fields, `drop` fields left out; free keys (zone, rail, stage names) and keys the
    model does not know kept as they are."""
    return _compact(value, _info(model), shorten=True)


def expand(value: Any, model: Any = TelemetryDocument) -> Any:
    """The inverse of `compact` for the keys it shortened (dropped fields stay absent)."""
    return _compact(value, _info(model), shorten=False)


def _compact(value: Any, node: Any, *, shorten: bool) -> Any:
    concrete, _extra, _desc, _nullable = _unwrap(node)
    if isinstance(value, dict) and isinstance(concrete, mi.StructType):
        members = {name: (sub, info) for name, sub, info in _members(concrete)}
        long_of = {info.short or name: name for name, (_sub, info) in members.items() if not info.drop}
        out: Dict[str, Any] = {}
        for key, item in value.items():
            name = key if shorten else long_of.get(key)
            if name is not None and name in members:
                sub, info = members[name]
                if shorten and info.drop:
                    continue
                out[(info.short or name) if shorten else name] = _compact(item, sub, shorten=shorten)
            else:
                out[key] = item
        return out
    if isinstance(value, dict) and isinstance(concrete, mi.DictType):
        return {key: _compact(item, concrete.value_type, shorten=shorten) for key, item in value.items()}
    if isinstance(value, list) and isinstance(concrete, mi.ListType):
        return [_compact(item, concrete.item_type, shorten=shorten) for item in value]
    return value


def key_clashes(model: Any = TelemetryDocument, path: str = "$") -> List[str]:
    """Places where compact keys would be ambiguous (two fields of one object share a short key, or a short key
    equals another field's full name). Empty for a sound model; the tests check it."""
    return _clashes(_info(model), path)


def _clashes(node: Any, path: str) -> List[str]:
    concrete, _extra, _desc, _nullable = _unwrap(node)
    problems: List[str] = []
    if isinstance(concrete, mi.StructType):
        members = list(_members(concrete))
        names = {name for name, _sub, _info in members}
        shorts: Dict[str, str] = {}
        for name, _sub, info in members:
            if info.drop:
                continue
            short = info.short or name
            if short in shorts:
                problems.append(f"{path}: '{name}' and '{shorts[short]}' both compact to '{short}'")
            if short != name and short in names:
                problems.append(f"{path}: short key '{short}' of '{name}' is another field's name")
            shorts[short] = name
        for name, sub, _info in members:
            problems += _clashes(sub, f"{path}.{name}")
    elif isinstance(concrete, mi.DictType):
        problems += _clashes(concrete.value_type, f"{path}.<key>")
    elif isinstance(concrete, mi.ListType):
        problems += _clashes(concrete.item_type, f"{path}[]")
    return problems


# ------------------------------------------------------------------------------------------- validation
def check(document: Any) -> List[str]:
    """Problems of a full-form document (empty: valid): the first the model finds, then any number that is
    not finite (JSON has no NaN or infinity)."""
    try:
        msgspec.convert(document, TelemetryDocument)
    except msgspec.ValidationError as exc:
        return [explain(TelemetryDocument, document, str(exc), "$")]
    return _not_finite(document, "$")


def _not_finite(value: Any, path: str) -> List[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: must be a finite number, got {value!r}"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _not_finite(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _not_finite(item, f"{path}[{i}]")]
    return []


# ----------------------------------------------------------------------------------------- documentation
def markdown_table(model: Any = TelemetryDocument) -> str:
    """The field table of docs/telemetry.md: path, type, unit, compact key, source, meaning."""
    rows = ["| field | type | unit | compact | source | meaning |", "|---|---|---|---|---|---|"]
    for path, info in fields(model):
        kinds = "/".join(k for k in info.types if k != "null") + ("?" if "null" in info.types else "")
        short = "(dropped)" if info.drop else info.short or path.rsplit(".", 1)[-1]
        rows.append(f"| `{path}` | {kinds} | {info.unit} | `{short}` | {info.source} | {info.desc} |")
    return "\n".join(rows) + "\n"


def json_schema() -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the full form, generated by msgspec from TelemetryDocument."""
    return msgspec.json.schema(TelemetryDocument)


def json_schema_text() -> str:
    """The JSON Schema as docs/telemetry.md shows it: sorted keys, one line per property."""
    return _pretty(json_schema(), 0) + "\n"


def _canonical(value: Any) -> Any:
    """The same text from every msgspec version and import order: 1.0 -> 1 (typing caches
    `Annotated[float, Meta(ge=0)]` and `Meta(ge=0.0)` as one type, they compare equal), and `anyOf` members in
    one order, null last (msgspec versions list them differently)."""

    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        out = {key: _canonical(item) for key, item in value.items()}
        if isinstance(out.get("anyOf"), list):
            out["anyOf"] = sorted(out["anyOf"], key=lambda item: (item == {"type": "null"}, json.dumps(item, sort_keys=True)))
        return out
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def _pretty(value: Any, depth: int) -> str:
    """JSON indented down to the properties of each definition; anything deeper on one line."""

    if not isinstance(value, dict) or not value or depth >= 4:
        return json.dumps(_canonical(value), sort_keys=True, ensure_ascii=False)
    pad = "  " * (depth + 1)
    items = [f"{pad}{json.dumps(key)}: {_pretty(value[key], depth + 1)}" for key in sorted(value)]
    return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"


if __name__ == "__main__":  # python -m agent.telemetry.schema [--json]: the docs' table or JSON Schema
    import sys

    sys.stdout.write(json_schema_text() if "--json" in sys.argv[1:] else markdown_table())
