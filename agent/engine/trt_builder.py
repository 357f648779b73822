"""The thin TensorRT builder: ONNX -> serialized plan, one code path for TensorRT 8.5 to 11.

It uses only the API that exists from 8.5 on (`build_serialized_network`, `set_memory_pool_limit`,
`num_io_tensors`, name-based tensors) and branches only where the API changed (docs/engines.md, per-TensorRT-version behaviour):

- network creation: EXPLICIT_BATCH on 8.x, flags 0 from 10 (the enum value is gone in 11);
- precision by `agent.calib.routes.builder_flags`: BuilderFlag FP16/INT8 on 8.x and 10.x, or a strongly typed
  network on 10.12+ (where the flags are deprecated) when the model's own types give the same precisions; none on
  11 (strongly typed: types come from the ONNX);
- INT8 from a calibration table by `agent.calib.routes.choose_int8_route`: per-tensor dynamic ranges or a
  cache-only calibrator (8.x, 10.x), explicit Q/DQ (11+, and 10.1+ where implicit INT8 is deprecated, when the
  model can take it; via agent.calib.qdq flavour "tensorrt"); the report names every deprecated API used;
- the progress monitor exists from 10.0.

DLA only where `agent.device.versions.dla_support` and `builder.num_DLA_cores` allow it; GPU_FALLBACK only when the
spec allows it (a strict DLA build lists the layers DLA cannot run before building). The timing cache is
loaded and saved around the build. Plugin libraries come only from the paths the parent resolved (configured
folder, sha256 checked). The report comes from the engine inspector (ProfilingVerbosity.DETAILED) and the log.

Runs inside the build worker (agent.engine.worker), never in the daemon. Verified by type checks (mypy against
tensorrt-stubs 10.13, `disallow_untyped_defs`) and by the names and calls it uses checked against the real
bindings of 8.6 to 11.4 (docs/tensorrt-api.md): no machine of this project has TensorRT, nothing here has run.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from agent.calib.graph import is_quantized, model_float_type
from agent.calib.qdq import FLAVOR_TENSORRT, to_qdq
from agent.calib.routes import (
    BuildPrecision,
    Int8Method,
    Int8Route,
    NetworkTyping,
    builder_flags,
    choose_int8_route,
)
from agent.calib.table import is_usable_scale, read_table, with_header_version, write_table
from agent.device.versions import (
    IMPLICIT_INT8_DEPRECATED,
    Version,
    dla_support,
    format_version,
    parse_version,
)
from agent.engine.build_job import BuildJob, Emit, WorkerError
from agent.engine.diagnose import LogContext, diagnose_log
from agent.engine.report import deprecation_warnings, precision_route, report_from_tensorrt
from agent.engine.spec import BuildSpec, Precision
from agent.lazy import require, try_import
from agent.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    from agent.calib.table import CalibTable

# Lines kept from the VERBOSE stream (the DLA/GPU placement summary is VERBOSE on newer TensorRT).
PLACEMENT_MARKERS = ("[DlaLayer]", "[GpuLayer]", "Layers Running on")


SEVERITY_NAMES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
VERBOSE = 4


def keep_log_line(severity: int, message: str, verbose: bool) -> bool:
    """Which TensorRT messages the build keeps. A Python `trt.ILogger` subclass receives every message, VERBOSE
    included: TensorRT's own `min_severity` exists only on the built-in `trt.Logger` (the bindings of 8.6 to 11.4
    agree, docs/hardware/trt-api-matrix.md), so the filter is here. INFO and above always; VERBOSE only on a
    verbose (DLA) build, and then only the DLA/GPU placement lines."""
    if severity < VERBOSE:
        return True
    return verbose and any(marker in message for marker in PLACEMENT_MARKERS)


class _Log:
    """TensorRT's log, as `keep_log_line` filters it: to stderr (the build log) and to memory."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.lines: List[str] = []
        self.lock = threading.Lock()

    def add(self, severity: int, message: str) -> None:
        if not keep_log_line(severity, message, self.verbose):
            return
        name = SEVERITY_NAMES[min(max(severity, 0), VERBOSE)]
        line = f"[{name}] {message}"
        with self.lock:
            self.lines.append(line)
        sys.stderr.write(line + "\n")


def _logger(sink: _Log) -> trt.ILogger:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    class CaptureLogger(trt.ILogger):
        """Every message goes to the sink, which filters (an ILogger has no min_severity of its own)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            sink.add(int(severity), msg)

    return CaptureLogger()


def _calibrator(cache: bytes, batch_size: int) -> trt.IInt8EntropyCalibrator2:
    """A calibrator that only hands TensorRT the stored table (header rewritten for this TensorRT) and never
    supplies data: if TensorRT rejects the table, the build fails loudly instead of calibrating on nothing."""
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    class CacheOnlyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the bindings

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: List[str]) -> List[int]:
            return []

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheOnlyCalibrator()


def _progress_monitor(emit: Emit) -> trt.IProgressMonitor:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    class Monitor(trt.IProgressMonitor):
        """Top-level phases become progress events (fraction 0.2 to 0.9 of the whole build), at most 2 a second."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: Dict[str, int] = {}
            self._top: Optional[str] = None
            self._last = 0.0
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            with self._lock:
                self._steps[phase_name] = max(1, num_steps)
                if parent_phase is None:
                    self._top = phase_name
            emit("build", None, phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            with self._lock:
                if phase_name != self._top or now - self._last < 0.5:
                    return True
                self._last = now
                fraction = 0.2 + 0.7 * min(1.0, (step + 1) / self._steps.get(phase_name, 1))
            emit("build", round(fraction, 3), f"{phase_name}: step {step + 1} of {self._steps.get(phase_name, 1)}")
            return True  # False would cancel the build; the parent kills the process instead

        def phase_finish(self, phase_name: str) -> None:
            return None

    return Monitor()


def _parser_errors(parser: trt.OnnxParser) -> List[str]:
    """Each ONNX parser error with its node: 'node 12 (Conv_3, Conv): Assertion failed: ...'."""
    out: List[str] = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        where = ""
        try:
            node = int(error.node())
            name = str(error.node_name()) if hasattr(error, "node_name") else ""
            operator = str(error.node_operator()) if hasattr(error, "node_operator") else ""
            if node >= 0:
                where = f"node {node}" + (f" ({', '.join(x for x in (name, operator) if x)})" if name or operator else "") + ": "
        except Exception:  # older parsers lack some accessors
            where = ""
        out.append(f"{where}{error.desc()}")
    return out


def _network_flags(version: Version, typing: NetworkTyping) -> int:
    """EXPLICIT_BATCH on 8.x (ONNX needs it); STRONGLY_TYPED on 10.x when chosen; 0 on 11+ (always strongly typed,
    EXPLICIT_BATCH gone and STRONGLY_TYPED deprecated)."""
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    if version < (10, 0, 0):
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if version < (11, 0, 0) and typing == NetworkTyping.STRONG:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _model_facts(path: str, version: Version, precision: Precision) -> Tuple[Optional[str], bool]:
    """(the model's float type, whether it can take the Q/DQ rewrite), read with onnx only where they decide
    between a deprecated and a non-deprecated route (TensorRT 10.1 to 10.x, FP16 or INT8) or whether FP16 is
    possible at all (11+: an FP16 model); (None, False) when onnx is not installed (optional on a device)."""
    if version < IMPLICIT_INT8_DEPRECATED or precision not in (Precision.FP16, Precision.INT8):
        return None, False
    onnx = try_import("onnx")  # heavy and optional: imported only here
    if onnx is None:
        return None, False

    model = onnx.load(path, load_external_data=False)
    return model_float_type(model), not is_quantized(model)


def _ints(dims: trt.Dims) -> List[int]:
    """A Dims as a list (the stubs give it __len__ and __getitem__, not __iter__)."""
    return [int(dims[i]) for i in range(len(dims))]


def _dims(values: List[int]) -> trt.Dims:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    return trt.Dims(values)


def _add_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, spec: BuildSpec) -> Optional[trt.IOptimizationProfile]:
    """One optimization profile when an input has dynamic dimensions: the batch (first) dimension from the spec;
    any other dynamic dimension is an error (this agent serves fixed-size camera frames)."""
    dynamic = False
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = _ints(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        dynamic = True
        if any(d < 0 for d in shape[1:]):
            raise WorkerError(f"input {tensor.name} has dynamic dimensions besides the batch ({shape}): export the model with fixed sizes", "unsupported")
        rest = shape[1:]
        profile.set_shape(tensor.name, _dims([spec.batch.min, *rest]), _dims([spec.batch.opt, *rest]), _dims([spec.batch.max, *rest]))
    if not dynamic:
        return None
    config.add_optimization_profile(profile)
    return profile


def _load_plugins(paths: List[str]) -> None:
    """Plugin libraries (already checked by the parent: configured folder, sha256). IPluginRegistry.load_library
    exists from 8.6; before it, loading the library registers its creators."""
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    registry: Any = trt.get_plugin_registry()
    for path in paths:
        if hasattr(registry, "load_library"):
            registry.load_library(path)
        else:
            ctypes.CDLL(path)


def _activation_tensors(network: trt.INetworkDefinition) -> List[trt.ITensor]:
    """The float tensors INT8 needs a scale for: network inputs and layer outputs, not the network's outputs."""
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    tensors: List[trt.ITensor] = [network.get_input(i) for i in range(network.num_inputs)]
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        tensors.extend(layer.get_output(j) for j in range(layer.num_outputs))
    return [t for t in tensors if t.dtype == trt.DataType.FLOAT and t.name not in outputs]


def _apply_dynamic_ranges(network: trt.INetworkDefinition, table: CalibTable) -> Tuple[int, List[str]]:
    """ITensor.set_dynamic_range(-amax, amax) for every float tensor the table has; the rest are reported."""
    applied, missing = 0, []
    for tensor in _activation_tensors(network):
        scale = table.entries.get(tensor.name)
        if scale is None or not is_usable_scale(scale):
            missing.append(tensor.name)
            continue
        amax = table.amax(tensor.name)
        tensor.set_dynamic_range(-amax, amax)
        applied += 1
    return applied, missing


def _dla_layers_blocked(network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> List[str]:
    return [network.get_layer(i).name for i in range(network.num_layers) if not config.can_run_on_DLA(network.get_layer(i))]


def _timing_cache(config: trt.IBuilderConfig, path: Optional[str], notes: List[str]) -> None:
    if path is None:
        return
    data = b""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        pass
    except OSError as exc:
        notes.append(f"timing cache unreadable ({exc}): starting a new one")
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        notes.append("the timing cache was made by another TensorRT or GPU: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: trt.IBuilderConfig, path: Optional[str], notes: List[str]) -> None:
    if path is None:
        return
    try:
        atomic_write_bytes(path, bytes(config.get_timing_cache().serialize()))
    except OSError as exc:
        notes.append(f"could not save the timing cache: {exc}")


def _model_bytes(job: BuildJob, route: Optional[Int8Route], table: Optional[CalibTable], notes: List[str]) -> bytes:
    if route is None or route.method != Int8Method.QDQ_TENSORRT or table is None:
        return Path(job.model).read_bytes()
    onnx = require("onnx", "explicit Q/DQ for TensorRT 11")

    result = to_qdq(onnx.load(job.model), table, FLAVOR_TENSORRT)
    notes.extend(result.notes)
    if result.skipped:
        notes.append(f"{len(result.skipped)} tensor(s) have no usable scale and stay float in the Q/DQ model")
    return bytes(result.model.SerializeToString())


def build(job: BuildJob, emit: Emit) -> Dict[str, Any]:
    require("tensorrt", "building TensorRT engines")
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    started = time.monotonic()
    version = parse_version(trt.__version__)
    spec = BuildSpec.from_dict(job.spec)
    precision = spec.effective_precision()
    dla_core = spec.dla_core
    notes: List[str] = []
    sink = _Log(verbose=dla_core is not None)  # the placement summary is VERBOSE: kept on DLA builds only
    logger = _logger(sink)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    _load_plugins(job.plugins)
    emit("parse", 0.05, f"TensorRT {trt.__version__}: parsing the ONNX model")

    support = None
    if dla_core is not None:
        support = dla_support(version, builder.num_DLA_cores, job.fingerprint.get("module"))
        if not support.available:
            raise WorkerError(f"DLA core {dla_core} refused: {support.reason}", "dla")
        if dla_core >= builder.num_DLA_cores:
            raise WorkerError(f"DLA core {dla_core} refused: this device has {builder.num_DLA_cores} DLA core(s)", "dla")

    route: Optional[Int8Route] = None
    table: Optional[CalibTable] = None
    model_float, qdq_allowed = _model_facts(job.model, version, precision)
    if precision == Precision.INT8:
        if not job.calib:
            raise WorkerError("INT8 needs the calibration table, and the job has none")
        route = choose_int8_route(version, spec.target, spec.calib_portable, qdq_allowed=qdq_allowed)
        table = read_table(job.calib)
    chosen: BuildPrecision = builder_flags(version, precision.value, route.method if route else None, model_float)
    route_entry = precision_route(version, chosen, route)
    notes.append(f"{chosen.typing.value}: {chosen.reason}" + (f"; INT8 route {route.method.value}: {route.reason}" if route else ""))
    if support is not None and support.qdq_only and (route is None or route.method != Int8Method.QDQ_TENSORRT):
        raise WorkerError(f"DLA on TensorRT {format_version(version)} takes explicit Q/DQ INT8 networks only: build int8 with a table", "dla")
    if version >= (11, 0, 0) and precision == Precision.FP16 and model_float != "float16":
        raise WorkerError(
            f"TensorRT {format_version(version)} builds strongly typed networks: FP16 needs an FP16 ONNX model (no builder flag "
            "exists any more) and "
            + ("onnx is not installed here to read the model's type" if model_float is None else f"this model is {model_float}")
            + "; ship an FP16 export, or ask for int8 with a table or fp32",
            "unsupported",
        )

    network = builder.create_network(_network_flags(version, chosen.typing))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(_model_bytes(job, route, table, notes)):
        errors = _parser_errors(parser)
        context = LogContext(plugins_configured=bool(job.plugins))
        # the log and each error as the parser prints it ('In node 1 with name: X and operator: Op ...' on 10.x,
        # the line NVIDIA's samples print), classified together: the operator and node are in the latter
        raw = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        parsed = diagnose_log("\n".join([*sink.lines, *raw]), context) or diagnose_log("\n".join(errors), context)
        raise WorkerError(f"the ONNX parser failed on {len(errors)} node(s): " + "; ".join(errors[:10]), "parse", [p.to_dict() for p in parsed])

    config = builder.create_builder_config()
    if spec.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = _add_profile(builder, network, config, spec)

    missing: List[str] = []
    int8: Dict[str, Any] = {}
    if version < (11, 0, 0):  # the flags builder_flags chose (none for a strongly typed network)
        if "FP16" in chosen.flags:
            config.set_flag(trt.BuilderFlag.FP16)  # layers without an INT8 scale run FP16, not FP32 (and DLA needs it)
        if "INT8" in chosen.flags:
            config.set_flag(trt.BuilderFlag.INT8)
        if precision == Precision.INT8 and route is not None and table is not None:
            if route.method == Int8Method.DYNAMIC_RANGE:
                applied, missing = _apply_dynamic_ranges(network, table)
                int8["tensors_with_range"] = applied
            elif route.method == Int8Method.CACHE_CALIBRATOR:
                cache = write_table(with_header_version(table, version))
                config.int8_calibrator = _calibrator(cache, spec.batch.opt)
                if profile is not None:
                    config.set_calibration_profile(profile)
                missing = [t.name for t in _activation_tensors(network) if t.name not in table.entries]
    if route is not None:
        int8.update({"route": route.method.value, "reason": route.reason, "deprecated": route.deprecated})

    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        if spec.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        else:
            blocked = _dla_layers_blocked(network, config)
            if blocked:
                raise WorkerError(
                    f"{len(blocked)} layer(s) cannot run on DLA and GPU fallback is not allowed: {', '.join(blocked[:10])}"
                    + (" ..." if len(blocked) > 10 else ""),
                    "dla",
                )

    _timing_cache(config, job.timing_cache, notes)
    if version >= (10, 0, 0) and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(emit)
    emit("build", 0.2, "building (this can take minutes on a Jetson)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        problems = diagnose_log("\n".join(sink.lines), LogContext(plugins_configured=bool(job.plugins)))
        why = "; ".join(f"{p.kind}: {p.detail or p.line}" for p in problems if p.severity == "error")[:800]
        raise WorkerError("TensorRT could not build the engine" + (f": {why}" if why else " (see the build log)"), "build", [p.to_dict() for p in problems])
    data = bytes(plan)
    atomic_write_bytes(job.engine_path, data)
    _save_timing_cache(config, job.timing_cache, notes)

    emit("inspect", 0.92, "loading the new plan and reading the engine inspector")
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise WorkerError("the plan just built does not deserialize on this device", "build")
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    report = report_from_tensorrt(info, sink.lines, dla_core is not None, missing, time.monotonic() - started)
    report.precision_route = route_entry
    report.warnings.extend(deprecation_warnings(route_entry))
    emit("done", 1.0, "built")
    return {"backend_version": str(trt.__version__), "report": report.to_dict(), "int8": int8, "notes": notes}
