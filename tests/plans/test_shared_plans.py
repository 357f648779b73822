"""Build once per hardware class, on a real mosquitto with the onnxruntime backend: a designated builder publishes a
signed plan; identical devices serve it without building; devices of another class, plans signed by a key not
trusted for engines, altered embedded manifests and plans for another class are refused before anything is
stored, and the device builds locally and says why."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from agent.engine.cache import EngineCache
from agent.fleet.artifact_protocol import decode_manifest, describe_file, sign_manifest
from agent.fleet.deployment import Deployment, deployment_from_dict
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import generate_keys, load_private_key
from agent.operator.artifact_server import add_to_folder, publish_manifest
from agent.operator.plan_builds import PlanBuilder, plan_view, with_plans
from agent.store.atomic import read_json
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts
from tests.plans.plan_kit import (
    ORIN_NX_COMPATIBLE,
    SimDevice,
    device_config,
    jetson_sysroot,
    sysroot_fingerprint,
)

GATE = {"top1_agreement": 0.5, "top5_containment": 0.5}


@pytest.fixture(scope="module")
def tiny(kit: FleetKit, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    made = make_tiny_artifacts(tmp_path_factory.mktemp("tiny"))
    return {"model": kit.publish(made.model, "model"), "validation": kit.publish(made.validation, "validation")}


@pytest.fixture(scope="module")
def builder_keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_keys(tmp_path_factory.mktemp("builder-keys"))


def deployment_of(tiny: Dict[str, str], **changes: Any) -> Deployment:
    fields: Dict[str, Any] = {"id": "tiny-plan", "model": tiny["model"], "validation": tiny["validation"], "precision": "fp32",
                              "target": "cpu", "preprocess": TINY_PREPROCESS, "accuracy": GATE}
    fields.update(changes)
    return deployment_from_dict(fields)


class Fleet:
    """The module's builders (an x86 one, an 'Orin' one whose fingerprint comes from a sysroot) and its devices."""

    def __init__(self, broker: LocalBroker, kit: FleetKit, keys: Any, root: Path) -> None:
        self.broker, self.kit, self.keys, self.root = broker, kit, keys, root
        self.devices: List[SimDevice] = []
        self.builders: List[PlanBuilder] = []
        self.orin = jetson_sysroot(root / "sysroots" / "orin")

    def builder(self, name: str, fp: Any = None, prefix: str = "edge", **extra: str) -> PlanBuilder:
        config = device_config(self.broker, self.root / name, name, operator_pub=self.kit.public_key, prefix=prefix, **extra)
        built = PlanBuilder(config, load_private_key(self.keys.private_path)).start()
        if fp is not None:
            built.steps._fingerprint = fp
        self.builders.append(built)
        return built

    def device(self, name: str, fp: Any = None, **extra: str) -> SimDevice:
        config = device_config(self.broker, self.root / name, name, operator_pub=self.kit.public_key,
                               builder_pub=str(self.keys.public_path), **extra)
        made = SimDevice(config, fp)
        self.devices.append(made)
        return made

    def close(self) -> None:
        for item in self.devices:
            item.close()
        for built in self.builders:
            built.stop()


@pytest.fixture(scope="module")
def fleet(broker: LocalBroker, kit: FleetKit, builder_keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    made = Fleet(broker, kit, builder_keys, tmp_path_factory.mktemp("plans"))
    yield made
    made.close()


@pytest.fixture(scope="module")
def x86_plan(fleet: Fleet, tiny: Dict[str, str]) -> Dict[str, Any]:
    builder = fleet.builder("builder-x86")
    return builder.build(deployment_of(tiny))


@pytest.fixture(scope="module")
def orin_plan(fleet: Fleet, tiny: Dict[str, str]) -> Dict[str, Any]:
    builder = fleet.builder("builder-orin", sysroot_fingerprint(fleet.orin))
    return builder.build(deployment_of(tiny))


def engine_cache_snapshot(device: SimDevice) -> List[str]:
    root = EngineCache.for_state(device.config.state_dir).root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def stored(device: SimDevice) -> List[str]:
    root = device.steps.artifacts.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_identical_devices_serve_the_builders_plan_without_building(fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any]) -> None:
    assert x86_plan["ok"] and x86_plan["built"] and x86_plan["gate"]["passed"]
    deployment = with_plans(deployment_of(tiny), {x86_plan["class"]: x86_plan["artifact_id"]})
    devices: List[Any] = []
    for index in range(3):
        device = fleet.device(f"same-{index}")
        engine, gate = device.apply(deployment)
        assert engine.plan["source"] == "shared", engine.plan
        assert engine.plan["class_key"] == x86_plan["class"]
        assert engine.key == x86_plan["engine_key"] and engine.cache_hit
        assert not device.named("engine.build_started"), "an identical device must not build"
        assert gate["passed"], "the device runs its own accuracy gate"
        assert device.named("engine.plan_used")
        assert device.steps.artifacts.has(x86_plan["artifact_id"])
        devices.append((device.id, {"serving": {"deployment_id": "tiny-plan", "engine": {"plan": engine.plan}}}))
    view = plan_view(devices)
    assert sorted(view["tiny-plan"][x86_plan["class"]]["shared"]) == ["same-0", "same-1", "same-2"]
    assert fleet.builders[0].builds == 1


def test_a_device_finds_the_plan_for_its_class_and_spec_without_being_told(fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any]) -> None:
    device = fleet.device("finder")
    engine, _gate = device.apply(deployment_of(tiny))  # the deployment names no plan: the builder's index does
    assert engine.plan["source"] == "shared" and engine.plan["artifact_id"] == x86_plan["artifact_id"]
    assert not device.named("engine.build_started")


def test_skip_plan_gate_only_when_the_deployment_says_so(fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any]) -> None:
    device = fleet.device("trusting")
    deployment = with_plans(deployment_of(tiny, skip_plan_gate=True), {x86_plan["class"]: x86_plan["artifact_id"]})
    engine, gate = device.apply(deployment)
    assert engine.plan["source"] == "shared"
    assert gate.get("skipped") and gate["builder_gate"]["passed"]


@pytest.mark.parametrize(
    ("name", "sysroot", "field"),
    [
        ("other-l4t", {"l4t": (36, 4, 4)}, "l4t"),
        ("other-module", {"compatible": ORIN_NX_COMPATIBLE, "model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"}, "hardware"),
    ],
)
def test_a_device_of_another_class_refuses_naming_the_field_and_builds(
    fleet: Fleet, tiny: Dict[str, str], orin_plan: Dict[str, Any], name: str, sysroot: Dict[str, Any], field: str
) -> None:
    fp = sysroot_fingerprint(jetson_sysroot(fleet.root / "sysroots" / name, **sysroot))
    device = fleet.device(name, fp)
    deployment = with_plans(deployment_of(tiny), {orin_plan["class"]: orin_plan["artifact_id"]})
    engine, gate = device.apply(deployment)
    plan = engine.plan
    assert plan["source"] == "local" and plan["refused"]["field"] == field, plan
    assert "here, plan" in plan["refused"]["reason"]
    assert device.named("engine.build_started") and gate["passed"]
    assert not device.steps.artifacts.has(orin_plan["artifact_id"]), "a refused plan is never stored"
    refused = device.named("engine.plan_refused")
    assert refused and refused[0]["field"] == field


def test_the_same_orin_class_uses_the_orin_plan(fleet: Fleet, tiny: Dict[str, str], orin_plan: Dict[str, Any]) -> None:
    device = fleet.device("orin-twin", sysroot_fingerprint(jetson_sysroot(fleet.root / "sysroots" / "orin-twin")))
    engine, _gate = device.apply(with_plans(deployment_of(tiny), {orin_plan["class"]: orin_plan["artifact_id"]}))
    assert engine.plan["source"] == "shared" and not device.named("engine.build_started")


def _forge(fleet: Fleet, plan: Dict[str, Any], tag: bytes, sign_with: Any, alter: Any = None) -> str:
    """A copy of a builder's plan (a few bytes appended, so it is another artifact) with its manifest re-made,
    signed by `sign_with`, optionally altered after signing, served by the operator's server."""
    builder = next(b for b in fleet.builders if b.device_id == plan["builder"])
    original = decode_manifest(read_json(builder.folder / f"{plan['artifact_id']}.manifest.json"))
    copy = fleet.root / f"forged-{tag.decode()}.bin"
    copy.write_bytes((builder.folder / plan["artifact_id"]).read_bytes() + tag)
    manifest = describe_file(copy, "engine", original.name, 1024)
    manifest = dataclasses.replace(manifest, extra=dict(original.extra))
    manifest = sign_manifest(manifest, sign_with)
    if alter is not None:
        manifest = alter(manifest)
    add_to_folder(fleet.kit.folder, copy, manifest)
    publish_manifest(fleet.kit.link, "edge", manifest)
    return manifest.artifact_id


def _alter_class(manifest: Any) -> Any:
    extra = dict(manifest.extra)
    embedded = dict(extra["engine"])
    embedded["class"] = dict(embedded["class"], key="ort-x86-64-9.9.9-000000000000")
    extra["engine"] = embedded
    return dataclasses.replace(manifest, extra=extra)


@pytest.mark.parametrize(
    ("case", "code"),
    [("operator-key", "kind_not_trusted"), ("altered", "bad_signature"), ("other-class", "plan_refused")],
)
def test_untrusted_altered_or_foreign_plans_are_refused_and_nothing_stored_changes(
    fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any], orin_plan: Dict[str, Any], case: str, code: str
) -> None:
    device = fleet.device(f"victim-{case}")
    device.apply(deployment_of(tiny, id="baseline", accuracy={}))  # something serves and is stored first
    before_cache, before_store = engine_cache_snapshot(device), stored(device)
    if case == "operator-key":  # the operator's key is trusted for models, not for engines
        plan_id = _forge(fleet, x86_plan, b"k", fleet.kit.private_key)
    elif case == "altered":
        plan_id = _forge(fleet, x86_plan, b"a", load_private_key(fleet.keys.private_path), alter=_alter_class)
    else:  # correctly signed by the builder key, but built for the Orin class
        plan_id = _forge(fleet, orin_plan, b"o", load_private_key(fleet.keys.private_path))
    deployment = with_plans(deployment_of(tiny, precision="fp32", batch=2), {x86_plan["class"]: plan_id})
    events_before = len(device.events)
    assert device.steps.shared_plans is not None
    outcome = device.steps.shared_plans.prepare(deployment, device.steps.build_spec(deployment), device.steps.fingerprint, cold=False)
    assert outcome.source == "local" and outcome.refused, outcome
    refusals = [e for e in device.events[events_before:] if e.get("event") == "artifact.refused"]
    assert refusals and refusals[0]["code"] == code, refusals
    assert engine_cache_snapshot(device) == before_cache
    assert stored(device) == before_store
    assert not device.steps.artifacts.has(plan_id)
    assert not [p for p in device.steps.artifacts.root.rglob("*") if plan_id in p.name], "no partial transfer either"
    if case == "other-class":
        assert outcome.refused["field"] in ("hardware", "soc", "l4t", "jetpack", "cpu_arch"), outcome.refused


def test_daemons_report_the_plan_and_the_operator_sees_who_built_and_why(
    broker: LocalBroker, fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any], orin_plan: Dict[str, Any]
) -> None:
    """Real agents (in-process Daemons) on a group deployment naming both classes' plans: the x86 one serves the
    shared plan, the one whose fingerprint is another Orin module builds locally; `fleet status --plans` says so."""
    from agent.daemon.daemon import Daemon
    from agent.operator.client import Operator
    from agent.operator.plan_builds import format_plan_view
    from tests.helpers import wait_until

    daemons: List[Daemon] = []
    try:
        for name in ("daemon-x86", "daemon-nx"):
            config = device_config(broker, fleet.root / name, name, operator_pub=fleet.kit.public_key, builder_pub=str(fleet.keys.public_path),
                                   device_groups="plans-group")
            daemon = Daemon(config)
            if name == "daemon-nx":
                nx = jetson_sysroot(fleet.root / "sysroots" / "nx", compatible=ORIN_NX_COMPATIBLE, model="NVIDIA Jetson Orin NX")
                daemon.steps._fingerprint = sysroot_fingerprint(nx)  # type: ignore[attr-defined]
            daemons.append(daemon.start())
        deployment = with_plans(deployment_of(tiny, id="group-plan"), {x86_plan["class"]: x86_plan["artifact_id"], orin_plan["class"]: orin_plan["artifact_id"]})
        fleet.kit.operator.deploy(deployment, group="plans-group")
        for daemon in daemons:
            wait_until(functools.partial(_serves, daemon, "group-plan"), 60, "serving")
        with Operator(fleet.kit.broker_config, "edge").connect() as operator:
            rows = wait_until(lambda: _with_plans(operator.status(wait_s=1.0), ("daemon-x86", "daemon-nx")), 20, "statuses with plans")
        view = plan_view(rows.values())["group-plan"]
        assert view.get(x86_plan["class"], {}).get("shared") == ["daemon-x86"], (x86_plan["class"], view)
        nx_rows = [row for klass, row in view.items() if "daemon-nx" in row["local"]]
        assert nx_rows and "hardware" in nx_rows[0]["refused"]["daemon-nx"], view
        assert any("built locally" in line for line in format_plan_view(plan_view(rows.values())))
    finally:
        for daemon in daemons:
            daemon.stop()


def _serves(daemon: Any, deployment_id: str) -> bool:
    deployment = daemon.serving.deployment
    return deployment is not None and deployment.id == deployment_id


def _with_plans(rows: Dict[str, Any], names: Any) -> Any:
    def has_plan(row: Any) -> bool:
        serving = row.status.get("serving") or {}
        return bool((serving.get("engine") or {}).get("plan")) and serving.get("deployment_id") == "group-plan"

    return rows if all(name in rows and has_plan(rows[name]) for name in names) else None


def test_fleet_build_cli_asks_the_builder_and_prints_the_plans_to_deploy(
    broker: LocalBroker, fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any], tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from tests.daemon.conftest import agent_env
    from tests.helpers import REPO_ROOT

    spec_file = tmp_path / "deployment.json"
    spec_file.write_text(json.dumps(deployment_of(tiny).to_dict()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update(agent_env(broker, tmp_path / "operator-state", "operator"))
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-m", "agent", "fleet", "build", "--deployment", str(spec_file), "--class", x86_plan["class"],
                           "--timeout", "60", "--json"], capture_output=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    answer = json.loads(done.stdout)
    assert answer["plans"][x86_plan["class"]]["artifact_id"] == x86_plan["artifact_id"]
    assert answer["deployment"]["plans"] == {x86_plan["class"]: x86_plan["artifact_id"]}
    wrong = subprocess.run([sys.executable, "-m", "agent", "fleet", "build", "--deployment", str(spec_file), "--class",
                            "ort-x86-64-0.0.0-000000000000", "--timeout", "3"], capture_output=True, env=env, timeout=60, check=False)
    assert wrong.returncode != 0 and b"no builder for class" in wrong.stderr
    deployed = subprocess.run([sys.executable, "-m", "agent", "fleet", "deploy", "cli-target", "--file", str(spec_file), "--build-plans",
                               x86_plan["class"], "--json"], capture_output=True, env=env, timeout=120, check=False)
    assert deployed.returncode == 0, deployed.stderr.decode()
    assert json.loads(deployed.stdout)["deployment"]["plans"] == {x86_plan["class"]: x86_plan["artifact_id"]}


def test_a_tensorrt_plan_from_another_tensorrt_build_is_refused_before_a_byte_is_stored(fleet: Fleet, tiny: Dict[str, str]) -> None:
    """A device whose sysroot says TensorRT 10.3.0.26 and a builder-signed plan whose embedded manifest says it was built
    by 10.3.0.30 on the same module: refused naming `tensorrt`, before any block is fetched. (The plan's bytes are never
    treated as an engine: the refusal comes first. Building locally then needs TensorRT, absent here.)"""
    from agent.engine.hardware_class import hardware_class
    from agent.engine.manifest import BuildReport, Manifest
    from agent.engine.spec import cache_key
    from agent.fleet.plans import describe_plan
    from agent.store.hashing import sha256_file

    built_on = sysroot_fingerprint(jetson_sysroot(fleet.root / "sysroots" / "trt30", tensorrt="10.3.0.30"))
    here = sysroot_fingerprint(jetson_sysroot(fleet.root / "sysroots" / "trt26", tensorrt="10.3.0.26"))
    device = fleet.device("orin-trt26", here, engine_backend="tensorrt")
    deployment = deployment_of(tiny, id="trt-plan", precision="fp16", target="gpu", accuracy={})
    spec = device.steps.build_spec(deployment).validate()
    plan_file = fleet.root / "plan-trt30.bin"
    plan_file.write_bytes(b"not a TensorRT plan: refused before a byte of it is read\n" * 40)
    manifest = Manifest(key=cache_key(spec, built_on), backend="tensorrt", spec=spec, device=built_on.to_dict(), engine_file="engine.plan",
                        engine_sha256=sha256_file(plan_file), engine_bytes=plan_file.stat().st_size, backend_version="10.3.0.30",
                        report=BuildReport())
    klass = hardware_class(built_on, spec)
    plan = sign_manifest(describe_plan(plan_file, manifest.to_dict(), klass.to_dict(), {"passed": True}, builder="builder-trt30",
                                       deployment_id="trt-plan", chunk_size=1024), load_private_key(fleet.keys.private_path))
    add_to_folder(fleet.kit.folder, plan_file, plan)
    publish_manifest(fleet.kit.link, "edge", plan)
    named = with_plans(deployment, {klass.key: plan.artifact_id})
    assert device.steps.shared_plans is not None
    outcome = device.steps.shared_plans.prepare(named, spec, device.steps.fingerprint, cold=False)
    assert outcome.source == "local" and outcome.refused is not None
    assert outcome.refused["field"] == "tensorrt", outcome.refused
    assert "TensorRT 10.3.0.26 here, plan 10.3.0.30" in outcome.refused["reason"]
    assert not device.steps.artifacts.has(plan.artifact_id) and stored(device) == []


def test_a_rebuild_of_a_device_on_the_shared_plan_still_reports_the_plan(fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any]) -> None:
    device = fleet.device("rebuilt")
    deployment = with_plans(deployment_of(tiny), {x86_plan["class"]: x86_plan["artifact_id"]})
    first, _gate = device.apply(deployment)
    again, _gate = device.apply(deployment)  # a restart's or a rebuild's pass: the engine is cached now
    assert first.plan["source"] == again.plan["source"] == "shared"
    assert again.plan["artifact_id"] == x86_plan["artifact_id"] and "installed earlier" in again.plan["reason"]


def test_a_plan_that_does_not_load_here_is_refused_by_the_trial_load_and_the_device_builds(
    fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any]
) -> None:
    """Signed by the builder's key, for this class and spec, gate passed, the manifest describing these very bytes:
    but the bytes are half an ONNX model. Only the trial load in a child (a real onnxruntime session) can tell."""
    from agent.store.hashing import sha256_file

    builder = next(b for b in fleet.builders if b.device_id == x86_plan["builder"])
    original = decode_manifest(read_json(builder.folder / f"{x86_plan['artifact_id']}.manifest.json"))
    broken = fleet.root / "half-a-model.onnx"
    whole = (builder.folder / x86_plan["artifact_id"]).read_bytes()
    broken.write_bytes(whole[: len(whole) // 2])
    embedded = dict(original.extra["engine"])
    embedded["engine"] = dict(embedded["engine"], engine_sha256=sha256_file(broken), engine_bytes=broken.stat().st_size)
    manifest = dataclasses.replace(describe_file(broken, "engine", original.name, 1024), extra={"engine": embedded})
    manifest = sign_manifest(manifest, load_private_key(fleet.keys.private_path))
    add_to_folder(fleet.kit.folder, broken, manifest)
    publish_manifest(fleet.kit.link, "edge", manifest)
    device = fleet.device("trial-victim")
    engine, gate = device.apply(with_plans(deployment_of(tiny), {x86_plan["class"]: manifest.artifact_id}))
    assert engine.plan["source"] == "local" and engine.plan["refused"]["field"] == "trial_load", engine.plan
    assert "onnxruntime cannot load the plan" in engine.plan["refused"]["reason"]
    assert device.named("engine.build_started") and gate["passed"]


def test_device_and_engine_inspect_show_the_class(fleet: Fleet, tiny: Dict[str, str], x86_plan: Dict[str, Any], tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    device = fleet.device("inspected")
    engine, _gate = device.apply(with_plans(deployment_of(tiny), {x86_plan["class"]: x86_plan["artifact_id"]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "EDGE_AGENT_STATE_DIR": str(device.config.state_dir), "EDGE_AGENT_DEVICE_ID": "inspected"})

    def run(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return json.loads(done.stdout)

    assert run("engine", "inspect", engine.key, "--json")["hardware_class"]["key"] == x86_plan["class"]
    assert run("device", "--json")["hardware_classes"]["cpu"]["key"] == x86_plan["class"]
