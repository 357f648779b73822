"""Pulling artifacts over a real mosquitto: they arrive and verify; every refusal is clear and leaves the store
as it was; tampering is caught."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.fleet.artifact_protocol import (
    ArtifactManifest,
    ArtifactTooLargeError,
    ArtifactUnavailableError,
    BlockOutsideManifestError,
    CorruptBlockError,
    DiskSpaceError,
    HashMismatchError,
    InvalidArtifactIdError,
    InvalidNameError,
    ManifestError,
    ManifestMismatchError,
    ManifestNotFoundError,
    SignatureError,
    TamperedBlockError,
    UnknownKeyError,
    UnsignedManifestError,
    encode_block,
    encode_manifest,
    sign_manifest,
)
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import GeneratedKeys, load_private_key
from agent.fleet.transfer import pull_artifacts
from agent.operator.artifact_server import publish_manifest
from agent.store.hashing import sha256_file
from tests.artifacts.conftest import Device, DeviceFactory, Operator, RogueServer, store_snapshot
from tests.helpers import EFFNET_TABLE


def calibration_table() -> bytes:
    """The real EfficientNet-Lite0 table the project ships."""
    return EFFNET_TABLE.read_bytes()


def validation_set() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, images=rng.integers(0, 255, (24, 3, 32, 32), dtype=np.uint8), labels=rng.integers(0, 4, 24))
    return buffer.getvalue()


@pytest.fixture()
def device(make_device: DeviceFactory) -> Device:
    return make_device()


@pytest.fixture()
def stocked(device: Device, operator: Operator) -> Device:
    """A device whose store already holds one artifact, to show refusals leave it untouched."""
    device.pull(operator.publish(b"already here" * 100, kind="calib", name="old.cache"))
    device.events.clear()
    return device


# ---------------------------------------------------------------------------------------------------- arrivals
def test_table_model_and_validation_set_arrive_and_verify(device: Device, operator: Operator) -> None:
    table = operator.publish(calibration_table(), kind="calib", name="efficientnet_lite0.cache", chunk_size=1024)
    model = operator.publish(os.urandom(20 * 1024 * 1024), kind="model", name="model-20mb.onnx", chunk_size=256 * 1024)
    validation = operator.publish(validation_set(), kind="validation", name="golden.npz", chunk_size=8192)
    paths = pull_artifacts(device.puller, [(table.artifact_id, "calib", "efficientnet_lite0.cache"),
                                           (model.artifact_id, "model", None),
                                           (validation.artifact_id, "validation", "golden.npz")])
    for manifest in (table, model, validation):
        assert paths[manifest.artifact_id] == device.store.path(manifest.artifact_id)
        assert sha256_file(paths[manifest.artifact_id]) == manifest.artifact_id
    assert {(a.kind, a.name) for a in device.store.list()} == {
        ("calib", "efficientnet_lite0.cache"), ("model", "model-20mb.onnx"), ("validation", "golden.npz")}
    assert np.load(paths[validation.artifact_id])["images"].shape == (24, 3, 32, 32)
    assert device.store.verify() == [] and device.store.partials() == []
    stored = [e for e in device.events if e["event"] == "artifact.stored"]
    assert len(stored) == 3 and stored[1]["stats"]["received_bytes"] == 20 * 1024 * 1024
    progress = [e for e in device.events if e["event"] == "artifact.progress" and e["artifact_id"] == model.artifact_id]
    assert progress[-1]["bytes"] == progress[-1]["total"] and {"rate_bps", "eta_s", "percent"} <= set(progress[-1])


def test_a_stored_artifact_is_not_fetched_again(device: Device, operator: Operator) -> None:
    manifest = operator.publish(b"twice" * 1000, kind="calib", name="t.cache")
    first = device.pull(manifest)
    device.events.clear()
    assert device.pull(manifest, expect_kind="calib") == first
    assert device.event_names() == ["artifact.present"]
    with pytest.raises(ManifestMismatchError, match="stored copy"):
        device.pull(manifest, expect_kind="model")


def test_works_on_an_mqtt_311_broker_connection(broker: LocalBroker, keys: GeneratedKeys, make_device: DeviceFactory,
                                                tmp_path: Path) -> None:
    operator = Operator(broker, tmp_path / "op311", keys, prefix="mq311", protocol="3.1.1")
    try:
        device = make_device(protocol="3.1.1", prefix="mq311")
        manifest = operator.publish(os.urandom(50_000), chunk_size=4096)
        assert sha256_file(device.pull(manifest)) == manifest.artifact_id
    finally:
        operator.close()


def test_unsigned_artifact_accepted_only_where_allowed(make_device: DeviceFactory, operator: Operator) -> None:
    manifest = operator.publish(b"unsigned" * 500, signed=False)
    relaxed = make_device(allow_unsigned=True)
    assert relaxed.pull(manifest).is_file()


# ---------------------------------------------------------------------------------------------------- refusals
def refused(device: Device, error: type, artifact: object, match: str = "", **kwargs: object) -> dict:
    """Pull, expect `error`, check the store is untouched and the refusal event names the reason."""
    before = store_snapshot(device.store)
    with pytest.raises(error, match=match) as caught:
        device.pull(artifact, **kwargs)
    assert store_snapshot(device.store) == before
    event = [e for e in device.events if e["event"] == "artifact.refused"][-1]
    assert event["code"] == caught.value.code and event["reason"] == str(caught.value)
    return event


def no_partial(device: Device, manifest: ArtifactManifest) -> bool:
    return manifest.artifact_id not in device.store.partials()


def test_refuses_unsigned(stocked: Device, operator: Operator) -> None:
    manifest = operator.publish(b"no signature" * 100, signed=False)
    refused(stocked, UnsignedManifestError, manifest, "not signed")
    assert no_partial(stocked, manifest)


def test_refuses_tampered_manifest(stocked: Device, operator: Operator) -> None:
    manifest = operator.publish(b"honest bytes" * 100, name="model.onnx",
                                after_sign=lambda m: dataclasses.replace(m, name="evil.onnx"))
    refused(stocked, SignatureError, manifest, "altered after signing")
    assert no_partial(stocked, manifest)


def test_refuses_unknown_key(stocked: Device, operator: Operator, other_keys: GeneratedKeys) -> None:
    manifest = operator.publish(b"stranger" * 100, key=load_private_key(other_keys.private_path))
    refused(stocked, UnknownKeyError, manifest, other_keys.key_id)


def test_refuses_size_over_the_maximum(make_device: DeviceFactory, operator: Operator) -> None:
    device = make_device(max_bytes=10_000)
    manifest = operator.publish(os.urandom(10_001))
    refused(device, ArtifactTooLargeError, manifest, "max_bytes")
    assert no_partial(device, manifest)


def test_refuses_kind_or_name_not_asked_for(stocked: Device, operator: Operator) -> None:
    manifest = operator.publish(b"a model" * 100, kind="model", name="model.onnx")
    refused(stocked, ManifestMismatchError, manifest, "asked for a calib", expect_kind="calib")
    refused(stocked, ManifestMismatchError, manifest, "other.onnx", expect_name="other.onnx")
    assert no_partial(stocked, manifest)


def test_refuses_when_disk_space_would_drop_below_the_floor(make_device: DeviceFactory, operator: Operator) -> None:
    device = make_device(min_free_mb=10**9)
    manifest = operator.publish(b"needs room" * 100)
    refused(device, DiskSpaceError, manifest, "min_free_mb")
    assert no_partial(device, manifest)


def test_refuses_a_name_with_path_separators(stocked: Device, operator: Operator) -> None:
    manifest = operator.publish(b"sneaky" * 100, before_sign=lambda m: dataclasses.replace(m, name="../../etc/cron.d/x"))
    refused(stocked, InvalidNameError, manifest, "path separator")


def test_refuses_a_manifest_for_another_artifact(stocked: Device, operator: Operator) -> None:
    real = operator.publish(b"real" * 100)
    wrong_id = hashlib.sha256(b"something else").hexdigest()
    operator.publish_raw(wrong_id, encode_manifest(real))
    refused(stocked, ManifestMismatchError, wrong_id, "describes")


def test_refuses_a_malformed_manifest(stocked: Device, operator: Operator) -> None:
    artifact_id = hashlib.sha256(b"malformed").hexdigest()
    operator.publish_raw(artifact_id, b'{"schema": 1, "artifact_id": 5}')
    refused(stocked, ManifestError, artifact_id, "artifact_id")


def test_missing_manifest_and_bad_id_are_clear(stocked: Device) -> None:
    refused(stocked, ManifestNotFoundError, hashlib.sha256(b"never published").hexdigest(), "fleet publish",
            timeout_s=0.5)
    refused(stocked, InvalidArtifactIdError, "../../etc/passwd", "64 lowercase hex")


def test_server_without_the_file_says_so(stocked: Device, operator: Operator) -> None:
    manifest = operator.publish(b"gone" * 100)
    (operator.folder / manifest.artifact_id).unlink()
    operator.server.stop()  # forget the open file
    operator.server.start()
    refused(stocked, ArtifactUnavailableError, manifest, "not held by this server")


def test_final_hash_mismatch_is_refused_and_the_partial_dropped(stocked: Device, operator: Operator) -> None:
    """A signed manifest whose block list matches the bytes but whose artifact id does not."""
    lie = hashlib.sha256(b"what the deployment named").hexdigest()
    manifest = operator.publish(os.urandom(20_000), before_sign=lambda m: dataclasses.replace(m, artifact_id=lie))
    refused(stocked, HashMismatchError, manifest, "hashes to")
    assert no_partial(stocked, manifest) and not stocked.store.has(lie)


# ---------------------------------------------------------------------------------------------------- bad blocks
ROGUE_PREFIX = "rogue"  # no real server answers under this prefix


@pytest.fixture()
def rogue_device(make_device: DeviceFactory) -> Device:
    device = make_device(prefix=ROGUE_PREFIX)
    source = device.store.root.parent / "old.cache"
    source.write_bytes(b"already here")
    artifact_id = hashlib.sha256(b"already here").hexdigest()
    device.store.install(artifact_id, source, {"artifact_id": artifact_id, "kind": "calib", "name": "old.cache", "size": 12})
    return device


def rogue_pull(broker: LocalBroker, device: Device, operator: Operator, craft: object) -> ArtifactManifest:
    """Publish a signed manifest; a rogue server answers the device's requests with `craft(manifest, i, data)`."""
    data = os.urandom(8 * 4096)
    _source, manifest = operator.describe(data, chunk_size=4096)
    manifest = sign_manifest(manifest, operator.private_key)
    publish_manifest(operator.link, ROGUE_PREFIX, manifest)
    device.rogue = RogueServer(broker, ROGUE_PREFIX, device.device_id, data, manifest, craft)  # type: ignore[attr-defined]
    return manifest


@pytest.mark.parametrize(
    "error, match, craft",
    [
        (CorruptBlockError, "own checksum",
         lambda m, i, d: encode_block(m.artifact_id, i, i * m.chunk_size, bytes([d[0] ^ 1]) + d[1:], hashlib.sha256(d).digest())),
        (TamperedBlockError, "signed manifest",
         lambda m, i, d: encode_block(m.artifact_id, i, i * m.chunk_size, bytes([d[0] ^ 1]) + d[1:])),
        (BlockOutsideManifestError, "outside the manifest",
         lambda m, i, d: encode_block(m.artifact_id, i + 100, (i + 100) * m.chunk_size, d)),
        (BlockOutsideManifestError, "outside the manifest",
         lambda m, i, d: encode_block(m.artifact_id, i, i * m.chunk_size + 1, d)),
    ],
    ids=["corrupt", "tampered", "index-outside", "offset-outside"],
)
def test_bad_blocks_are_rejected_and_never_written(broker: LocalBroker, rogue_device: Device, operator: Operator,
                                                   error: type, match: str, craft: object) -> None:
    manifest = rogue_pull(broker, rogue_device, operator, craft)
    try:
        refused(rogue_device, error, manifest, match)
    finally:
        rogue_device.rogue.close()  # type: ignore[attr-defined]
    rejected = [e for e in rogue_device.events if e["event"] == "artifact.block_rejected"]
    assert len(rejected) >= 3 and all(e["code"] == error.code for e in rejected)
    part = rogue_device.store.partial_path(manifest.artifact_id)
    assert not part.exists() or part.read_bytes().count(0) == part.stat().st_size  # nothing bad on disk


def test_a_single_bad_block_is_fetched_again(broker: LocalBroker, rogue_device: Device, operator: Operator) -> None:
    spoiled = {"left": 1}

    def once(m: ArtifactManifest, i: int, d: bytes) -> bytes:
        if i == 3 and spoiled["left"]:
            spoiled["left"] -= 1
            return encode_block(m.artifact_id, i, i * m.chunk_size, bytes([d[0] ^ 1]) + d[1:])
        return encode_block(m.artifact_id, i, i * m.chunk_size, d)

    manifest = rogue_pull(broker, rogue_device, operator, once)
    try:
        path = rogue_device.pull(manifest)
    finally:
        rogue_device.rogue.close()  # type: ignore[attr-defined]
    assert sha256_file(path) == manifest.artifact_id
    assert [e["block"] for e in rogue_device.events if e["event"] == "artifact.block_rejected"] == [3]


def test_a_second_server_without_the_artifact_does_not_spoil_the_pull(make_operator: Any, make_device: DeviceFactory) -> None:
    holder = make_operator("two-servers")
    bystander = make_operator("two-servers", folder="empty")  # answers "not held" to every request
    device = make_device(prefix="two-servers")
    manifest = holder.publish(os.urandom(40_000), chunk_size=4096)
    assert sha256_file(device.pull(manifest)) == manifest.artifact_id
    assert bystander.server.stats.error_frames >= 1
