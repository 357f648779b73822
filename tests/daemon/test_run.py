"""`edge-agent run` against a real mosquitto: retained status, last will on kill -9, ping, SIGTERM, a broker
that is down at boot, TLS with a password, MQTT 3.1.1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from agent import __version__
from agent.daemon.daemon import Daemon
from agent.fleet.commands import encode_command
from agent.fleet.local_broker import LocalBroker
from tests.daemon.conftest import AgentProcess, agent_env, is_reply, is_status, make_config
from tests.helpers import Collector, json_of


def test_run_publishes_retained_status_answers_ping_and_its_will_fires_on_kill9(
    broker: LocalBroker, tmp_path: Path, spawn_agent: Callable[..., AgentProcess], collector_for: Callable[..., Collector]
) -> None:
    agent = spawn_agent(agent_env(broker, tmp_path / "state", "run-dev"))
    live = collector_for(broker, ["edge/run-dev/#"])
    status = json_of(live.wait_for(is_status(lambda s: s.get("online") is True), timeout=30))
    assert status["version"] == __version__ and status["device"] == "run-dev"
    assert status["fingerprint"]["cpu_arch"] and status["state"] == "degraded"  # no deployment yet
    # a late subscriber gets it retained
    late = collector_for(broker, ["edge/run-dev/status"])
    retained = late.wait_for(lambda m: m.retain, timeout=5)
    assert json_of(retained)["online"] is True

    live.publish("edge/run-dev/cmd", encode_command("ping-1", "ping"))
    done = json_of(live.wait_for(is_reply("ping-1", "SUCCEEDED"), timeout=10))
    assert done["result"]["pong"] is True

    agent.kill9()
    will = json_of(live.wait_for(is_status(lambda s: s.get("online") is False), timeout=10))
    assert will == {**will, "state": "offline", "reason": "connection lost", "device": "run-dev"}
    again = collector_for(broker, ["edge/run-dev/status"])
    assert json_of(again.wait_for(lambda m: m.retain, timeout=5))["online"] is False  # the will is retained


def test_sigterm_publishes_offline_and_exits_cleanly(
    broker: LocalBroker, tmp_path: Path, spawn_agent: Callable[..., AgentProcess], collector_for: Callable[..., Collector]
) -> None:
    agent = spawn_agent(agent_env(broker, tmp_path / "state", "term-dev"))
    live = collector_for(broker, ["edge/term-dev/status"])
    live.wait_for(is_status(lambda s: s.get("online") is True), timeout=30)
    started = time.monotonic()
    assert agent.terminate(timeout=30) == 0
    assert time.monotonic() - started < 10
    final = json_of(live.wait_for(is_status(lambda s: s.get("online") is False), timeout=5))
    assert final["reason"] == "stopped"
    status_file = (tmp_path / "state" / "status.json").read_text()
    assert '"online": false' in status_file


def test_starts_with_the_broker_down_and_connects_when_it_comes(
    fresh_broker: LocalBroker, tmp_path: Path, collector_for: Callable[..., Collector]
) -> None:
    fresh_broker.stop()
    config = make_config(fresh_broker, tmp_path / "state", "late-dev")
    daemon = Daemon(config).start()  # never fails for a missing broker
    try:
        assert daemon.reconciler.ready.wait(5)  # ready (degraded) without the broker
        time.sleep(1.0)
        assert not daemon.link.connected.is_set()
        daemon.event("test.queued", {"n": 1})  # an event of value while away: kept in the outbox
        assert len(daemon.outbox) == 1
        fresh_broker.start()
        live = collector_for(fresh_broker, ["edge/late-dev/#"])
        assert daemon.link.wait_connected(15)
        status = live.wait_for(is_status(lambda s: s.get("online") is True), timeout=10)
        assert json_of(status)["device"] == "late-dev"
        assert len(daemon.outbox) == 0  # flushed on connect
    finally:
        daemon.stop()


def test_tls_broker_with_password(tmp_path: Path, collector_for: Callable[..., Collector], tls_broker_readable: Dict[str, Any]) -> None:
    tls_broker = tls_broker_readable
    broker = tls_broker["broker"]
    config = make_config(broker, tmp_path / "state", "tls-dev", broker_tls="true", broker_ca_file=str(tls_broker["ca"]), broker_username="tls-dev", broker_password="secret")
    daemon = Daemon(config).start()
    try:
        assert daemon.link.wait_connected(10), daemon.link.last_error
        assert daemon.reconciler.ready.wait(5)
        status = wait_status(daemon)
        assert status["online"] is True
    finally:
        daemon.stop()


def wait_status(daemon: Daemon, timeout: float = 5.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.status_published:
            return daemon.status_document()
        time.sleep(0.05)
    raise AssertionError("no status published")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_ping_reply_goes_where_the_operator_asked(
    broker: LocalBroker, tmp_path: Path, collector_for: Callable[..., Collector], protocol: str
) -> None:
    from agent.config import BrokerConfig
    from agent.operator.client import Operator

    device = f"proto-{protocol.replace('.', '')}"
    config = make_config(broker, tmp_path / "state", device, broker_protocol=protocol)
    daemon = Daemon(config).start()
    try:
        assert daemon.link.wait_connected(10)
        with Operator(BrokerConfig(host=broker.host, port=broker.port, protocol=protocol), "edge") as operator:
            replies = operator.command(device, "ping", wait=True, wait_s=10)
        assert [r.state.value for r in replies] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
        assert replies[-1].result["pong"] is True
    finally:
        daemon.stop()
