"""Publishes the telemetry document to `<prefix>/<device>/telemetry` at an interval and on demand.

Telemetry is a reading, not a record: a document that cannot go out now is stale by the time the broker
returns, so it is never queued in the outbox (`keep_if_offline=False`), and QoS 0 is the default.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

from agent.fleet.link import MqttLink
from agent.telemetry.document import TelemetryCollector, encode_document
from agent.telemetry.soft import SoftSources

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0


class TelemetryPublisher:
    """A thread that publishes `collector.collect()` every `interval_s` seconds (the first one interval after
    `start()`, so CPU percentages cover a full window). `request()` asks for a document now without blocking
    (for command handlers on paho's network thread); `publish_now()` collects and publishes in the caller."""

    def __init__(
        self,
        link: MqttLink,
        topic: str,
        collector: TelemetryCollector,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        qos: int = 0,
        retain: bool = False,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.link = link
        self.topic = topic
        self.collector = collector
        self._interval_s = float(interval_s)
        collector.interval_s = self._interval_s
        self.qos = qos
        self.retain = retain
        self.published = 0  # handed to the broker connection
        self.skipped = 0  # not sent: offline or collection failed
        self.last_payload_bytes = 0
        self._sources = SoftSources(log)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._requested = False
        self._rescheduled = False
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> TelemetryPublisher:
        if self._thread is None:
            self.collector.start()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="telemetry-publisher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @interval_s.setter
    def interval_s(self, value: float) -> None:
        """A new interval (a deployment may set its own) takes effect now, counted from the last document."""
        if value <= 0:
            raise ValueError(f"interval_s must be positive, got {value}")
        if float(value) != self._interval_s:
            self._interval_s = float(value)
            self.collector.interval_s = self._interval_s
            self._rescheduled = True
            self._wake.set()

    def request(self) -> None:
        """Publish a document as soon as the publisher thread wakes (returns at once)."""
        self._requested = True
        self._wake.set()

    def publish_now(self) -> bool:
        """Collect and publish one document in the calling thread; True if handed to the broker."""
        with self._lock:
            try:
                payload = encode_document(self.collector.collect())
            except Exception as exc:  # collection bugs must not kill the thread or the daemon
                self._sources.fail("telemetry document", f"{type(exc).__name__}: {exc}")
                self.skipped += 1
                return False
            self._sources.ok("telemetry document")
            self.last_payload_bytes = len(payload)
            sent = self.link.publish(self.topic, payload, qos=self.qos, retain=self.retain, keep_if_offline=False)
            if sent:
                self.published += 1
            else:
                self.skipped += 1
            return sent

    def _run(self) -> None:
        last_at = time.monotonic()
        next_at = last_at + self._interval_s
        while not self._stopping:
            woken = self._wake.wait(max(0.0, next_at - time.monotonic()))
            if self._stopping:
                break
            if woken:
                self._wake.clear()
                if self._rescheduled:
                    self._rescheduled = False
                    next_at = last_at + self._interval_s
                if self._requested:
                    self._requested = False
                    self.publish_now()
                continue
            self.publish_now()
            last_at = next_at
            next_at += self._interval_s
            now = time.monotonic()
            if next_at <= now:  # fell behind (a slow collection, a suspended device): skip, do not burst
                last_at, next_at = now, now + self._interval_s


def agent_provider(link: MqttLink, version: str, started_monotonic: Optional[float] = None) -> Callable[[], Dict[str, Any]]:
    """A provider for the `agent` section from an MqttLink: version, uptime, connection, reconnects, outbox."""
    started = time.monotonic() if started_monotonic is None else started_monotonic

    def section() -> Dict[str, Any]:
        return {
            "version": version,
            "uptime_s": round(time.monotonic() - started, 1),
            "mqtt_connected": link.connected.is_set(),
            "mqtt_reconnects": link.reconnects,
            "outbox_depth": len(link.outbox),
            "outbox_dropped": link.outbox.dropped,
        }

    return section
