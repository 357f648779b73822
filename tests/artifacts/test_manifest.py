"""The manifest, its signature, names, and the block protocol: plain functions, no broker."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.fleet.artifact_protocol import (
    MAX_BLOCKS_PER_REQUEST,
    ArtifactTooLargeError,
    InvalidNameError,
    MalformedBlockError,
    ManifestError,
    ManifestMismatchError,
    SignatureError,
    UnknownKeyError,
    UnsignedManifestError,
    check_expectations,
    decode_block,
    decode_manifest,
    decode_request,
    describe_file,
    encode_block,
    encode_block_error,
    encode_manifest,
    encode_request,
    sign_manifest,
    validate_name,
    verify_manifest,
)
from agent.fleet.messages import MessageError
from agent.fleet.signing import (
    GeneratedKeys,
    SigningKeyError,
    generate_keys,
    load_private_key,
    load_public_key,
    load_public_keys,
)


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(os.urandom(10_000))
    return path


def test_describe_hashes_the_file_and_each_block(artifact: Path) -> None:
    manifest = describe_file(artifact, "model", "model.onnx", 4096)
    data = artifact.read_bytes()
    assert manifest.artifact_id == hashlib.sha256(data).hexdigest()
    assert manifest.size == 10_000 and manifest.block_count == 3
    assert manifest.block_sha256[2] == hashlib.sha256(data[8192:]).hexdigest()
    assert manifest.block_range(2) == (8192, 10_000 - 8192)


def test_signed_manifest_round_trips_and_verifies(artifact: Path, keys: GeneratedKeys) -> None:
    manifest = sign_manifest(describe_file(artifact, "model", "model.onnx", 4096), load_private_key(keys.private_path))
    decoded = decode_manifest(encode_manifest(manifest))
    assert decoded == manifest
    assert decoded.key_id == keys.key_id
    assert verify_manifest(decoded, load_public_keys([keys.public_hex])) == "signed"


def test_signature_covers_every_field(artifact: Path, keys: GeneratedKeys) -> None:
    manifest = sign_manifest(describe_file(artifact, "model", "model.onnx", 4096), load_private_key(keys.private_path))
    trusted = load_public_keys([str(keys.public_path)])
    for change in ({"name": "other.onnx"}, {"size": 9_999}, {"kind": "calib"}, {"created": "2020-01-01T00:00:00Z"},
                   {"block_sha256": ("0" * 64, *manifest.block_sha256[1:])}):
        with pytest.raises(SignatureError, match="altered after signing"):
            verify_manifest(dataclasses.replace(manifest, **change), trusted)


def test_unknown_fields_of_a_newer_publisher_are_signed_too(artifact: Path, keys: GeneratedKeys) -> None:
    manifest = describe_file(artifact, "model", "model.onnx", 4096)
    manifest = sign_manifest(dataclasses.replace(manifest, extra={"compatible": ["orin"]}), load_private_key(keys.private_path))
    raw = json.loads(encode_manifest(manifest))
    trusted = load_public_keys([keys.public_hex])
    assert verify_manifest(decode_manifest(raw), trusted) == "signed"
    raw["compatible"] = ["xavier"]
    with pytest.raises(SignatureError):
        verify_manifest(decode_manifest(raw), trusted)


def test_unsigned_refused_unless_allowed(artifact: Path, keys: GeneratedKeys) -> None:
    manifest = describe_file(artifact, "model", "model.onnx", 4096)
    with pytest.raises(UnsignedManifestError, match="allow_unsigned"):
        verify_manifest(manifest, load_public_keys([keys.public_hex]))
    assert verify_manifest(manifest, {}, allow_unsigned=True) == "unsigned-allowed"


def test_unknown_key_refused_and_named(artifact: Path, keys: GeneratedKeys, other_keys: GeneratedKeys) -> None:
    manifest = sign_manifest(describe_file(artifact, "model", "model.onnx", 4096), load_private_key(other_keys.private_path))
    with pytest.raises(UnknownKeyError, match=other_keys.key_id):
        verify_manifest(manifest, load_public_keys([keys.public_hex]))


def test_bad_signature_refused_even_when_unsigned_is_allowed(artifact: Path, keys: GeneratedKeys) -> None:
    manifest = sign_manifest(describe_file(artifact, "model", "model.onnx", 4096), load_private_key(keys.private_path))
    with pytest.raises(SignatureError):
        verify_manifest(dataclasses.replace(manifest, size=1), load_public_keys([keys.public_hex]), allow_unsigned=True)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a\\b", "..", "x..y", ".hidden", "", "a" * 129, "sp ace", "nul\0"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


@pytest.mark.parametrize("name", ["efficientnet_lite0.onnx", "table-v2.cache", "val+set@2024,a=b", "a" * 128])
def test_good_names_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_expectations(artifact: Path) -> None:
    manifest = describe_file(artifact, "model", "model.onnx", 4096)
    check_expectations(manifest, manifest.artifact_id, expect_kind="model", expect_name="model.onnx", max_bytes=10_000)
    with pytest.raises(ManifestMismatchError, match="asked for a calib"):
        check_expectations(manifest, manifest.artifact_id, expect_kind="calib", max_bytes=10**9)
    with pytest.raises(ManifestMismatchError, match=r"other\.onnx"):
        check_expectations(manifest, manifest.artifact_id, expect_name="other.onnx", max_bytes=10**9)
    with pytest.raises(ManifestMismatchError, match="describes"):
        check_expectations(manifest, "0" * 64, max_bytes=10**9)
    with pytest.raises(ArtifactTooLargeError, match="max_bytes"):
        check_expectations(manifest, manifest.artifact_id, max_bytes=9_999)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"artifact_id": "ABC"}, "artifact_id"),
        ({"size": -1}, "size"),
        ({"chunk_size": 10}, "chunk_size"),
        ({"block_sha256": []}, "block hashes"),
        ({"block_sha256": "nope"}, "block_sha256"),
        ({"schema": 99}, "newer"),
        ({"kind": "../x"}, "kind"),
    ],
)
def test_malformed_manifests_are_refused_with_the_field_named(artifact: Path, change: dict, message: str) -> None:
    raw = json.loads(encode_manifest(describe_file(artifact, "model", "model.onnx", 4096)))
    raw.update(change)
    with pytest.raises(ManifestError, match=message):
        decode_manifest(json.dumps(raw).encode())


def test_manifest_that_is_not_json_is_refused() -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        decode_manifest(b"\xff\x00")


def test_block_frames_round_trip_without_base64() -> None:
    data = os.urandom(5000)
    frame = encode_block("ab" * 32, 7, 7 * 5000, data)
    assert len(frame) == len(data) + 88  # binary header, raw bytes
    block = decode_block(frame)
    assert (block.artifact_id, block.index, block.offset, bytes(block.data)) == ("ab" * 32, 7, 35000, data)
    assert block.digest == hashlib.sha256(data).digest() and not block.error
    error = decode_block(encode_block_error("ab" * 32, 3, "artifact not held by this server"))
    assert error.error == "artifact not held by this server"


@pytest.mark.parametrize("frame", [b"", b"EAB1", b"XXXX" + bytes(84), encode_block("ab" * 32, 0, 0, b"abc")[:-1]])
def test_malformed_frames_are_refused(frame: bytes) -> None:
    with pytest.raises(MalformedBlockError):
        decode_block(frame)


def test_requests_are_bounded() -> None:
    request = decode_request(encode_request("ab" * 32, 4096, [0, 5, 9]))
    assert request.blocks == (0, 5, 9)
    for bad in ([], list(range(MAX_BLOCKS_PER_REQUEST + 1)), [-1], ["1"], [True]):
        with pytest.raises(MessageError):
            decode_request(encode_request("ab" * 32, 4096, bad))
    with pytest.raises(MessageError, match="sha256"):
        decode_request(encode_request("../x", 4096, [0]))


def test_keys_are_written_private_and_refuse_to_be_overwritten(tmp_path: Path) -> None:
    made = generate_keys(tmp_path / "k")
    assert made.private_path.stat().st_mode & 0o777 == 0o600
    assert load_public_key(made.public_hex) is not None and load_public_key(str(made.public_path)) is not None
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keys(tmp_path / "k")
    with pytest.raises(SigningKeyError, match="neither 64 hex"):
        load_public_key("no-such-key.pem")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_private_key(made.public_path)
