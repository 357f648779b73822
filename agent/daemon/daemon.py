"""`edge-agent run`: the service that runs for months on a device nobody touches.

Threads, and what each may do:
- paho's network thread: MQTT callbacks, which only enqueue (commands to the job runner, desired state to
  the reconcile loop) or set a flag (reconnected: publish the status again);
- `reconcile`: every change to what serves (agent/daemon/reconcile.py);
- `jobs-dispatch` and `jobs-worker`: fleet commands as jobs (agent/daemon/jobs.py);
- `supervisor`: publishes the retained status when it changed, writes status.json, persists the outbox,
  feeds the systemd watchdog while everything is healthy;
- the camera pipeline and the telemetry publisher own their threads.

It starts with the broker down (paho keeps trying, with backoff) and serves what it served before from disk.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from agent import __version__
from agent.config import AgentConfig
from agent.errors import AgentError, ConfigError
from agent.fleet.commands import Job, JobState
from agent.fleet.link import MqttLink, Outbox, OutboxItem, Will, reply_properties
from agent.fleet.messages import encode
from agent.fleet.topics import Topics
from agent.store.atomic import atomic_move
from agent.store.state import StateStore
from agent.telemetry.document import TelemetryCollector

from .doctor import run_checks, summarize
from .failpoints import Failpoints
from .jobs import JobHandler, JobRunner, Pending
from .pipeline_steps import PackageSteps, camera_pipeline_factory
from .reconcile import Reconciler
from .reported import device_fingerprint, encode_status, offline_payload, status_document, write_status_file
from .results_publisher import publish_snapshot
from .sdnotify import Notifier
from .serving import PipelineFactory, Serving
from .steps import Steps
from .telemetry_publisher import TelemetryPublisher, agent_provider

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.jsonl"
STATUS_FILE_EVERY_S = 2.0
LOOP_STALL_S = 60.0  # a reconcile or job thread silent this long (outside a step) is stuck
FRAME_STALL_S = 30.0  # with cameras configured, no frame for this long starves the watchdog
STOP_BUDGET_S = 20.0  # the unit's TimeoutStopSec is 30 s


class Daemon:
    """`Daemon(config).start()` ... `stop()`; or `run_forever()` with signal handling (the CLI)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        env: Optional[Mapping[str, str]] = None,
        steps: Optional[Steps] = None,
        pipeline_factory: Optional[PipelineFactory] = None,
    ) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.device_id = config.device.id
        self.topics = Topics(config.broker.topic_prefix, self.device_id)
        self.state_dir = Path(config.state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state.dir {self.state_dir}: cannot create it ({exc.strerror or exc}); set state.dir or fix its permissions") from None
        self.store = StateStore(self.state_dir)
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.fingerprint = {k: v for k, v in device_fingerprint().items() if k != "sources"}
        self.outbox = _open_outbox(self.state_dir / OUTBOX_FILE, config.state.outbox_max_messages)
        self.link = MqttLink(
            config.broker,
            client_id=f"edge-agent-{self.device_id}",
            will=Will(self.topics.status, offline_payload(self.device_id, "connection lost", groups=list(config.device.groups))),
            outbox=self.outbox,
            on_connected=self._on_connected,
        )
        self.notifier = Notifier(self.env)
        self.failpoints = Failpoints(self.env)
        self.events_published = 0
        self._progress: Optional[Dict[str, Any]] = None
        if steps is None:
            steps = PackageSteps(config, self.link, self.topics, self.state_dir, events=self._step_event)
        if pipeline_factory is None:
            pipeline_factory = camera_pipeline_factory(config, self.link, self.topics)
        self.steps = steps
        self.serving = Serving(pipeline_factory)
        self.reconciler = Reconciler(
            store=self.store,
            steps=self.steps,
            serving=self.serving,
            group_order=list(config.device.groups),
            on_change=self.mark_changed,
            on_event=self.event,
            on_job_done=self._job_done,
            on_ready=self._on_ready,
            failpoints=self.failpoints,
        )
        self.jobs = JobRunner(
            device_id=self.device_id, topics=self.topics, store=self.store, publish=self._publish_reply, handlers=self._handlers()
        )
        self._step_limit_s = max(config.engine.build_timeout_s, 3600.0) + 600.0
        self.telemetry: Any = None
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._stopped = False
        self._supervisor: Optional[threading.Thread] = None
        self._status_lock = threading.Lock()
        self.ready_summary = ""
        self.status_published = 0

    # lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> Daemon:
        try:
            with self.store.mutate() as state:
                state.starts += 1
        except OSError as exc:
            raise ConfigError(
                f"state.dir {self.state_dir}: cannot write {self.store.path.name} ({exc.strerror or exc}); "
                "the agent must be able to write its state folder (see edge-agent doctor)"
            ) from None
        self._subscribe()
        self.link.start()  # never fails for a broker that is down: paho keeps trying
        self.jobs.start()
        self.reconciler.start()
        self._start_telemetry()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        log.info("edge-agent %s started as %s (state in %s)", __version__, self.device_id, self.state_dir)
        return self

    def stop(self, reason: str = "stopped") -> None:
        """Graceful: stop the camera and abandon a build, publish the offline status, flush the outbox."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping()
        log.info("stopping (%s)", reason)
        self._stop.set()
        self.reconciler.stop(timeout=max(1.0, deadline - time.monotonic() - 8))
        self.jobs.stop(timeout=2.0)
        if self.telemetry is not None:
            try:
                self.telemetry.stop(timeout=2.0)
                self.telemetry.collector.close()
            except Exception:
                log.exception("stopping telemetry failed")
        if self._supervisor is not None:
            self._supervisor.join(timeout=2.0)
        serving_id = self.serving.deployment.id if self.serving.deployment else None
        final = OutboxItem(self.topics.status, offline_payload(self.device_id, reason, serving_id, list(self.config.device.groups)), 1, True)
        self.link.stop(final=final, flush_timeout=max(0.5, min(3.0, deadline - time.monotonic())))
        self._write_status_file(online=False)
        log.info("stopped")

    def run_forever(self) -> int:
        """Start, wait for SIGTERM or SIGINT, stop. Returns the exit code."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %d received", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not stop.wait(0.5):
            if self._supervisor is not None and not self._supervisor.is_alive():
                log.error("the supervisor thread died; exiting so systemd restarts the agent")
                self.stop("supervisor died")
                return 1
        self.stop("stopped")
        return 0

    # MQTT wiring (callbacks: enqueue only) --------------------------------------------------------------------
    def _subscribe(self) -> None:
        def command_handler(source: str) -> Callable[[Any], None]:
            def handle(msg: Any) -> None:
                topic, props = reply_properties(msg)
                self.jobs.submit(msg.payload, source, topic, props)

            return handle

        def desired_handler(source: str) -> Callable[[Any], None]:
            return lambda msg: self.reconciler.desired_message(source, bytes(msg.payload))

        self.link.subscribe(self.topics.cmd, command_handler("device"), qos=1)
        self.link.subscribe(self.topics.desired, desired_handler("device"), qos=1)
        for group in self.config.device.groups:
            self.link.subscribe(self.topics.group(group, "desired"), desired_handler(f"group:{group}"), qos=1)
            self.link.subscribe(self.topics.group(group, "cmd"), command_handler(f"group:{group}"), qos=1)

    def _on_connected(self) -> None:
        self._changed.set()  # publish the retained status again: the last will may have replaced it

    # publishing ------------------------------------------------------------------------------------------------
    def _publish_reply(self, topic: str, payload: bytes, properties: Any) -> None:
        self.link.publish(topic, payload, qos=1, retain=False, keep_if_offline=True, properties=properties)

    def event(self, name: str, fields: Dict[str, Any]) -> None:
        """An event of value (deployment serving or failed, artifact refused...): kept in the outbox offline."""
        payload = encode("event", {"device": self.device_id, "event": name, **fields})
        self.link.publish(self.topics.events, payload, qos=1, keep_if_offline=True)
        self.events_published += 1

    def _step_event(self, event: Dict[str, Any]) -> None:
        """Events from the steps' packages (artifact transfer, engine build). Progress is a reading: it feeds the
        status and the watchdog's view of a long step, and is never queued while the broker is away."""
        name = str(event.get("event", "step"))
        if name.endswith(".progress"):
            self.reconciler.beat()
            if name == "artifact.progress":
                self._progress = {k: event.get(k) for k in ("artifact_id", "kind", "bytes", "total", "percent", "rate_bps", "eta_s")}
                self._changed.set()
            payload = encode("event", {"device": self.device_id, **event})
            self.link.publish(self.topics.events, payload, qos=0, keep_if_offline=False)
            return
        self.event(name, {k: v for k, v in event.items() if k != "event"})

    def mark_changed(self) -> None:
        self._changed.set()

    def status_document(self) -> Dict[str, Any]:
        return status_document(
            device_id=self.device_id,
            state=self.store.snapshot(),
            serving_digest=self.serving.digest,
            desired=self.reconciler.desired_view(),
            fingerprint=self.fingerprint,
            started_at=self.started_at,
            progress=self._progress,
            groups=list(self.config.device.groups),
        )

    def publish_status(self) -> Dict[str, Any]:
        with self._status_lock:
            document = self.status_document()
            self.link.publish(self.topics.status, encode_status(document), qos=1, retain=True, keep_if_offline=False)
            self.status_published += 1
            if self.notifier.enabled:
                self.notifier.status(_status_line(document))
            return document

    def live(self) -> Dict[str, Any]:
        """Counters for status.json and diagnostics."""
        return {
            "pid": os.getpid(),
            "ready": self.reconciler.ready.is_set(),
            "ready_summary": self.ready_summary,
            "healthy": self.healthy(),
            "broker": {
                "host": self.config.broker.host,
                "port": self.config.broker.port,
                "connected": self.link.connected.is_set(),
                "connects": self.link.connects,
                "reconnects": self.link.reconnects,
                "last_error": self.link.last_error or None,
            },
            "outbox": {"queued": len(self.outbox), "dropped": self.outbox.dropped, "max": self.outbox.max_messages},
            "jobs": {
                "open": self.jobs.open_jobs(),
                "completed": self.jobs.completed,
                "rejected": self.jobs.rejected,
                "duplicates_ignored": self.jobs.duplicates,
            },
            "pipeline": self.serving.metrics(),
            "busy_step": self.reconciler.busy_step or None,
            "watchdog": {"interval_s": self.notifier.watchdog_s, "pings": self.notifier.watchdog_pings},
            "events_published": self.events_published,
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
        }

    def _write_status_file(self, online: bool = True) -> None:
        try:
            document = self.status_document()
            if not online:
                document.update(online=False, state="offline")
            write_status_file(self.state_dir, document, self.live())
        except (OSError, AgentError) as exc:
            log.warning("cannot write the status file: %s", exc)

    # health, readiness, watchdog -----------------------------------------------------------------------------
    def _on_ready(self, summary: str) -> None:
        self.ready_summary = summary
        log.info("ready: %s", summary)
        self.notifier.ready(summary)
        self._changed.set()

    def healthy(self) -> bool:
        """Feed the watchdog only while this is true: the loops run, and frames flow where cameras are configured."""
        now = time.monotonic()
        if not (self.reconciler.alive and self.jobs.alive):
            return False
        if self.reconciler.busy_step:
            # a step may block for long (a download, a build), but each has its own timeout: past that it hangs
            if now - self.reconciler.busy_since > self._step_limit_s:
                return False
        elif now - self.reconciler.last_beat > LOOP_STALL_S:
            return False
        if now - self.jobs.last_beat > LOOP_STALL_S:
            return False
        return self.serving.frames_flowing(FRAME_STALL_S)

    def _supervise(self) -> None:
        last_file = 0.0
        last_feed = 0.0
        last_outbox = (-1, -1)
        feed_every = (self.notifier.watchdog_s or 0) / 2
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if self._changed.is_set():
                    self._changed.clear()
                    self.publish_status()
                    self._apply_telemetry_interval()
                    last_file = 0.0
                if now - last_file >= STATUS_FILE_EVERY_S:
                    self._write_status_file()
                    last_file = now
                outbox_mark = (len(self.outbox), self.outbox.dropped)
                if outbox_mark != last_outbox:  # persist what waits for the broker: it survives a kill -9
                    self.outbox.save()
                    last_outbox = outbox_mark
                if feed_every and self.reconciler.ready.is_set() and now - last_feed >= feed_every and self.healthy():
                    self.notifier.watchdog()
                    last_feed = now
            except Exception:  # the supervisor must outlive any one failure
                log.exception("supervisor pass failed")
            self._changed.wait(0.25)

    # telemetry -------------------------------------------------------------------------------------------------
    def _start_telemetry(self) -> None:
        providers = {
            "pipeline": self._pipeline_section,
            "engine": self._engine_section,
            "agent": agent_provider(self.link, __version__, self._started_mono),
        }
        try:
            collector = TelemetryCollector(self.config.telemetry, self.state_dir, providers, device_id=self.device_id)
            # retained: `fleet status` and the exporter see every device's latest figures the moment they subscribe
            self.telemetry = TelemetryPublisher(self.link, self.topics.telemetry, collector, self.config.telemetry.interval_s, retain=True).start()
        except Exception as exc:  # telemetry is worth having, never worth not starting for
            log.warning("telemetry could not start: %s", exc)
            self.telemetry = None

    def _apply_telemetry_interval(self) -> None:
        if self.telemetry is None:
            return
        deployment = self.serving.deployment
        wanted = (deployment.telemetry_interval_s if deployment else None) or self.config.telemetry.interval_s
        self.telemetry.interval_s = float(wanted)

    def _pipeline_section(self) -> Optional[Dict[str, Any]]:
        """The pipeline's metrics (agent.vision) in the telemetry document's terms (agent.telemetry.schema)."""
        return pipeline_telemetry(self.serving.metrics())

    def _engine_section(self) -> Optional[Dict[str, Any]]:
        loaded, deployment = self.serving.loaded, self.serving.deployment
        if loaded is None or deployment is None:
            return None
        section: Dict[str, Any] = {
            "id": loaded.engine.key or None,
            "backend": loaded.engine.backend,
            "precision": deployment.precision,
            "target": deployment.target,
            "build_s": loaded.engine.build_s,
        }
        return {k: v for k, v in section.items() if v is not None}

    # job handlers --------------------------------------------------------------------------------------------
    def _handlers(self) -> Dict[str, JobHandler]:
        return {
            "ping": self._job_ping,
            "status": lambda job: self.publish_status(),
            "rebuild": self._engine_job("rebuild"),
            "rollback": self._engine_job("rollback"),
            "restart-pipeline": self._engine_job("restart-pipeline"),
            "snapshot": self._job_snapshot,
            "telemetry": self._job_telemetry,
            "diagnostics": self._job_diagnostics,
            "set-log-level": self._job_log_level,
        }

    def _job_ping(self, job: Job) -> Dict[str, Any]:
        return {
            "pong": True,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_mono, 1),
            "sent_at": job.command.issued_at or None,
            "received_at": round(job.received_at, 3),
        }

    def _engine_job(self, action: str) -> JobHandler:
        def handle(job: Job) -> Pending:
            request = self.reconciler.request(action, job.id, job.command.args)
            return Pending(cancel=lambda: self.reconciler.cancel(request), detail=f"handed to the reconcile loop ({action})")

        return handle

    def _job_done(self, job_id: str, state: str, detail: str, result: Optional[Dict[str, Any]]) -> None:
        self.jobs.complete(job_id, JobState(state), detail, result)

    def _job_snapshot(self, job: Job) -> Dict[str, Any]:
        camera = job.command.args.camera  # SnapshotArgs
        image, result = self.serving.snapshot(camera)
        if not self.link.fits(self.topics.snapshot, image):
            raise AgentError(f"the snapshot is {len(image)} bytes, over broker.max_payload ({self.config.broker.max_payload}); "
                             "lower the camera resolution or raise the limit")
        publish_snapshot(self.link, self.topics, image)
        return {"topic": self.topics.snapshot, "bytes": len(image), "camera": camera, "result": result}

    def _job_telemetry(self, job: Job) -> Dict[str, Any]:
        if self.telemetry is None:
            raise AgentError("telemetry is not running on this agent (see the journal for why)")
        sent = self.telemetry.publish_now()
        if not sent:
            raise AgentError("the telemetry document could not be published now (broker away or collection failed)")
        return {"topic": self.topics.telemetry, "bytes": self.telemetry.last_payload_bytes}

    def _job_diagnostics(self, job: Job) -> Dict[str, Any]:
        checks = run_checks(self.config, live=self.live(), include_broker=False, include_cameras=False)
        return {"summary": summarize(checks), "checks": [c.to_dict() for c in checks]}

    def _job_log_level(self, job: Job) -> Dict[str, Any]:
        level = job.command.args.level.upper()  # SetLogLevelArgs
        name = job.command.args.logger
        target = logging.getLogger(name) if name else logging.getLogger()
        previous = logging.getLevelName(target.level)
        target.setLevel(level)
        return {"logger": name or "root", "level": level, "previous": previous, "until": "restart"}


def _open_outbox(path: Path, max_messages: int) -> Outbox:
    """The persisted outbox; a damaged file (not UTF-8 after a power cut) is kept aside, never a reason not to start."""
    try:
        return Outbox(max_messages, path=path)
    except ValueError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            atomic_move(path, aside)
        except OSError:
            pass
        log.warning("%s is unreadable (%s): kept as %s, starting with an empty outbox", path, exc, aside.name)
        return Outbox(max_messages, path=path)


def _status_line(document: Dict[str, Any]) -> str:
    serving = document.get("serving") or {}
    applying = document.get("applying") or {}
    if applying:
        return f"applying {applying.get('deployment_id')} ({applying.get('step')})"
    if serving:
        return f"serving {serving.get('deployment_id')}"
    error = document.get("last_error") or {}
    return "degraded" + (f": {error.get('step')}: {str(error.get('reason'))[:120]}" if error else ": no deployment")


def pipeline_telemetry(metrics: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """A pipeline's metrics (`Pipeline.metrics()`) as the telemetry document's `pipeline` section: rates,
    latency percentiles, and each camera's state and counters (None when no pipeline runs)."""
    if not metrics or "error" in metrics:
        return None
    latency: Dict[str, Dict[str, float]] = {}
    stages = dict(metrics.get("stages") or {})
    if isinstance(metrics.get("latency"), dict):
        stages["total"] = metrics["latency"]
    for name, stage in stages.items():
        if isinstance(stage, dict) and stage.get("count"):
            latency[name] = {"p50": float(stage.get("p50_ms", 0.0)), "p99": float(stage.get("p99_ms", 0.0))}
    cameras: Dict[str, Dict[str, Any]] = {}
    for source in metrics.get("sources") or []:
        if isinstance(source, dict):
            cameras[str(source.get("name"))] = {
                "state": source.get("state"),
                "frames": source.get("frames"),
                "drops": source.get("drops"),
                "reconnects": source.get("reconnects"),
                "open_failures": source.get("open_failures"),
                "disconnects": source.get("disconnects"),
                "stalls": source.get("stalls"),
                "since_frame_s": source.get("seconds_since_frame"),
                "width": source.get("width"),
                "height": source.get("height"),
                "error": source.get("last_error") or None,
            }
    section: Dict[str, Any] = {
        "fps": metrics.get("fps"),
        "frames": metrics.get("results"),
        "drops": metrics.get("drops"),
        "camera_reconnects": metrics.get("reconnects"),
        "cameras": cameras or None,
        "latency_ms": latency,
    }
    return {k: v for k, v in section.items() if v is not None}
