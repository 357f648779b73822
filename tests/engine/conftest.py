"""Fixtures for the engine tests: the tiny model and a table for it, this machine's fingerprint, a cache, and a
folder made really read-only (root ignores permission bits, so the immutable attribute is used there)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.calib import table as table_module
from agent.device.fingerprint import DeviceFingerprint, fingerprint
from agent.engine.cache import EngineCache
from agent.engine.spec import BuildSpec, Precision
from agent.store.hashing import sha256_file
from tests.helpers import tiny_classifier_onnx


@pytest.fixture(scope="session")
def here() -> DeviceFingerprint:
    return fingerprint()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    tiny_classifier_onnx(folder / "tiny.onnx")
    tiny_classifier_onnx(folder / "tiny_b.onnx", seed=1)  # same graph, other weights: another model hash
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> Path:
    return tiny_dir / "tiny.onnx"


@pytest.fixture(scope="session")
def tiny_table(tiny_dir: Path) -> Path:
    path = tiny_dir / "tiny.cache"
    scales = {"input": 3 / 127, "conv_out": 0.05, "relu_out": 0.03, "gap_out": 0.02, "flat_out": 0.02}
    table_module.write_table_file(path, table_module.new_table(scales))
    return path


@pytest.fixture()
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "state" / "engines")


def cpu_spec(model: Path, **fields: object) -> BuildSpec:
    values = {"model_sha256": sha256_file(model), "precision": Precision.FP32, "target": "cpu"}
    values.update(fields)
    return BuildSpec(**values)  # type: ignore[arg-type]


def _writable(folder: Path) -> bool:
    try:
        probe = folder / ".probe"
        probe.write_bytes(b"x")
        probe.unlink()
        return True
    except OSError:
        return False


@pytest.fixture()
def make_readonly() -> Iterator[object]:
    """make_readonly(folder): the folder becomes read-only for real (chmod; as root, chattr +i on it and its
    sub-folders). Undone at teardown; skips where neither works."""
    undo: List[Path] = []
    chmodded: List[Path] = []

    def apply(folder: Path) -> None:
        folders = [folder] + [p for p in folder.rglob("*") if p.is_dir()]
        for item in folders:
            item.chmod(0o555)
            chmodded.append(item)
        if _writable(folder):
            if shutil.which("chattr") is None:
                pytest.skip("running as root and chattr is missing: cannot make a folder read-only")
            for item in folders:
                done = subprocess.run(["chattr", "+i", str(item)], capture_output=True, check=False)
                if done.returncode != 0:
                    pytest.skip(f"running as root, and chattr +i cannot make a folder read-only here: {done.stderr.decode().strip()}")
                undo.append(item)
        if _writable(folder):
            pytest.skip("running as root, and the folder stayed writable after chmod and chattr +i")

    yield apply
    for item in undo:
        subprocess.run(["chattr", "-i", str(item)], capture_output=True, check=False)
    for item in chmodded:
        os.chmod(item, 0o755)


@pytest.fixture(scope="session")
def _built_once(tmp_path_factory: pytest.TempPathFactory, tiny: Path, here: DeviceFingerprint) -> Path:
    from agent.engine.build import ensure_engine

    root = tmp_path_factory.mktemp("seed") / "engines"
    ensure_engine(cpu_spec(tiny), EngineCache(root), here, model=tiny)
    return root


@pytest.fixture()
def seeded(tmp_path: Path, _built_once: Path) -> EngineCache:
    """A cache that already holds the tiny model's FP32 onnxruntime engine (built once per session, copied)."""
    root = tmp_path / "state" / "engines"
    shutil.copytree(_built_once, root)
    return EngineCache(root)
