"""Fixtures of the operator tests: a real mosquitto, a simulated fleet on it, deployments."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Dict, Iterator, List

import pytest

from agent.config import BrokerConfig
from agent.fleet.deployment import Deployment, deployment_from_dict
from agent.fleet.local_broker import LocalBroker
from agent.operator.client import Operator
from tests.operator.simfleet import SimFleet, Verdict

GROUP = "lobby"


def deployment(name: str, seed: str) -> Deployment:
    return deployment_from_dict({"id": name, "model": hashlib.sha256(seed.encode()).hexdigest(), "precision": "fp16"})


OLD = deployment("effnet-v1", "old")
NEW = deployment("effnet-v2", "new")


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


@pytest.fixture()
def broker_config(broker: LocalBroker) -> BrokerConfig:
    return BrokerConfig(host=broker.host, port=broker.port, reconnect_min_s=1, reconnect_max_s=1)


@pytest.fixture()
def make_fleet(broker_config: BrokerConfig) -> Iterator[Callable[..., SimFleet]]:
    """`make_fleet(n, verdict)`: n simulated devices in group lobby, all serving OLD, the group desiring OLD."""
    fleets: List[SimFleet] = []

    def make(count: int, verdict: Callable[[str, Deployment], Verdict], **kwargs: Any) -> SimFleet:
        with Operator(broker_config, "edge") as op:
            op.deploy(OLD, group=GROUP)
        fleet = SimFleet(broker_config, count, GROUP, verdict, initial=OLD, **kwargs).start()
        fleets.append(fleet)
        for device in fleet.devices:  # the figures before the rollout
            device.publish_telemetry()
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


def all_pass(_device: str, _deployment: Deployment) -> Verdict:
    return Verdict(gate={"passed": True, "metrics": {"top1_agreement": 0.98}})


def bad_on(share: float) -> Callable[[str, Deployment], Verdict]:
    """NEW fails the accuracy gate on `share` of the devices (chosen by a hash of the id), OLD passes."""

    def verdict(device: str, chosen: Deployment) -> Verdict:
        if chosen.id == NEW.id and int(hashlib.sha256(device.encode()).hexdigest(), 16) % 1000 < share * 1000:
            return Verdict("validate", "accuracy gate failed: top1_agreement 0.41 < 0.9", gate={"passed": False})
        return all_pass(device, chosen)

    return verdict


def statuses(fleet: SimFleet) -> Dict[str, Any]:
    return {d.id: d.status_document() for d in fleet.devices}
