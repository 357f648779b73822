"""Staged rollouts, the side effects: what the runner reads from the broker, what it sends, where the state lives.

Topics (all retained), under `<prefix>/fleet/rollout/<group>/`:

    state            the RolloutState (agent/operator/rollout.py) as JSON; over broker.max_payload it goes in
                     parts on state/part/<i> with a header here (agent/fleet/limits.py)
    control          {"rollout", "action": pause|resume|abort, "ts"} from `fleet rollout pause|resume|abort`
    runner           {"alive": true, "owner", "rollout"} while a runner drives it; its last will says
                     {"alive": false}, so a killed runner is known at once and `fleet rollout resume` takes over

The retained state is the group's lock: `start` is refused while a rollout on the group is active, naming its
id. Two operators starting at the same instant both publish; each then reads the retained value back, and the
one whose id is not there backs off. With `--state-file` the state is also written there (atomically), and
read from there first on resume.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple

import msgspec

from agent.config import BrokerConfig
from agent.fleet.commands import decode_reply
from agent.fleet.deployment import (
    Deployment,
    DeploymentError,
    decode_desired,
    deployment_from_dict,
    encode_desired,
)
from agent.fleet.limits import join, parts_header, split
from agent.fleet.messages import MessageError, decode
from agent.fleet.topics import all_devices, device_of
from agent.models import Model, parse
from agent.operator import figures
from agent.operator.client import Operator, OperatorError, new_command_id
from agent.operator.rollout import (
    Action,
    Criterion,
    RolloutBusy,
    RolloutError,
    RolloutState,
    View,
    control,
    decode_state,
    encode_state,
    new_state,
    one_line,
    plan_waves,
    step,
)
from agent.store.atomic import atomic_write_bytes

ROLLOUT_LEVEL = "rollout"
CONTROL_ACTIONS = ("pause", "resume", "abort")


def rollout_topic(prefix: str, group: str, leaf: str) -> str:
    return f"{prefix}/fleet/{ROLLOUT_LEVEL}/{group}/{leaf}"


def check_group(group: str) -> str:
    if not group or any(ch in group for ch in "/+#"):
        raise RolloutError(f"{group!r} is not a group name (no '/', '+' or '#')")
    return group


class ControlMessage(Model, kw_only=True):
    """The retained `control` document: `fleet rollout pause|resume|abort` for the runner of rollout `rollout`."""

    rollout: str
    action: Literal["pause", "resume", "abort"]
    ts: float  # the sender's clock: a message is applied once (RolloutState.control_ts)
    by: str = "operator"


class RolloutDocs:
    """Retained rollout documents of one group (or of all, `group="+"`), parts joined."""

    def __init__(self, prefix: str, group: str) -> None:
        self.prefix = prefix
        self.group = group
        self.filter = f"{prefix}/fleet/{ROLLOUT_LEVEL}/{group}/#"
        self._lock = threading.Lock()
        self._raw: Dict[str, bytes] = {}

    def on_message(self, msg: Any) -> None:
        with self._lock:
            if msg.payload:
                self._raw[msg.topic] = bytes(msg.payload)
            else:
                self._raw.pop(msg.topic, None)

    def _doc(self, topic: str) -> Optional[bytes]:
        with self._lock:
            payload = self._raw.get(topic)
            if payload is None:
                return None
            header = parts_header(payload)
            if header is None:
                return payload
            parts = {}
            for name, value in self._raw.items():
                if name.startswith(topic + "/part/"):
                    try:
                        parts[int(name.rsplit("/", 1)[1])] = value
                    except ValueError:
                        continue
        return join(header, parts)

    def groups(self) -> List[str]:
        with self._lock:
            names = {t.split("/")[3] for t in self._raw if t.endswith("/state") and t.count("/") == 4}
        return sorted(names)

    def state(self, group: Optional[str] = None) -> Optional[RolloutState]:
        payload = self._doc(rollout_topic(self.prefix, group or self.group, "state"))
        if not payload:
            return None
        try:
            return decode_state(payload)
        except RolloutError:
            return None

    def control(self) -> Optional[ControlMessage]:
        """The group's retained control message; None when there is none or it is not one."""
        payload = self._doc(rollout_topic(self.prefix, self.group, "control"))
        if not payload:
            return None
        try:
            return msgspec.json.decode(payload, type=ControlMessage)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None

    def json_doc(self, leaf: str, group: Optional[str] = None) -> Dict[str, Any]:
        payload = self._doc(rollout_topic(self.prefix, group or self.group, leaf))
        if not payload:
            return {}
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class FleetView:
    """What the runner sees: every device's retained status, telemetry and own desired state, and the replies to
    the rollback jobs it sent. Callbacks only store (paho's network thread)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.statuses: Dict[str, Dict[str, Any]] = {}
        self.telemetry: Dict[str, Dict[str, Any]] = {}
        self.desired: Dict[str, bytes] = {}
        self.replies: Dict[str, str] = {}  # job id -> final state
        self.last_message = 0.0

    def on_device(self, msg: Any) -> None:
        name = device_of(msg.topic, self.prefix)
        if not name:
            return
        channel = msg.topic.rsplit("/", 1)[-1]
        self.last_message = time.monotonic()
        if channel == "desired":
            with self._lock:
                self.desired[name] = bytes(msg.payload)
            return
        if channel == "reply":
            try:
                reply = decode_reply(msg.payload)
            except MessageError:
                return
            if reply.state.terminal:
                with self._lock:
                    self.replies[reply.job_id] = reply.state.value
            return
        if not msg.payload:
            return
        try:
            document = decode(msg.payload)
        except MessageError:
            return
        with self._lock:
            if channel == "status":
                self.statuses[name] = document
            elif channel == "telemetry":
                self.telemetry[name] = figures.expand(document)

    def members(self, group: str) -> List[str]:
        with self._lock:
            return sorted(name for name, status in self.statuses.items() if group in figures.groups_of(status))

    def pin(self, device: str) -> Optional[Dict[str, Any]]:
        """The device's own desired deployment now (None: none, or unreadable)."""
        with self._lock:
            payload = self.desired.get(device, b"")
        try:
            deployment = decode_desired(payload)
        except DeploymentError:
            return None
        return deployment.to_dict() if deployment is not None else None

    def view(self, rollback_prefix: str) -> View:
        with self._lock:
            replies = {job[len(rollback_prefix):]: state for job, state in self.replies.items() if job.startswith(rollback_prefix)}
            return View(statuses=dict(self.statuses), telemetry=dict(self.telemetry), rollback_replies=replies)


@dataclass
class ControlOutcome:
    """What `RolloutRunner.apply_control` did: sent the action to the live runner (`sent_to` names it), or applied
    it here (`drive`: a resume or an abort that `run(state)` carries on from this process)."""

    state: RolloutState
    sent_to: str = ""
    drive: bool = False


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RolloutRunner:
    """`with RolloutRunner(broker, prefix, group) as runner: state = runner.start(...); runner.run(state)`."""

    def __init__(
        self,
        broker: BrokerConfig,
        prefix: str,
        group: str,
        *,
        state_file: Optional[str] = None,
        tick_s: float = 0.5,
        say: Optional[Callable[[str], None]] = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.group = check_group(group)
        self.state_file = Path(state_file) if state_file else None
        self.tick_s = tick_s
        self.say = say or (lambda _text: None)
        self.owner = owner_name()
        self.operator = Operator(broker, prefix, connect_timeout_s=connect_timeout_s)
        self.operator.link.client.will_set(self.topic("runner"), json.dumps({"alive": False}).encode(), qos=1, retain=True)
        self.fleet = FleetView(prefix)
        self.docs = RolloutDocs(prefix, group)
        self._driving = False
        self._opened = False
        self._saved = b""
        self.stop = threading.Event()

    def topic(self, leaf: str) -> str:
        return rollout_topic(self.prefix, self.group, leaf)

    # connection ------------------------------------------------------------------------------------------------
    def __enter__(self) -> RolloutRunner:
        return self if self._opened else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, settle_s: float = 1.0) -> RolloutRunner:
        self.operator.connect()
        self._opened = True
        link = self.operator.link
        for channel in ("status", "telemetry", "desired", "reply"):
            link.subscribe(all_devices(self.prefix, channel), self.fleet.on_device, qos=1)
        link.subscribe(self.docs.filter, self.docs.on_message, qos=1)
        self._settle(settle_s)
        return self

    def _settle(self, settle_s: float) -> None:
        """Wait for the retained messages: at least `settle_s`, then until none came for 0.3 s (at most 10 s)."""
        started = time.monotonic()
        time.sleep(settle_s)
        while time.monotonic() - started < 10.0 and time.monotonic() - self.fleet.last_message < 0.3:
            time.sleep(0.1)

    def close(self) -> None:
        if self._driving:
            self._release()
        self.operator.close()

    # the state ---------------------------------------------------------------------------------------------------
    def current(self) -> Optional[RolloutState]:
        if self.state_file is not None and self.state_file.is_file():
            try:
                from_file = decode_state(self.state_file.read_bytes())
            except (OSError, RolloutError) as exc:
                raise RolloutError(f"--state-file {self.state_file}: {exc}") from None
            from_broker = self.docs.state()
            if from_broker is None or from_broker.id != from_file.id or from_broker.updated_at <= from_file.updated_at:
                return from_file
            return from_broker
        return self.docs.state()

    def runner_alive(self) -> Dict[str, Any]:
        doc = self.docs.json_doc("runner")
        return doc if doc.get("alive") is True else {}

    def save(self, state: RolloutState) -> None:
        payload = encode_state(state)
        if payload == self._saved:
            return
        if self.state_file is not None:
            atomic_write_bytes(self.state_file, payload)
        for topic, part in split(self.topic("state"), payload, self.broker.max_payload):
            self.operator.publish(topic, part, retain=True)
        self._saved = payload

    def _claim(self, state: RolloutState) -> None:
        self.operator.publish(self.topic("runner"), json.dumps({"alive": True, "owner": self.owner, "rollout": state.id,
                                                                 "ts": round(time.time(), 3)}).encode(), retain=True)
        self._driving = True

    def _release(self) -> None:
        try:
            self.operator.publish(self.topic("runner"), json.dumps({"alive": False, "owner": self.owner}).encode(), retain=True)
        except OperatorError:
            pass
        self._driving = False

    # starting, resuming, controlling ------------------------------------------------------------------------------
    def start(
        self,
        deployment: Deployment,
        *,
        waves: List[Any],
        criteria: List[Criterion],
        canary: Optional[List[str]] = None,
        bake_s: float = 0.0,
        wave_timeout_s: float = 1800.0,
        rollback_timeout_s: float = 120.0,
        rollout_id: Optional[str] = None,
    ) -> RolloutState:
        existing = self.current()
        if existing is not None and existing.active:
            alive = self.runner_alive()
            how = f"driven by {alive.get('owner')}" if alive else "its runner is gone: `fleet rollout resume` continues it, `fleet rollout abort` rolls it back"
            raise RolloutBusy(f"group {self.group} already has rollout {existing.id} ({existing.status}, {how})", existing.id)
        members = self.fleet.members(self.group)
        rollout_id = rollout_id or f"ro-{new_command_id()}"
        planned = plan_waves(members, waves, canary=canary, salt=rollout_id)
        pins = {d: pin for d in members for pin in [self.fleet.pin(d)] if pin is not None}
        state = new_state(rollout_id=rollout_id, group=self.group, deployment=deployment.to_dict(), digest=deployment.digest(), waves=planned,
                          criteria=criteria, bake_s=bake_s, wave_timeout_s=wave_timeout_s, pins=pins, owner=self.owner, now=time.time(),
                          rollback_timeout_s=rollback_timeout_s)
        self.save(state)
        time.sleep(0.5)  # another operator's claim at the same instant shows up here
        won = self.docs.state()
        if won is not None and won.id != state.id:
            raise RolloutBusy(f"group {self.group}: rollout {won.id} started at the same time and holds the group", won.id)
        self._claim(state)
        self.say(state.history[-1])
        return state

    def take_over(self) -> RolloutState:
        """Continue the group's active rollout here (its runner was killed, or `resume` found none)."""
        state = self.current()
        if state is None or not state.active:
            raise RolloutError(f"group {self.group} has no active rollout" + (f" (the last one, {state.id}, is {state.status})" if state else ""))
        alive = self.runner_alive()
        if alive and alive.get("owner") != self.owner:
            raise RolloutBusy(f"rollout {state.id} is driven by {alive.get('owner')}", state.id)
        state.owner = self.owner
        self._saved = encode_state(state)  # as read: the first change is published
        self._claim(state)
        state.note(f"resumed by {self.owner}", time.time())
        self.save(state)
        return state

    def send_control(self, action: str) -> RolloutState:
        """pause | resume | abort: to the live runner (retained control message), or applied here and saved when
        there is none (resume and abort then need `run` here to carry on)."""
        if action not in CONTROL_ACTIONS:
            raise RolloutError(f"unknown action {action!r} (known: {', '.join(CONTROL_ACTIONS)})")
        state = self.current()
        if state is None or not state.active:
            raise RolloutError(f"group {self.group} has no active rollout")
        message = parse(ControlMessage, {"rollout": state.id, "action": action, "ts": round(time.time(), 3), "by": self.owner}, error=RolloutError)
        self.operator.publish(self.topic("control"), msgspec.json.encode(message), retain=True)
        return state

    def apply_control(self, action: str) -> ControlOutcome:
        """`fleet rollout pause|resume|abort`: sent to the live runner when one drives the rollout; else the rollout
        is taken over here and the action applied: a pause is saved, a resume or an abort is for `run` to carry on."""
        alive = self.runner_alive()
        if alive:
            return ControlOutcome(self.send_control(action), sent_to=str(alive.get("owner")))
        state = self.take_over()
        if action != "resume":
            control(state, action, time.time(), by=self.owner)
        if action == "pause":
            self.save(state)
            return ControlOutcome(state)
        if state.status == "paused":
            control(state, "resume", time.time(), by=self.owner)
        return ControlOutcome(state, drive=True)

    # running ----------------------------------------------------------------------------------------------------------
    def _apply_control(self, state: RolloutState) -> None:
        message = self.docs.control()
        if message is None or message.rollout != state.id or message.ts <= state.control_ts:
            return
        state.control_ts = message.ts
        if control(state, message.action, time.time(), by=message.by or "operator"):
            self.say(state.history[-1])

    def tick(self, state: RolloutState) -> List[Action]:
        self._apply_control(state)
        before = len(state.history)
        now = time.time()
        actions = step(state, self.fleet.view(f"rollout-{state.id}-"), now)
        for action in actions:
            self._execute(state, action)
        for line in state.history[before:]:
            self.say(line)
        if encode_state(state) != self._saved:
            state.updated_at = now
            self.save(state)
        return actions

    def run(self, state: RolloutState, *, timeout_s: Optional[float] = None) -> RolloutState:
        """Drive the rollout until it completes or is rolled back (or `stop` is set: it stays resumable)."""
        if not self._driving:
            self._claim(state)
        ends = time.monotonic() + timeout_s if timeout_s is not None else None
        while not self.stop.is_set() and state.status not in ("completed", "aborted"):
            self.tick(state)
            if ends is not None and time.monotonic() > ends:
                break
            if state.status not in ("completed", "aborted"):
                self.stop.wait(self.tick_s)
        if state.status in ("completed", "aborted"):
            self.operator.publish(self.topic("control"), b"", retain=True)
        self._release()
        return state

    def _desired(self, device: str, deployment: Optional[Deployment]) -> Tuple[str, bytes]:
        return self.operator.desired_topic(device=device), encode_desired(deployment)

    def _execute(self, state: RolloutState, action: Action) -> None:
        new = deployment_from_dict(state.deployment)
        if action.kind == "send":
            self.operator.publish_many([self._desired(device, new) for device in action.devices])
        elif action.kind == "rollback":
            for device in action.devices:
                try:
                    self.operator.command(device, "rollback", command_id=f"rollout-{state.id}-{device}", timeout_s=state.rollback_timeout_s)
                except OperatorError as exc:
                    self.say(f"rollback to {device} not sent: {exc}")
        elif action.kind == "restore":
            # the pin it had, else `{"deployment": null}`: "nothing from this source", so the group's wins. Not an
            # empty (clearing) message: a device that was offline would never hear of that one and keep following
            # the per-device deployment it last received
            self.operator.publish_many([self._desired(d, deployment_from_dict(state.pins[d]) if state.pins.get(d) else None) for d in action.devices])
        elif action.kind == "complete":
            self.operator.deploy(new, group=state.group)
            # the group's desired state now says the same; a device pin would shadow later group deploys
            self.operator.publish_many([self._desired(device, None) for device in action.devices])


class RolloutBoard:
    """Every group's rollout, for `fleet watch` and `fleet rollout status` (subscribes on an existing link)."""

    def __init__(self, link: Any, prefix: str) -> None:
        self.docs = RolloutDocs(prefix, "+")
        self.link = link
        link.subscribe(self.docs.filter, self.docs.on_message, qos=1)

    def states(self) -> List[RolloutState]:
        return [s for s in (self.docs.state(g) for g in self.docs.groups()) if s is not None]

    def lines(self, *, active_only: bool = True) -> List[str]:
        now = time.time()
        return [one_line(s, now) for s in self.states() if s.active or not active_only or (s.finished_at or 0) > now - 600]

    def close(self) -> None:
        self.link.unsubscribe(self.docs.filter)


def read_rollouts(broker: BrokerConfig, prefix: str, *, group: Optional[str] = None, wait_s: float = 1.0) -> List[RolloutState]:
    """The retained rollout state of every group, or of `group`, collected for `wait_s` (`fleet rollout status`)."""
    with Operator(broker, prefix) as operator:
        board = RolloutBoard(operator.link, prefix)
        time.sleep(wait_s)
        return [s for s in board.states() if not group or s.group == group]
