"""Desired state end to end on a real mosquitto with the onnxruntime backend: deploy, swap, fail safely, roll
back, commands as jobs, groups, a broker that is away. Agents run in-process (the kill -9 tests are in
test_crash_recovery.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from agent.daemon.daemon import Daemon
from agent.fleet.commands import encode_command
from agent.fleet.local_broker import LocalBroker
from tests.daemon.conftest import is_reply, is_status, make_config
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts
from tests.helpers import Collector, json_of, wait_until

GATE = {"top1_agreement": 0.5, "top5_containment": 0.5}


@pytest.fixture(scope="module")
def tiny(kit: FleetKit, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    made = make_tiny_artifacts(tmp_path_factory.mktemp("tiny"))
    broken = tmp_path_factory.mktemp("broken") / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX model")
    return {
        "model": kit.publish(made.model, "model"),
        "table": kit.publish(made.table, "calib"),
        "bad_table": kit.publish(made.bad_table, "calib", "tiny-zero.cache"),
        "shrunk_table": kit.publish(made.shrunk_table, "calib", "tiny-shrunk.cache"),
        "validation": kit.publish(made.validation, "validation"),
        "other_model": kit.publish(made.other_model, "model"),
        "other_validation": kit.publish(made.other_validation, "validation"),
        "broken_model": kit.publish(broken, "model"),
    }


def tiny_v1(tiny: Dict[str, str], **changes: Any) -> Dict[str, Any]:
    fields: Dict[str, Any] = {
        "id": "tiny-v1",
        "model": tiny["model"],
        "table": tiny["table"],
        "validation": tiny["validation"],
        "precision": "int8",
        "target": "cpu",
        "preprocess": TINY_PREPROCESS,
        "accuracy": GATE,
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def tiny_v2(tiny: Dict[str, str], **changes: Any) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"id": "tiny-v2", "model": tiny["other_model"], "validation": tiny["other_validation"], "table": None, "precision": "fp32"}
    fields.update(changes)
    return tiny_v1(tiny, **fields)


@pytest.fixture()
def start_agent(broker: LocalBroker, kit: FleetKit, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: List[Daemon] = []

    def start(device: str, state: Optional[Path] = None, **extra: str) -> Daemon:
        config = make_config(broker, state or tmp_path / f"state-{device}", device, artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false", **extra)
        daemon = Daemon(config).start()
        daemons.append(daemon)
        assert daemon.link.wait_connected(10)
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


def serving_id(daemon: Daemon) -> Optional[str]:
    deployment = daemon.serving.deployment
    return deployment.id if deployment is not None and not daemon.store.snapshot().applying else None


def wait_serving(daemon: Daemon, deployment_id: str, timeout: float = 30.0) -> Dict[str, Any]:
    wait_until(lambda: serving_id(daemon) == deployment_id, timeout)
    return daemon.status_document()


def wait_error(daemon: Daemon, step: str, since: float, timeout: float = 30.0) -> Dict[str, Any]:
    def found() -> Optional[Dict[str, Any]]:
        error = daemon.store.snapshot().last_error
        return error if error and error.get("step") == step and error.get("at", 0) >= since else None

    return dict(wait_until(found, timeout))


def test_deploy_serves_reports_and_is_visible_to_status(
    broker: LocalBroker, kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], collector_for: Callable[..., Collector], capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    live = collector_for(broker, ["edge/dep-1/#"])
    daemon = start_agent("dep-1")
    kit.deploy("dep-1", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    status = json_of(live.wait_for(is_status(lambda s: (s.get("serving") or {}).get("deployment_id") == "tiny-v1"), timeout=10))
    assert status["state"] == "serving" and status["desired"]["source"] == "device"
    assert status["serving"]["engine"]["backend"] == "onnxruntime" and status["serving"]["gate"]["passed"] is True
    assert status["serving"]["precision"] == "int8" and status["last_error"] is None
    event = json_of(live.wait_for(lambda m: m.topic.endswith("/events") and json_of(m).get("event") == "deployment.serving", timeout=5))
    assert event["deployment_id"] == "tiny-v1"
    # the operator's view and the on-device view agree
    rows = kit.operator.status("dep-1")
    assert rows["dep-1"].engine.startswith("tiny-v1 (onnxruntime")
    from agent.cli.main import main

    wait_until(lambda: json.loads((daemon.state_dir / "status.json").read_text())["status"]["state"] == "serving", 5)
    capsys.readouterr()
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(daemon.state_dir))
    assert main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is True and report["state"]["serving"]["deployment"]["id"] == "tiny-v1"


def test_failed_deployments_leave_the_old_one_serving_and_say_why(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon]) -> None:
    daemon = start_agent("dep-3")
    kit.deploy("dep-3", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    cases = [
        ("check_table", tiny_v1(tiny, id="bad-table", table=tiny["bad_table"]), "zero"),
        ("fetch", tiny_v1(tiny, id="missing", validation="f" * 64), "f" * 12),
        ("build", tiny_v1(tiny, id="broken", model=tiny["broken_model"], table=None, validation=None, precision="fp32", accuracy=None), ""),
        ("validate", tiny_v1(tiny, id="wrong-set", validation=tiny["other_validation"]), "validation set was made with model"),
        ("validate", tiny_v1(tiny, id="shrunk-table", table=tiny["shrunk_table"]), "likely culprits: "),  # names the tensors
    ]
    for step, fields, words in cases:
        since = time.time()
        kit.deploy("dep-3", **fields)
        error = wait_error(daemon, step, since)
        assert error["deployment_id"] == fields["id"] and words in error["reason"], error
        assert serving_id(daemon) == "tiny-v1"
        status = daemon.status_document()
        assert status["serving"]["deployment_id"] == "tiny-v1" and status["last_error"]["step"] == step
    blocked = daemon.store.snapshot().blocked
    assert {info["deployment_id"] for info in blocked.values()} == {"bad-table", "broken", "wrong-set", "shrunk-table"}  # fetch retries


def test_swap_rollback_rebuild_and_cancel(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon]) -> None:
    daemon = start_agent("dep-4")
    kit.deploy("dep-4", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    first_runner = daemon.serving.loaded.runner  # type: ignore[union-attr]

    # a new desired state: the engine is swapped, the old one freed and kept as `previous`
    kit.deploy("dep-4", **tiny_v2(tiny))
    status = wait_serving(daemon, "tiny-v2")
    assert status["previous"] == "tiny-v1" and status["serving"]["precision"] == "fp32"
    assert daemon.serving.loaded.runner is not first_runner and not first_runner.is_active  # type: ignore[union-attr]
    assert set(daemon.store.snapshot().keep_artifacts) >= {tiny["model"], tiny["other_model"]}

    # rollback serves the previous deployment again; the desired one is not re-applied on its own
    replies = kit.operator.command("dep-4", "rollback", wait=True, wait_s=30)
    assert replies[-1].state.value == "SUCCEEDED", replies[-1].detail
    assert replies[-1].result["deployment_id"] == "tiny-v1" and replies[-1].result["rolled_back"] == "tiny-v2"
    status = daemon.status_document()
    assert status["serving"]["deployment_id"] == "tiny-v1" and status["previous"] == "tiny-v2"
    assert status["desired"]["deployment_id"] == "tiny-v2"
    assert [b["deployment_id"] for b in status["blocked"]] == ["tiny-v2"]
    time.sleep(0.8)
    assert serving_id(daemon) == "tiny-v1"

    # rebuild applies the desired deployment again (from the engine cache), cold ignores the cache
    rebuilt = kit.operator.command("dep-4", "rebuild", wait=True, wait_s=30)
    assert rebuilt[-1].state.value == "SUCCEEDED" and rebuilt[-1].result["cache_hit"] is True
    assert serving_id(daemon) == "tiny-v2"
    cold = kit.operator.command("dep-4", "rebuild", {"cold": True}, wait=True, wait_s=30)
    assert cold[-1].result["cache_hit"] is False

    # cancel a rebuild while it builds: the job ends CANCELED and the engine serving stays
    daemon.failpoints.points["build"] = "pause:20"  # hold the build, as a slow TensorRT build would
    held: List[Any] = []
    waiter = threading.Thread(target=lambda: held.extend(kit.operator.command("dep-4", "rebuild", command_id="rb-4", wait=True, wait_s=30)))
    waiter.start()
    wait_until(lambda: daemon.reconciler.busy_step == "build", 10)
    done = kit.operator.command("dep-4", "cancel", {"job_id": "rb-4"}, wait=True, wait_s=10)
    waiter.join(30)
    assert done[-1].state.value == "SUCCEEDED" and done[-1].result == {"canceling": "rb-4"}
    assert held and held[-1].state.value == "CANCELED"
    assert serving_id(daemon) == "tiny-v2"


def test_commands_duplicates_malformed_unknown_unauthorised_and_cancel(
    broker: LocalBroker, start_agent: Callable[..., Daemon], collector_for: Callable[..., Collector]
) -> None:
    daemon = start_agent("dep-5", device_groups="lobby")
    live = collector_for(broker, ["edge/dep-5/reply"])
    live.publish("edge/dep-5/cmd", encode_command("dup-1", "ping"))
    live.publish("edge/dep-5/cmd", encode_command("dup-1", "ping"))
    live.wait_for(is_reply("dup-1", "SUCCEEDED"))
    live.publish("edge/dep-5/cmd", b'{"kind": "cmd", "id": "bad-1", "type": "ping", "args": [1]}')
    live.publish("edge/dep-5/cmd", encode_command("unk-1", "reboot"))
    live.publish("edge/group/lobby/cmd", encode_command("grp-1", "rollback"))
    live.publish("edge/group/lobby/cmd", encode_command("grp-2", "ping"))
    live.publish("edge/dep-5/cmd", encode_command("can-1", "cancel", {"job_id": "nothing-open"}))
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    elsewhere = Properties(PacketTypes.PUBLISH)
    elsewhere.ResponseTopic = "not-the-fleet/x"
    live.client.publish("edge/dep-5/cmd", encode_command("rsp-1", "ping"), qos=1, properties=elsewhere).wait_for_publish(5)
    time.sleep(1.0)
    seen: Dict[str, List[Dict[str, Any]]] = {}
    while not live.messages.empty():
        reply = json_of(live.messages.get())
        seen.setdefault(reply["job_id"], []).append(reply)
    assert "dup-1" not in seen  # its three replies were consumed above; the duplicate brought no more
    assert seen["bad-1"][0]["state"] == "REJECTED" and "args: expected object | null, got array" in seen["bad-1"][0]["detail"]
    assert seen["unk-1"][0]["state"] == "REJECTED" and "unknown command type 'reboot'" in seen["unk-1"][0]["detail"]
    assert seen["grp-1"][0]["state"] == "REJECTED" and seen["grp-1"][0]["detail"].startswith("unauthorised")
    assert seen["grp-2"][-1]["state"] == "SUCCEEDED"
    assert seen["can-1"][-1]["state"] == "FAILED" and "no open job 'nothing-open'" in seen["can-1"][-1]["detail"]
    assert seen["rsp-1"][0]["state"] == "REJECTED" and "response topic must be under 'edge/'" in seen["rsp-1"][0]["detail"]
    assert daemon.jobs.duplicates == 1
    # the same id after a restart is still a duplicate: the ids are in state.json
    assert daemon.store.snapshot().command_seen("dup-1") is not None


def test_a_duplicate_gets_no_second_run(broker: LocalBroker, start_agent: Callable[..., Daemon], collector_for: Callable[..., Collector]) -> None:
    start_agent("dep-6")
    live = collector_for(broker, ["edge/dep-6/reply"])
    for _ in range(3):
        live.publish("edge/dep-6/cmd", encode_command("once-1", "status"))
    live.wait_for(is_reply("once-1", "SUCCEEDED"))
    time.sleep(0.8)
    later = [json_of(m) for m in iter_queue(live)]
    assert not [r for r in later if r.get("job_id") == "once-1"]


def iter_queue(collector: Collector) -> Iterator[Any]:
    while not collector.messages.empty():
        yield collector.messages.get()


def test_group_desired_state_and_the_device_taking_precedence(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon]) -> None:
    kit.deploy(group="hall-8", **tiny_v1(tiny, id="hall-default"))
    try:
        daemon = start_agent("dep-8", device_groups="hall-8")
        status = wait_serving(daemon, "hall-default")
        assert status["desired"]["source"] == "group:hall-8"
        kit.deploy("dep-8", **tiny_v2(tiny, id="own-8"))
        status = wait_serving(daemon, "own-8")
        assert status["desired"]["source"] == "device"
    finally:
        kit.operator.deploy(None, group="hall-8")
        kit.operator.deploy(None, device="dep-8")


def test_invalid_desired_state_is_reported_and_changes_nothing(
    broker: LocalBroker, kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], collector_for: Callable[..., Collector]
) -> None:
    daemon = start_agent("dep-9")
    kit.deploy("dep-9", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    live = collector_for(broker, ["edge/dep-9/events"])
    since = time.time()
    live.publish("edge/dep-9/desired", b'{"kind": "desired", "deployment": {"id": "x", "model": "nope"}}', retain=True)
    error = wait_error(daemon, "desired", since, timeout=10)
    assert "deployment.model" in error["reason"]
    assert json_of(live.wait_for(lambda m: json_of(m).get("event") == "desired.invalid"))["source"] == "device"
    assert serving_id(daemon) == "tiny-v1" and daemon.status_document()["desired"]["hold"]


def test_broker_down_at_boot_serves_from_disk_and_keeps_events_within_the_outbox_bound(
    fresh_broker: LocalBroker, kit: FleetKit, tiny: Dict[str, str], tmp_path: Path
) -> None:
    # the kit's operator and artifact server are on the session broker: copy the artifacts over by deploying there
    # first is not possible, so this agent pulls from a kit of its own on the fresh broker
    own = FleetKit(fresh_broker, tmp_path / "fleet")
    made = make_tiny_artifacts(tmp_path / "tiny")
    ids = {"model": own.publish(made.model, "model"), "table": own.publish(made.table, "calib"), "validation": own.publish(made.validation, "validation")}
    state = tmp_path / "state"
    extra = {"artifacts_public_keys": own.public_key, "artifacts_allow_unsigned": "false", "state_outbox_max_messages": "5"}
    first = Daemon(make_config(fresh_broker, state, "boot-1", **extra)).start()
    try:
        own.deploy("boot-1", id="tiny-v1", precision="int8", target="cpu", preprocess=TINY_PREPROCESS, accuracy=GATE, **ids)
        wait_serving(first, "tiny-v1")
    finally:
        first.stop()
        own.close()
    fresh_broker.stop()

    second = Daemon(make_config(fresh_broker, state, "boot-1", **extra)).start()
    try:
        assert second.reconciler.ready.wait(10)
        assert second.ready_summary == "serving tiny-v1"  # restored from disk, READY without the broker
        assert serving_id(second) == "tiny-v1" and not second.link.connected.is_set()
        for n in range(8):
            second.event("test.offline", {"n": n})
        assert len(second.outbox) == 5 and second.outbox.dropped == 3  # bounded, oldest dropped first, counted
        wait_until(lambda: (state / "outbox.jsonl").read_text().count("test.offline") == 5, 3)  # survives a kill -9
        fresh_broker.start()
        collector = Collector(fresh_broker.host, fresh_broker.port, ["edge/boot-1/#"])
        try:
            assert second.link.wait_connected(15)
            wait_until(lambda: len(second.outbox) == 0, 10)
            status = json_of(collector.wait_for(is_status(lambda s: s.get("online") is True), timeout=10))
            assert status["serving"]["deployment_id"] == "tiny-v1"
        finally:
            collector.close()
        time.sleep(1.0)
        assert second.store.snapshot().serving["deployment"]["id"] == "tiny-v1"  # type: ignore[index]
        assert second.store.snapshot().applying is None  # nothing re-applied: the persisted desired state matched
    finally:
        second.stop()


@pytest.mark.slow
def test_broker_away_for_a_minute_loses_no_state_and_no_queued_event(fresh_broker: LocalBroker, tmp_path: Path) -> None:
    own = FleetKit(fresh_broker, tmp_path / "fleet")
    made = make_tiny_artifacts(tmp_path / "tiny")
    ids = {"model": own.publish(made.model, "model"), "table": own.publish(made.table, "calib"), "validation": own.publish(made.validation, "validation")}
    state = tmp_path / "state"
    agent = Daemon(make_config(fresh_broker, state, "away-1", artifacts_public_keys=own.public_key, artifacts_allow_unsigned="false")).start()
    try:
        own.deploy("away-1", id="tiny-v1", precision="int8", target="cpu", preprocess=TINY_PREPROCESS, accuracy=GATE, **ids)
        wait_serving(agent, "tiny-v1")
        own.close()
        fresh_broker.stop()
        wait_until(lambda: not agent.link.connected.is_set(), 10)
        for n in range(20):
            agent.event("test.away", {"n": n})
        time.sleep(60)  # a minute without the broker: the engine keeps serving, events wait in the outbox
        assert serving_id(agent) == "tiny-v1" and agent.healthy()
        queued = len(agent.outbox)
        assert queued >= 20 and agent.outbox.dropped == 0
        fresh_broker.start()
        collector = Collector(fresh_broker.host, fresh_broker.port, ["edge/away-1/#"])
        try:
            assert agent.link.wait_connected(30)
            wait_until(lambda: len(agent.outbox) == 0, 15)  # every queued event handed to the broker
            status = json_of(collector.wait_for(is_status(lambda s: s.get("online") is True), timeout=15))
            assert status["serving"]["deployment_id"] == "tiny-v1"
        finally:
            collector.close()
        assert agent.store.snapshot().serving["deployment"]["id"] == "tiny-v1"  # type: ignore[index]
        assert agent.store.snapshot().applying is None
    finally:
        agent.stop()
