"""The operator's side of desired state and commands: `fleet deploy | cmd | status | watch`.

- deploy: publish a deployment retained on `<device>/desired` or `group/<name>/desired` (validated first with
  the same strict decoder the device uses, so a typo fails here, not on a thousand devices);
- cmd: publish a command with an id and wait for its job's replies. MQTT 5: response topic and correlation
  data; MQTT 3.1.1: `reply_to` in the payload. Either way the reply topic is the device's own `reply`
  channel, which broker ACLs already let the device write;
- status / watch: read the retained `status` of one or all devices, and their telemetry, into one table.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerConfig
from agent.errors import AgentError
from agent.fleet.commands import COMMANDS, Reply, check_args, decode_reply, encode_command
from agent.fleet.deployment import Deployment, encode_desired
from agent.fleet.link import MqttLink, unique_client_id, wait_acknowledged
from agent.fleet.messages import MessageError, decode
from agent.fleet.topics import Topics, all_devices, device_of
from agent.models import dump
from agent.operator import figures


class OperatorError(AgentError):
    """The operator's request could not be carried out (broker unreachable, no reply, bad input)."""


def new_command_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


@dataclass
class DeviceRow:
    """What the operator knows of one device: its retained status and its latest telemetry."""

    device: str
    status: Dict[str, Any] = field(default_factory=dict)
    telemetry: Dict[str, Any] = field(default_factory=dict)
    status_at: float = 0.0
    telemetry_at: float = 0.0

    # A device publishes on its own topics whatever it likes (a bug, an old version, an attacker with its
    # credentials): every section is read defensively, so one odd device never breaks the fleet's table.
    @property
    def state(self) -> str:
        if not self.status:
            return "?"
        if self.status.get("online") is False:
            return "offline"
        return str(self.status.get("state") or "?")

    @property
    def engine(self) -> str:
        serving = _section(self.status, "serving")
        if not serving:
            return "-"
        engine = _section(serving, "engine")
        return f"{serving.get('deployment_id')} ({engine.get('backend') or '?'} {serving.get('precision') or ''})".strip()

    @property
    def applying(self) -> str:
        applying = _section(self.status, "applying")
        return f"{applying.get('deployment_id')} @ {applying.get('step')}" if applying else "-"

    @property
    def error(self) -> str:
        error = _section(self.status, "last_error")
        return f"{error.get('step')}: {error.get('reason')}" if error else ""

    @property
    def fps(self) -> Optional[float]:
        value = figures.fps(self.telemetry)
        return round(value, 1) if value is not None else None

    @property
    def temperature_c(self) -> Optional[float]:
        """The hottest zone the device reports (tegrastats on a Jetson, thermal zones elsewhere, NVML GPUs)."""
        value = figures.hottest_c(self.telemetry)
        return round(value, 1) if value is not None else None

    def take(self, topic: str, document: Dict[str, Any]) -> bool:
        """A message of the device's `status` or `telemetry` channel; True when it was the status."""
        if topic.endswith("/status"):
            self.status, self.status_at = document, time.time()
            return True
        self.telemetry, self.telemetry_at = figures.expand(document), time.time()
        return False

    def to_dict(self) -> Dict[str, Any]:
        return {
            "device": self.device,
            "state": self.state,
            "engine": self.engine,
            "applying": self.applying,
            "fps": self.fps,
            "temperature_c": self.temperature_c,
            "version": self.status.get("version"),
            "last_error": self.status.get("last_error"),
            "status": self.status,
        }


def _section(document: Any, key: str) -> Dict[str, Any]:
    value = document.get(key) if isinstance(document, dict) else None
    return value if isinstance(value, dict) else {}


class Operator:
    """One operator connection. `with Operator(broker, prefix) as op: op.deploy(...)`."""

    def __init__(self, broker: BrokerConfig, prefix: str, *, connect_timeout_s: float = 10.0) -> None:
        self.broker = broker
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.link = MqttLink(broker, unique_client_id("operator"), persistent_session=False)
        self.protocol_v5 = self.link.protocol_v5
        self._lock = threading.Lock()
        self._waiters: Dict[str, queue.Queue[Reply]] = {}
        self._reply_topics: Set[str] = set()

    def __enter__(self) -> Operator:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Operator:
        self.link.start()
        if not self.link.wait_connected(self.connect_timeout_s):
            self.link.stop()
            why = self.link.last_error or "no answer"
            raise OperatorError(f"cannot reach the broker {self.broker.host}:{self.broker.port} within {self.connect_timeout_s:g} s ({why})")
        return self

    def close(self) -> None:
        self.link.stop()

    def topics(self, device: str) -> Topics:
        return Topics(self.prefix, device)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, properties: Optional[Properties] = None) -> None:
        """One QoS 1 message, waited for until the broker acknowledges it (OperatorError otherwise)."""
        self._check_fits(topic, payload)
        info = self.link.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        wait_acknowledged(info, self.connect_timeout_s, f"the message on {topic}", OperatorError)

    def publish_many(self, messages: List[Tuple[str, bytes]]) -> None:
        """Retained QoS 1 messages, all handed to the connection first and then waited for together: a wave of a
        thousand devices costs one round trip to a distant broker, not a thousand."""
        for topic, payload in messages:
            self._check_fits(topic, payload)
        infos = [(topic, self.link.client.publish(topic, payload, qos=1, retain=True)) for topic, payload in messages]
        deadline = time.monotonic() + max(10.0, len(infos) * 0.05)
        for topic, info in infos:
            wait_acknowledged(info, max(0.1, deadline - time.monotonic()), f"the message on {topic}", OperatorError)

    def _check_fits(self, topic: str, payload: bytes) -> None:
        if not self.link.fits(topic, payload):
            raise OperatorError(f"the message for {topic} is {len(payload)} bytes, over broker.max_payload ({self.broker.max_payload})")

    # desired state -----------------------------------------------------------------------------------------
    def desired_topic(self, device: Optional[str] = None, group: Optional[str] = None) -> str:
        if bool(device) == bool(group):
            raise OperatorError("name a device or a group (--group), not both")
        for name in (device, group):
            if name is not None and (not name or any(ch in name for ch in "/+#")):
                raise OperatorError(f"{name!r} is not a device or group name (no '/', '+' or '#')")
        if group:
            return Topics(self.prefix, "fleet").group(group, "desired")
        return self.topics(str(device)).desired

    def deploy(self, deployment: Optional[Deployment], *, device: Optional[str] = None, group: Optional[str] = None) -> str:
        """Publish the desired state (retained); None clears it (the device keeps serving what it has)."""
        topic = self.desired_topic(device, group)
        payload = encode_desired(deployment) if deployment is not None else b""
        self.publish(topic, payload, retain=True)
        return topic

    # commands --------------------------------------------------------------------------------------------
    def command(
        self,
        device: str,
        command_type: str,
        args: Optional[Dict[str, Any]] = None,
        *,
        command_id: Optional[str] = None,
        timeout_s: Optional[float] = None,
        wait: bool = False,
        wait_s: float = 30.0,
        on_reply: Optional[Callable[[Reply], None]] = None,
    ) -> List[Reply]:
        """Send one command; with `wait`, return its replies up to the terminal state (or raise on timeout)."""
        spec = COMMANDS.get(command_type)
        if spec is None:
            raise OperatorError(f"unknown command type {command_type!r} (known: {', '.join(COMMANDS)})")
        try:
            checked = check_args(spec, args or {})
        except MessageError as exc:
            raise OperatorError(f"{command_type}: {exc}") from None
        command_id = command_id or new_command_id()
        topics = self.topics(device)
        replies: queue.Queue[Reply] = queue.Queue()
        if wait:  # subscribe before sending, or the first replies could be missed
            self._watch_replies(topics.reply, command_id, replies)
        try:
            properties = None
            reply_to = ""
            if self.protocol_v5:
                properties = Properties(PacketTypes.PUBLISH)
                properties.ResponseTopic = topics.reply
                properties.CorrelationData = command_id.encode()
            else:
                reply_to = topics.reply
            sent_args = {k: v for k, v in dump(checked).items() if k in (args or {})}
            payload = encode_command(command_id, command_type, sent_args, device=device, timeout_s=timeout_s, reply_to=reply_to)
            self.publish(topics.cmd, payload, properties=properties)
            if not wait:
                return []
            return self._collect(device, command_id, replies, wait_s, on_reply)
        finally:
            if wait:
                self._unwatch_replies(topics.reply, command_id)

    def _watch_replies(self, topic: str, command_id: str, sink: queue.Queue[Reply]) -> None:
        """One subscription per reply topic for the session, shared by every command waiting on it (threads may
        wait at once); replies are routed to their waiter by job id."""
        with self._lock:
            self._waiters[command_id] = sink
            if topic in self._reply_topics:
                return
            self._reply_topics.add(topic)
        acked = threading.Event()
        self.link.client.on_subscribe = lambda *_a: acked.set()
        self.link.subscribe(topic, self._on_reply, qos=1)
        acked.wait(5.0)

    def _unwatch_replies(self, topic: str, command_id: str) -> None:
        # the subscription stays for the session: the next command to this device need not wait for a SUBACK
        with self._lock:
            self._waiters.pop(command_id, None)

    def _on_reply(self, msg: Any) -> None:
        try:
            reply = decode_reply(msg.payload)
        except MessageError:
            return
        with self._lock:
            sink = self._waiters.get(reply.job_id)
        if sink is not None:
            sink.put(reply)

    def _collect(
        self, device: str, command_id: str, replies: queue.Queue[Reply], wait_s: float, on_reply: Optional[Callable[[Reply], None]]
    ) -> List[Reply]:
        got: List[Reply] = []
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                last = got[-1].state.value if got else "no reply"
                raise OperatorError(f"command {command_id} to {device}: no final answer within {wait_s:g} s (last: {last})")
            try:
                reply = replies.get(timeout=remaining)
            except queue.Empty:
                continue
            got.append(reply)
            if on_reply is not None:
                on_reply(reply)
            if reply.state.terminal:
                return got

    # reading status ---------------------------------------------------------------------------------------
    def _device_document(self, msg: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
        """(device id, decoded JSON) of a device channel message; None for anything else (a cleared retained
        message, a foreign payload): the operator's view never trips over one bad device."""
        name = device_of(msg.topic, self.prefix)
        if not name or not msg.payload:
            return None
        try:
            return name, decode(msg.payload)
        except MessageError:
            return None

    def _row_updater(self, rows: Dict[str, DeviceRow], lock: threading.Lock, got_status: Optional[threading.Event] = None) -> Callable[[Any], None]:
        """A subscription handler that files each device's status and telemetry into `rows` (under `lock`),
        setting `got_status` when a status arrives."""

        def on_message(msg: Any) -> None:
            found = self._device_document(msg)
            if found is None:
                return
            name, document = found
            with lock:
                if rows.setdefault(name, DeviceRow(name)).take(msg.topic, document) and got_status is not None:
                    got_status.set()

        return on_message

    def status(self, device: Optional[str] = None, wait_s: float = 1.5) -> Dict[str, DeviceRow]:
        """The retained status of one device (waits up to `wait_s` for it) or of all (collects for `wait_s`),
        with the latest telemetry of each (retained too), so FPS and temperature are filled in."""
        rows: Dict[str, DeviceRow] = {}
        lock = threading.Lock()
        got = threading.Event()
        topic = self.topics(device).status if device else all_devices(self.prefix, "status")
        telemetry_topic = self.topics(device).telemetry if device else all_devices(self.prefix, "telemetry")

        on_message = self._row_updater(rows, lock, got)
        self.link.subscribe(telemetry_topic, on_message, qos=0)
        self.link.subscribe(topic, on_message, qos=1)
        try:
            if device:
                if got.wait(wait_s):
                    time.sleep(min(0.3, wait_s))  # the retained telemetry comes with it
            else:
                time.sleep(wait_s)
        finally:
            self.link.unsubscribe(topic)
            self.link.unsubscribe(telemetry_topic)
        with lock:
            return {name: row for name, row in rows.items() if row.status}

    def watch(self, *, interval_s: float = 1.0, duration_s: Optional[float] = None, device: Optional[str] = None) -> Iterator[List[DeviceRow]]:
        """Yield the fleet table every `interval_s` (status and telemetry of every device, or of one)."""
        rows: Dict[str, DeviceRow] = {}
        lock = threading.Lock()

        on_message = self._row_updater(rows, lock)
        filters = (
            [self.topics(device).status, self.topics(device).telemetry]
            if device
            else [all_devices(self.prefix, "status"), all_devices(self.prefix, "telemetry")]
        )
        for topic_filter in filters:
            self.link.subscribe(topic_filter, on_message, qos=0)
        ends = time.monotonic() + duration_s if duration_s is not None else None
        try:
            while ends is None or time.monotonic() < ends:
                time.sleep(interval_s if ends is None else max(0.0, min(interval_s, ends - time.monotonic())))
                with lock:
                    snapshot = [DeviceRow(r.device, dict(r.status), dict(r.telemetry), r.status_at, r.telemetry_at) for _, r in sorted(rows.items())]
                yield snapshot
        finally:
            for topic_filter in filters:
                self.link.unsubscribe(topic_filter)


def format_reply(reply: Reply) -> str:
    text = f"{reply.job_id or '(no id)'} {reply.type or '?'}: {reply.state.value}"
    if reply.detail:
        text += f" - {reply.detail}"
    if reply.result and reply.state.terminal:
        text += "\n" + json.dumps(reply.result, indent=2, sort_keys=True, default=str)
    return text
