"""The cache key changes with every field that shapes an engine and with nothing else; a manifest from another
device is refused with the exact reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict

import pytest

from agent.device.fingerprint import DeviceFingerprint
from agent.engine import compat
from agent.engine.manifest import Manifest
from agent.engine.plugins import PluginError, resolve_plugins
from agent.engine.spec import (
    BatchProfile,
    BuildPolicy,
    BuildSpec,
    PluginLib,
    Precision,
    SpecError,
    cache_key,
    device_fields,
    is_key,
    key_differences,
    key_material,
)
from agent.store.hashing import sha256_bytes

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
ORIN = DeviceFingerprint(
    is_jetson=True, module="Jetson AGX Orin 64GB", soc="tegra234", l4t="36.4.3", jetpack="6.2", tensorrt="10.3.0.30",
    cuda="12.6.68", cudnn="9.3.0.75", onnxruntime="1.19.2", compute_capability="8.7", dla_cores=2, cpu_arch="aarch64",
)
GPU = BuildSpec(model_sha256=SHA_A, precision=Precision.INT8, target="gpu", calib_sha256=SHA_B, batch=BatchProfile(1, 4, 8))
DLA = BuildSpec(model_sha256=SHA_A, precision=Precision.INT8, target="dla:0", calib_sha256=SHA_B, gpu_fallback=True)
CPU = BuildSpec(model_sha256=SHA_A, precision=Precision.INT8, target="cpu", calib_sha256=SHA_B)

# spec field -> another valid value, for each backend's base spec
SPEC_CHANGES: Dict[str, Any] = {
    "model_sha256": SHA_C,
    "calib_sha256": SHA_C,
    "precision": Precision.BEST,
    "target": "dla:1",
    "gpu_fallback": False,
    "batch": BatchProfile(1, 2, 8),
    "workspace_mb": 2048,
    "plugins": (PluginLib("nms.so", SHA_C),),
    "timing_cache": False,
    "calib_portable": True,
}
DEVICE_CHANGES: Dict[str, Any] = {
    "module": "Jetson Orin NX 16GB",
    "soc": "tegra194",
    "l4t": "36.4.4",
    "cpu_arch": "x86_64",
    "tensorrt": "10.3.0.31",
    "cuda": "12.8.1",
    "compute_capability": "7.2",
    "onnxruntime": "1.20.0",
}


@pytest.mark.parametrize("name", sorted(SPEC_CHANGES))
def test_each_spec_field_splits_the_tensorrt_key(name: str) -> None:
    base = DLA if name in ("target", "gpu_fallback") else GPU
    value = SPEC_CHANGES[name]
    if name == "batch":
        base = GPU
    changed = dataclasses.replace(base, **{name: value})
    assert cache_key(base, ORIN) == cache_key(dataclasses.replace(base), ORIN)  # hit: same inputs
    assert cache_key(changed, ORIN) != cache_key(base, ORIN)  # miss: one field differs
    assert key_differences(key_material(changed, ORIN), key_material(base, ORIN))


@pytest.mark.parametrize("name", ["model_sha256", "calib_sha256", "precision", "batch"])
def test_each_spec_field_splits_the_onnxruntime_key(name: str) -> None:
    changed = dataclasses.replace(CPU, **{name: SPEC_CHANGES[name]})
    assert cache_key(changed, ORIN) != cache_key(CPU, ORIN)


@pytest.mark.parametrize("name", ["workspace_mb", "timing_cache", "calib_portable"])
def test_fields_the_cpu_backend_ignores_do_not_split_its_key(name: str) -> None:
    assert cache_key(dataclasses.replace(CPU, **{name: SPEC_CHANGES[name]}), ORIN) == cache_key(CPU, ORIN)


# ids avoid a bare 'tensorrt', which tests/conftest.py reads as the tensorrt marker
@pytest.mark.parametrize("name", sorted(DEVICE_CHANGES), ids=lambda name: f"device_{name}")
def test_each_device_field_splits_the_key_of_the_backends_that_depend_on_it(name: str) -> None:
    other = dataclasses.replace(ORIN, **{name: DEVICE_CHANGES[name]})
    for spec in (GPU, CPU):
        depends = name in device_fields(spec.backend)
        if name == "cuda":  # compared at major.minor: a patch release keeps the key
            assert cache_key(spec, dataclasses.replace(ORIN, cuda="12.6.85")) == cache_key(spec, ORIN)
        assert (cache_key(spec, other) != cache_key(spec, ORIN)) == depends, (name, spec.backend)


def test_device_fields_outside_the_key_do_not_split_it() -> None:
    other = dataclasses.replace(ORIN, jetpack="6.2.1", cudnn="9.4.0", power_mode="15W", dla_cores=1, notes=["x"])
    assert cache_key(GPU, other) == cache_key(GPU, ORIN)


def test_keys_are_readable() -> None:
    assert cache_key(DLA, ORIN).startswith("trt-int8-dla0-") and cache_key(CPU, ORIN).startswith("ort-int8-cpu-")
    assert is_key(cache_key(GPU, ORIN))


@pytest.mark.parametrize(
    "spec, message",
    [
        (BuildSpec(model_sha256="abc"), "64 lowercase hex"),
        (BuildSpec(model_sha256=SHA_A, precision=Precision.INT8), "never calibrates with random data"),
        (BuildSpec(model_sha256=SHA_A, target="dla:0", precision=Precision.FP16, batch=BatchProfile(1, 2, 4)), "fixed batch"),
        (BuildSpec(model_sha256=SHA_A, target="dla:0", precision=Precision.FP32), "FP16 or INT8 only"),
        (BuildSpec(model_sha256=SHA_A, target="gpu", gpu_fallback=True), "DLA targets only"),
        (BuildSpec(model_sha256=SHA_A, target="cpu", precision=Precision.FP16), "FP32 or INT8"),
        (BuildSpec(model_sha256=SHA_A, target="gpu", plugins=(PluginLib("../x.so", SHA_B),)), "not a path"),
        (BuildSpec(model_sha256=SHA_A, target="tpu"), "gpu, dla:N or cpu"),
    ],
)
def test_impossible_specs_are_refused_with_the_reason(spec: BuildSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec.validate()


def test_batch_profile_parsing() -> None:
    assert BatchProfile.parse("4") == BatchProfile(4, 4, 4)
    assert BatchProfile.parse("1:4:8") == BatchProfile(1, 4, 8)
    with pytest.raises(SpecError):
        BatchProfile.parse("1:x")


def _manifest(spec: BuildSpec, device: DeviceFingerprint) -> Manifest:
    backend_version = device.tensorrt if spec.backend == "tensorrt" else device.onnxruntime
    return Manifest(key=cache_key(spec, device), backend=spec.backend, spec=spec.validate(), device=device.to_dict(),
                    engine_file="engine.plan", engine_sha256=SHA_C, engine_bytes=10, backend_version=backend_version or "")


@pytest.mark.parametrize(
    "field, value, reason",
    ids=["trt_version", "compute_capability", "module", "l4t", "cuda"],
    argvalues=[
        ("tensorrt", "8.6.2.3", "tensorrt: built with 10.3.0.30, this device has 8.6.2.3"),
        ("compute_capability", "7.2", "compute_capability: built with 8.7, this device has 7.2"),
        ("module", "Jetson Orin NX 16GB", "module: built with Jetson AGX Orin 64GB, this device has Jetson Orin NX 16GB"),
        ("l4t", "35.4.1", "l4t: built with 36.4.3, this device has 35.4.1"),
        ("cuda", "11.4.315", "cuda: built with 12.6, this device has 11.4"),
    ],
)
def test_a_manifest_from_another_device_is_refused_with_the_reason(field: str, value: str, reason: str) -> None:
    verdict = compat.check_manifest(_manifest(GPU, ORIN), dataclasses.replace(ORIN, **{field: value}))
    assert not verdict.loadable
    assert [m.field for m in verdict.mismatches] == [field]
    assert verdict.reasons[0].startswith(reason)


def test_same_device_loads_and_a_less_precise_version_only_hints() -> None:
    assert compat.check_manifest(_manifest(GPU, ORIN), ORIN).loadable
    verdict = compat.check_manifest(_manifest(GPU, ORIN), dataclasses.replace(ORIN, tensorrt="10.3"))
    assert verdict.loadable and "cannot confirm the build number" in verdict.hints[0]


def test_no_tensorrt_here_and_dla_refusals() -> None:
    verdict = compat.check_manifest(_manifest(GPU, ORIN), dataclasses.replace(ORIN, tensorrt=None))
    assert not verdict.loadable and "has no TensorRT" in verdict.reasons[0]
    nano = dataclasses.replace(ORIN, module="Jetson Orin Nano 8GB", dla_cores=0)
    reasons = compat.check_manifest(_manifest(DLA, ORIN), nano).reasons
    assert any("this module has no DLA cores" in r for r in reasons)
    one_core = compat.check_manifest(_manifest(dataclasses.replace(DLA, target="dla:1"), ORIN), dataclasses.replace(ORIN, dla_cores=1))
    assert any("has 1 DLA core(s)" in r for r in one_core.reasons)
    trt_10_8 = dataclasses.replace(ORIN, tensorrt="10.8.0.43")
    manifest = _manifest(DLA, trt_10_8)
    assert any("10.8 to 11.4.0" in r for r in compat.check_manifest(manifest, trt_10_8).reasons)


def test_artifact_checks(tmp_path: Path) -> None:
    data = b"ptrt" + bytes(60)
    path = tmp_path / "engine.plan"
    path.write_bytes(data)
    manifest = dataclasses.replace(_manifest(GPU, ORIN), engine_bytes=len(data), engine_sha256=sha256_bytes(data))
    assert compat.check_artifact(path, manifest).loadable
    path.write_bytes(data[:40])
    assert compat.check_artifact(path, manifest).reasons[0].startswith("truncated: the engine file has 40 bytes")
    path.write_bytes(b"ftrt" + bytes(60))
    assert compat.check_artifact(path, manifest).reasons[0].startswith("corrupt: the engine file's sha256")
    path.unlink()
    assert "missing" in compat.check_artifact(path, manifest).reasons[0]


def test_plugins_only_from_the_folder_and_with_their_hash(tmp_path: Path) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "nms.so").write_bytes(b"\x7fELF fake")
    good = PluginLib("nms.so", sha256_bytes(b"\x7fELF fake"))
    assert resolve_plugins([good], str(folder)) == [folder / "nms.so"]
    assert resolve_plugins([], "") == []
    with pytest.raises(PluginError, match="not configured"):
        resolve_plugins([good], "")
    with pytest.raises(PluginError, match="sha256 is"):
        resolve_plugins([PluginLib("nms.so", SHA_A)], str(folder))
    with pytest.raises(PluginError, match="not found"):
        resolve_plugins([PluginLib("other.so", SHA_A)], str(folder))
    (tmp_path / "evil.so").write_bytes(b"x")
    (folder / "link.so").symlink_to(tmp_path / "evil.so")
    with pytest.raises(PluginError, match="leaves"):
        resolve_plugins([PluginLib("link.so", sha256_bytes(b"x"))], str(folder))


def test_policy_knobs() -> None:
    from agent.engine.manifest import BuildReport
    from agent.engine.report import policy_violations

    fp16_only = BuildReport(layers=10, layers_dla=3, layers_gpu=7, dla_fraction=0.3, precisions={"fp16": 10})
    assert policy_violations(fp16_only, DLA, BuildPolicy()) == []
    violations = policy_violations(fp16_only, DLA, BuildPolicy(min_dla_layer_fraction=0.5, require_int8=True))
    assert any(v.startswith("require_int8: INT8 was asked but no layer runs in INT8") for v in violations)
    assert any("3 of 10 layers run on DLA (30%)" in v for v in violations)
