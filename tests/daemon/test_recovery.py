"""The daemon's recovery branches (agent/daemon/reconcile.py), each driven through the real daemon on a real
mosquitto with the onnxruntime backend: a restart that cannot serve again (engine file removed, manifest made
incompatible as after an upgrade), the crash-loop guard, rebuild and rollback with nothing to act on, a rollback
whose engine is gone (rebuilt from the stored artifacts, or failing with the reason), and internal errors wrapped
into answers instead of a dead loop or a job that never ends."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict

from agent.daemon.daemon import Daemon
from agent.daemon.reconcile import MAX_INTERRUPTED_ATTEMPTS
from agent.fleet.local_broker import LocalBroker
from tests.daemon import test_deployments as deployments
from tests.daemon.conftest import AgentProcess, agent_env, is_status
from tests.daemon.fleet_kit import FleetKit
from tests.daemon.test_deployments import serving_id, tiny_v1, tiny_v2, wait_error, wait_serving
from tests.helpers import Collector, json_of, wait_until

# the fixtures of test_deployments.py (the tiny artifacts, in-process agents), shared by name; `kit` is tests/conftest.py's
tiny = deployments.tiny
start_agent = deployments.start_agent


def _state(state_dir: Path) -> Dict[str, Any]:
    return dict(json.loads((state_dir / "state.json").read_text()))


def _engine_dir(state_dir: Path, record: Dict[str, Any]) -> Path:
    return Path(record["engine"]["path"]).parent


def _restart_after(
    start_agent: Callable[..., Daemon], device: str, state: Path, change: Callable[[Dict[str, Any]], str]
) -> Daemon:
    """Serve tiny-v1, stop, apply `change` to the stopped agent's files, start again: the restart cannot serve
    from disk, says why (step 'restore'), and applies the deployment again from the stored artifacts."""
    first = start_agent(device, state)
    wait_until(lambda: serving_id(first) == "tiny-v1", 30)
    first.stop()
    serving = _state(state)["serving"]
    expected = change(serving)
    since = time.time()
    second = start_agent(device, state)
    error = wait_error(second, "restore", since)
    assert expected in error["reason"] and error["deployment_id"] == "tiny-v1", error
    wait_serving(second, "tiny-v1", timeout=40)
    again = _state(state)["serving"]
    assert again["engine"]["cache_hit"] is False and Path(again["engine"]["path"]).is_file()  # built again, not reused
    return second


def test_restart_with_the_engine_file_removed_rebuilds_it(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], tmp_path: Path) -> None:
    kit.deploy("rec-gone", **tiny_v1(tiny))

    def remove(serving: Dict[str, Any]) -> str:
        Path(serving["engine"]["path"]).unlink()
        return "missing"

    _restart_after(start_agent, "rec-gone", tmp_path / "state", remove)


def test_restart_with_an_incompatible_manifest_rebuilds_it(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], tmp_path: Path) -> None:
    kit.deploy("rec-upgrade", **tiny_v1(tiny))

    def upgrade(serving: Dict[str, Any]) -> str:  # the engine's manifest as onnxruntime 0.0.1 would have written it
        manifest = _engine_dir(tmp_path / "state", serving) / "manifest.json"
        data = json.loads(manifest.read_text())
        data["device"]["onnxruntime"] = "0.0.1"
        manifest.write_text(json.dumps(data))
        return "does not fit this device"

    daemon = _restart_after(start_agent, "rec-upgrade", tmp_path / "state", upgrade)
    assert daemon.status_document()["serving"]["deployment_id"] == "tiny-v1"


def test_rebuild_and_rollback_with_nothing_to_act_on(kit: FleetKit, start_agent: Callable[..., Daemon]) -> None:
    daemon = start_agent("rec-empty")
    rebuild = kit.operator.command("rec-empty", "rebuild", wait=True, wait_s=20)
    assert rebuild[-1].state.value == "FAILED" and "nothing to rebuild" in rebuild[-1].detail
    rollback = kit.operator.command("rec-empty", "rollback", wait=True, wait_s=20)
    assert rollback[-1].state.value == "FAILED" and "no previous deployment" in rollback[-1].detail
    assert daemon.reconciler.alive and daemon.store.snapshot().serving is None


def test_rollback_with_no_previous_deployment_keeps_what_serves(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon]) -> None:
    daemon = start_agent("rec-first")
    kit.deploy("rec-first", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    replies = kit.operator.command("rec-first", "rollback", wait=True, wait_s=20)
    assert replies[-1].state.value == "FAILED" and "nothing to roll back to" in replies[-1].detail
    assert serving_id(daemon) == "tiny-v1" and not daemon.store.snapshot().blocked


def test_a_rollback_whose_engine_is_gone(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon]) -> None:
    daemon = start_agent("rec-roll")
    kit.deploy("rec-roll", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    kit.deploy("rec-roll", **tiny_v2(tiny))
    wait_serving(daemon, "tiny-v2")
    previous = daemon.store.snapshot().previous
    assert previous is not None
    shutil.rmtree(_engine_dir(daemon.state_dir, previous))  # gc, a disk problem: the previous engine is gone

    # it cannot be built either: the job fails with the step and the reason, and tiny-v2 keeps serving
    daemon.failpoints.points["build"] = "fail"
    failed = kit.operator.command("rec-roll", "rollback", wait=True, wait_s=30)
    assert failed[-1].state.value == "FAILED" and failed[-1].detail.startswith("build: failure point build fired"), failed[-1].detail
    assert serving_id(daemon) == "tiny-v2" and daemon.store.snapshot().previous == previous

    # it can: the previous deployment is applied again from its stored artifacts and serves
    del daemon.failpoints.points["build"]
    done = kit.operator.command("rec-roll", "rollback", wait=True, wait_s=40)
    assert done[-1].state.value == "SUCCEEDED", done[-1].detail
    assert done[-1].result["deployment_id"] == "tiny-v1" and done[-1].result["rolled_back"] == "tiny-v2"
    snapshot = daemon.store.snapshot()
    assert serving_id(daemon) == "tiny-v1" and snapshot.previous is not None and snapshot.previous["deployment"]["id"] == "tiny-v2"
    assert Path(snapshot.serving["engine"]["path"]).is_file() and snapshot.serving["engine"]["cache_hit"] is False  # type: ignore[index]
    assert [b["deployment_id"] for b in snapshot.blocked.values()] == ["tiny-v2"]  # the one rolled back stays blocked


def test_internal_errors_are_wrapped(kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = start_agent("rec-bug", state)
    kit.deploy("rec-bug", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")

    # a bug inside a step (not an AgentError) fails that step with the exception named; what serves stays
    daemon.failpoints.points["validate"] = "bug"
    since = time.time()
    kit.deploy("rec-bug", **tiny_v2(tiny))
    error = wait_error(daemon, "validate", since)
    assert error["reason"] == "internal error: RuntimeError: failure point validate fired (bug)" and error["deployment_id"] == "tiny-v2"
    assert serving_id(daemon) == "tiny-v1" and daemon.reconciler.alive
    del daemon.failpoints.points["validate"]
    rebuilt = kit.operator.command("rec-bug", "rebuild", wait=True, wait_s=30)  # the loop lives on: a rebuild serves it
    assert rebuilt[-1].state.value == "SUCCEEDED" and serving_id(daemon) == "tiny-v2"

    # a bug outside any step (a state.json record the code does not expect) answers the job instead of leaving it open
    daemon.stop()
    saved = _state(state)
    saved["previous"] = {"digest": saved["previous"]["digest"]}  # no 'deployment' in it
    (state / "state.json").write_text(json.dumps(saved))
    daemon = start_agent("rec-bug", state)
    wait_serving(daemon, "tiny-v2")
    replies = kit.operator.command("rec-bug", "rollback", wait=True, wait_s=20)
    assert replies[-1].state.value == "FAILED" and replies[-1].detail.startswith("internal error: KeyError"), replies[-1].detail
    assert serving_id(daemon) == "tiny-v2" and daemon.reconciler.alive

    # a bug while serving again from disk at start-up (an engine record of the wrong type) is recorded, and the
    # deployment is applied again instead of the agent staying without an engine
    daemon.stop()
    saved = _state(state)
    saved["serving"]["engine"]["path"] = 5
    (state / "state.json").write_text(json.dumps(saved))
    since = time.time()
    daemon = start_agent("rec-bug", state)
    error = wait_error(daemon, "restore", since)
    assert error["reason"].startswith("internal error: TypeError") and error["deployment_id"] == "tiny-v2", error
    assert daemon.ready_summary.startswith("degraded: ")
    wait_serving(daemon, "tiny-v2", timeout=40)


def test_the_crash_loop_guard_stops_an_interrupted_apply(
    fresh_broker: LocalBroker, tmp_path: Path, spawn_agent: Callable[..., AgentProcess], collector_for: Callable[..., Collector]
) -> None:
    """A build that kills the agent every time (os._exit at the build step) is tried MAX_INTERRUPTED_ATTEMPTS
    times across restarts, then blocked with the reason; an operator's rebuild tries again."""
    from tests.daemon.fleet_kit import TINY_PREPROCESS, make_tiny_artifacts

    fleet = FleetKit(fresh_broker, tmp_path / "fleet")
    try:
        made = make_tiny_artifacts(tmp_path / "tiny")
        ids = {"model": fleet.publish(made.model, "model"), "validation": fleet.publish(made.validation, "validation")}
        fleet.deploy("crash-loop", id="loop-v1", precision="fp32", target="cpu", preprocess=TINY_PREPROCESS, **ids)
        state = tmp_path / "state"
        env = agent_env(fresh_broker, state, "crash-loop", artifacts_public_keys=fleet.public_key, artifacts_allow_unsigned="false")
        for attempt in range(1, MAX_INTERRUPTED_ATTEMPTS + 1):
            agent = spawn_agent({**env, "EDGE_AGENT_FAILPOINTS": "build=crash"})
            assert agent.proc.wait(60) == 86, agent.log()[-2000:]  # died inside the build, like a power cut
            applying = _state(state)["applying"]
            assert applying["step"] == "build" and applying["attempts"] == attempt
        live = collector_for(fresh_broker, ["edge/crash-loop/#"])
        spawn_agent(env)  # the build would work now, but the guard does not know that
        status = json_of(live.wait_for(is_status(lambda s: bool(s.get("blocked"))), timeout=40))
        blocked = status["blocked"][0]
        assert blocked["deployment_id"] == "loop-v1" and f"interrupted {MAX_INTERRUPTED_ATTEMPTS} times" in blocked["reason"], blocked
        saved = _state(state)
        assert saved["applying"] is None and saved["serving"] is None and saved["last_error"]["step"] == "build"
        replies = fleet.operator.command("crash-loop", "rebuild", wait=True, wait_s=40)
        assert replies[-1].state.value == "SUCCEEDED", replies[-1].detail
        assert _state(state)["serving"]["deployment"]["id"] == "loop-v1"
    finally:
        fleet.close()


def test_a_model_with_an_unsupported_operator_fails_its_deployment_with_the_operator(
    kit: FleetKit, tiny: Dict[str, str], start_agent: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Not a recovery branch but the other end of the remedy table: the build's classified log reaches the
    deployment's last_error and the build_failed event, and what serves keeps serving."""
    from tests.engine.test_remedy import _unknown_op_model

    model = kit.publish(_unknown_op_model(tmp_path / "dcn.onnx"), "model")
    daemon = start_agent("rec-op")
    kit.deploy("rec-op", **tiny_v1(tiny))
    wait_serving(daemon, "tiny-v1")
    since = time.time()
    kit.deploy("rec-op", id="dcn-v1", model=model, precision="fp32", target="cpu")
    error = wait_error(daemon, "build", since)
    assert error["reason"].startswith("the model cannot be built here: unsupported operator(s): DCNv2 (dcn_7, opset 13)"), error
    assert serving_id(daemon) == "tiny-v1"
    assert daemon.store.snapshot().blocked[error["digest"]]["deployment_id"] == "dcn-v1"  # retrying cannot fix it
