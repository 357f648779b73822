"""SIGTERM and kill -9 of a real `edge-agent run` in the middle of a build, kill -9 in the middle of a download:
the next start resumes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict

from agent.fleet.local_broker import LocalBroker
from tests.daemon.conftest import AgentProcess, agent_env, is_status
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts, wide_classifier_onnx
from tests.helpers import Collector, json_of


def serving(deployment_id: str) -> Callable[[Any], bool]:
    return is_status(lambda s: s.get("state") == "serving" and (s.get("serving") or {}).get("deployment_id") == deployment_id)


def event(name: str) -> Callable[[Any], bool]:
    return lambda m: m.topic.endswith("/events") and json_of(m).get("event") == name


def state_of(state_dir: Path) -> Dict[str, Any]:
    return dict(json.loads((state_dir / "state.json").read_text()))


def test_kill9_mid_build_retries_the_build_on_restart(
    fresh_broker: LocalBroker, tmp_path: Path, spawn_agent: Callable[..., AgentProcess], collector_for: Callable[..., Collector]
) -> None:
    kit = FleetKit(fresh_broker, tmp_path / "fleet")
    try:
        made = make_tiny_artifacts(tmp_path / "tiny")
        ids = {"model": kit.publish(made.model, "model"), "table": kit.publish(made.table, "calib"), "validation": kit.publish(made.validation, "validation")}
        state = tmp_path / "state"
        env = agent_env(fresh_broker, state, "crash-build", artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false")
        live = collector_for(fresh_broker, ["edge/crash-build/#"])
        events = collector_for(fresh_broker, ["edge/crash-build/events"])
        held = {**env, "EDGE_AGENT_FAILPOINTS": "build=pause:60"}
        def building(since: float) -> Callable[[Any], bool]:
            return is_status(lambda s: (s.get("applying") or {}).get("step") == "build" and s["applying"]["started_at"] >= since)

        # SIGTERM in the middle of a build: a clean, quick exit that leaves the deployment to be applied again
        first = spawn_agent(held)
        live.wait_for(is_status(lambda s: s.get("online") is True), timeout=30)
        kit.deploy("crash-build", id="tiny-v1", precision="int8", target="cpu", preprocess=TINY_PREPROCESS, accuracy={"top1_agreement": 0.5}, **ids)
        live.wait_for(building(0), timeout=30)
        assert first.terminate(timeout=20) == 0
        saved = state_of(state)
        assert saved["applying"]["step"] == "build" and saved["applying"]["attempts"] == 0  # a stop is not a failed attempt

        # kill -9 in the middle of the build it resumed
        since = time.time()
        second = spawn_agent(held)
        live.wait_for(building(since), timeout=30)
        second.kill9()
        saved = state_of(state)
        assert saved["applying"]["step"] == "build" and saved["applying"]["attempts"] == 1
        assert saved["serving"] is None

        spawn_agent(env)
        live.wait_for(serving("tiny-v1"), timeout=40)
        applying = [json_of(m) for m in list(events.messages.queue) if event("deployment.applying")(m)]
        saved = state_of(state)
        assert saved["serving"]["deployment"]["id"] == "tiny-v1" and saved["applying"] is None
        assert [e.get("attempt") for e in applying] == [1, 1, 2]  # each start retried the interrupted build
    finally:
        kit.close()


def test_kill9_mid_download_resumes_the_transfer_on_restart(
    fresh_broker: LocalBroker, tmp_path: Path, spawn_agent: Callable[..., AgentProcess], collector_for: Callable[..., Collector]
) -> None:
    kit = FleetKit(fresh_broker, tmp_path / "fleet", rate_limit_bps=400_000, chunk_bytes=16 * 1024)
    try:
        model = wide_classifier_onnx(tmp_path / "wide.onnx")
        size = model.stat().st_size
        assert size > 800_000
        model_id = kit.publish(model, "model")
        state = tmp_path / "state"
        env = agent_env(fresh_broker, state, "crash-fetch", artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false")
        live = collector_for(fresh_broker, ["edge/crash-fetch/#"])
        first = spawn_agent(env)
        live.wait_for(is_status(lambda s: s.get("online") is True), timeout=30)
        kit.deploy("crash-fetch", id="wide-v1", model=model_id, precision="fp32", target="cpu")
        progress = live.wait_for(lambda m: event("artifact.progress")(m) and 0.15 < json_of(m).get("bytes", 0) / size < 0.8, timeout=30)
        first.kill9()
        got_before = json_of(progress)["bytes"]
        partial = state / "artifacts" / ".partial"
        assert any(p.suffix == ".part" for p in partial.iterdir())
        assert state_of(state)["applying"]["step"] == "fetch"

        spawn_agent(env)
        resumed = json_of(live.wait_for(event("artifact.resumed"), timeout=30))
        assert resumed["artifact_id"] == model_id and resumed["bytes"] >= got_before * 0.5
        live.wait_for(serving("wide-v1"), timeout=40)
        assert not any(p.suffix == ".part" for p in partial.iterdir())
    finally:
        kit.close()

