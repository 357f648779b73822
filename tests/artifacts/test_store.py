"""The content-addressed store: install, list, verify, gc, the keep list, space checks. No broker."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.store.artifacts import ArtifactStore, StoreError, load_keep_list, store_for


def put(store: ArtifactStore, data: bytes, kind: str = "model", name: str = "m.onnx") -> str:
    artifact_id = hashlib.sha256(data).hexdigest()
    source = store.root.parent / f"src-{artifact_id[:8]}"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    store.install(artifact_id, source, {"artifact_id": artifact_id, "kind": kind, "name": name, "size": len(data),
                                        "key_id": "k1", "block_sha256": ["x"]})
    return artifact_id


def test_install_lists_with_kind_and_name_and_is_read_only(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    artifact_id = put(store, b"table bytes", kind="calib", name="t.cache")
    assert store.has(artifact_id) and store.path(artifact_id) == tmp_path / "artifacts" / artifact_id
    [item] = store.list()
    assert (item.artifact_id, item.kind, item.name, item.size, item.key_id) == (artifact_id, "calib", "t.cache", 11, "k1")
    assert store.path(artifact_id).stat().st_mode & 0o222 == 0
    assert "block_sha256" not in (store.manifest(artifact_id) or {})


@pytest.mark.parametrize("bad", ["../x", "A" * 64, "abc", "0" * 63 + "/"])
def test_paths_only_for_artifact_ids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="not an artifact id"):
        ArtifactStore(tmp_path).path(bad)


def test_verify_finds_corruption_missing_manifest_and_strays(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    good = put(store, b"good")
    bad = put(store, b"will rot")
    os.chmod(store.path(bad), 0o644)
    store.path(bad).write_bytes(b"rotten!!")
    orphan = put(store, b"orphan")
    store.meta_path(orphan).unlink()
    (store.root / "stray.txt").write_text("?")
    problems = {p.artifact_id: p.problem for p in store.verify()}
    assert good not in problems
    assert "content hash" in problems[bad]
    assert "no manifest copy" in problems[orphan]
    assert "unexpected file" in problems["stray.txt"]


def test_gc_keeps_what_is_asked_and_removes_the_rest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    keep = put(store, b"current")
    previous = put(store, b"previous")
    old = put(store, b"old")
    removed = store.gc({keep, previous})
    assert removed == [old]
    assert {a.artifact_id for a in store.list()} == {keep, previous}
    assert not store.meta_path(old).exists()


def test_gc_removes_abandoned_partials_but_not_one_being_written(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    store.partial_dir.mkdir(parents=True)
    abandoned, busy = "a" * 64, "b" * 64
    for artifact_id in (abandoned, busy):
        for suffix in (".part", ".log"):
            store.partial_path(artifact_id, suffix).write_bytes(b"x")
    fd = os.open(str(store.partial_path(busy, ".log")), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert store.gc(set()) == [abandoned]
    finally:
        os.close(fd)
    assert store.partials() == [busy]


def test_keep_list_comes_from_state_json(tmp_path: Path) -> None:
    assert load_keep_list(tmp_path / "state.json") == set()
    (tmp_path / "state.json").write_text(json.dumps({"keep_artifacts": ["a" * 64], "serving": None}))
    assert load_keep_list(tmp_path / "state.json") == {"a" * 64}
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(StoreError, match="before collecting garbage"):
        load_keep_list(tmp_path / "state.json")


def test_space_shortfall(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "not-yet")
    free = store.free_bytes()
    assert free > 0
    assert store.space_shortfall(1, 0) == 0
    assert store.space_shortfall(free, 1024) >= 1024
