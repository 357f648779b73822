"""The hardware class key and the field-by-field plan verdict (plain data: no TensorRT, no broker), the
`[artifacts] key_kinds` trust rules and the deployment's plan fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import pytest

from agent.daemon.shared_plan import shared_plan_ids
from agent.device.fingerprint import DeviceFingerprint
from agent.engine.hardware_class import (
    check_plan,
    compare,
    device_classes,
    hardware_class,
    is_class_key,
    key_of,
    manifest_class,
)
from agent.engine.manifest import BuildReport, Manifest
from agent.engine.spec import BatchProfile, BuildSpec, PluginLib, Precision, cache_key
from agent.fleet.artifact_protocol import UnsignedManifestError, describe_file, sign_manifest
from agent.fleet.artifact_trust import KindNotTrustedError, KindTrust
from agent.fleet.deployment import DeploymentError, deployment_from_dict
from agent.fleet.signing import generate_keys, load_private_key

MODEL = "a" * 64
ORIN = DeviceFingerprint(is_jetson=True, module="Jetson AGX Orin 64GB", soc="tegra234", l4t="36.4.3", jetpack="6.2",
                         tensorrt="10.3.0.30", cuda="12.6.68", compute_capability="8.7", dla_cores=2, cpu_arch="aarch64")
GPU = BuildSpec(model_sha256=MODEL, precision=Precision.FP16, target="gpu")
DLA = BuildSpec(model_sha256=MODEL, precision=Precision.FP16, target="dla:0", batch=BatchProfile(2, 2, 2))


def embedded_for(spec: BuildSpec, built_on: DeviceFingerprint, **gate: Any) -> Dict[str, Any]:
    """What a builder embeds in a plan artifact: the class, the engine manifest (data describing the engine, as
    the manifest beside every cached engine does), the gate summary."""
    spec = spec.validate()
    manifest = Manifest(key=cache_key(spec, built_on), backend=spec.backend, spec=spec, device=built_on.to_dict(), engine_file="engine.plan",
                        engine_sha256="b" * 64, engine_bytes=1000, backend_version=str(built_on.tensorrt), report=BuildReport())
    return {"class": hardware_class(built_on, spec).to_dict(), "engine": manifest.to_dict(), "gate": gate or {"passed": True}}


def test_equal_devices_share_a_key_and_the_key_is_readable() -> None:
    key = hardware_class(ORIN, GPU).key
    assert key == hardware_class(dataclasses.replace(ORIN, power_mode="MAXN", notes=["x"]), GPU).key
    assert key.startswith("trt-jetson-agx-orin-64gb-10.3.0.30-") and is_class_key(key)
    assert key == key_of(hardware_class(ORIN, GPU).fields)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"tensorrt": "10.3.0.26"}, "tensorrt", "TensorRT 10.3.0.26 here, plan 10.3.0.30"),
        ({"l4t": "36.4.4"}, "l4t", "L4T 36.4.4 here, plan 36.4.3"),
        ({"module": "Jetson Orin NX 16GB"}, "hardware", "module Jetson Orin NX 16GB here, plan Jetson AGX Orin 64GB"),
        ({"compute_capability": "7.2"}, "compute_capability", "compute capability 7.2 here, plan 8.7"),
        ({"cuda": "12.2.140"}, "cuda", "CUDA 12.2 here, plan 12.6"),
    ],
)
def test_a_differing_field_changes_the_key_and_is_named(change: Dict[str, Any], field: str, words: str) -> None:
    other = dataclasses.replace(ORIN, **change)
    assert hardware_class(other, GPU).key != hardware_class(ORIN, GPU).key
    mismatches = compare(hardware_class(ORIN, GPU).fields, hardware_class(other, GPU).fields)
    assert [m.field for m in mismatches] == [field]
    assert words in mismatches[0].reason
    verdict = check_plan(embedded_for(GPU, ORIN), other, GPU, artifact_id="b" * 64, size=1000)
    assert not verdict.usable and verdict.field_name == field and words in verdict.reason


def test_the_same_device_may_use_the_plan() -> None:
    verdict = check_plan(embedded_for(GPU, ORIN), dataclasses.replace(ORIN, notes=["n"]), GPU, artifact_id="b" * 64, size=1000)
    assert verdict.usable, verdict.reasons


def test_dla_hardware_and_plugins_are_in_the_class_only_where_they_matter() -> None:
    assert hardware_class(ORIN, GPU).fields["dla"] is None
    assert hardware_class(ORIN, DLA).fields["dla"] == {"soc": "tegra234", "cores": 2, "core": 0}
    xavier_dla = dataclasses.replace(ORIN, soc="tegra194")
    assert "dla" in [m.field for m in compare(hardware_class(ORIN, DLA).fields, hardware_class(xavier_dla, DLA).fields)]
    with_plugin = dataclasses.replace(GPU, plugins=(PluginLib("nms.so", "c" * 64),))
    assert hardware_class(ORIN, with_plugin).fields["plugins"] == ["nms.so:" + "c" * 64]
    other_hash = dataclasses.replace(GPU, plugins=(PluginLib("nms.so", "d" * 64),))
    assert hardware_class(ORIN, with_plugin).key != hardware_class(ORIN, other_hash).key


def test_onnxruntime_class_has_its_version_and_cpu_features() -> None:
    cpu = BuildSpec(model_sha256=MODEL, precision=Precision.FP32, target="cpu")
    x86 = DeviceFingerprint(cpu_arch="x86_64", onnxruntime="1.20.1", cpu_features=["avx2", "avx512_vnni", "fma"])
    fields = hardware_class(x86, cpu).fields
    assert fields["onnxruntime"] == "1.20.1" and fields["cpu_features"] == ["avx2", "avx512_vnni", "fma"]
    assert "tensorrt" not in fields
    no_vnni = dataclasses.replace(x86, cpu_features=["avx2", "fma"])
    reason = compare(fields, hardware_class(no_vnni, cpu).fields)[0].reason
    assert reason.startswith("cpu_features: CPU features here lacks avx512_vnni, against the plan's machine")
    assert set(device_classes(x86)) == {"cpu"} and set(device_classes(ORIN)) == {"gpu", "dla:0", "dla:1"}


def test_spec_gate_and_bytes_are_checked_too() -> None:
    embedded = embedded_for(GPU, ORIN)
    int8 = BuildSpec(model_sha256=MODEL, precision=Precision.INT8, target="gpu", calib_sha256="e" * 64)
    verdict = check_plan(embedded, ORIN, int8, artifact_id="b" * 64, size=1000)
    assert not verdict.usable and verdict.field_name.startswith("spec.")
    failed = check_plan(embedded_for(GPU, ORIN, passed=False, summary="top-1 agreement 0.41 < 0.9"), ORIN, GPU, artifact_id="b" * 64, size=1000)
    assert failed.field_name == "gate" and "0.41" in failed.reason
    wrong_bytes = check_plan(embedded, ORIN, GPU, artifact_id="f" * 64, size=1000)
    assert wrong_bytes.field_name == "engine_sha256"
    tampered = dict(embedded, **{"class": {"key": "trt-x-1-000000000000", "fields": embedded["class"]["fields"]}})
    assert check_plan(tampered, ORIN, GPU).field_name == "class"


def test_engine_inspect_class_comes_from_the_manifest() -> None:
    embedded = embedded_for(DLA, ORIN)
    manifest = Manifest.from_dict(embedded["engine"])
    assert manifest_class(manifest).key == embedded["class"]["key"]


def test_key_kinds_engine_plans_only_from_keys_named_for_them(tmp_path: Any) -> None:
    operator = generate_keys(tmp_path / "operator")
    builder = generate_keys(tmp_path / "builder")
    trust = KindTrust.parse([f"{builder.public_path}=engine", f"{'0' * 16}=model+calib"])
    assert builder.key_id in trust.keys and trust.allowed(builder.key_id, "engine")
    assert not trust.allowed(builder.key_id, "model"), "a builder key signs engines only"
    assert trust.allowed(operator.key_id, "model") and not trust.allowed(operator.key_id, "engine")
    assert trust.kinds["0" * 16] == frozenset({"model", "calib"})
    artifact = tmp_path / "plan.bin"
    artifact.write_bytes(b"plan" * 100)
    by_operator = sign_manifest(describe_file(artifact, "engine", "plan.bin", 1024), load_private_key(operator.private_path))
    with pytest.raises(KindNotTrustedError, match="not trusted for engine"):
        trust.check(by_operator, "signed")
    with pytest.raises(UnsignedManifestError, match="allow_unsigned does not cover it"):
        trust.check(by_operator, "unsigned-allowed")
    by_builder = sign_manifest(describe_file(artifact, "engine", "plan.bin", 1024), load_private_key(builder.private_path))
    trust.check(by_builder, "signed")
    for entry in ("nokinds", "=engine", f"{builder.public_path}=Engine!"):
        with pytest.raises(Exception, match="key_kinds"):
            KindTrust.parse([entry])


def test_deployment_plans_fields() -> None:
    base = {"id": "d1", "model": MODEL}
    plain = deployment_from_dict(base)
    assert "plans" not in plain.to_dict() and "skip_plan_gate" not in plain.to_dict(), "digests of plan-less deployments unchanged"
    key = hardware_class(ORIN, GPU).key
    named = deployment_from_dict({**base, "plans": {key: "b" * 64}, "skip_plan_gate": True})
    assert named.plans == {key: "b" * 64} and named.skip_plan_gate and named.digest() != plain.digest()
    bad: Dict[str, Any]
    for bad in ({"plans": {"orin": "b" * 64}}, {"plans": {key: "nope"}}, {"plans": []}, {"skip_plan_gate": "yes"}):
        with pytest.raises(DeploymentError):
            deployment_from_dict({**base, **bad})
    record = {"deployment": named.to_dict(), "engine": {"plan": {"source": "shared", "artifact_id": "c" * 64}}}
    assert shared_plan_ids(record) == ["c" * 64, "b" * 64]


def test_gc_keep_list_holds_the_plans_of_serving_previous_and_applying() -> None:
    from types import SimpleNamespace

    from agent.daemon.reconcile import Reconciler

    key = hardware_class(ORIN, GPU).key
    serving = {"deployment": {"model": MODEL, "plans": {key: "1" * 64}}, "engine": {"plan": {"source": "shared", "artifact_id": "1" * 64}}}
    previous = {"deployment": {"model": "2" * 64}, "engine": {"plan": {"source": "shared", "artifact_id": "3" * 64}}}
    applying = {"deployment": {"model": MODEL, "plans": {key: "4" * 64}}}
    state = SimpleNamespace(serving=serving, previous=previous, applying=applying, keep_artifacts=[])
    Reconciler._update_keep(state)
    assert state.keep_artifacts == [MODEL, "1" * 64, "2" * 64, "3" * 64, "4" * 64]
