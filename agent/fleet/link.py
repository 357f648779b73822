"""The device's (and operator's) connection to the broker: paho-mqtt 2.x with its own reconnect, a last will,
subscriptions restored on every connect, and a bounded outbox so nothing of value is dropped while the broker
is away (oldest first when full, counted).

Callback discipline (paho's own examples): callbacks run on paho's network thread, so they stay short;
handlers registered with `subscribe` must hand real work to a queue.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Type

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerConfig
from agent.errors import AgentError
from agent.fleet.limits import fit_json, fits, payload_budget
from agent.store.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

Handler = Callable[[mqtt.MQTTMessage], None]


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class OutboxItem:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """Messages waiting for the broker. Bounded; when full the oldest is dropped and counted.
    Optionally persisted (atomically) so queued events survive an agent restart."""

    def __init__(self, max_messages: int = 10000, path: Optional[Path] = None) -> None:
        self.max_messages = max(1, max_messages)
        self.path = path
        self.dropped = 0
        self._items: Deque[OutboxItem] = collections.deque()
        self._lock = threading.Lock()
        if path is not None:
            self._load()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, item: OutboxItem) -> None:
        with self._lock:
            self._items.append(item)
            while len(self._items) > self.max_messages:
                self._items.popleft()
                self.dropped += 1

    def take_all(self) -> List[OutboxItem]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    def requeue_front(self, items: List[OutboxItem]) -> None:
        with self._lock:
            self._items.extendleft(reversed(items))
            while len(self._items) > self.max_messages:
                self._items.popleft()
                self.dropped += 1

    def save(self) -> None:
        if self.path is None:
            return
        with self._lock:
            lines = [
                json.dumps({"t": i.topic, "p": i.payload.decode("utf-8", "replace"), "q": i.qos, "r": i.retain})
                for i in self._items
            ]
        atomic_write_bytes(self.path, ("\n".join(lines) + "\n").encode() if lines else b"")

    def _load(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                item = OutboxItem(str(raw["t"]), str(raw["p"]).encode(), int(raw["q"]), bool(raw["r"]))
            except (ValueError, KeyError, TypeError, RecursionError):
                log.warning("outbox: skipped an unreadable line in %s", self.path)
                continue
            if item.qos not in (0, 1, 2) or not item.topic or any(ch in item.topic for ch in "+#\0"):
                log.warning("outbox: skipped a message with an invalid topic or QoS in %s", self.path)
                continue
            self._items.append(item)
        while len(self._items) > self.max_messages:
            self._items.popleft()
            self.dropped += 1


class MqttLink:
    """One MQTT connection: `start()` never fails because the broker is down; it keeps trying."""

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        will: Optional[Will] = None,
        outbox: Optional[Outbox] = None,
        persistent_session: bool = True,
        on_connected: Optional[Callable[[], None]] = None,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.outbox = outbox if outbox is not None else Outbox()
        self.connected = threading.Event()
        self.reconnects = 0
        self.connects = 0
        self.oversize = 0  # messages refused because they could not be made to fit broker.max_payload
        self.last_error = ""
        self._on_connected = on_connected
        self._subscriptions: Dict[str, Tuple[int, Handler]] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False
        self.protocol_v5 = broker.protocol == "5"
        protocol = mqtt.MQTTv5 if self.protocol_v5 else mqtt.MQTTv311
        kwargs: Dict[str, Any] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id, "protocol": protocol}
        if not self.protocol_v5:
            kwargs["clean_session"] = not persistent_session
        self._persistent = persistent_session
        self.client = mqtt.Client(**kwargs)
        self.client.enable_logger(logging.getLogger("paho"))
        self.client.reconnect_delay_set(min_delay=max(1, int(broker.reconnect_min_s)), max_delay=max(1, int(broker.reconnect_max_s)))
        self.client.max_queued_messages_set(0)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password or None)
        if broker.tls:
            self.client.tls_set(
                ca_certs=broker.ca_file or None,
                certfile=broker.cert_file or None,
                keyfile=broker.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_connect_fail = self._handle_connect_fail

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        properties = None
        if self.protocol_v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600 if self._persistent else 0
        self.client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive_s,
            clean_start=not self._persistent if self.protocol_v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self.client.loop_start()
        self._started = True

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, final: Optional[OutboxItem] = None, flush_timeout: float = 3.0) -> None:
        """Publish `final` (for example an offline status) if connected, flush, disconnect cleanly
        (a clean disconnect does not fire the will), and persist what could not be sent."""
        self._stopping = True
        if self.connected.is_set() and final is not None:
            info = self.client.publish(final.topic, final.payload, qos=final.qos, retain=final.retain)
            try:
                info.wait_for_publish(timeout=flush_timeout)
            except (RuntimeError, ValueError):
                pass
        if self._started:
            # paho 2.2's loop thread logs "Client is not connected" at ERROR when it races a deliberate
            # disconnect; nothing is wrong then, so its logger is detached for the shutdown.
            self.client.disable_logger()
            self.client.disconnect()
            self.client.loop_stop()
        self.connected.clear()
        self.outbox.save()

    # subscribe / publish ---------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        with self._lock:
            self._subscriptions[topic_filter] = (qos, handler)
        self.client.message_callback_add(topic_filter, lambda _c, _u, msg: self._dispatch(handler, msg))
        if self.connected.is_set():
            self.client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
        self.client.message_callback_remove(topic_filter)
        if self.connected.is_set():
            self.client.unsubscribe(topic_filter)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        keep_if_offline: bool = True,
        properties: Optional[Properties] = None,
    ) -> bool:
        """Publish now if connected; otherwise keep it in the outbox (unless keep_if_offline is False, for
        values that are stale by the time the broker returns, such as per-frame results). Returns True if
        handed to the broker connection. A payload over `broker.max_payload` is trimmed to fit (JSON, with a
        note saying what went) or refused (anything else): a broker disconnects a client that sends more."""
        fitted = self.fit(topic, payload)
        if fitted is None:
            return False
        payload = fitted
        if self.connected.is_set():
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                return True
        if keep_if_offline:
            self.outbox.put(OutboxItem(topic, payload, qos, retain))
        return False

    def fits(self, topic: str, payload: bytes) -> bool:
        return fits(topic, payload, self.broker.max_payload)

    def fit(self, topic: str, payload: bytes) -> Optional[bytes]:
        """`payload` as it can go out under broker.max_payload: itself, a trimmed copy, or None (logged, counted)."""
        if fits(topic, payload, self.broker.max_payload):
            return payload
        fitted = fit_json(payload, payload_budget(topic, self.broker.max_payload))
        if fitted is None:
            self.oversize += 1
            log.warning("not sent to %s: %d bytes do not fit broker.max_payload (%d) and cannot be trimmed", topic, len(payload), self.broker.max_payload)
        return fitted

    # paho callbacks (network thread: short) -----------------------------------------------------------
    def _dispatch(self, handler: Handler, msg: mqtt.MQTTMessage) -> None:
        try:
            handler(msg)
        except Exception:  # a handler bug must not kill paho's network thread
            log.exception("handler for %s failed", msg.topic)

    def _handle_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            self.last_error = f"connect refused: {reason_code}"
            log.warning("broker %s:%s refused the connection: %s", self.broker.host, self.broker.port, reason_code)
            return
        ensure_no_delay(self)
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        with self._lock:
            subs = [(topic, qos) for topic, (qos, _h) in self._subscriptions.items()]
        if subs:
            client.subscribe(subs)
        self.connected.set()
        log.info("connected to %s:%s", self.broker.host, self.broker.port)
        queued = self.outbox.take_all()
        unsent: List[OutboxItem] = []
        for item in queued:
            info = client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                unsent.append(item)
        if unsent:
            self.outbox.requeue_front(unsent)
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("on_connected hook failed")

    def _handle_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._stopping:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("broker connection lost (%s); paho reconnects with backoff", reason_code)

    def _handle_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self.last_error = f"cannot reach broker {self.broker.host}:{self.broker.port}"
        log.debug("connect to %s:%s failed; retrying", self.broker.host, self.broker.port)


def ensure_no_delay(link: MqttLink) -> None:
    """Turn off Nagle's algorithm on the link's socket. Small packets (block requests, command replies) held back
    until the previous one is acknowledged meet the peer's delayed ACK and cost 40 ms each. Called on every
    connect (a reconnect makes a new socket); idempotent and cheap."""
    setsockopt = getattr(link.client.socket(), "setsockopt", None)
    if setsockopt is None:
        return
    try:
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not TCP (a websocket transport): nothing to tune
        pass


def reply_properties(request: mqtt.MQTTMessage) -> Tuple[Optional[str], Optional[Properties]]:
    """MQTT 5 request/response: the response topic and correlation data of a request, as publish properties."""
    props = getattr(request, "properties", None)
    topic = getattr(props, "ResponseTopic", None) if props is not None else None
    if not topic:
        return None, None
    out = Properties(PacketTypes.PUBLISH)
    correlation = getattr(props, "CorrelationData", None)
    if correlation:
        out.CorrelationData = correlation
    return str(topic), out


_ids = itertools.count(1)


def unique_client_id(role: str) -> str:
    return f"edge-agent-{role}-{int(time.time() * 1000) % 10**9}-{next(_ids)}"


def wait_acknowledged(info: Any, timeout_s: float, what: str, error: Type[AgentError] = AgentError) -> None:
    """Wait until the broker acknowledges a QoS 1 publish (`info`, from client.publish); raise `error` naming `what`
    ("the manifest for ab12...") when paho gives up on it or no acknowledgement comes within `timeout_s`."""
    try:
        info.wait_for_publish(timeout=timeout_s)
    except (RuntimeError, ValueError) as exc:
        raise error(f"the broker did not take {what}: {exc}") from None
    if not info.is_published():
        raise error(f"the broker did not acknowledge {what} within {timeout_s:g} s")
