"""The engine cache end to end with real onnxruntime builds in a child process: hits, misses, refusals with the
reason and a rebuild from the cached inputs, read-only folders, limits, recorded failures, gc."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from agent.calib import qdq
from agent.device.fingerprint import DeviceFingerprint
from agent.engine.build import BuildError, BuildOptions, EngineEvent, PolicyError, ensure_engine
from agent.engine.cache import EngineCache, EngineCacheError, keys_in_state_file
from agent.engine.manifest import MANIFEST_NAME, read_manifest
from agent.engine.spec import BatchProfile, BuildPolicy, Precision
from agent.lazy import MissingDependency
from agent.store.hashing import sha256_file
from tests.engine.conftest import cpu_spec


def ort_flavor_supported(version: Any) -> bool:
    """onnxruntime >= 1.20 gets its own Q/DQ flavour (real INT8 kernels)."""
    return bool(qdq.ort_flavor_supported(version))


class Events(List[EngineEvent]):
    def __call__(self, event: EngineEvent) -> None:
        self.append(event)

    def kinds(self) -> List[str]:
        return [e.kind for e in self if e.kind != "progress"]


def _tamper(entry_dir: Path, **device: Any) -> None:
    path = entry_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["device"].update(device)
    path.write_text(json.dumps(data))


def test_miss_then_hit_after_a_restart(tiny: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    events = Events()
    first = ensure_engine(cpu_spec(tiny), cache, here, model=tiny, on_event=events)
    assert not first.cache_hit and events.kinds() == ["cache_miss", "build_started", "build_finished"]
    assert any(e.kind == "progress" and e.fraction for e in events)
    manifest = read_manifest(first.path)
    assert manifest.engine_sha256 == sha256_file(first.path) and manifest.report.layers == 4
    assert manifest.versions["onnxruntime"] == here.onnxruntime and manifest.inputs["model"] == sha256_file(tiny)
    restarted = EngineCache(cache.root)  # a new process: nothing in memory
    second = ensure_engine(cpu_spec(tiny), restarted, here)  # no model given: not needed for a hit
    assert second.cache_hit and second.path == first.path and second.key == first.key


@pytest.mark.parametrize(
    "change",
    ["model", "precision", "batch", "module", "l4t", "cpu_arch", "onnxruntime"],
)
def test_each_key_field_misses_through_a_real_build(
    change: str, tiny_dir: Path, tiny_table: Path, seeded: EngineCache, here: DeviceFingerprint
) -> None:
    tiny, cache = tiny_dir / "tiny.onnx", seeded
    base = ensure_engine(cpu_spec(tiny), cache, here)
    assert base.cache_hit
    spec, fp, model, calib = cpu_spec(tiny), here, tiny, None
    if change == "model":
        model = tiny_dir / "tiny_b.onnx"
        spec = cpu_spec(model)
    elif change == "precision":
        calib = tiny_table
        spec = cpu_spec(tiny, precision=Precision.INT8, calib_sha256=sha256_file(tiny_table))
    elif change == "batch":
        spec = cpu_spec(tiny, batch=BatchProfile(1, 4, 8))
    elif change == "onnxruntime":
        fp = dataclasses.replace(here, onnxruntime="0.0.1")
    else:
        fp = dataclasses.replace(here, **{change: "other-" + change})
    if change == "onnxruntime":  # the key splits; the build then finds this interpreter's onnxruntime, not 0.0.1
        from agent.engine.spec import cache_key

        assert cache_key(spec, fp) != base.key
        return
    other = ensure_engine(spec, cache, fp, model=model, calib=calib)
    assert not other.cache_hit and other.key != base.key
    assert ensure_engine(spec, cache, fp).cache_hit  # and the changed inputs hit on their own key
    assert ensure_engine(cpu_spec(tiny), cache, here).cache_hit  # the first engine is still there


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("onnxruntime", "1.0.0", "onnxruntime: built with 1.0.0"),
        ("module", "Jetson AGX Orin 64GB", "module: built with Jetson AGX Orin 64GB"),
        ("l4t", "35.4.1", "l4t: built with 35.4.1"),
        ("cpu_arch", "aarch64", "cpu_arch: built with aarch64"),
    ],
)
def test_a_manifest_from_another_device_is_refused_and_rebuilt(
    field: str, value: str, reason: str, tiny: Path, seeded: EngineCache, here: DeviceFingerprint
) -> None:
    cache = seeded
    first = ensure_engine(cpu_spec(tiny), cache, here)
    _tamper(first.path.parent, **{field: value})  # as if this folder had been copied from another device
    events = Events()
    again = ensure_engine(cpu_spec(tiny), EngineCache(cache.root), here, on_event=events)  # rebuilt from the cached inputs
    assert not again.cache_hit and events.kinds() == ["rejected", "build_started", "build_finished"]
    assert again.rebuilt_because[0].startswith(reason)
    assert reason in events[0].message and events[0].data["reasons"] == again.rebuilt_because
    assert read_manifest(again.path).device[field] == getattr(here, field)
    assert ensure_engine(cpu_spec(tiny), cache, here).cache_hit


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "deleted", "no manifest"])
def test_a_damaged_engine_is_refused_and_rebuilt(damage: str, tiny: Path, seeded: EngineCache, here: DeviceFingerprint) -> None:
    cache = seeded
    first = ensure_engine(cpu_spec(tiny), cache, here)
    data = first.path.read_bytes()
    if damage == "truncated":
        first.path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":
        first.path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:])
    elif damage == "deleted":
        first.path.unlink()
    else:
        (first.path.parent / MANIFEST_NAME).unlink()
    again = ensure_engine(cpu_spec(tiny), cache, here)
    expected = {"truncated": "truncated: the engine file has", "corrupted": "corrupt: the engine file's sha256",
                "deleted": "engine file missing", "no manifest": "no manifest: the build did not finish"}[damage]
    assert not again.cache_hit and again.rebuilt_because[0].startswith(expected)
    assert again.path.read_bytes() == data  # the same engine again, rebuilt from the cached model


def test_a_tensorrt_manifest_from_another_tensorrt_is_refused_before_any_load(
    tiny: Path, cache: EngineCache, here: DeviceFingerprint
) -> None:
    """The refusal is plain Python; the rebuild needs TensorRT, which this machine lacks (the tensorrt-marked
    test below runs the whole path on a device)."""
    from agent.engine.spec import BuildSpec, cache_key

    orin = dataclasses.replace(here, module="Jetson AGX Orin 64GB", soc="tegra234", l4t="36.4.3", tensorrt="10.3.0.30",
                               cuda="12.6.68", compute_capability="8.7", cpu_arch="aarch64")
    spec = BuildSpec(model_sha256=sha256_file(tiny), precision=Precision.FP16, target="gpu")
    folder = cache.entry_dir(cache_key(spec, orin))
    folder.mkdir(parents=True)
    plan = b"ptrt" + bytes(60)  # never loaded: refused on its manifest
    (folder / "engine.plan").write_bytes(plan)
    from agent.engine.manifest import Manifest, write_manifest
    from agent.store.hashing import sha256_bytes

    built_with = dataclasses.replace(orin, tensorrt="8.6.2.3")
    write_manifest(folder, Manifest(key=folder.name, backend="tensorrt", spec=spec.validate(), device=built_with.to_dict(),
                                    engine_file="engine.plan", engine_sha256=sha256_bytes(plan), engine_bytes=len(plan),
                                    backend_version="8.6.2.3"))
    events = Events()
    with pytest.raises(MissingDependency, match="tensorrt"):
        ensure_engine(spec, cache, orin, model=tiny, on_event=events)
    assert events.kinds() == ["rejected"]
    assert events[0].data["reasons"][0].startswith("tensorrt: built with 8.6.2.3, this device has 10.3.0.30")


@pytest.mark.tensorrt
def test_tensorrt_rebuilds_a_refused_plan_on_the_device(tiny: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    from agent.engine.spec import BuildSpec

    spec = BuildSpec(model_sha256=sha256_file(tiny), precision=Precision.FP16, target="gpu")
    first = ensure_engine(spec, cache, here, model=tiny)
    assert not first.cache_hit and first.report.layers > 0
    _tamper(first.path.parent, tensorrt="8.6.2.3")
    again = ensure_engine(spec, cache, here)
    assert not again.cache_hit and again.rebuilt_because[0].startswith("tensorrt: built with 8.6.2.3")
    assert ensure_engine(spec, cache, here).cache_hit


def test_read_only_engine_folder_keeps_serving_and_never_loops(
    tiny_dir: Path, seeded: EngineCache, here: DeviceFingerprint, make_readonly: Any
) -> None:
    tiny, cache = tiny_dir / "tiny.onnx", seeded
    built = ensure_engine(cpu_spec(tiny), cache, here)
    make_readonly(cache.root)
    assert ensure_engine(cpu_spec(tiny), EngineCache(cache.root), here).cache_hit  # what is cached still loads
    other = tiny_dir / "tiny_b.onnx"
    for _ in range(3):  # every start: the same clear error, at once, and no build
        events = Events()
        started = time.monotonic()
        with pytest.raises(EngineCacheError, match="is not writable") as error:
            ensure_engine(cpu_spec(other), EngineCache(cache.root), here, model=other, on_event=events)
        assert time.monotonic() - started < 2.0
        assert "build_started" not in events.kinds() and "on every start" in str(error.value)
    assert built.path.is_file()


def test_a_failed_build_is_remembered_not_repeated(tmp_path: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx model")
    spec = cpu_spec(broken)
    with pytest.raises(BuildError, match="not a readable ONNX file") as first:
        ensure_engine(spec, cache, here, model=broken)
    assert first.value.kind == "failed"
    events = Events()
    with pytest.raises(BuildError, match=r"a previous build of .* failed") as second:
        ensure_engine(spec, cache, here, model=broken, on_event=events)
    assert "build_started" not in events.kinds() and second.value.kind == "failed"
    with pytest.raises(BuildError, match="not a readable ONNX file"):  # force retries for real
        ensure_engine(spec, cache, here, model=broken, options=BuildOptions(force=True))


def test_time_limit_memory_limit_and_cancel_stop_the_child(tiny: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    with pytest.raises(BuildError, match="did not finish within") as timeout:
        ensure_engine(cpu_spec(tiny), cache, here, model=tiny, options=BuildOptions(timeout_s=0.05))
    assert timeout.value.kind == "timeout"
    # a raised limit retries the build that hit the old one
    assert not ensure_engine(cpu_spec(tiny), cache, here, options=BuildOptions(timeout_s=600)).cache_hit
    other = cpu_spec(tiny, batch=BatchProfile(2, 2, 2))
    with pytest.raises(BuildError, match="used more than 1 MB") as memory:
        ensure_engine(other, cache, here, model=tiny, options=BuildOptions(memory_limit_mb=1))
    assert memory.value.kind == "memory"
    cancel = threading.Event()
    cancel.set()
    third = cpu_spec(tiny, batch=BatchProfile(3, 3, 3))
    with pytest.raises(BuildError, match="canceled"):
        ensure_engine(third, cache, here, model=tiny, cancel=cancel)
    assert not ensure_engine(third, cache, here, model=tiny).cache_hit  # a cancel is not recorded as a failure
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".tmp-")]  # nothing half-built left behind


def test_input_checks(tmp_path: Path, tiny: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    with pytest.raises(BuildError, match="the build spec says"):
        ensure_engine(cpu_spec(tiny, model_sha256="0" * 64), cache, here, model=tiny)
    with pytest.raises(BuildError, match="is not cached; fetch it again"):
        ensure_engine(cpu_spec(tiny), cache, here)


def test_int8_build_and_the_require_int8_policy(tiny: Path, tiny_table: Path, cache: EngineCache, here: DeviceFingerprint) -> None:
    spec = cpu_spec(tiny, precision=Precision.INT8, calib_sha256=sha256_file(tiny_table))
    strict = BuildOptions(policy=BuildPolicy(require_int8=True))
    if ort_flavor_supported(here.onnxruntime):
        manifest = ensure_engine(spec, cache, here, model=tiny, calib=tiny_table, options=strict).manifest
        assert manifest.int8["flavor"] == "onnxruntime" and manifest.report.int8_layers > 0
    else:  # onnxruntime < 1.20: the TensorRT flavour, float kernels on dequantized values, said out loud
        with pytest.raises(PolicyError, match="no layer runs in INT8"):
            ensure_engine(spec, cache, here, model=tiny, calib=tiny_table, options=strict)
        manifest = ensure_engine(spec, cache, here).manifest  # without the policy: accepted, with the warnings
        assert manifest.int8["flavor"] == "tensorrt" and "< 1.20" in manifest.int8["notes"][0]
        assert any("no layer runs in INT8" in note for note in manifest.notes)
    assert manifest.int8["route"] == "qdq_onnxruntime"
    fp32 = cpu_spec(tiny)
    with pytest.raises(PolicyError, match="spec asks for fp32, not INT8"):
        ensure_engine(fp32, cache, here, model=tiny, options=BuildOptions(policy=BuildPolicy(require_int8=True)))
    entry = cache.lookup(cache_key_of(fp32, here))
    assert entry is not None and entry.status == "rejected"  # kept, judged again without a rebuild
    events = Events()
    assert ensure_engine(fp32, cache, here, on_event=events).cache_hit and events.kinds() == ["cache_hit"]


def cache_key_of(spec: Any, fp: DeviceFingerprint) -> str:
    from agent.engine.spec import cache_key

    return cache_key(spec, fp)


def test_gc_keeps_pinned_and_state_file_keys(tiny_dir: Path, seeded: EngineCache, here: DeviceFingerprint, tmp_path: Path) -> None:
    cache = seeded
    a = ensure_engine(cpu_spec(tiny_dir / "tiny.onnx"), cache, here)
    b = ensure_engine(cpu_spec(tiny_dir / "tiny_b.onnx"), cache, here, model=tiny_dir / "tiny_b.onnx")
    c = ensure_engine(cpu_spec(tiny_dir / "tiny.onnx", batch=BatchProfile(2, 2, 2)), cache, here)
    cache.promote(a.key)
    cache.promote(b.key)
    assert cache.pins() == {"current": b.key, "previous": a.key}
    (cache.root / ".tmp-dead-build-999999-abcdef").mkdir()
    dry = cache.gc(dry_run=True)
    assert dry.removed == [c.key] and c.path.exists()
    result = cache.gc()
    assert result.removed == [c.key] and sorted(result.kept) == sorted([a.key, b.key])
    assert not c.path.exists() and not (cache.root / ".tmp-dead-build-999999-abcdef").exists()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"serving": {"engine": {"key": a.key}}, "previous": None}))
    assert keys_in_state_file(state) == {a.key}
    (cache.root / "pins.json").unlink()
    result = cache.gc(keep=keys_in_state_file(state))
    assert result.removed == [b.key] and result.removed_inputs == [sha256_file(tiny_dir / "tiny_b.onnx")]


def test_real_efficientnet_int8_on_the_cpu(tmp_path: Path, here: DeviceFingerprint) -> None:
    from tests import helpers

    model = helpers.testdata("models", "efficientnet_lite0.onnx")
    table = helpers.EFFNET_TABLE
    cache = EngineCache(tmp_path / "engines")
    spec = cpu_spec(model, precision=Precision.BEST, calib_sha256=sha256_file(table))
    built = ensure_engine(spec, cache, here, model=model, calib=table)
    report = built.report
    assert not report.tensors_without_scale and report.precisions.get("fp32", 0) <= 3
    if ort_flavor_supported(here.onnxruntime):
        assert report.int8_layers >= 40
    assert ensure_engine(spec, EngineCache(cache.root), here).cache_hit
    import numpy as np

    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(built.path, threads=1) as runner:
        out = runner.infer({"input": np.zeros((1, 3, 224, 224), np.float32)})
    assert next(iter(out.values())).shape == (1, 1000)




@pytest.mark.parametrize(
    "device, target, reason",
    [
        ({"module": "Jetson Orin Nano 8GB", "dla_cores": 0, "tensorrt": "10.3.0.30"}, "dla:0", "this module has no DLA cores"),
        ({"module": "Jetson AGX Orin 64GB", "dla_cores": 2, "tensorrt": "10.8.0.43"}, "dla:0", "no DLA support (10.8 to 11.4.0)"),
        ({"module": "Jetson AGX Orin 64GB", "dla_cores": 2, "tensorrt": "10.3.0.30"}, "dla:2", "this device has 2 DLA core(s)"),
        ({"module": "Jetson AGX Thor (developer kit)", "dla_cores": 0, "tensorrt": "11.4.1"}, "dla:0", "no DLA cores"),
    ],
    ids=["orin_nano", "trt_10_8", "core_2_of_2", "thor"],
)
def test_a_dla_core_the_device_lacks_is_refused_with_the_reason(
    device: Any, target: str, reason: str, tiny: Path, cache: EngineCache, here: DeviceFingerprint
) -> None:
    fp = dataclasses.replace(here, **device)
    spec = cpu_spec(tiny, target=target, precision=Precision.FP16, gpu_fallback=True)
    events = Events()
    with pytest.raises(BuildError, match=re.escape(reason)) as refused:
        ensure_engine(spec, cache, fp, model=tiny, on_event=events)
    assert refused.value.kind == "dla" and "build_started" not in events.kinds()


def test_builds_send_a_heartbeat_when_the_backend_is_quiet(
    tiny: Path, cache: EngineCache, here: DeviceFingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.engine import build

    monkeypatch.setattr(build, "HEARTBEAT_S", 0.0)
    events = Events()
    ensure_engine(cpu_spec(tiny, batch=BatchProfile(5, 5, 5)), cache, here, model=tiny, on_event=events)
    assert any(e.kind == "progress" and e.data.get("heartbeat") for e in events)
