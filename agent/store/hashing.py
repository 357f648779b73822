"""Content hashes: the identity of every artifact and engine input."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

CHUNK = 1 << 20


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
