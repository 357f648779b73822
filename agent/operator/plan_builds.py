"""Build once per hardware class: the designated builder, the operator's `fleet build`, and the per-class view.

The builder of a class is a device (or, for the CPU backend, any x86 machine) the operator designates, running
`edge-agent fleet builder --key KEY` with the agent's configuration. It holds its own ed25519 key, which devices
trust for `engine` artifacts only (`[artifacts] key_kinds = ["builder.pub=engine"]`, agent.fleet.artifact_trust).
Asked for a build (`<prefix>/fleet/plan-build/<class>`), it runs the deployment's steps as any device would (fetch,
table check, the build in its child process, its own accuracy gate: agent.daemon.pipeline_steps), then publishes
the engine as a signed `engine` artifact whose manifest embeds the engine manifest, the class, the spec digest
and the gate result (agent.fleet.plans), serves its blocks, and publishes the retained index a device looks up.
A builder refuses a request for a class it is not: it never builds for another class.

The operator asks with `request_build` (`edge-agent fleet build --deployment D --class C`, or
`fleet deploy --build-plans`, which writes the answers into the deployment's `plans`). `plan_view` folds the
fleet's statuses into, per deployment and class, which devices serve the shared plan and which built locally
and why (`fleet status --plans`, `fleet watch --plans`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from agent.config import AgentConfig
from agent.daemon.pipeline_steps import PackageSteps
from agent.engine.build import fingerprint_for_backend
from agent.engine.hardware_class import hardware_class, is_class_key
from agent.engine.manifest import read_manifest
from agent.errors import AgentError, UsageError
from agent.fleet.artifact_protocol import sign_manifest
from agent.fleet.deployment import DeploymentError, deployment_from_dict
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.messages import MessageError
from agent.fleet.plans import (
    PLAN_KIND,
    BuildRequest,
    decode_build_reply,
    decode_build_request,
    describe_plan,
    embedded_of,
    encode_build_reply,
    encode_build_request,
    encode_index,
    index_topic,
    reply_topic,
    request_topic,
)
from agent.fleet.topics import Topics
from agent.operator.artifact_server import ArtifactServer, add_to_folder, folder_manifests, publish_manifest

log = logging.getLogger(__name__)


class PlanBuildError(AgentError):
    """A plan build was refused or failed; the message says where and why."""


class NotThisClass(PlanBuildError):
    """The request is for another class: another builder's (this one stays silent, so that one answers)."""


class PlanBuilder:
    """The builder service of one machine. `start()` connects, serves its plans and listens for requests;
    `build(deployment)` may also be called directly (the bench, the tests)."""

    def __init__(self, config: Any, private_key: Any, *, folder: Optional[Path] = None, link: Any = None,
                 events: Optional[Any] = None, rate_limit_bps: float = 0.0) -> None:
        self.config = config
        self.private_key = private_key
        self.prefix = config.broker.topic_prefix
        self.device_id = config.device.id
        self.folder = Path(folder) if folder is not None else config.state_dir / "plans"
        self._own_link = link is None
        self.link = link if link is not None else MqttLink(config.broker, unique_client_id(f"builder-{self.device_id}"), persistent_session=False)
        self.topics = Topics(self.prefix, self.device_id)
        self.steps = PackageSteps(config, self.link, self.topics, config.state_dir, events)
        self.steps.shared_plans = None  # the builder builds; it never takes a plan from elsewhere
        self.server = ArtifactServer(self.link, self.prefix, self.folder, rate_limit_bps=rate_limit_bps)
        self._requests: queue.Queue[Optional[BuildRequest]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.builds = 0

    # service -------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> PlanBuilder:
        if self._own_link:
            self.link.start()
        if not self.link.wait_connected(timeout_s):
            raise PlanBuildError(f"the builder cannot reach the broker {self.config.broker.host}:{self.config.broker.port}")
        self.server.start()
        self._thread = threading.Thread(target=self._work, name="plan-builder", daemon=True)
        self._thread.start()
        self.link.subscribe(request_topic(self.prefix, "+"), self._on_request, qos=1)
        self.republish_indexes()
        return self

    def _publish_index(self, plan: Any) -> None:
        """The retained index of the plan's class and spec, carrying its signed manifest."""
        embedded = embedded_of(plan.to_dict())
        klass = str((embedded.get("class") or {}).get("key") or "")
        if klass and embedded.get("spec_digest"):
            self.link.publish(index_topic(self.prefix, klass, str(embedded["spec_digest"])), encode_index(plan), qos=1, retain=True)

    def republish_indexes(self) -> int:
        """Every plan this builder holds, indexed again (a broker restarted without its retained messages)."""
        plans = [m for m in folder_manifests(self.folder) if m.kind == PLAN_KIND]
        for plan in plans:
            self._publish_index(plan)
        return len(plans)

    def stop(self) -> None:
        self.link.unsubscribe(request_topic(self.prefix, "+"))
        self.steps.cancel()
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.stop()
        if self._own_link:
            self.link.stop()

    def _on_request(self, msg: Any) -> None:
        try:
            self._requests.put(decode_build_request(bytes(msg.payload)))
        except MessageError as exc:
            log.warning("plan-build request refused: %s", exc)

    def _work(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            try:
                deployment = deployment_from_dict(request.deployment)
                result = self.build(deployment, request_class=request.class_key)
            except NotThisClass as exc:
                log.info("plan-build %s: %s", request.id, exc)
                continue
            except (AgentError, DeploymentError) as exc:
                result = {"ok": False, "reason": str(exc), "builder": self.device_id}
            except Exception as exc:  # a bug in one build must not end the service
                log.exception("plan build failed")
                result = {"ok": False, "reason": f"internal error: {type(exc).__name__}: {exc}", "builder": self.device_id}
            self.link.publish(reply_topic(self.prefix, request.id), encode_build_reply(request.id, result), qos=1)

    # one build -----------------------------------------------------------------------------------------
    def build(self, deployment: Any, *, request_class: Optional[str] = None) -> Dict[str, Any]:
        """Build (or reuse) the engine for `deployment` here, gate it, publish it as a plan. Returns
        {ok, artifact_id, class, engine_key, build_s, gate, builder}; raises PlanBuildError with the reason."""
        with self._lock:
            spec = self.steps.build_spec(deployment).validate()
            fp = fingerprint_for_backend(self.steps.fingerprint, spec.backend)
            klass = hardware_class(fp, spec)
            if request_class and request_class != klass.key:
                raise NotThisClass(f"this builder ({self.device_id}) is class {klass.key}, not {request_class}: it builds only for its own class")
            cancel = threading.Event()
            started = time.monotonic()
            artifacts = self.steps.fetch(deployment, cancel)
            self.steps.check_table(deployment, artifacts)
            engine = self.steps.build(deployment, artifacts, cold=False, cancel=cancel, beat=lambda: None)
            loaded = self.steps.validate(deployment, artifacts, engine)  # its own accuracy gate: raises when it fails
            gate = dict(loaded.gate)
            loaded.close()
            manifest = read_manifest(Path(engine.path))
            plan = describe_plan(Path(engine.path), manifest.to_dict(), klass.to_dict(), gate, builder=self.device_id,
                                 deployment_id=deployment.id, chunk_size=self.config.artifacts.chunk_bytes)
            plan = sign_manifest(plan, self.private_key)
            add_to_folder(self.folder, Path(engine.path), plan)
            publish_manifest(self.link, self.prefix, plan)
            self._publish_index(plan)
            self.builds += 0 if engine.cache_hit else 1
            log.info("plan %s for class %s published (%s)", plan.artifact_id[:12], klass.key, "cached engine" if engine.cache_hit else "built")
            return {
                "ok": True,
                "artifact_id": plan.artifact_id,
                "class": klass.key,
                "engine_key": engine.key,
                "built": not engine.cache_hit,
                "build_s": engine.build_s,
                "seconds": round(time.monotonic() - started, 3),
                "gate": {k: gate.get(k) for k in ("passed", "skipped", "reason", "frames", "seconds") if k in gate},
                "builder": self.device_id,
            }


# the operator's side ---------------------------------------------------------------------------------------
def request_build(link: Any, prefix: str, deployment: Any, class_key: str, timeout_s: float = 3600.0) -> Dict[str, Any]:
    """Ask the builder of `class_key` to build `deployment`; wait for its answer. Raises PlanBuildError."""
    if not is_class_key(class_key):
        raise PlanBuildError(f"{class_key!r} is not a hardware class key (edge-agent device --json on a device of the class shows it)")
    request_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    answers: queue.Queue[bytes] = queue.Queue()
    topic = reply_topic(prefix, request_id)
    link.subscribe(topic, lambda msg: answers.put(bytes(msg.payload)), qos=1)
    try:
        time.sleep(0.1)  # let the subscription reach the broker before the builder can answer
        link.publish(request_topic(prefix, class_key), encode_build_request(request_id, class_key, deployment.to_dict()), qos=1)
        try:
            reply = decode_build_reply(answers.get(timeout=timeout_s))
        except queue.Empty:
            raise PlanBuildError(f"no builder for class {class_key} answered within {timeout_s:g} s (is `edge-agent fleet builder` running there?)") from None
    finally:
        link.unsubscribe(topic)
    if not reply.get("ok"):
        raise PlanBuildError(f"the builder of {class_key} refused or failed: {reply.get('reason')}")
    return reply


def with_plans(deployment: Any, built: Dict[str, str]) -> Any:
    """The deployment naming the plan artifact of each class (`plans`), for `fleet deploy --build-plans`."""
    plans = dict(deployment.plans or {})
    plans.update(built)
    return deployment_from_dict({**deployment.to_dict(), "plans": plans})  # validated again, as any document


def plan_view(statuses: Iterable[Any]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """deployment id -> class -> {"shared": [devices], "local": {device: why}, "refused": {device: reason}} from the
    devices' retained status documents ((device, status) pairs or DeviceRow-like objects)."""
    view: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for item in statuses:
        device, status = (item if isinstance(item, tuple) else (getattr(item, "device", "?"), getattr(item, "status", {})))
        serving = _obj(_obj(status).get("serving"))
        if not serving:
            continue
        plan = _obj(_obj(serving.get("engine")).get("plan"))
        klass = str(plan.get("class_key") or "?")
        row = view.setdefault(str(serving.get("deployment_id")), {}).setdefault(klass, {"shared": [], "local": {}, "refused": {}})
        if plan.get("source") == "shared":
            row["shared"].append(device)
        else:
            row["local"][device] = str(plan.get("reason") or ("engine already cached" if plan.get("source") == "cache" else "no shared plan"))
            refused = _obj(plan.get("refused"))
            if refused:
                row["refused"][device] = f"{refused.get('field')}: {refused.get('reason')}"
    return view


def _obj(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def format_plan_view(view: Dict[str, Dict[str, Dict[str, Any]]]) -> List[str]:
    lines: List[str] = []
    for deployment_id in sorted(view):
        lines.append(f"{deployment_id}:")
        for klass in sorted(view[deployment_id]):
            row = view[deployment_id][klass]
            lines.append(f"  {klass}: {len(row['shared'])} on the shared plan, {len(row['local'])} built locally")
            for device in sorted(row["local"]):
                lines.append(f"    {device}: {row['local'][device]}")
    return lines


def build_plans(config: AgentConfig, deployment: Any, classes: List[str], timeout_s: float) -> Dict[str, Dict[str, Any]]:
    """Ask each class's builder over the configured broker (`fleet build`, `fleet deploy --build-plans`); class ->
    its answer. Raises the first refusal (PlanBuildError)."""
    link = MqttLink(config.broker, unique_client_id("fleet-build"), persistent_session=False)
    link.start()
    try:
        if not link.wait_connected(15):
            raise UsageError(f"cannot reach the broker {config.broker.host}:{config.broker.port}")
        return {klass: request_build(link, config.broker.topic_prefix, deployment, klass, timeout_s) for klass in classes}
    finally:
        link.stop()


def build_and_name_plans(config: AgentConfig, deployment: Any, classes: List[str], timeout_s: float) -> Tuple[Dict[str, Dict[str, Any]], Any]:
    """`build_plans`, then the deployment naming each plan built (`fleet build`, `fleet deploy --build-plans`):
    (class -> the builder's answer, the deployment with its `plans`)."""
    answers = build_plans(config, deployment, classes, timeout_s)
    return answers, with_plans(deployment, {klass: answer["artifact_id"] for klass, answer in answers.items()})
