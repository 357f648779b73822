"""The deployment steps over the real packages (the daemon's only knowledge of their APIs lives here).

    fetch        agent.fleet.transfer.ArtifactPuller.pull           by artifact id, hash + signature verified
    check_table  agent.calib.table.read_table + agent.calib.check   the table against the model and this device
    build        agent.engine.build.ensure_engine                   cached or built in a child process
    validate     agent.runtime.factory.open_runner + agent.gate      accuracy gate on the golden set, warm-up
    load         agent.engine.cache verify + open_runner             restore after a restart, rollback

Each method turns the package's own errors into StepFailed(step, reason, retryable).
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgspec

from agent.calib.check import check_table
from agent.calib.table import CalibError, read_table
from agent.config import AgentConfig
from agent.device.fingerprint import DeviceFingerprint, fingerprint
from agent.device.target import Backend, Target, resolve_target, tensorrt_usable
from agent.engine.build import BuildOptions, EngineEvent, ensure_engine
from agent.engine.cache import EngineCache
from agent.engine.spec import BatchProfile, BuildSpec, Precision
from agent.errors import AgentError
from agent.fleet.artifact_protocol import (
    ArtifactError,
    ArtifactUnavailableError,
    DiskSpaceError,
    ManifestNotFoundError,
    TransferBusyError,
    TransferStalledError,
    TransferTimeoutError,
)
from agent.fleet.deployment import Deployment
from agent.fleet.link import MqttLink
from agent.fleet.topics import Topics
from agent.fleet.transfer import ArtifactPuller
from agent.gate.gate import run_gate
from agent.gate.thresholds import GateThresholds
from agent.gate.validation import load_validation
from agent.lazy import try_import
from agent.runtime.factory import open_runner
from agent.store.artifacts import ArtifactStore
from agent.vision.options import ClassificationConfig, parse_config
from agent.vision.pipeline import build_pipeline
from agent.vision.sources import SourceOptions, probe_source

from .results_publisher import ResultsPublisher
from .shared_plan import SharedPlans
from .steps import ROLE_KINDS, Beat, EngineInfo, Loaded, StepFailed, Steps, warm_up

log = logging.getLogger(__name__)

EventSink = Callable[[Dict[str, Any]], None]

# refusals that time can fix: the artifact is not published yet, the server or broker is away, the disk is full
RETRYABLE_FETCH_ERRORS = (
    ManifestNotFoundError,
    ArtifactUnavailableError,
    TransferStalledError,
    TransferTimeoutError,
    DiskSpaceError,
    TransferBusyError,
)
GATE_KEYS = ("passed", "task", "frames", "seconds", "metrics", "gated", "failed", "notes", "fallback", "better_than_reference")


class PackageSteps(Steps):
    def __init__(self, config: AgentConfig, link: MqttLink, topics: Topics, state_dir: Path, events: Optional[EventSink] = None) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.events = events
        self.artifacts = ArtifactStore(self.state_dir / "artifacts")
        # a retained manifest arrives right after subscribing; waiting longer than a block's timeout only delays the report
        self.puller = ArtifactPuller(
            link, topics, self.artifacts, config.artifacts, events, min_free_mb=config.state.min_free_mb, manifest_timeout_s=config.artifacts.block_timeout_s
        )
        self._fingerprint: Any = None
        self.shared_plans: Optional[SharedPlans] = SharedPlans(link, topics, self.puller, self.state_dir, config, self._emit)  # None: never use one
        self._lock = threading.Lock()
        self._active_cancel: Optional[threading.Event] = None

    # the device, once ---------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> Any:
        if self._fingerprint is None:
            self._fingerprint = fingerprint()
        return self._fingerprint

    def target(self, deployment: Deployment) -> Target:
        return resolve_target(deployment.target, self.config.engine.backend, tensorrt_usable(self.fingerprint))

    def _emit(self, name: str, **fields: Any) -> None:
        if self.events is not None:
            self.events({"event": name, **fields})

    # fetch ---------------------------------------------------------------------------------------------------
    def fetch(self, deployment: Deployment, cancel: threading.Event) -> Dict[str, Path]:
        paths: Dict[str, Path] = {}
        for role, artifact_id in deployment.artifact_ids():
            if cancel.is_set():
                raise StepFailed("fetch", "canceled")
            try:
                paths[role] = self.puller.pull(artifact_id, expect_kind=ROLE_KINDS.get(role))
            except ArtifactError as exc:
                retryable = isinstance(exc, RETRYABLE_FETCH_ERRORS)
                raise StepFailed("fetch", f"{role} {artifact_id[:12]}: {exc}", retryable=retryable) from None
        return paths

    # check the table -------------------------------------------------------------------------------------------
    def check_table(self, deployment: Deployment, artifacts: Dict[str, Path]) -> Dict[str, Any]:
        if "table" not in artifacts:
            return {"checked": False, "reason": f"no calibration table ({deployment.precision})"}

        target = self.target(deployment)
        try:
            table = read_table(artifacts["table"])
            model = _load_onnx(artifacts["model"])
            report = check_table(table, model, None if target.backend == Backend.ONNXRUNTIME else self.fingerprint.tensorrt, target)
        except CalibError as exc:
            raise StepFailed("check_table", str(exc)) from None
        errors = [f for f in report.findings if f.severity == "error"]
        if report.blocking:
            text = "; ".join(f"{f.code}: {f.message}" for f in errors[:5])
            raise StepFailed("check_table", f"the calibration table is not usable here: {text}")
        summary: Dict[str, Any] = {
            "checked": True,
            "target": target,
            "route": report.route.method.value if report.route else None,
            "warnings": [f"{f.code}: {f.message}" for f in report.findings if f.severity == "warning"][:10],
        }
        if report.coverage is not None:
            summary["int8_layers"] = report.coverage.int8_layers
            summary["tensors_without_scale"] = len(report.coverage.without_scale)
        return summary

    # build -------------------------------------------------------------------------------------------------
    def build_spec(self, deployment: Deployment) -> Any:
        target = self.target(deployment)
        return BuildSpec(
            model_sha256=deployment.model,
            precision=Precision(deployment.precision),
            target=target,
            calib_sha256=deployment.table,
            gpu_fallback=deployment.gpu_fallback if target.is_dla else False,
            batch=BatchProfile(deployment.batch, deployment.batch, deployment.batch),
            workspace_mb=self.config.engine.workspace_mb,
            timing_cache=self.config.engine.timing_cache,
        )

    def build(self, deployment: Deployment, artifacts: Dict[str, Path], *, cold: bool, cancel: threading.Event, beat: Beat) -> EngineInfo:
        try:
            spec = self.build_spec(deployment).validate()
        except AgentError as exc:
            raise StepFailed("build", str(exc)) from None

        def on_event(event: EngineEvent) -> None:
            beat()
            fields = {"key": event.key, "message": event.message, "fraction": event.fraction}
            if event.kind != "progress":
                fields.update({k: v for k, v in event.data.items() if k in ("reasons", "warnings", "violations", "decision")})
            self._emit(f"engine.{event.kind}", **fields)

        with self._lock:
            self._active_cancel = cancel
        plan = self.shared_plans.prepare(deployment, spec, self.fingerprint, cold=cold, cancel=cancel) if self.shared_plans else None
        shared = plan is not None and plan.installed_now
        try:
            result = ensure_engine(
                spec,
                EngineCache.for_state(self.state_dir),
                self.fingerprint,
                model=artifacts["model"],
                calib=artifacts.get("table"),
                options=BuildOptions.from_config(self.config, force=cold, trial_load=not shared),  # a shared plan was just trial-loaded
                on_event=on_event,
                cancel=cancel,
            )
        except AgentError as exc:
            short = self._disk_shortage(artifacts["model"])
            if short:  # a full disk kills the build child before it can say why: retry once space returns
                raise StepFailed("build", f"{exc}; {short}", retryable=True) from None
            raise StepFailed("build", str(exc)) from None
        finally:
            with self._lock:
                self._active_cancel = None
        manifest = result.manifest
        report = manifest.report
        return EngineInfo(
            path=str(result.path),
            backend=manifest.backend,
            cache_hit=result.cache_hit,
            key=result.key,
            build_s=round(manifest.build_seconds, 3),
            manifest={
                "backend_version": manifest.backend_version,
                "built_at": manifest.built_at,
                "int8": manifest.int8,
                "layers": report.layers,
                "precisions": report.precisions,
                "dla_fraction": report.dla_fraction,
                "warnings": (result.warnings or [])[:10],
                "rebuilt_because": result.rebuilt_because,
            },
            plan=_plan_record(plan, result.cache_hit),
        )

    def _disk_shortage(self, model: Path) -> str:
        """Why a failed build may be the disk's fault: less free space under the state folder than an engine of
        this model needs (about twice the model: the engine and the build's temporary files), plus the floor."""
        try:
            free = shutil.disk_usage(str(self.state_dir)).free
            needed = 2 * model.stat().st_size + self.config.state.min_free_mb * 1024 * 1024
        except OSError:
            return ""
        if free >= needed:
            return ""
        return (
            f"the disk under {self.state_dir} is nearly full ({free // 2**20} MB free, about {needed // 2**20} MB needed): "
            "retrying when space returns (free space, or run edge-agent store gc)"
        )

    # validate ----------------------------------------------------------------------------------------------
    def validate(self, deployment: Deployment, artifacts: Dict[str, Path], engine: EngineInfo) -> Loaded:
        runner = self._open(deployment, engine, "validate")
        try:
            gate = self._gate(deployment, artifacts, runner, engine)
            warmup_ms = warm_up(runner)
        except BaseException:
            runner.deactivate()
            raise
        return Loaded(runner, engine, warmup_ms=warmup_ms, gate=gate)

    def _gate(self, deployment: Deployment, artifacts: Dict[str, Path], runner: Any, engine: Optional[EngineInfo] = None) -> Dict[str, Any]:
        if engine is not None and deployment.skip_plan_gate and (engine.plan or {}).get("source") == "shared":
            return {"skipped": True, "reason": "the deployment relies on the builder's gate for shared plans (skip_plan_gate)",
                    "builder_gate": (engine.plan or {}).get("builder_gate")}
        if "validation" not in artifacts:
            if deployment.accuracy is not None:
                raise StepFailed("validate", "accuracy thresholds are set but the deployment names no validation set")
            return {"skipped": True, "reason": "the deployment names no validation set"}

        try:
            validation = load_validation(artifacts["validation"])
            table = read_table(artifacts["table"]) if "table" in artifacts else None
            result = run_gate(
                runner,
                validation,
                deployment.accuracy or GateThresholds(),
                table,
                reference_model=str(artifacts["model"]),
                model_sha256=deployment.model,
                precision=str(self.build_spec(deployment).effective_precision().value),
                diagnose_budget_s=30.0,
            )
        except (AgentError, CalibError) as exc:
            raise StepFailed("validate", str(exc)) from None
        summary = {k: v for k, v in result.to_dict().items() if k in GATE_KEYS}
        if not result.passed:
            raise StepFailed("validate", result.summary())
        return summary

    # load (restore, rollback) ---------------------------------------------------------------------------------
    def load(self, deployment: Deployment, engine: EngineInfo) -> Loaded:
        self._check_compatible(engine)
        runner = self._open(deployment, engine, "load")
        try:
            warmup_ms = warm_up(runner)
        except BaseException:
            runner.deactivate()
            raise
        return Loaded(runner, engine, warmup_ms=warmup_ms)

    def _check_compatible(self, engine: EngineInfo) -> None:
        """The cached engine against this device (B1: an engine from before a JetPack upgrade must not load)."""
        if not engine.key:
            return

        cache = EngineCache.for_state(self.state_dir)
        try:
            entry = cache.lookup(engine.key)
        except AgentError as exc:
            raise StepFailed("load", str(exc)) from None
        if entry is None:
            raise StepFailed("load", f"engine {engine.key} is no longer in the cache")
        verdict = cache.verify(entry, self.fingerprint)
        if not verdict.loadable:
            raise StepFailed("load", f"engine {engine.key} does not fit this device: {'; '.join(verdict.reasons[:3])}")

    def _open(self, deployment: Deployment, engine: EngineInfo, step: str) -> Any:
        if not engine.path or not Path(engine.path).is_file():
            raise StepFailed(step, f"engine file missing: {engine.path or '(none recorded)'}")
        dla_core = self.target(deployment).dla_core if engine.backend == Backend.TENSORRT else None
        try:
            runner = open_runner(engine.backend or "auto", engine.path, threads=self.config.engine.threads, dla_core=dla_core, name=deployment.id)
            runner.activate()
        except AgentError as exc:
            raise StepFailed(step, str(exc)) from None
        return runner

    # after the swap ---------------------------------------------------------------------------------------------
    def committed(self, deployment: Deployment, engine: EngineInfo) -> None:
        """Pin the serving engine (current/previous) so the engine cache's gc keeps both."""
        if not engine.key:
            return

        try:
            EngineCache.for_state(self.state_dir).promote(engine.key)
        except (OSError, AgentError) as exc:
            log.warning("cannot pin engine %s in the cache: %s", engine.key, exc)

    # cancel ----------------------------------------------------------------------------------------------------
    def cancel_build(self) -> None:
        with self._lock:
            if self._active_cancel is not None:
                self._active_cancel.set()

    def cancel(self) -> None:
        self.puller.cancel()
        self.cancel_build()


def _plan_record(plan: Any, cache_hit: bool) -> Dict[str, Any]:
    """What the status says about the shared plan (agent.daemon.shared_plan): used, or built locally and why."""
    if plan is None:
        return {}
    record = plan.to_dict()
    if plan.source == "cache" and not cache_hit:
        record["source"] = "local"
    return record


def _load_onnx(path: Path) -> Any:
    onnx = try_import("onnx")
    if onnx is None:
        return None  # the table is then judged alone
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise CalibError(f"the model artifact is not a readable ONNX file: {exc}") from None


# the camera pipeline ------------------------------------------------------------------------------------------
def camera_pipeline_factory(config: AgentConfig, link: MqttLink, topics: Topics) -> Callable[[Deployment, Any], Any]:
    """A factory for the camera pipeline (agent.vision): the deployment's cameras, pre- and postprocessing, and
    its results published as the deployment's `results` options say."""
    artifacts_root = Path(config.state_dir) / "artifacts"

    def make(deployment: Deployment, runner: Any) -> Any:
        post = deployment.postprocess or parse_config("classification")
        if deployment.labels and isinstance(post, ClassificationConfig) and not post.labels:
            post = msgspec.structs.replace(post, labels=str(artifacts_root / deployment.labels))
        publisher = ResultsPublisher(link, topics, deployment.results, deployment_id=deployment.id)
        cameras = list(deployment.cameras)
        pipeline = build_pipeline(
            cameras, runner, deployment.preprocess_spec, post, publisher, batch=deployment.batch, name=deployment.id,
            source_options=deployment.camera_options, capture_names=[f"camera{i}" for i in range(len(cameras))],
        )
        try:
            return pipeline.start()
        except BaseException:
            pipeline.stop()
            raise

    return make


def probe_camera(uri: str, timeout_s: float = 5.0) -> Tuple[float, str]:
    """Open a camera for `doctor`, read a few frames: (measured fps, description)."""
    report = probe_source(uri, frames=10, options=SourceOptions(loop=False, open_timeout_s=timeout_s, read_timeout_s=timeout_s))
    detail = f"{report.kind} via {report.backend}, {report.width}x{report.height}, {report.measured_fps:.1f} fps measured"
    return (report.measured_fps if report.frames else 0.0), detail


def inspect_engine_cache(config: AgentConfig, fingerprint: Dict[str, Any]) -> Dict[str, Any]:
    """For `doctor`: how many engines are cached and how many would not load on this device (and why)."""
    cache = EngineCache.for_state(Path(config.state_dir))
    fp = DeviceFingerprint.from_dict(fingerprint)
    entries = [e for e in cache.entries() if e.status == "ok"]
    why: List[str] = []
    incompatible = 0
    for entry in entries:
        verdict = cache.verify(entry, fp, full_hash=False)
        if not verdict.loadable:
            incompatible += 1
            why.extend(r for r in verdict.reasons[:1] if r not in why)
    return {"root": str(cache.root), "entries": len(entries), "incompatible": incompatible, "why": "; ".join(why[:2])}

