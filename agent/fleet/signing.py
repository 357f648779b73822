"""Fleet signing keys: ed25519 (`cryptography`), PEM on disk, raw hex in device configuration.

The operator keeps the private key (file mode 0600); devices hold only public keys, listed in
`[artifacts] public_keys` as PEM paths or 64-character hex strings. A key is named by its key id, the first
16 hex characters of the sha256 of its 32 raw bytes, so a manifest says which key signed it and a device
with several keys (rotation) checks the right one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Tuple

from agent.errors import AgentError
from agent.lazy import deferred
from agent.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from cryptography import exceptions
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
else:  # loaded on first use: the idle agent imports this module but must not load cryptography (agent.lazy.deferred)
    exceptions = deferred("cryptography.exceptions")
    serialization = deferred("cryptography.hazmat.primitives.serialization")
    ed25519 = deferred("cryptography.hazmat.primitives.asymmetric.ed25519")

PRIVATE_KEY_NAME = "fleet-signing.key"
PUBLIC_KEY_NAME = "fleet-signing.pub"
KEY_ID_CHARS = 16

log = logging.getLogger(__name__)


class SigningKeyError(AgentError):
    """A signing or public key cannot be read, or is not an ed25519 key."""


@dataclass(frozen=True)
class GeneratedKeys:
    private_path: Path
    public_path: Path
    key_id: str
    public_hex: str


def public_raw(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    return hashlib.sha256(public_raw(public_key)).hexdigest()[:KEY_ID_CHARS]


def generate_keys(folder: Path, *, overwrite: bool = False) -> GeneratedKeys:
    """Write a new key pair into `folder`: the private key PEM (PKCS8, mode 0600) and the public key PEM."""
    private_path = folder / PRIVATE_KEY_NAME
    public_path = folder / PUBLIC_KEY_NAME
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise SigningKeyError(f"{path} already exists; refusing to overwrite a signing key (pass --force to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    private_key = ed25519.Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_key = private_key.public_key()
    public_pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return GeneratedKeys(private_path, public_path, key_id(public_key), public_raw(public_key).hex())


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"no signing key at {path}: make one with edge-agent fleet keys generate, or pass --key") from None
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningKeyError(f"{path} holds a {type(key).__name__}, not an ed25519 key (make one: edge-agent fleet keys generate)")
    mode = os.stat(path).st_mode & 0o077
    if mode:
        # Not fatal (a CI secret mount may be 0640), but the operator should know.
        log.warning("signing key %s is readable by group or others (chmod 600 it)", path)
    return key


def load_public_key(spec: str) -> ed25519.Ed25519PublicKey:
    """A public key from a PEM file path or a 64-character hex string (the raw 32 bytes)."""
    text = spec.strip()
    if len(text) == 64 and all(ch in string.hexdigits for ch in text):
        return ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    try:
        data = Path(text).read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"artifacts.public_keys: {spec!r} is neither 64 hex characters nor a readable PEM file ({exc.strerror or exc})"
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"artifacts.public_keys: {spec} is not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningKeyError(f"artifacts.public_keys: {spec} holds a {type(key).__name__}, not an ed25519 key")
    return key


def load_public_keys(specs: Iterable[str]) -> Dict[str, ed25519.Ed25519PublicKey]:
    """Key id -> public key, for every configured key."""
    keys: Dict[str, ed25519.Ed25519PublicKey] = {}
    for spec in specs:
        key = load_public_key(spec)
        keys[key_id(key)] = key
    return keys


def sign(private_key: ed25519.Ed25519PrivateKey, data: bytes) -> Tuple[str, str]:
    """(key id, hex signature) of `data`."""
    return key_id(private_key.public_key()), private_key.sign(data).hex()


def verify(public_key: ed25519.Ed25519PublicKey, signature_hex: str, data: bytes) -> bool:
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        public_key.verify(signature, data)
    except exceptions.InvalidSignature:
        return False
    return True
