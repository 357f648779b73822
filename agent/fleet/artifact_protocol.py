"""Artifacts: the signed manifest, the refusals, and the block protocol both sides of a transfer speak.

An artifact is one file (calibration table, ONNX model, validation set) named by its sha256. Its manifest is
retained at `<prefix>/artifacts/<sha256>/manifest`:

    {schema, artifact_id, size, kind, name, chunk_size, created, block_sha256: [...], key_id, signature}

`signature` is ed25519 over the canonical JSON (sorted keys, no spaces, ASCII) of every other field, so a
changed byte anywhere in the manifest, including the per-block hashes, fails the check. The per-block hashes let
a device reject a bad block the moment it arrives (and re-request only that block) instead of discovering at
the end that some block among thousands was wrong, and let a resumed transfer re-check what is already on disk.

Blocks travel as binary frames (88-byte header + raw bytes, see `encode_block`), not base64 JSON: MQTT carries
bytes, and the transfer must keep up with the broker.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from agent.errors import AgentError
from agent.fleet import messages
from agent.fleet.messages import Envelope, MessageError
from agent.fleet.signing import key_id, sign, verify
from agent.models import Annotated, FrozenModel, Meta, parse

MANIFEST_SCHEMA = 1
KINDS = ("model", "calib", "validation", "labels", "engine")  # engine: a shared plan (agent.fleet.plans)
NAME_MAX = 128
MIN_CHUNK = 1024
MAX_CHUNK = 4 * 1024 * 1024
MAX_BLOCKS = 65536  # keeps a manifest (64 hex characters a block) under ~4.5 MB even at the limit
MAX_BLOCKS_PER_REQUEST = 64
REQUEST_KIND = "artifact-req"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_+=@,-][A-Za-z0-9._+=@,-]*$")
_KIND = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


# ------------------------------------------------------------------------------------------------ refusals
class ArtifactError(AgentError):
    """An artifact was refused or could not be fetched. `code` names the reason for events and tests."""

    code = "artifact_error"


class InvalidArtifactIdError(ArtifactError):
    code = "invalid_id"


class InvalidNameError(ArtifactError):
    code = "invalid_name"


class ManifestError(ArtifactError):
    """The manifest is malformed (not JSON, missing or mistyped fields, inconsistent block list)."""

    code = "bad_manifest"


class ManifestNotFoundError(ArtifactError):
    code = "no_manifest"


class UnsignedManifestError(ArtifactError):
    code = "unsigned"


class UnknownKeyError(ArtifactError):
    code = "unknown_key"


class SignatureError(ArtifactError):
    code = "bad_signature"


class ManifestMismatchError(ArtifactError):
    """The manifest is valid but not what was asked for (artifact id, kind or name)."""

    code = "mismatch"


class ArtifactTooLargeError(ArtifactError):
    code = "too_large"


class DiskSpaceError(ArtifactError):
    code = "disk_space"


class BlockRejectedError(ArtifactError):
    """Blocks kept failing their checks; the good ones are kept for the next attempt."""

    code = "block_rejected"


class BlockOutsideManifestError(BlockRejectedError):
    code = "block_outside_manifest"


class CorruptBlockError(BlockRejectedError):
    code = "corrupt_block"


class TamperedBlockError(BlockRejectedError):
    code = "tampered_block"


class MalformedBlockError(BlockRejectedError):
    code = "malformed_block"


class HashMismatchError(ArtifactError):
    code = "hash_mismatch"


class ArtifactUnavailableError(ArtifactError):
    """The artifact server answered that it cannot serve this artifact."""

    code = "unavailable"


class TransferStalledError(ArtifactError):
    code = "stalled"


class TransferTimeoutError(ArtifactError):
    code = "timeout"


class TransferCancelledError(ArtifactError):
    code = "cancelled"


class TransferBusyError(ArtifactError):
    code = "busy"


# ------------------------------------------------------------------------------------------------ names
def validate_artifact_id(artifact_id: str) -> str:
    if not isinstance(artifact_id, str) or not _HEX64.match(artifact_id):
        raise InvalidArtifactIdError(f"artifact id must be a sha256: 64 lowercase hex characters, got {artifact_id!r}")
    return artifact_id


def validate_name(name: str) -> str:
    """A name labels an artifact and may end up in a file name, so: no path separators, no '..', no leading
    dot, printable ASCII from a small set, at most NAME_MAX characters."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("artifact name is empty")
    if len(name) > NAME_MAX:
        raise InvalidNameError(f"artifact name is {len(name)} characters long; the limit is {NAME_MAX}")
    if "/" in name or "\\" in name:
        raise InvalidNameError(f"artifact name {name!r} contains a path separator")
    if ".." in name:
        raise InvalidNameError(f"artifact name {name!r} contains '..'")
    if not _NAME.match(name):
        raise InvalidNameError(
            f"artifact name {name!r} may hold only letters, digits and . _ - + = @ , (not first: a dot)"
        )
    return name


# ------------------------------------------------------------------------------------------------ manifest
def _sha256_problem(value: str) -> str:
    return "" if _HEX64.match(value) else f"not a sha256 (64 lowercase hex characters): {value!r}"


class ManifestDocument(FrozenModel, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The shape of a manifest as it arrives (`decode_manifest` parses it, then builds an ArtifactManifest).
    Unknown keys are not refused here: they are the fields of a newer publisher, covered by the signature, and
    `decode_manifest` keeps them in `ArtifactManifest.extra`. Encoding and the signed bytes stay
    `ArtifactManifest`'s (`canonical_bytes`)."""

    schema: Annotated[int, Meta(ge=1, le=2**31)]
    artifact_id: Annotated[str, Meta(max_length=64)]
    size: Annotated[int, Meta(ge=0, le=2**62)]
    kind: Annotated[str, Meta(max_length=32)]
    name: Annotated[str, Meta(max_length=1024)]  # checked by validate_name where it is used as a file name
    chunk_size: Annotated[int, Meta(ge=MIN_CHUNK, le=MAX_CHUNK)]
    created: Annotated[str, Meta(max_length=64)]
    block_sha256: List[Annotated[str, Meta(pattern=_HEX64.pattern)]]
    key_id: Annotated[str, Meta(max_length=64)] = ""
    signature: Annotated[str, Meta(max_length=256)] = ""

    def __post_init__(self) -> None:
        if self.schema > MANIFEST_SCHEMA:
            raise ValueError(
                f"schema: manifest schema {self.schema} is newer than this agent understands ({MANIFEST_SCHEMA}); upgrade the agent"
            )
        if _sha256_problem(self.artifact_id):
            raise ValueError(f"artifact_id: {_sha256_problem(self.artifact_id)}")
        if not _KIND.match(self.kind):
            raise ValueError(f"kind: {self.kind!r} is not a kind name (a lowercase letter, then up to 31 of a-z, 0-9, -)")
        expected = block_count_for(self.size, self.chunk_size)
        if len(self.block_sha256) != expected:
            raise ValueError(
                f"block_sha256: {len(self.block_sha256)} block hashes for {self.size} bytes in {self.chunk_size}-byte blocks "
                f"(expected {expected})"
            )
        if expected > MAX_BLOCKS:
            raise ValueError(f"block_sha256: {expected} blocks is over the limit of {MAX_BLOCKS}")


@dataclass(frozen=True)
class ArtifactManifest:
    artifact_id: str
    size: int
    kind: str
    name: str
    chunk_size: int
    created: str
    block_sha256: Tuple[str, ...]
    key_id: str = ""
    signature: str = ""
    schema: int = MANIFEST_SCHEMA
    extra: Dict[str, Any] = field(default_factory=dict)  # fields of a newer publisher; signed, so kept

    @property
    def block_count(self) -> int:
        return len(self.block_sha256)

    @property
    def signed(self) -> bool:
        return bool(self.signature)

    def block_range(self, index: int) -> Tuple[int, int]:
        """(offset, length) of block `index`."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def signed_body(self) -> Dict[str, Any]:
        body: Dict[str, Any] = dict(self.extra)
        body.update(
            schema=self.schema,
            artifact_id=self.artifact_id,
            size=self.size,
            kind=self.kind,
            name=self.name,
            chunk_size=self.chunk_size,
            created=self.created,
            block_sha256=list(self.block_sha256),
            key_id=self.key_id,
        )
        return body

    def canonical_bytes(self) -> bytes:
        """The bytes the signature covers."""
        return json.dumps(self.signed_body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()

    def to_dict(self) -> Dict[str, Any]:
        body = self.signed_body()
        body["signature"] = self.signature
        return body

    def summary(self) -> Dict[str, Any]:
        """What a log line or an event needs (no block list)."""
        return {"artifact_id": self.artifact_id, "kind": self.kind, "name": self.name, "size": self.size, "key_id": self.key_id}


def block_count_for(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def describe_file(
    path: Path, kind: str, name: str, chunk_size: int, created: Optional[str] = None
) -> ArtifactManifest:
    """An unsigned manifest for `path`: one pass computes the file's sha256 and each block's."""
    validate_name(name)
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ArtifactError(f"chunk size must be from {MIN_CHUNK} to {MAX_CHUNK} bytes, got {chunk_size}")
    whole = hashlib.sha256()
    blocks: List[str] = []
    size = 0
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk_size), b""):
                whole.update(block)
                blocks.append(hashlib.sha256(block).hexdigest())
                size += len(block)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(blocks) > MAX_BLOCKS:
        raise ArtifactError(
            f"{path} would be {len(blocks)} blocks of {chunk_size} bytes; the limit is {MAX_BLOCKS}: use a larger chunk size"
        )
    stamp = created or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ArtifactManifest(whole.hexdigest(), size, kind, name, chunk_size, stamp, tuple(blocks))


def sign_manifest(manifest: ArtifactManifest, private_key: Any) -> ArtifactManifest:
    """The manifest with `key_id` and `signature` set by `private_key` (an Ed25519PrivateKey)."""
    with_key = replace(manifest, key_id=key_id(private_key.public_key()), signature="")
    _kid, signature = sign(private_key, with_key.canonical_bytes())
    return replace(with_key, signature=signature)


def encode_manifest(manifest: ArtifactManifest) -> bytes:
    return json.dumps(manifest.to_dict(), separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def decode_manifest(payload: Union[bytes, Mapping[str, Any]]) -> ArtifactManifest:
    """Parse and check a manifest's shape; raises ManifestError naming the problem. Does not check the signature."""
    if isinstance(payload, (bytes, bytearray)):
        try:
            data = json.loads(bytes(payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise ManifestError(f"manifest is not JSON: {str(exc)[:200]}") from None
    else:
        data = dict(payload)
    document = parse(ManifestDocument, data, error=ManifestError, root="manifest")
    known = ManifestDocument.__struct_fields__
    extra = {k: v for k, v in data.items() if k not in known} if isinstance(data, dict) else {}
    return ArtifactManifest(
        document.artifact_id, document.size, document.kind, document.name, document.chunk_size, document.created,
        tuple(document.block_sha256), document.key_id, document.signature, document.schema, extra,
    )


def verify_manifest(manifest: ArtifactManifest, public_keys: Mapping[str, Any], allow_unsigned: bool = False) -> str:
    """Check the signature. Returns 'signed' or 'unsigned-allowed'; raises UnsignedManifestError,
    UnknownKeyError or SignatureError. A manifest that carries a signature from a configured key must verify
    even when unsigned artifacts are allowed: a bad signature is evidence of tampering, not a missing feature."""
    ident = manifest.artifact_id[:12]
    if not manifest.signature:
        if allow_unsigned:
            return "unsigned-allowed"
        raise UnsignedManifestError(
            f"artifact {ident}: manifest is not signed; sign it (edge-agent fleet publish --key ...) "
            "or set artifacts.allow_unsigned = true on a test device"
        )
    key = public_keys.get(manifest.key_id)
    if key is None:
        if allow_unsigned:
            return "unsigned-allowed"
        known = ", ".join(sorted(public_keys)) or "none configured"
        raise UnknownKeyError(
            f"artifact {ident}: signed by key {manifest.key_id or '(no key id)'}, which is not in artifacts.public_keys "
            f"(known: {known})"
        )
    if not verify(key, manifest.signature, manifest.canonical_bytes()):
        raise SignatureError(f"artifact {ident}: the manifest signature does not verify with key {manifest.key_id}; it was altered after signing")
    return "signed"


def check_expectations(
    manifest: ArtifactManifest,
    artifact_id: str,
    *,
    expect_kind: Optional[str] = None,
    expect_name: Optional[str] = None,
    max_bytes: int,
) -> None:
    """Is this manifest the artifact that was asked for, and within the limits?"""
    ident = artifact_id[:12]
    if manifest.artifact_id != artifact_id:
        raise ManifestMismatchError(f"artifact {ident}: the manifest found describes {manifest.artifact_id[:12]} instead")
    validate_name(manifest.name)
    if expect_kind is not None and manifest.kind != expect_kind:
        raise ManifestMismatchError(f"artifact {ident}: the deployment asked for a {expect_kind}, the manifest says {manifest.kind}")
    if expect_name is not None and manifest.name != expect_name:
        raise ManifestMismatchError(f"artifact {ident}: the deployment asked for {expect_name!r}, the manifest names {manifest.name!r}")
    if manifest.size > max_bytes:
        raise ArtifactTooLargeError(
            f"artifact {ident}: {manifest.size} bytes is over artifacts.max_bytes = {max_bytes}"
        )


# ------------------------------------------------------------------------------------------------ blocks
BLOCK_MAGIC = b"EAB1"
FLAG_ERROR = 0x01
# magic, version, flags, reserved, artifact id (raw sha256), index, offset, length, block sha256
BLOCK_HEADER = struct.Struct(">4sBBH32sIQI32s")
BLOCK_VERSION = 1


@dataclass(frozen=True)
class Block:
    artifact_id: str
    index: int
    offset: int
    digest: bytes  # the sha256 the sender claims for `data`
    data: memoryview
    error: str = ""  # set on an error frame: the server's reason it cannot serve


def encode_block(artifact_id: str, index: int, offset: int, data: bytes, digest: Optional[bytes] = None) -> bytes:
    digest = hashlib.sha256(data).digest() if digest is None else digest
    header = BLOCK_HEADER.pack(BLOCK_MAGIC, BLOCK_VERSION, 0, 0, bytes.fromhex(artifact_id), index, offset, len(data), digest)
    return header + data


def encode_block_error(artifact_id: str, index: int, message: str) -> bytes:
    text = message.encode("utf-8")[:1024]
    header = BLOCK_HEADER.pack(BLOCK_MAGIC, BLOCK_VERSION, FLAG_ERROR, 0, bytes.fromhex(artifact_id), index, 0, len(text), b"\0" * 32)
    return header + text


def decode_block(payload: bytes) -> Block:
    """Parse a frame without copying its data; raises MalformedBlockError."""
    if len(payload) < BLOCK_HEADER.size:
        raise MalformedBlockError(f"block frame of {len(payload)} bytes is shorter than its {BLOCK_HEADER.size}-byte header")
    magic, version, flags, _reserved, raw_id, index, offset, length, digest = BLOCK_HEADER.unpack_from(payload)
    if magic != BLOCK_MAGIC:
        raise MalformedBlockError(f"block frame starts with {magic!r}, not {BLOCK_MAGIC!r}")
    if version != BLOCK_VERSION:
        raise MalformedBlockError(f"block frame version {version} is not {BLOCK_VERSION}; upgrade the agent or the server")
    data = memoryview(payload)[BLOCK_HEADER.size :]
    if len(data) != length:
        raise MalformedBlockError(f"block frame says {length} bytes and carries {len(data)}")
    if flags & FLAG_ERROR:
        return Block(raw_id.hex(), index, offset, digest, data, error=bytes(data).decode("utf-8", "replace") or "error")
    return Block(raw_id.hex(), index, offset, digest, data)


class BlockRequest(Envelope, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """A device's request for blocks of an artifact, sent to the artifact server. Unknown keys are ignored, not
    refused: devices and artifact servers are upgraded at different times, and an older server must keep serving
    a newer device (the manifest is read the same way)."""

    artifact_id: Annotated[str, Meta(max_length=64)]
    chunk_size: Annotated[int, Meta(ge=MIN_CHUNK, le=MAX_CHUNK)]
    blocks: Annotated[
        Tuple[Annotated[int, Meta(ge=0, lt=MAX_BLOCKS)], ...], Meta(min_length=1, max_length=MAX_BLOCKS_PER_REQUEST)
    ]

    def __post_init__(self) -> None:
        if _sha256_problem(self.artifact_id):
            raise ValueError(f"artifact_id: {_sha256_problem(self.artifact_id)}")


def encode_request(artifact_id: str, chunk_size: int, blocks: Sequence[int]) -> bytes:
    return messages.encode(REQUEST_KIND, {"artifact_id": artifact_id, "chunk_size": chunk_size, "blocks": list(blocks)})


def decode_request(payload: bytes) -> BlockRequest:
    """Parse a device's block request; raises MessageError naming the key and the problem."""
    return parse(BlockRequest, messages.decode(payload, REQUEST_KIND), error=MessageError)
