"""The fleet protocol on a second, clustered broker: RabbitMQ's MQTT plugin, two nodes on this machine
(deploy/rabbitmq/start-cluster.sh), the device on one node and the operator on the other.

What differs from mosquitto, asserted here as RabbitMQ 3.x (Debian bookworm: 3.10) actually behaves, and how
the fleet copes (docs/scaling.md):
- MQTT 3.1.1 only (MQTT 5 from RabbitMQ 3.13): agents set broker.protocol = "3.1.1";
- retained messages are kept per node, and never sent to a wildcard subscription: the operator publishes
  desired state and manifests retained on every node; a device that restarts keeps serving from its own state
  file meanwhile;
- a refused publish or subscription closes the client's connection (mosquitto drops the message instead);
- topic levels are mapped to AMQP routing-key words, so a '.' in a device id splits a level: ids without '.'.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from agent.config import BrokerConfig
from tests.hardening.conftest import Probe, RabbitCluster
from tests.hardening.harness import (
    OperatorSide,
    SigningKeys,
    Watch,
    agent_env,
    cpu_deployment,
    serving_id,
    start_daemon,
)
from tests.helpers import tiny_classifier_onnx

pytestmark = pytest.mark.slow  # the cluster takes ~20 s to start


def node(cluster: RabbitCluster, index: int, user: str) -> BrokerConfig:
    password = cluster.operator_password if user == "operator" else cluster.device_password(user)
    return BrokerConfig(host="127.0.0.1", port=cluster.ports[index], protocol="3.1.1", username=user, password=password,
                        reconnect_min_s=1, reconnect_max_s=1)


def probe(cluster: RabbitCluster, index: int, user: str, probes: List[Probe], **kwargs: Any) -> Probe:
    config = node(cluster, index, user)
    made = Probe(config.port, username=user, password=config.password, protocol=kwargs.pop("protocol", "3.1.1"), tls=False, **kwargs).connect()
    probes.append(made)
    return made


def test_two_nodes_mqtt_311_only(rabbit_cluster: RabbitCluster, probes: List[Probe]) -> None:
    assert rabbit_cluster.info.get("RABBIT_CLUSTER_NODES") == "2", rabbit_cluster.info
    version = rabbit_cluster.info.get("RABBIT_VERSION", "")
    assert probe(rabbit_cluster, 0, "operator", probes).accepted
    assert probe(rabbit_cluster, 1, "operator", probes).accepted
    v5 = probe(rabbit_cluster, 0, "operator", probes, protocol="5")
    if version.startswith("3.") and int(version.split(".")[1]) < 13:
        assert not v5.accepted, f"RabbitMQ {version} accepted MQTT 5"


def test_retained_messages_live_on_the_node_that_took_them(rabbit_cluster: RabbitCluster, probes: List[Probe]) -> None:
    topic = "edge/rdev3/desired"
    marker = uuid.uuid4().hex.encode()
    operator = probe(rabbit_cluster, 1, "operator", probes)
    operator.publish(topic, marker, retain=True)
    same_node = probe(rabbit_cluster, 1, "rdev3", probes)
    other_node = probe(rabbit_cluster, 0, "rdev3", probes)
    wildcard = probe(rabbit_cluster, 1, "operator", probes)
    same_node.subscribe(topic)
    other_node.subscribe(topic)
    wildcard.subscribe("edge/+/desired")
    assert same_node.wait_for_message(topic), "the node that took the retained message did not deliver it"
    time.sleep(0.5)
    assert other_node.received(topic) == [], "RabbitMQ now replicates retained messages: update docs/scaling.md"
    assert wildcard.received(topic) == [], "RabbitMQ now sends retained messages to wildcard filters: update docs/scaling.md"
    # live messages do cross the cluster
    operator.publish(topic, b"live")
    assert other_node.wait_for_message(topic)
    operator.publish(topic, b"", retain=True)


def test_topic_permissions_confine_a_device_and_a_refusal_disconnects(rabbit_cluster: RabbitCluster, probes: List[Probe]) -> None:
    watcher = probe(rabbit_cluster, 1, "operator", probes)
    watcher.subscribe("edge/#")
    own = probe(rabbit_cluster, 0, "rdev3", probes)
    assert not own.publish("edge/rdev3/status", b"ok").is_failure
    assert watcher.wait_for_message("edge/rdev3/status")
    forger = probe(rabbit_cluster, 0, "rdev3", probes, client_id="rdev3-forger")
    forger.publish("edge/rdev1/status", b"forged")
    reader = probe(rabbit_cluster, 0, "rdev3", probes, client_id="rdev3-reader")
    reader.subscribe("edge/rdev1/cmd")
    time.sleep(0.5)
    assert forger.disconnects and reader.disconnects, "RabbitMQ closes a connection that oversteps its topic permissions"
    assert watcher.received("edge/rdev1/status") == []


@pytest.fixture()
def fleet(rabbit_cluster: RabbitCluster, tmp_path: Path, signing_keys: SigningKeys) -> Iterator[OperatorSide]:
    """The operator on node 2; manifests retained on both nodes (the per-node workaround)."""
    side = OperatorSide(node(rabbit_cluster, 1, "operator"), tmp_path / "fleet", signing_key=signing_keys.private_key,
                        also_retain_on=[node(rabbit_cluster, 0, "operator")])
    yield side
    side.close()


def test_fleet_flows_with_the_device_and_the_operator_on_different_nodes(
    rabbit_cluster: RabbitCluster, fleet: OperatorSide, tmp_path: Path, signing_keys: SigningKeys
) -> None:
    device = "rdev1"
    watch = Watch(rabbit_cluster.ports[1], username="operator", password=rabbit_cluster.operator_password, protocol="3.1.1")
    env = agent_env(node(rabbit_cluster, 0, device), tmp_path / "state", device, artifacts_public_keys=signing_keys.public_path)
    agent = start_daemon(env)
    try:
        model = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
        # RabbitMQ 3.x keeps retained messages on the node they were published to: desired state published on
        # node 2 reaches a device on node 1 only live, so wait until the device is online (subscribed)
        watch.wait_status(device, lambda s: bool(s.get("online")), timeout=60)
        # desired state: live across the cluster (the device is subscribed); artifacts: requests and blocks cross
        fleet.deploy(device, cpu_deployment("rabbit-1", model))
        watch.wait_serving(device, "rabbit-1", timeout=90)
        # a command and its reply
        fleet.operator.command(device, "ping", wait=False, command_id="rabbit-ping-1")
        watch.wait_reply(device, "rabbit-ping-1", "SUCCEEDED")
        # the device restarts: the retained desired state is on node 2 only, the device on node 1 serves on
        agent.stop()
        restarted = time.time()
        agent = start_daemon(env)
        status = watch.wait_status(
            device, lambda s: s.get("state") == "serving" and float(s.get("started_at") or 0) >= restarted - 1, timeout=60
        )
        assert serving_id(status) == "rabbit-1"
    finally:
        agent.stop()
        watch.close()
