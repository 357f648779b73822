"""TelemetryPublisher on a real mosquitto: documents arrive at the set interval, on demand, and are not queued
while the broker is away."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from agent.config import BrokerConfig, TelemetryConfig
from agent.daemon.telemetry_publisher import TelemetryPublisher, agent_provider
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.fleet.topics import Topics
from agent.telemetry.document import TelemetryCollector, validate_document
from tests.helpers import Collector

INTERVAL_S = 0.3


@pytest.fixture()
def link(broker: LocalBroker) -> Iterator[MqttLink]:
    mqtt = MqttLink(BrokerConfig(host=broker.host, port=broker.port), unique_client_id("telemetry-test"))
    mqtt.start()
    assert mqtt.wait_connected(10)
    yield mqtt
    mqtt.stop()


def _collector(tmp_path: Path, link: MqttLink, device: str) -> TelemetryCollector:
    return TelemetryCollector(TelemetryConfig(interval_s=INTERVAL_S), tmp_path, {"agent": agent_provider(link, "test")},
                              device_id=device, on_jetson=False)


def _receive(collector: Collector, count: int, timeout: float) -> List[Any]:
    messages: List[Any] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages.append(collector.wait_for(lambda _m: True, timeout=max(0.1, deadline - time.monotonic())))
    return messages


def test_documents_arrive_at_the_set_interval(broker: LocalBroker, link: MqttLink, tmp_path: Path) -> None:
    topic = Topics("edge", "tele-interval").telemetry
    watcher = Collector(broker.host, broker.port, [topic])
    publisher = TelemetryPublisher(link, topic, _collector(tmp_path, link, "tele-interval"), INTERVAL_S).start()
    try:
        started = time.monotonic()
        first = _receive(watcher, 1, timeout=15)
        first_after = time.monotonic() - started
        messages = first + _receive(watcher, 5, timeout=15)
        span = time.monotonic() - started
    finally:
        publisher.stop()
        publisher.collector.close()
        watcher.close()
    assert len(messages) == 6
    assert first_after >= INTERVAL_S * 0.8  # the first after one interval, not at once
    assert span >= 6 * INTERVAL_S * 0.8  # not faster than the interval
    docs = [json.loads(m.payload) for m in messages]
    gaps = [b["ts"] - a["ts"] for a, b in zip(docs, docs[1:])]
    # scheduled on a monotonic clock without drift: the mean gap is the interval (loose bounds: shared CI cores)
    assert INTERVAL_S * 0.7 <= statistics.mean(gaps) <= INTERVAL_S * 1.6, gaps
    assert all(validate_document(d) == [] for d in docs)
    assert docs[-1]["device"] == "tele-interval" and docs[-1]["agent"]["mqtt_connected"] is True
    assert docs[-1]["system"]["process"]["cpu_pct"] is not None
    assert publisher.published >= 6 and publisher.last_payload_bytes > 500


def test_publish_now_and_request_send_at_once(broker: LocalBroker, link: MqttLink, tmp_path: Path) -> None:
    topic = Topics("edge", "tele-now").telemetry
    watcher = Collector(broker.host, broker.port, [topic])
    publisher = TelemetryPublisher(link, topic, _collector(tmp_path, link, "tele-now"), interval_s=60.0).start()
    try:
        assert publisher.publish_now() is True
        assert json.loads(watcher.wait_for(lambda _m: True, timeout=5).payload)["kind"] == "telemetry"
        began = time.monotonic()
        publisher.request()  # from a command handler: returns at once, the publisher thread sends
        assert time.monotonic() - began < 0.1
        watcher.wait_for(lambda _m: True, timeout=5)
    finally:
        publisher.stop()
        publisher.collector.close()
        watcher.close()
    assert not publisher.running


def test_offline_telemetry_is_not_queued(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    link = MqttLink(BrokerConfig(host=fresh_broker.host, port=fresh_broker.port, reconnect_min_s=1, reconnect_max_s=1),
                    unique_client_id("telemetry-offline"))
    link.start()
    assert link.wait_connected(10)
    publisher = TelemetryPublisher(link, Topics("edge", "tele-off").telemetry, _collector(tmp_path, link, "tele-off"), 60.0)
    try:
        fresh_broker.kill()
        deadline = time.monotonic() + 10
        while link.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.publish_now() is False
        assert len(link.outbox) == 0 and publisher.skipped == 1
    finally:
        publisher.collector.close()
        link.stop()


def test_a_broken_collector_costs_one_document_not_the_thread(link: MqttLink, tmp_path: Path) -> None:
    class Broken(TelemetryCollector):
        def collect(self, compact_form: Any = None) -> Any:
            raise RuntimeError("boom")

    collector = Broken(TelemetryConfig(), tmp_path, on_jetson=False)
    publisher = TelemetryPublisher(link, "edge/tele-broken/telemetry", collector, 0.05).start()
    time.sleep(0.3)
    assert publisher.running and publisher.skipped >= 2
    publisher.stop()
    collector.close()


def test_interval_must_be_positive(link: MqttLink, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TelemetryPublisher(link, "t", TelemetryCollector(TelemetryConfig(), tmp_path, on_jetson=False), 0)


def test_a_new_interval_takes_effect_at_once(broker: LocalBroker, link: MqttLink, tmp_path: Path) -> None:
    topic = Topics("edge", "tele-retime").telemetry
    watcher = Collector(broker.host, broker.port, [topic])
    publisher = TelemetryPublisher(link, topic, _collector(tmp_path, link, "tele-retime"), interval_s=60.0).start()
    try:
        time.sleep(0.1)
        publisher.interval_s = INTERVAL_S  # as the daemon does when a deployment sets its own interval
        docs = [json.loads(m.payload) for m in _receive(watcher, 2, timeout=10)]
    finally:
        publisher.stop()
        publisher.collector.close()
        watcher.close()
    assert len(docs) == 2 and docs[-1]["interval_s"] == INTERVAL_S
    with pytest.raises(ValueError):
        publisher.interval_s = 0
