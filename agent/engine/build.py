"""Get a loadable engine for a spec on this device: reuse the cached one when it is provably compatible,
otherwise build it in a child process and cache it.

    ensure_engine(spec, cache, fingerprint, model=..., calib=...) -> BuildResult

1. The cache key comes from the spec and the fingerprint (agent.engine.spec).
2. A cached entry is checked before use: its manifest against this device (every field, with the reason),
   its file against the manifest (size, sha256), and for TensorRT a trial deserialization in a child process
   with the log classified. A refused entry is rebuilt from the cached inputs and the event says why.
3. A build runs `python -m agent.engine.worker` with a time limit and a memory limit (its RSS is watched; the
   free memory is checked first), streaming progress events; the daemon keeps serving meanwhile. Everything is
   written into a temporary folder and renamed into place with the manifest written last.
4. The cache folder's writability is checked before a build: a read-only folder gives a clear error instead of
   a build that cannot be kept (and would be repeated on every start). A failed build is remembered, so broken
   inputs are not rebuilt on every start either; `force` retries.
5. A failed build's log is classified (agent.engine.diagnose) and the remedy table (agent.engine.remedy) says what
   to do: retry once with half the workspace, or once with the named tensors in FP16, or refuse with the reason
   (unsupported operators and missing plugins listed). A remedy that worked is recorded on the failed key, so the
   next ensure_engine of the same spec goes straight to the engine it produced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import psutil

from agent.calib.table import read_table, without_entries, write_table_file
from agent.config import AgentConfig
from agent.device.fingerprint import DeviceFingerprint
from agent.device.target import Backend
from agent.device.versions import reported_dla_support
from agent.engine import compat
from agent.engine.build_job import RESULT_NAME, BuildJob
from agent.engine.cache import BUILD_LOG, CacheEntry, EngineCache, EngineCacheError
from agent.engine.diagnose import Problem
from agent.engine.manifest import (
    ENGINE_FILES,
    STATUS_OK,
    STATUS_REJECTED,
    BuildReport,
    Manifest,
    now_utc,
    write_manifest,
)
from agent.engine.plugins import PluginError, resolve_plugins
from agent.engine.remedy import Decision, decide, smaller_workspace
from agent.engine.report import policy_violations, precision_warnings
from agent.engine.spec import BuildPolicy, BuildSpec, Precision, cache_key
from agent.engine.trt_loader import trial_deserialize
from agent.errors import AgentError
from agent.lazy import module_version, require
from agent.store.atomic import atomic_write_json
from agent.store.hashing import sha256_file

log = logging.getLogger(__name__)

MEMORY_RESERVE_MB = 256  # left to the daemon and the camera pipeline when no explicit limit is configured
TRANSIENT_KINDS = ("timeout", "memory")  # retried when the limit that stopped them is raised
HEARTBEAT_S = 5.0  # a progress event at least this often during a build (the daemon's watchdog, the CLI)


class BuildError(AgentError):
    """The engine could not be built (or a recorded failure stands); `kind` says which way."""

    def __init__(
        self,
        message: str,
        kind: str = "failed",
        key: str = "",
        log_tail: str = "",
        problems: Optional[List[Dict[str, Any]]] = None,
        decision: Optional[Decision] = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.key = key
        self.log_tail = log_tail
        self.problems = list(problems or [])  # the classified build log (Problem.to_dict())
        self.decision = decision  # what the remedy table says about it (agent.engine.remedy)
        self.failure: Dict[str, Any] = {}  # what was recorded in failure.json


class PolicyError(BuildError):
    """The engine was built but the policy (require_int8, min_dla_layer_fraction) refuses it."""

    def __init__(self, message: str, key: str = "", violations: Optional[List[str]] = None) -> None:
        super().__init__(message, kind="policy", key=key)
        self.violations = list(violations or [])


@dataclass
class EngineEvent:
    """What the engine layer reports while it works: the daemon forwards these as MQTT events, the CLI prints them.

    kind: cache_hit | cache_miss | rejected (a cached engine refused; a rebuild follows) | build_started |
    progress | build_finished | build_failed | policy_rejected
    """

    kind: str
    key: str
    message: str
    fraction: Optional[float] = None
    data: Dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class BuildOptions:
    timeout_s: float = 3600.0
    memory_limit_mb: int = 0  # 0: the free memory at start minus MEMORY_RESERVE_MB
    plugin_dir: str = ""
    policy: BuildPolicy = field(default_factory=BuildPolicy)
    threads: int = 1
    trial_load: bool = True  # TensorRT: deserialize a cached plan in a child process before accepting it
    verify_hash: bool = True  # sha256 of the cached file against its manifest before every load
    force: bool = False  # rebuild although cached, or retry a build that failed before
    lock_timeout_s: float = 600.0
    poll_s: float = 0.1

    @classmethod
    def from_config(cls, config: AgentConfig, policy: Optional[BuildPolicy] = None, **overrides: Any) -> BuildOptions:
        engine = config.engine
        options = cls(
            timeout_s=float(engine.build_timeout_s),
            memory_limit_mb=int(engine.build_memory_limit_mb),
            plugin_dir=engine.plugin_dir,
            policy=policy or BuildPolicy(),
            threads=max(1, int(engine.threads or 1)),
        )
        return dataclasses.replace(options, **overrides)


@dataclass
class BuildResult:
    key: str
    cache_hit: bool
    path: Path  # the engine file
    manifest: Manifest
    report: BuildReport
    rebuilt_because: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    events: List[EngineEvent] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {
            "key": self.key,
            "cache_hit": self.cache_hit,
            "path": str(self.path),
            "rebuilt_because": self.rebuilt_because,
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
            "manifest": self.manifest.to_dict(),
        }


EventSink = Callable[[EngineEvent], None]


def ensure_engine(
    spec: BuildSpec,
    cache: EngineCache,
    fingerprint: DeviceFingerprint,
    *,
    model: Optional[Path] = None,
    calib: Optional[Path] = None,
    options: Optional[BuildOptions] = None,
    on_event: Optional[EventSink] = None,
    cancel: Optional[threading.Event] = None,
) -> BuildResult:
    """A verified engine for `spec` on this device: from the cache, or built now. `model`/`calib` are the input
    files (checked against the spec's hashes); without them the cached inputs are used."""
    started = time.monotonic()
    options = options or BuildOptions()
    spec = spec.validate()
    fp = fingerprint_for_backend(fingerprint, spec.backend)
    key = cache_key(spec, fp)
    events: List[EngineEvent] = []

    def emit(event_kind: str, message: str, fraction: Optional[float] = None, **data: Any) -> None:
        event = EngineEvent(event_kind, key, message, fraction, data)
        if event_kind != "progress" or not events or events[-1].kind != "progress":
            events.append(event)
        else:
            events[-1] = event  # keep only the latest progress in the result
        if on_event is not None:
            try:
                on_event(event)
            except Exception:  # a reporting problem must not fail the build
                log.exception("engine event handler failed")

    rebuilt_because: List[str] = []
    entry = cache.lookup(key)
    if entry is not None and not options.force and entry.status == "failed" and (entry.failure or {}).get("remedied_by"):
        remedied = cache.lookup(str((entry.failure or {})["remedied_by"]))  # a remedy built this spec before
        if remedied is not None and remedied.status == "ok" and remedied.manifest is not None:
            hit = _try_cached(remedied, remedied.manifest.spec, fp, options, emit)
            if isinstance(hit, BuildResult):
                hit.warnings.insert(0, f"built with a remedy after a failed build: {(entry.failure or {}).get('remedy', {}).get('reason', '')}")
                hit.events, hit.seconds = events, time.monotonic() - started
                return hit
    if entry is not None and not options.force:
        hit = _try_cached(entry, spec, fp, options, emit)
        if isinstance(hit, BuildResult):
            hit.events, hit.seconds = events, time.monotonic() - started
            return hit
        rebuilt_because = hit
    elif entry is None:
        emit("cache_miss", f"no cached engine for {key}: building", spec=spec.to_dict())
    else:
        rebuilt_because = ["rebuild forced"]
        emit("rejected", "rebuild forced", reasons=rebuilt_because)

    _check_target(spec, fp, key)
    if spec.backend == Backend.TENSORRT:
        require("tensorrt", f"building for target {spec.target}")  # missing TensorRT is not a failed build
    cache.check_writable()
    model_path, calib_path = _resolve_inputs(spec, cache, model, calib)
    plugin_paths = resolve_plugins(spec.plugins, options.plugin_dir) if spec.backend == Backend.TENSORRT else []
    with cache.lock(options.lock_timeout_s):
        if not options.force:
            fresh = cache.lookup(key)
            if fresh is not None and fresh.status == "ok" and (entry is None or fresh.manifest != entry.manifest):
                hit = _try_cached(fresh, spec, fp, options, emit)  # built by another process while we waited
                if isinstance(hit, BuildResult):
                    hit.events, hit.seconds = events, time.monotonic() - started
                    return hit
        inputs = {"model": spec.model_sha256, "calib": spec.calib_sha256}
        cache.store_input(model_path, spec.model_sha256)
        if calib_path is not None and spec.calib_sha256:
            cache.store_input(calib_path, spec.calib_sha256)
        try:
            manifest, path = _build(spec, key, fp, cache, model_path, calib_path, plugin_paths, options, emit, cancel, inputs)
        except BuildError as exc:
            remedy = _remedy_spec(exc, spec, cache, calib_path)
            if remedy is None:
                raise
            new_spec, new_calib, what = remedy
            new_key = cache_key(new_spec, fp)
            assert exc.decision is not None
            emit("remedy", f"{exc.decision.reason}: building once more with {what}", action=exc.decision.action, remedy_key=new_key)
            new_inputs = {"model": new_spec.model_sha256, "calib": new_spec.calib_sha256}
            manifest, path = _build(new_spec, new_key, fp, cache, model_path, new_calib, plugin_paths, options, emit, cancel, new_inputs, retried=True)
            manifest.notes.append(f"built with a remedy: {exc.decision.reason}; {what}")
            if exc.failure:
                cache.record_failure(key, {**exc.failure, "remedied_by": new_key, "remedy": {**exc.decision.to_dict(), "with": what}})
            rebuilt_because.append(f"the build failed ({exc.decision.reason}); built again with {what}")
            key = new_key
    result = BuildResult(key, False, path, manifest, manifest.report, rebuilt_because, list(manifest.notes), events)
    result.seconds = time.monotonic() - started
    if manifest.status == STATUS_REJECTED:
        message = "the engine was built but the policy refuses it: " + "; ".join(manifest.policy_violations)
        emit("policy_rejected", message, violations=manifest.policy_violations)
        raise PolicyError(message, key, manifest.policy_violations)
    emit("build_finished", f"built {key} in {manifest.build_seconds:.1f} s", 1.0, path=str(path), warnings=result.warnings)
    return result


def fingerprint_for_backend(fp: DeviceFingerprint, backend: str) -> DeviceFingerprint:
    """The fingerprint the cache key and the hardware class of `backend` are computed from: the onnxruntime that
    builds and loads the artifact is this interpreter's, filled in when the fingerprint came from files alone
    (a --sysroot). The build, the shared-plan install and the plan builder all key engines through it."""
    return with_local_onnxruntime(fp) if backend == Backend.ONNXRUNTIME else fp


def with_local_onnxruntime(fp: DeviceFingerprint) -> DeviceFingerprint:
    """`fp` with this interpreter's onnxruntime version where it has none (a fingerprint read from a --sysroot,
    or an engine of either backend judged here: `engine check`, `engine inspect`)."""
    return fp if fp.onnxruntime else dataclasses.replace(fp, onnxruntime=module_version("onnxruntime"))


def _try_cached(entry: CacheEntry, spec: BuildSpec, fp: DeviceFingerprint, options: BuildOptions, emit: Callable[..., None]) -> Any:
    """A BuildResult when the cached entry may be used, else the reasons it may not (list of str).
    Raises for a recorded failure or a policy refusal that a rebuild would only repeat."""
    key = entry.key
    if entry.status == "failed":
        failure = entry.failure or {}
        kind = str(failure.get("kind", "failed"))
        if kind in TRANSIENT_KINDS and _limit_raised(failure, options):
            return [f"the previous build stopped on its {kind} limit, which has been raised since"]
        message = (
            f"a previous build of {key} failed ({failure.get('at', 'earlier')}): {failure.get('error', 'unknown error')}. "
            "It is not retried on its own (the same inputs would fail again); fix the inputs or rebuild with force"
        )
        emit("build_failed", message, kind=kind, recorded=True)
        raise BuildError(message, kind=kind, key=key)
    if entry.manifest is None or entry.status == "unreadable":
        reasons = [entry.problem or "no manifest"]
        emit("rejected", f"cached engine {key} refused: {reasons[0]}; rebuilding", reasons=reasons)
        return reasons
    verdict = compat.merge(
        compat.check_manifest(entry.manifest, fp),
        compat.check_artifact(entry.path / entry.manifest.engine_file, entry.manifest, full_hash=options.verify_hash),
    )
    if verdict.loadable and entry.manifest.backend == Backend.TENSORRT and options.trial_load:
        verdict = compat.merge(verdict, _trial_load(entry, options))
    if not verdict.loadable and verdict.problems:
        trial = decide([Problem.from_dict(p) for p in verdict.problems], allow_fp16=not options.policy.require_int8)
        if trial.action == "refuse" and trial.names:  # a plugin the plan needs is not loaded: a rebuild needs it too
            message = f"cached engine {key} cannot be loaded here: {trial.reason}"
            emit("build_failed", message, kind=trial.problem.kind if trial.problem else "failed", decision=trial.to_dict())
            raise BuildError(message, kind=trial.problem.kind if trial.problem else "failed", key=key, problems=verdict.problems, decision=trial)
    if not verdict.loadable:
        emit(
            "rejected",
            f"cached engine {key} refused: {'; '.join(verdict.reasons)}; rebuilding from the cached inputs",
            reasons=verdict.reasons,
            problems=verdict.problems,
            hints=verdict.hints,
        )
        return list(verdict.reasons)
    violations = policy_violations(entry.manifest.report, spec, options.policy)
    if violations:
        message = "the cached engine is refused by the policy (a rebuild would give the same engine): " + "; ".join(violations)
        emit("policy_rejected", message, violations=violations)
        raise PolicyError(message, key, violations)
    path = entry.path / entry.manifest.engine_file
    warnings = precision_warnings(entry.manifest.report, spec)
    emit("cache_hit", f"cached engine {key} is compatible with this device", 1.0, path=str(path), hints=verdict.hints)
    return BuildResult(key, True, path, entry.manifest, entry.manifest.report, [], warnings)


def _check_target(spec: BuildSpec, fp: DeviceFingerprint, key: str) -> None:
    """Refuse a DLA core this device cannot have, with the reason, before anything is started."""
    if spec.dla_core is None:
        return
    support = reported_dla_support(fp.tensorrt, fp.dla_cores, fp.module)
    if not support.available:
        raise BuildError(f"DLA core {spec.dla_core} refused: {support.reason}", kind="dla", key=key)
    if fp.dla_cores is not None and spec.dla_core >= fp.dla_cores:
        raise BuildError(f"DLA core {spec.dla_core} refused: this device has {fp.dla_cores} DLA core(s)", kind="dla", key=key)


def _limit_raised(failure: Dict[str, Any], options: BuildOptions) -> bool:
    if failure.get("kind") == "timeout":
        return options.timeout_s > float(failure.get("timeout_s", 0) or 0)
    if failure.get("kind") == "memory":
        recorded = int(failure.get("memory_limit_mb", 0) or 0)
        return (options.memory_limit_mb == 0 and recorded != 0) or options.memory_limit_mb > recorded
    return False


def _trial_load(entry: CacheEntry, options: BuildOptions) -> compat.Verdict:
    assert entry.manifest is not None
    try:
        plugins = resolve_plugins(entry.manifest.spec.plugins, options.plugin_dir)
    except PluginError as exc:
        return compat.Verdict(loadable=False, reasons=[str(exc)])
    trial = trial_deserialize(entry.path / entry.manifest.engine_file, entry.manifest.spec.dla_core, plugins)
    verdict = compat.Verdict(loadable=trial.ok, problems=trial.problems)
    if not trial.ok:
        verdict.reasons.append("trial deserialization failed: " + trial.summary())
    return verdict


def _resolve_inputs(spec: BuildSpec, cache: EngineCache, model: Optional[Path], calib: Optional[Path]) -> Any:
    def resolve(given: Optional[Path], sha256: Optional[str], what: str) -> Optional[Path]:
        if not sha256:
            return None
        if given is not None:
            given = Path(given)
            if not given.is_file():
                raise BuildError(f"{what} file not found: {given}", kind="input")
            digest = sha256_file(given)
            if digest != sha256:
                raise BuildError(f"{what} file {given} has sha256 {digest}, the build spec says {sha256}", kind="input")
            return given
        cached = cache.input_path(sha256)
        if cached is None:
            raise BuildError(f"no {what} to build from: the spec's {what} {sha256[:16]}... is not cached; fetch it again", kind="input")
        return cached

    model_path = resolve(model, spec.model_sha256, "model")
    calib_path = resolve(calib, spec.calib_sha256, "calibration table")
    assert model_path is not None
    return model_path, calib_path


def _memory_budget(model_path: Path, spec: BuildSpec, options: BuildOptions) -> int:
    """Refuse to start a build the machine cannot hold; return the RSS limit (MB) for the child."""
    available_mb = int(psutil.virtual_memory().available / 2**20)
    model_mb = os.path.getsize(model_path) / 2**20
    if spec.backend == Backend.TENSORRT:
        need_mb = int(300 + 4 * model_mb + spec.workspace_mb)
    else:
        need_mb = int(150 + 8 * model_mb)
    if options.memory_limit_mb:
        if options.memory_limit_mb < need_mb:
            log.warning("engine.build_memory_limit_mb=%d is below the estimate of %d MB for this build", options.memory_limit_mb, need_mb)
        limit = options.memory_limit_mb
    else:
        limit = available_mb - MEMORY_RESERVE_MB
    if available_mb < need_mb:
        raise BuildError(
            f"not enough free memory to build: about {need_mb} MB needed, {available_mb} MB available. Stop other work, "
            "lower engine.workspace_mb, or build while the camera pipeline is stopped",
            kind="memory",
        )
    return max(limit, 1)


def _build(
    spec: BuildSpec,
    key: str,
    fp: DeviceFingerprint,
    cache: EngineCache,
    model_path: Path,
    calib_path: Optional[Path],
    plugin_paths: List[Path],
    options: BuildOptions,
    emit: Callable[..., None],
    cancel: Optional[threading.Event],
    inputs: Dict[str, Optional[str]],
    retried: bool = False,
) -> Any:
    limit_mb = _memory_budget(model_path, spec, options)
    build_dir = cache.new_build_dir(key)
    engine_file = ENGINE_FILES[spec.backend]
    job = BuildJob(
        backend=spec.backend,
        spec=spec.to_dict(),
        model=str(model_path),
        out_dir=str(build_dir),
        engine_file=engine_file,
        calib=str(calib_path) if calib_path else None,
        timing_cache=str(cache.timing_cache_path(fp)) if spec.backend == Backend.TENSORRT and spec.timing_cache else None,
        plugins=[str(p) for p in plugin_paths],
        fingerprint=fp.to_dict(),
        threads=options.threads,
    )
    job_path = build_dir / "job.json"
    atomic_write_json(job_path, asdict(job))
    emit("build_started", f"building {key} ({spec.backend}, {spec.precision.value}, {spec.target}) in a child process",
         0.0, timeout_s=options.timeout_s, memory_limit_mb=limit_mb)
    started = time.monotonic()
    try:
        outcome = _run_worker(job_path, build_dir / BUILD_LOG, options, limit_mb, emit, cancel)
        seconds = time.monotonic() - started
        result = _read_result(build_dir)
        if outcome != "exited" or not result.get("ok"):
            kind, message = _failure_of(outcome, result, options, limit_mb)
            tail = _log_tail(build_dir / BUILD_LOG)
            problems = [p for p in result.get("problems") or [] if isinstance(p, dict)] if outcome == "exited" else []
            decision = decide([Problem.from_dict(p) for p in problems], retried=retried, allow_fp16=not options.policy.require_int8) if problems else None
            if decision is not None:
                message = _failure_message(message, decision)
            failure: Dict[str, Any] = {"kind": kind, "error": message, "timeout_s": options.timeout_s, "memory_limit_mb": options.memory_limit_mb, "log_tail": tail}
            if decision is not None:
                failure.update(problems=problems[:50], decision=decision.to_dict())
            if kind != "canceled" and not options.force:  # a forced rebuild that fails leaves the old entry as it was
                cache.record_failure(key, failure)
            emit("build_failed", message, kind=kind, log_tail=tail, **({"decision": decision.to_dict()} if decision else {}))
            error = BuildError(message, kind=kind, key=key, log_tail=tail, problems=problems, decision=decision)
            error.failure = failure if kind != "canceled" and not options.force else {}
            raise error
        manifest = _manifest(spec, key, fp, build_dir / engine_file, result, seconds, options, inputs)
        if not compat.check_manifest(manifest, fp).loadable:  # never cache what this device would refuse next start
            reasons = compat.check_manifest(manifest, fp).reasons
            raise BuildError("the engine just built does not match this device's fingerprint: " + "; ".join(reasons), kind="failed", key=key)
        for name in ("job.json", RESULT_NAME):
            (build_dir / name).unlink()
        write_manifest(build_dir, manifest)
        path = cache.install(key, build_dir) / engine_file
        return manifest, path
    finally:
        if build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)


def _manifest(
    spec: BuildSpec,
    key: str,
    fp: DeviceFingerprint,
    engine_path: Path,
    result: Dict[str, Any],
    seconds: float,
    options: BuildOptions,
    inputs: Dict[str, Optional[str]],
) -> Manifest:
    device = fp.to_dict()
    version = str(result.get("backend_version") or "")
    device[spec.backend] = version or device.get(spec.backend)
    report = BuildReport.from_dict(result.get("report") or {})
    report.build_seconds = round(seconds, 3)
    violations = policy_violations(report, spec, options.policy)
    notes = list(result.get("notes") or []) + precision_warnings(report, spec)
    return Manifest(
        key=key,
        backend=spec.backend,
        spec=spec,
        device=device,
        engine_file=engine_path.name,
        engine_sha256=sha256_file(engine_path),
        engine_bytes=engine_path.stat().st_size,
        backend_version=version,
        built_at=now_utc(),
        build_seconds=round(seconds, 3),
        status=STATUS_REJECTED if violations else STATUS_OK,
        int8=dict(result.get("int8") or {}),
        report=report,
        policy=asdict(options.policy),
        policy_violations=violations,
        notes=notes,
        inputs=dict(inputs),
    )


def _run_worker(
    job_path: Path, log_path: Path, options: BuildOptions, limit_mb: int, emit: Callable[..., None], cancel: Optional[threading.Event]
) -> str:
    """Run the worker; return 'exited', 'timeout', 'memory' or 'canceled'. Progress lines become events."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    lines: queue.Queue[str] = queue.Queue()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.engine.worker", str(job_path)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: a kill takes its children too
        )
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + options.timeout_s
        outcome = "exited"
        try:
            watched = psutil.Process(process.pid)
        except psutil.Error:
            watched = None
        last_event = time.monotonic()
        while process.poll() is None:
            if _drain(lines, emit):
                last_event = time.monotonic()
            elif time.monotonic() - last_event >= HEARTBEAT_S:  # a sign of life while TensorRT reports nothing
                last_event = time.monotonic()
                emit("progress", f"still building ({time.monotonic() - (deadline - options.timeout_s):.0f} s)", None, heartbeat=True)
            if cancel is not None and cancel.is_set():
                outcome = "canceled"
            elif time.monotonic() > deadline:
                outcome = "timeout"
            elif watched is not None and _rss_mb(watched) > limit_mb:
                outcome = "memory"
            if outcome != "exited":
                _kill(process)
                break
            time.sleep(options.poll_s)
        process.wait()
        reader.join(timeout=5)
        _drain(lines, emit)
    return outcome


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace"))
    stream.close()


def _drain(lines: queue.Queue[str], emit: Callable[..., None]) -> bool:
    """Forward the worker's progress lines as events; True when there was at least one."""
    seen = False
    while True:
        try:
            raw = lines.get_nowait()
        except queue.Empty:
            return seen
        seen = True
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if data.get("event") == "progress":
            fraction = data.get("fraction")
            emit("progress", str(data.get("message") or data.get("phase") or ""), fraction if isinstance(fraction, (int, float)) else None,
                 phase=data.get("phase"))


def _rss_mb(process: Any) -> float:
    total = 0
    try:
        total += process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return 0.0
    return total / 2**20


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _read_result(build_dir: Path) -> Dict[str, Any]:
    try:
        data = json.loads((build_dir / RESULT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _failure_of(outcome: str, result: Dict[str, Any], options: BuildOptions, limit_mb: int) -> Any:
    if outcome == "timeout":
        return "timeout", f"the build did not finish within engine.build_timeout_s = {options.timeout_s:g} s and was stopped"
    if outcome == "memory":
        return "memory", f"the build used more than {limit_mb} MB and was stopped (engine.build_memory_limit_mb, or the free memory)"
    if outcome == "canceled":
        return "canceled", "the build was canceled"
    if not result:
        return "crashed", "the build process died without a result (a crash inside the backend); see the build log"
    return str(result.get("error_kind") or "failed"), str(result.get("error") or "the build failed")


def _failure_message(message: str, decision: Decision) -> str:
    """The worker's message with what the classified log says; a refusal for unsupported operators or missing
    plugins says that first, with every one of them listed."""
    if decision.action == "refuse" and decision.names:
        return f"the model cannot be built here: {decision.reason}"
    note = _memory_note() if decision.problem is not None and decision.problem.kind in ("out_of_memory", "no_implementation") else ""
    return f"{message} [{decision.action}: {decision.reason}{'; ' + note if note else ''}]"


def _memory_note(count: int = 3) -> str:
    """On Jetson the GPU shares RAM with the CPU: the free RAM now and the processes holding most of it."""
    try:
        free_mb = int(psutil.virtual_memory().available / 2**20)
        sizes = []
        for proc in psutil.process_iter(["name", "memory_info"]):
            info = proc.info.get("memory_info")
            if info is not None:
                sizes.append((int(info.rss / 2**20), str(proc.info.get("name") or "?")))
    except Exception:  # a note, never a reason to fail differently
        return ""
    top = ", ".join(f"{name} ({mb} MiB)" for mb, name in sorted(sizes, reverse=True)[:count])
    return f"free RAM now {free_mb} MiB" + (f"; largest processes: {top}" if top else "")


def _remedy_spec(exc: BuildError, spec: BuildSpec, cache: EngineCache, calib_path: Optional[Path]) -> Any:
    """(the spec to build once more, its calibration table, what changed) for a failed TensorRT build whose
    remedy is a retry; None when there is none (refuse, report, already retried, or not a TensorRT build)."""
    decision = exc.decision
    if decision is None or spec.backend != Backend.TENSORRT or not exc.failure:
        return None
    if decision.action == "retry_smaller":
        workspace = smaller_workspace(spec.workspace_mb, int(psutil.virtual_memory().available / 2**20))
        if spec.workspace_mb and workspace >= spec.workspace_mb:
            return None
        return dataclasses.replace(spec, workspace_mb=workspace).validate(), calib_path, f"the workspace limit lowered to {workspace} MB"
    if decision.action != "fp16_layers":
        return None
    if spec.effective_precision() != Precision.INT8:  # already FP16 (or FP32): building it so again changes nothing
        return None
    if decision.names and calib_path is not None and spec.calib_sha256:
        table = without_entries(read_table(calib_path), decision.names)
        derived = cache.root / ".tmp-remedy-table"
        write_table_file(derived, table)
        digest = sha256_file(derived)
        stored = cache.store_input(derived, digest)
        derived.unlink()
        shown = ", ".join(decision.names[:5]) + (f" and {len(decision.names) - 5} more" if len(decision.names) > 5 else "")
        return dataclasses.replace(spec, calib_sha256=digest).validate(), stored, f"{len(decision.names)} tensor(s) left out of the table (FP16): {shown}"
    return dataclasses.replace(spec, precision=Precision.FP16, calib_sha256=None, calib_portable=False).validate(), None, "the whole network in FP16"


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "EngineCacheError",
    "EngineEvent",
    "PolicyError",
    "ensure_engine",
    "fingerprint_for_backend",
    "with_local_onnxruntime",
]
