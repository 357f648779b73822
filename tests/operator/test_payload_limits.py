"""A broker with a packet limit (mosquitto `max_packet_size 131072`, AWS IoT Core's 128 KB): the whole fleet flow
with real agents (in-process daemons, onnxruntime): signed artifacts in blocks sized to the limit, a staged
rollout, an operator abort, the real `rollback` command, status and commands; nobody is disconnected."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.config import BrokerConfig
from agent.daemon.daemon import Daemon
from agent.fleet.deployment import deployment_from_dict
from agent.fleet.limits import block_size_for
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.operator.rollout import parse_criteria, parse_waves
from agent.operator.rollout_runner import RolloutRunner
from tests.daemon.conftest import make_config
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts, wide_classifier_onnx
from tests.helpers import Collector, wait_until

LIMIT = 131072


@pytest.fixture()
def small_broker() -> Iterator[LocalBroker]:
    with LocalBroker(extra_config=f"max_packet_size {LIMIT}") as running:
        yield running


def test_the_whole_flow_on_a_128_kib_broker(small_broker: LocalBroker, tmp_path: Path) -> None:
    kit = FleetKit(small_broker, tmp_path / "fleet", chunk_bytes=block_size_for(LIMIT, 256 * 1024))
    kit.broker_config.max_payload = LIMIT
    daemons: List[Daemon] = []
    try:
        made = make_tiny_artifacts(tmp_path / "tiny")
        wide = wide_classifier_onnx(tmp_path / "wide.onnx")
        assert wide.stat().st_size > 4 * LIMIT
        ids = {"model": kit.publish(made.model, "model"), "table": kit.publish(made.table, "calib"),
               "validation": kit.publish(made.validation, "validation"), "wide": kit.publish(wide, "model")}
        v1 = deployment_from_dict({"id": "tiny-v1", "model": ids["model"], "table": ids["table"], "validation": ids["validation"],
                                   "precision": "int8", "target": "cpu", "preprocess": TINY_PREPROCESS,
                                   "accuracy": {"top1_agreement": 0.5, "top5_containment": 0.5}})
        v2 = deployment_from_dict({"id": "wide-v2", "model": ids["wide"], "precision": "fp32", "target": "cpu",
                                   "preprocess": TINY_PREPROCESS})
        kit.operator.deploy(v1, group="lobby")
        for name in ("cam-a", "cam-b"):
            config = make_config(small_broker, tmp_path / name, name, artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false",
                                 device_groups="lobby", broker_max_payload=str(LIMIT), telemetry_interval_s="1")
            daemons.append(Daemon(config).start())
        for daemon in daemons:
            wait_until(lambda d=daemon: d.serving.deployment is not None and d.serving.deployment.id == "tiny-v1", 60, "tiny-v1 serving")
        broker_config = BrokerConfig(host=small_broker.host, port=small_broker.port, max_payload=LIMIT)
        lines: List[str] = []
        with RolloutRunner(broker_config, "edge", "lobby", tick_s=0.2, say=lines.append).open(settle_s=0.5) as runner:
            assert runner.fleet.members("lobby") == ["cam-a", "cam-b"]
            state = runner.start(v2, waves=parse_waves("1,100%"), criteria=parse_criteria([]), bake_s=60, rollout_id="ro-wide")
            canary = state.waves[0].devices[0]
            first = next(d for d in daemons if d.device_id == canary)
            other = next(d for d in daemons if d.device_id != canary)
            wait_until(lambda: (runner.tick(state), state.phase == "bake")[1], 60, lambda: "\n".join(lines))
            assert first.serving.deployment is not None and first.serving.deployment.id == "wide-v2"  # 1 MB in blocks under the limit
            runner.send_control("abort")
            state = runner.run(state, timeout_s=60)
        assert state.status == "aborted" and state.abort is not None and state.abort.by == "operator", lines
        wait_until(lambda: first.serving.deployment is not None and first.serving.deployment.id == "tiny-v1", 30, "the canary rolled back")
        status = first.status_document()
        assert any(b.get("deployment_id") == "wide-v2" and b.get("step") == "rollback" for b in status["blocked"])
        assert other.serving.deployment is not None and other.serving.deployment.id == "tiny-v1"
        assert "wide-v2" not in [e.get("deployment_id") for e in other.status_document()["blocked"]]
        time.sleep(1.5)  # the devices stay on v1: their own desired state says "none", the group's says v1
        assert first.serving.deployment.id == "tiny-v1" and other.serving.deployment is not None and other.serving.deployment.id == "tiny-v1"
        # status (with telemetry, retained) and commands work on the limited broker
        rows = kit.operator.status(wait_s=1.5)
        assert sorted(rows) == ["cam-a", "cam-b"] and all(r.state == "serving" and r.telemetry for r in rows.values())
        replies = kit.operator.command("cam-b", "diagnostics", wait=True, wait_s=30)
        assert replies[-1].state.value == "SUCCEEDED"
        assert all(d.link.reconnects == 0 and d.link.oversize == 0 for d in daemons)
        assert "exceed" not in small_broker.log_path.read_text(errors="replace").lower()
    finally:
        for daemon in daemons:
            daemon.stop()
        kit.close()


def test_a_document_over_the_limit_arrives_trimmed_with_a_note(small_broker: LocalBroker) -> None:
    config = BrokerConfig(host=small_broker.host, port=small_broker.port, max_payload=LIMIT)
    collector = Collector(small_broker.host, small_broker.port, ["edge/cam-x/results", "edge/cam-x/snapshot"])
    link = MqttLink(config, unique_client_id("test"), persistent_session=False)
    link.start()
    try:
        assert link.wait_connected(10)
        detections = [{"label": f"thing-{i}", "score": 0.5, "box": [i, i, i + 10, i + 10]} for i in range(4000)]
        big = json.dumps({"schema": 1, "kind": "result", "frame": 7, "detections": detections}).encode()
        assert len(big) > LIMIT
        assert link.publish("edge/cam-x/results", big, qos=1)
        got = json.loads(collector.wait_for(lambda m: m.topic.endswith("/results")).payload)
        assert got["frame"] == 7 and 0 < len(got["detections"]) < 4000 and got["trimmed"]["fields"]
        assert not link.publish("edge/cam-x/snapshot", b"\xff\xd8" + b"\0" * LIMIT, qos=1)  # binary: refused, not sent
        assert link.oversize == 1 and link.connected.is_set()
    finally:
        link.stop()
        collector.close()


def test_blocks_too_big_for_the_broker_are_answered_with_a_reason(small_broker: LocalBroker, tmp_path: Path) -> None:
    from agent.config import ArtifactsConfig
    from agent.errors import AgentError
    from agent.fleet.topics import Topics
    from agent.fleet.transfer import ArtifactPuller
    from agent.store.artifacts import ArtifactStore

    kit = FleetKit(small_broker, tmp_path / "fleet", chunk_bytes=256 * 1024)  # published without regard to the limit
    kit.broker_config.max_payload = LIMIT
    link = MqttLink(BrokerConfig(host=small_broker.host, port=small_broker.port, max_payload=LIMIT), unique_client_id("dev"), persistent_session=False)
    try:
        artifact = kit.publish(wide_classifier_onnx(tmp_path / "wide.onnx"), "model")
        link.start()
        assert link.wait_connected(10)
        puller = ArtifactPuller(link, Topics("edge", "cam-z"), ArtifactStore(tmp_path / "store"),
                                ArtifactsConfig(public_keys=[kit.public_key], block_timeout_s=1.0), min_free_mb=0)
        with pytest.raises(AgentError, match="max_payload"):
            puller.pull(artifact, expect_kind="model", timeout_s=8)
        assert kit.link.connected.is_set() and kit.link.reconnects == 0  # the server was not disconnected for it
    finally:
        link.stop()
        kit.close()
