"""Shared plans survive kill -9: a builder killed mid-build builds again when asked again; a device killed in the
middle of pulling a plan resumes the pull (the blocks on disk are kept) and serves the plan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent.fleet.deployment import Deployment, deployment_from_dict
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import generate_keys, load_private_key
from agent.operator.plan_builds import PlanBuilder, PlanBuildError, request_build, with_plans
from tests.daemon.conftest import agent_env
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts
from tests.helpers import REPO_ROOT, tiny_classifier_onnx, wait_until
from tests.plans.plan_kit import SimDevice, device_config

GATE = {"top1_agreement": 0.5, "top5_containment": 0.5}


@pytest.fixture(scope="module")
def deployment(kit: FleetKit, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    made = make_tiny_artifacts(tmp_path_factory.mktemp("tiny"))
    return deployment_from_dict({
        "id": "tiny-recovery", "model": kit.publish(made.model, "model"), "validation": kit.publish(made.validation, "validation"),
        "precision": "fp32", "target": "cpu", "batch": 3, "preprocess": TINY_PREPROCESS, "accuracy": GATE,
    })


def _spawn(env: Dict[str, str], log: Path, *args: str) -> subprocess.Popen:  # type: ignore[type-arg]
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    full.update(env)
    full["PYTHONPATH"] = str(REPO_ROOT)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], env=full, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))


def test_a_builder_killed_mid_build_builds_again_when_asked(broker: LocalBroker, kit: FleetKit, deployment: Deployment, tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    state = tmp_path / "builder"
    env = agent_env(broker, state, "builder-killed", artifacts_allow_unsigned="false", artifacts_public_keys=kit.public_key,
                    engine_backend="onnxruntime")
    command = ["-m", "agent", "fleet", "builder", "--key", str(keys.private_path)]
    link = MqttLink(kit.broker_config, unique_client_id("asker"), persistent_session=False)
    link.start()
    assert link.wait_connected(10)
    children: List[subprocess.Popen] = []  # type: ignore[type-arg]
    try:
        from agent.device.fingerprint import fingerprint
        from agent.engine.hardware_class import hardware_class

        spec = _spec_of(deployment)
        klass = hardware_class(fingerprint(), spec).key
        first = _spawn(env, tmp_path / "builder-1.log", *command)
        children.append(first)
        asked = threading.Thread(target=_ask_quietly, args=(link, deployment, klass), daemon=True)
        wait_until(lambda: (tmp_path / "builder-1.log").exists() and b"building plans" in (tmp_path / "builder-1.log").read_bytes(), 20, "the builder to start")
        asked.start()
        engines = state / "engines"
        wait_until(lambda: engines.is_dir() and any(p.name.startswith(".tmp-") for p in engines.iterdir()), 60, "the build to start")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert not any(p.name.startswith("ort-") for p in engines.iterdir()), "killed before the engine was installed"
        second = _spawn(env, tmp_path / "builder-2.log", *command)
        children.append(second)
        wait_until(lambda: (tmp_path / "builder-2.log").exists() and b"building plans" in (tmp_path / "builder-2.log").read_bytes(), 20, "the builder to restart")
        answer = request_build(link, "edge", deployment, klass, timeout_s=120)
        assert answer["ok"] and answer["class"] == klass and answer["gate"]["passed"]
        device = SimDevice(device_config(broker, tmp_path / "dev", "after-builder-crash", operator_pub=kit.public_key, builder_pub=str(keys.public_path)))
        try:
            engine, _gate = device.apply(with_plans(deployment, {klass: answer["artifact_id"]}))
            assert engine.plan["source"] == "shared" and not device.named("engine.build_started")
        finally:
            device.close()
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
        link.stop()


def _spec_of(deployment: Deployment) -> Any:
    """The spec a CPU builder makes of the deployment (agent.daemon.pipeline_steps.PackageSteps.build_spec)."""
    from agent.engine.spec import BatchProfile, BuildSpec, Precision

    return BuildSpec(model_sha256=deployment.model, precision=Precision(deployment.precision), target="cpu",
                     batch=BatchProfile(deployment.batch, deployment.batch, deployment.batch)).validate()


def _ask_quietly(link: Any, deployment: Deployment, klass: str) -> None:
    try:
        request_build(link, "edge", deployment, klass, timeout_s=30)
    except PlanBuildError:
        pass  # the builder was killed: this request gets no answer


PULL_CHILD = """
import sys, dataclasses
from pathlib import Path
from agent.config import load_config
from agent.fleet.deployment import deployment_from_dict
from tests.plans.plan_kit import SimDevice
import json
device = SimDevice(load_config(None))
deployment = deployment_from_dict(json.loads(sys.argv[1]))
print("pulling", flush=True)
device.steps.shared_plans.prepare(deployment, device.steps.build_spec(deployment), device.steps.fingerprint, cold=False)
print("done", flush=True)
"""


def test_a_device_killed_mid_pull_resumes_and_serves_the_plan(broker: LocalBroker, kit: FleetKit, deployment: Deployment, tmp_path: Path) -> None:
    import json

    keys = generate_keys(tmp_path / "keys")
    builder_config = device_config(broker, tmp_path / "slow-builder", "slow-builder", operator_pub=kit.public_key, artifacts_chunk_bytes="1024")
    builder = PlanBuilder(builder_config, load_private_key(keys.private_path), rate_limit_bps=8000).start()
    try:
        model = tiny_classifier_onnx(tmp_path / "wider.onnx", num_classes=800, size=16, seed=5)  # a plan of about 30 kB
        slow = deployment_from_dict({"id": "wider", "model": kit.publish(model, "model"), "precision": "fp32", "target": "cpu",
                                     "preprocess": TINY_PREPROCESS})
        answer = builder.build(slow)
        plan_id, klass = answer["artifact_id"], answer["class"]
        size = (builder.folder / plan_id).stat().st_size
        assert size > 4 * 1024, f"the plan ({size} bytes) is too small to be caught mid-pull"
        named = with_plans(slow, {klass: plan_id})
        state = tmp_path / "puller"
        env = agent_env(broker, state, "puller", artifacts_allow_unsigned="false", artifacts_public_keys=kit.public_key,
                        artifacts_key_kinds=f"{keys.public_path}=engine", engine_backend="onnxruntime",
                        artifacts_block_timeout_s="10")  # the operator's server answers "not held" at once; the builder's is slow
        child = _spawn(env, tmp_path / "puller.log", "-c", PULL_CHILD, json.dumps(named.to_dict()))
        partial_log = state / "artifacts" / ".partial" / f"{plan_id}.log"
        try:
            wait_until(lambda: partial_log.is_file() and partial_log.stat().st_size >= 16 + 4 * 2, 60, "two blocks of the plan on disk")
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
        from agent.config import load_config

        device = SimDevice(load_config(None, env=env))
        try:
            engine, gate = device.apply(named)
            assert engine.plan["source"] == "shared" and gate.get("skipped")
            resumed = device.named("artifact.resumed")
            assert resumed and resumed[0]["bytes"] >= 2048, device.events
            assert not device.named("engine.build_started")
        finally:
            device.close()
    finally:
        builder.stop()
