"""Simulated devices that speak the agent's real fleet protocol without an engine: the rollout tests and
bench/rollout.py use them.

Each SimDevice is the agent's own protocol code: an MqttLink with the agent's last will, the retained device and
group desired states decoded by agent.fleet.deployment and resolved by its `resolve_desired` (device first,
then groups in order), commands decoded by agent.fleet.commands and answered with its replies, the status in
the reported-state layout (agent/daemon/reported.py: serving, previous, blocked, last_error, groups) and a
retained telemetry document. What it does not do is build and validate: the outcome of applying a deployment
is `verdict(deployment)`, which a test or the bench fills with real gate results computed once per case.
A `rollback` swaps serving and previous and blocks the deployment left, as agent/daemon/reconcile.py does.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional

from agent.config import BrokerConfig
from agent.daemon.reported import encode_status, offline_payload
from agent.fleet.commands import CommandRejected, JobState, decode_command, reply_payload
from agent.fleet.deployment import Deployment, DeploymentError, decode_desired, resolve_desired
from agent.fleet.link import MqttLink, Outbox, OutboxItem, Will
from agent.fleet.messages import encode
from agent.fleet.topics import Topics

PREFIX = "edge"


class Verdict:
    """How applying a deployment ends on a device: serving (with the gate's figures) or failed at a step."""

    def __init__(self, step: str = "", reason: str = "", gate: Optional[Dict[str, Any]] = None, fps: float = 30.0, temp_c: float = 50.0) -> None:
        self.step = step
        self.reason = reason
        self.gate = gate or {"passed": True}
        self.fps = fps
        self.temp_c = temp_c

    @property
    def ok(self) -> bool:
        return not self.step


VerdictFn = Callable[[str, Deployment], Verdict]


class SimDevice:
    def __init__(
        self,
        device_id: str,
        broker: BrokerConfig,
        groups: List[str],
        verdict: VerdictFn,
        pool: ThreadPoolExecutor,
        *,
        apply_s: float = 0.05,
        initial: Optional[Deployment] = None,
    ) -> None:
        self.id = device_id
        self.broker = broker
        self.groups = list(groups)
        self.verdict = verdict
        self.pool = pool
        self.apply_s = apply_s
        self.topics = Topics(PREFIX, device_id)
        self.serving: Optional[Deployment] = initial
        self.previous: Optional[Deployment] = None
        self.blocked: Dict[str, Dict[str, Any]] = {}
        self.last_error: Optional[Dict[str, Any]] = None
        self.applying: Optional[Deployment] = None
        self.sources: Dict[str, Optional[Deployment]] = {}
        self.received: List[str] = []  # digests of every desired deployment it was handed
        self.served: List[str] = []  # deployment ids in the order it served them
        self.served_at: Dict[str, float] = {}  # digest -> when it last started serving it
        self.fps = 30.0
        self.temp_c = 50.0
        self.frames = 0
        self._lock = threading.Lock()
        self._dirty = False
        self._busy = False
        self._commands: List[Any] = []
        self.link: Optional[MqttLink] = None

    # connection -------------------------------------------------------------------------------------------------
    def start(self) -> SimDevice:
        will = Will(self.topics.status, offline_payload(self.id, "connection lost", groups=self.groups))
        self.link = MqttLink(self.broker, f"edge-agent-{self.id}", will=will, outbox=Outbox(100), persistent_session=False,
                             on_connected=self._on_connected)
        self.link.subscribe(self.topics.desired, lambda msg: self._on_desired("device", bytes(msg.payload)), qos=1)
        for group in self.groups:
            self.link.subscribe(self.topics.group(group, "desired"), lambda msg, g=group: self._on_desired(f"group:{g}", bytes(msg.payload)), qos=1)
        self.link.subscribe(self.topics.cmd, self._on_command, qos=1)
        self.link.start()
        return self

    def stop(self, *, clean: bool = True) -> None:
        """Disconnect; the status says offline either way (a clean stop publishes it, like the agent's)."""
        if self.link is None:
            return
        final = OutboxItem(self.topics.status, offline_payload(self.id, "stopped" if clean else "connection lost",
                                                               self.serving.id if self.serving else None, self.groups), 1, True)
        self.link.stop(final=final, flush_timeout=2.0)
        self.link = None

    @property
    def online(self) -> bool:
        return self.link is not None and self.link.connected.is_set()

    def _on_connected(self) -> None:
        self.pool.submit(self._publish_all)

    # inputs (paho's thread: hand over) -----------------------------------------------------------------------------
    def _on_desired(self, source: str, payload: bytes) -> None:
        try:
            deployment = decode_desired(payload)
        except DeploymentError:
            return
        with self._lock:
            self.sources[source] = deployment
            if deployment is not None:
                self.received.append(deployment.digest())
        self._kick()

    def _on_command(self, msg: Any) -> None:
        try:
            command = decode_command(bytes(msg.payload), device_id=self.id, topic_prefix=PREFIX)
        except CommandRejected:
            return
        with self._lock:
            self._commands.append(command)
        self._kick()

    def _kick(self) -> None:
        with self._lock:
            self._dirty = True
            if self._busy:
                return
            self._busy = True
        self.pool.submit(self._work)

    # the one worker per device -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._dirty:
                    self._busy = False
                    return
                self._dirty = False
                commands, self._commands = self._commands, []
            try:
                for command in commands:
                    self._run_command(command)
                self._reconcile()
            except Exception as exc:  # a bug here must show in the test, not hang it
                self.last_error = {"step": "sim", "reason": repr(exc), "deployment_id": None, "digest": None, "at": time.time()}

    def _desired(self) -> Optional[Deployment]:
        with self._lock:
            groups = {name[len("group:"):]: dep for name, dep in self.sources.items() if name.startswith("group:")}
            winner = resolve_desired(self.sources.get("device"), groups, self.groups)
        return winner.deployment if winner is not None else None

    def _reconcile(self) -> None:
        desired = self._desired()
        if desired is None:
            return
        digest = desired.digest()
        if (self.serving is not None and self.serving.digest() == digest) or digest in self.blocked:
            return
        self.applying = desired
        self._publish_status()
        time.sleep(self.apply_s)
        verdict = self.verdict(self.id, desired)
        self.applying = None
        if not verdict.ok:
            self.blocked[digest] = {"deployment_id": desired.id, "step": verdict.step, "reason": verdict.reason, "at": time.time()}
            self.last_error = {"step": verdict.step, "reason": verdict.reason, "deployment_id": desired.id, "digest": digest, "at": time.time()}
        else:
            self._serve(desired, verdict, mark_previous=True)
        self._publish_all()
        with self._lock:  # a newer desired state may have come while applying
            self._dirty = True

    def _serve(self, deployment: Deployment, verdict: Verdict, *, mark_previous: bool) -> None:
        if mark_previous and self.serving is not None and self.serving.digest() != deployment.digest():
            self.previous = self.serving
        self.serving = deployment
        self.gate = verdict.gate
        self.fps, self.temp_c = verdict.fps, verdict.temp_c
        self.last_error = None
        self.blocked.pop(deployment.digest(), None)
        self.served.append(deployment.id)
        self.served_at[deployment.digest()] = time.time()

    def _run_command(self, command: Any) -> None:
        self._reply(command, JobState.QUEUED)
        self._reply(command, JobState.IN_PROGRESS)
        if command.type != "rollback":
            self._reply(command, JobState.SUCCEEDED, result={"pong": True} if command.type == "ping" else {})
            return
        if self.previous is None:
            self._reply(command, JobState.FAILED, detail="nothing to roll back to: no previous deployment was served on this device")
            return
        leaving, back = self.serving, self.previous
        self._serve(back, self.verdict(self.id, back), mark_previous=False)
        self.previous = leaving
        if leaving is not None:
            self.blocked[leaving.digest()] = {"deployment_id": leaving.id, "step": "rollback", "reason": f"rolled back by job {command.id}", "at": time.time()}
        self._publish_all()
        self._reply(command, JobState.SUCCEEDED, result={"deployment_id": back.id, "digest": back.digest(), "rolled_back": leaving.id if leaving else None})

    def _reply(self, command: Any, state: JobState, *, detail: str = "", result: Optional[Dict[str, Any]] = None) -> None:
        link = self.link
        if link is not None:
            link.publish(command.reply_to or self.topics.reply, reply_payload(self.id, command.id, command.type, state, detail=detail, result=result), qos=1)

    # what it publishes ---------------------------------------------------------------------------------------------
    def status_document(self) -> Dict[str, Any]:
        serving = self.serving
        desired = self._desired()
        return {
            "device": self.id,
            "online": True,
            "groups": self.groups,
            "state": "applying" if self.applying else ("serving" if serving else "degraded"),
            "version": "sim",
            "fingerprint": {"module": "Simulated Orin"},
            "desired": {"deployment_id": desired.id if desired else None, "digest": desired.digest() if desired else None},
            "serving": {"deployment_id": serving.id, "digest": serving.digest(), "since": self.served_at.get(serving.digest()),
                        "precision": serving.precision, "target": serving.target, "gate": getattr(self, "gate", None),
                        "engine": {"backend": "sim"}} if serving else None,
            "previous": self.previous.id if self.previous else None,
            "applying": {"deployment_id": self.applying.id, "digest": self.applying.digest(), "step": "build"} if self.applying else None,
            "last_error": self.last_error,
            "blocked": [{"digest": d, "deployment_id": b.get("deployment_id"), "step": b.get("step"), "reason": b.get("reason")}
                        for d, b in sorted(self.blocked.items(), key=lambda kv: kv[1].get("at", 0))][-5:],
        }

    def telemetry_document(self) -> Dict[str, Any]:
        self.frames += 300
        return {
            "device": self.id,
            "interval_s": 10.0,
            "system": {"memory": {"used_mb": 1500.0, "total_mb": 7620.0}, "temps_c": {"cpu-thermal": self.temp_c - 5}},
            "jetson": {"tegrastats": {"ram": {"used_mb": 2100, "total_mb": 7620}, "temps_c": {"tj": self.temp_c},
                                      "power_mw": {"VDD_IN": {"now": 7400, "avg": 7300}}}},
            "pipeline": {"fps": self.fps, "frames": self.frames, "drops": 0, "latency_ms": {"infer": {"p50": 8.0, "p99": 12.5}, "total": {"p50": 20.0, "p99": 31.0}}}
            if self.serving else None,
            "engine": {"backend": "sim", "precision": self.serving.precision} if self.serving else None,
        }

    def _publish_status(self) -> None:
        link = self.link
        if link is not None:
            link.publish(self.topics.status, encode_status(self.status_document()), qos=1, retain=True, keep_if_offline=False)

    def publish_telemetry(self) -> None:
        link = self.link
        if link is not None:
            link.publish(self.topics.telemetry, encode("telemetry", self.telemetry_document()), qos=0, retain=True, keep_if_offline=False)

    def _publish_all(self) -> None:
        self._publish_status()
        self.publish_telemetry()


class SimFleet:
    """N simulated devices in one group (and a thread pool they share)."""

    def __init__(self, broker: BrokerConfig, count: int, group: str, verdict: VerdictFn, *, prefix_name: str = "cam", apply_s: float = 0.05,
                 initial: Optional[Deployment] = None, workers: int = 16) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sim-device")
        self.devices = [SimDevice(f"{prefix_name}-{i:04d}", broker, [group], verdict, self.pool, apply_s=apply_s, initial=initial) for i in range(count)]

    def start(self, timeout: float = 30.0) -> SimFleet:
        for device in self.devices:
            device.start()
        deadline = time.monotonic() + timeout
        for device in self.devices:
            assert device.link is not None
            if not device.link.wait_connected(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"{device.id} could not connect")
        return self

    def by_id(self) -> Dict[str, SimDevice]:
        return {d.id: d for d in self.devices}

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=32) as stopper:
            list(stopper.map(lambda d: d.stop(), self.devices))
        self.pool.shutdown(wait=False)
