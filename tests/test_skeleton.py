"""The walking skeleton: CLI, configuration, the broker link."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config import load_config
from agent.errors import ConfigError
from agent.fleet.link import MqttLink, Outbox, OutboxItem, Will
from agent.fleet.local_broker import LocalBroker
from tests.helpers import Collector


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("run", "doctor", "status", "device", "calib", "engine", "camera", "telemetry", "fleet", "store", "bench", "version"):
        assert name in out


def test_version_json_names_the_agent(capsys: pytest.CaptureFixture) -> None:
    assert main(["version", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["agent"] and data["schema"] == 1


def test_unknown_subcommand_is_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "agent", "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "edge-agent" in out.stdout


def test_config_file_and_environment_override(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "cam-017"\n[broker]\nhost = "mqtt.example.com"\nport = 8883\n')
    config = load_config(str(path), env={"EDGE_AGENT_BROKER_PORT": "1884", "EDGE_AGENT_TELEMETRY_COMPACT": "true"})
    assert config.device.id == "cam-017"
    assert config.broker.host == "mqtt.example.com"
    assert config.broker.port == 1884
    assert config.telemetry.compact is True


@pytest.mark.parametrize(
    "text, key",
    [
        ('[broker]\nport = "abc"\n', "broker.port"),
        ("[broker]\nport = 70000\n", "broker.port"),
        ('[broker]\nprotocol = "4"\n', "broker.protocol"),
        ('[device]\nid = "a/b"\n', "device.id"),
        ("[broker]\nnope = 1\n", "broker.nope"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("[broker\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), env={})
    assert key in str(exc.value)


def test_env_override_with_bad_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, env={"EDGE_AGENT_BROKER_PORT": "x", "EDGE_AGENT_DEVICE_ID": "d"})
    assert "broker.port" in str(exc.value)


def test_link_starts_with_broker_down_and_connects_when_it_comes_up(agent_env: Path) -> None:
    from agent.fleet.local_broker import free_port

    port = free_port()
    config = load_config(None, env={"EDGE_AGENT_BROKER_PORT": str(port), "EDGE_AGENT_DEVICE_ID": "d1",
                                    "EDGE_AGENT_BROKER_RECONNECT_MAX_S": "1"})
    link = MqttLink(config.broker, "test-link-down")
    link.start()
    link.publish("edge/d1/events", b'{"queued": true}')
    assert not link.wait_connected(1.0)
    assert len(link.outbox) == 1
    with LocalBroker(port=port) as local:
        collector = Collector(local.host, local.port, ["edge/d1/#"])
        try:
            assert link.wait_connected(15)
            link.publish("edge/d1/events", b'{"live": true}')
            collector.wait_for(lambda m: b"live" in m.payload)
        finally:
            collector.close()
            link.stop()


def test_outbox_drops_oldest_when_full_and_counts(tmp_path: Path) -> None:
    outbox = Outbox(max_messages=3, path=tmp_path / "outbox.jsonl")
    for i in range(5):
        outbox.put(OutboxItem("t", str(i).encode(), 1, False))
    assert [i.payload for i in outbox.take_all()] == [b"2", b"3", b"4"]
    assert outbox.dropped == 2
    outbox.put(OutboxItem("t", b"kept", 1, False))
    outbox.save()
    again = Outbox(max_messages=3, path=tmp_path / "outbox.jsonl")
    assert [i.payload for i in again.take_all()] == [b"kept"]


def test_will_fires_when_connection_dies(broker: LocalBroker) -> None:
    from agent.config import BrokerConfig

    collector = Collector(broker.host, broker.port, ["edge/will-dev/status"])
    try:
        link = MqttLink(BrokerConfig(host=broker.host, port=broker.port, keepalive_s=5), "will-test",
                        will=Will("edge/will-dev/status", b'{"online": false}'))
        link.start()
        assert link.wait_connected(10)
        link.publish("edge/will-dev/status", b'{"online": true}', retain=True)
        collector.wait_for(lambda m: b"true" in m.payload)
        link.client._sock_close()  # drop the TCP connection without DISCONNECT, as a crash would
        link.client.loop_stop()
        collector.wait_for(lambda m: b"false" in m.payload, timeout=20)
    finally:
        collector.close()
    time.sleep(0)
