"""Forged and replayed artifacts, end to end: a running agent is deployed artifacts whose manifests are signed
by an unknown key, altered after signing, replayed from another artifact, or name a path. Each deployment
fails at the fetch step with a reason naming the refusal, nothing of it is stored, and the engine that served
before serves on. Plugin libraries outside engine.plugin_dir are never resolved (fuzzed)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest

from agent.config import BrokerConfig
from agent.fleet.artifact_protocol import ArtifactManifest, describe_file, encode_manifest, sign_manifest
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import generate_keys, load_private_key
from agent.operator.artifact_server import publish_manifest
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

DEVICE = "refusals"


@pytest.fixture()
def running(broker: LocalBroker, signing_keys: SigningKeys, tmp_path: Path) -> Iterator[Tuple[OperatorSide, Watch, Any, Path]]:
    config = BrokerConfig(host=broker.host, port=broker.port, reconnect_min_s=1, reconnect_max_s=1)
    fleet = OperatorSide(config, tmp_path / "fleet", signing_key=signing_keys.private_key)
    watch = Watch(broker.port)
    state = tmp_path / "state"
    agent = start_daemon(agent_env(config, state, DEVICE, artifacts_public_keys=signing_keys.public_path))
    yield fleet, watch, agent, state
    agent.stop()
    watch.close()
    fleet.close()


def forge(fleet: OperatorSide, path: Path, manifest: ArtifactManifest) -> ArtifactManifest:
    """Put the file in the operator's folder under its id and publish `manifest` as it is (no re-signing)."""
    target = fleet.folder / manifest.artifact_id
    fleet.folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    publish_manifest(fleet.link, "edge", manifest)
    return manifest


def failed_with(deployment_id: str) -> Callable[[Dict[str, Any]], bool]:
    return lambda status: (status.get("last_error") or {}).get("deployment_id") == deployment_id


def test_forged_and_replayed_artifacts_are_refused_and_the_previous_engine_serves(
    running: Tuple[OperatorSide, Watch, Any, Path], tmp_path: Path
) -> None:
    fleet, watch, _agent, state = running
    good = fleet.publish(tiny_classifier_onnx(tmp_path / "good.onnx", seed=1), "model")
    fleet.deploy(DEVICE, cpu_deployment("good", good))
    watch.wait_serving(DEVICE, "good")

    stranger = load_private_key(generate_keys(tmp_path / "stranger").private_path)
    cases: Dict[str, Tuple[ArtifactManifest, str]] = {}
    # signed by a key the device does not trust
    path = tiny_classifier_onnx(tmp_path / "a.onnx", seed=11)
    cases["unknown-key"] = (forge(fleet, path, sign_manifest(describe_file(path, "model", "a.onnx", 4096), stranger)), "not in artifacts.public_keys")
    # signed by the fleet key, then altered (a bigger size claimed)
    path = tiny_classifier_onnx(tmp_path / "b.onnx", seed=12)
    signed = sign_manifest(describe_file(path, "model", "b.onnx", 4096), fleet.signing_key)
    cases["altered"] = (forge(fleet, path, dataclasses.replace(signed, name="b2.onnx")), "does not verify")
    # an old, validly signed manifest replayed on the topic of the artifact a new deployment names
    path = tiny_classifier_onnx(tmp_path / "c.onnx", seed=13)
    wanted = describe_file(path, "model", "c.onnx", 4096)
    replayed = fleet.publish(tiny_classifier_onnx(tmp_path / "old.onnx", seed=14), "model")
    fleet.link.client.publish(f"edge/artifacts/{wanted.artifact_id}/manifest", encode_manifest(replayed), qos=1, retain=True).wait_for_publish(5)
    cases["replayed"] = (wanted, "describes")
    # a name with a path separator, signed by the fleet key (a compromised publisher, or a bug)
    path = tiny_classifier_onnx(tmp_path / "d.onnx", seed=15)
    cases["path-name"] = (forge(fleet, path, sign_manifest(dataclasses.replace(describe_file(path, "model", "d.onnx", 4096), name="../../etc/cron.d/x"), fleet.signing_key)), "separator")

    for label, (manifest, reason) in cases.items():
        fleet.deploy(DEVICE, cpu_deployment(f"bad-{label}", manifest))
        status = watch.wait_status(DEVICE, failed_with(f"bad-{label}"), timeout=30)
        error = status["last_error"]
        assert error["step"] == "fetch" and reason in error["reason"], f"{label}: {error}"
        assert serving_id(status) == "good", f"{label}: the previous engine stopped serving"
        stored = os.listdir(state / "artifacts")
        assert good.artifact_id in stored and manifest.artifact_id not in stored, f"{label}: the refused artifact was stored"
    assert not list(state.rglob("cron.d")), "a path from a manifest name was created"


# ------------------------------------------------------------------------------------------ plugin libraries
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.one_of(
    st.sampled_from(["ok.so", "../outside.so", "/abs/outside.so", "link.so", "sub/ok.so", ".", "..", "", "ok.so/", "./ok.so", "dir"]),
    st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="./_-"), max_size=20),
))
def test_plugins_resolve_only_inside_the_plugin_folder(name: str) -> None:
    from agent.engine.plugins import PluginError, resolve_plugins
    from agent.engine.spec import PluginLib
    from agent.store.hashing import sha256_file

    with tempfile.TemporaryDirectory() as top:
        base = Path(top) / "plugins"
        (base / "sub").mkdir(parents=True)
        (base / "dir").mkdir()
        (base / "ok.so").write_bytes(b"ok")
        (base / "sub" / "ok.so").write_bytes(b"ok")
        (Path(top) / "outside.so").write_bytes(b"evil")
        (base / "link.so").symlink_to(Path(top) / "outside.so")
        digests = {sha256_file(base / "ok.so"), sha256_file(Path(top) / "outside.so")}
        for digest in digests:
            try:
                paths = resolve_plugins([PluginLib(name, digest)], str(base))
            except PluginError:
                continue
            for path in paths:
                assert path.resolve().parent == base.resolve(), f"{name!r} resolved outside the folder: {path}"
                assert path.read_bytes() == b"ok"
