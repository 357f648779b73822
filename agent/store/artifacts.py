"""The content-addressed artifact store: `artifacts/<sha256>` on the device, read-only once there.

    <root>/<sha256>                      the artifact, installed by an atomic rename after its hash verified
    <root>/.meta/<sha256>.json           the verified manifest it arrived with (kind, name, signer), plus stored_at
    <root>/.partial/<sha256>.part        a transfer in progress (see agent/fleet/transfer.py)
    <root>/.partial/<sha256>.log         which blocks of it are on disk
    <root>/.partial/<sha256>.manifest.json  the manifest it is being fetched against

A file's name is its content hash, so a stored artifact is never rewritten: it is there and correct, or absent.
`verify()` re-hashes everything; `gc(keep)` removes what no deployment needs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

from agent.errors import AgentError
from agent.store.atomic import atomic_move, atomic_write_json, fsync_dir
from agent.store.hashing import sha256_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
ARTIFACTS_DIR = "artifacts"
META_DIR = ".meta"
PARTIAL_DIR = ".partial"
PARTIAL_SUFFIXES = (".part", ".log", ".manifest.json")


class StoreError(AgentError):
    """The artifact store cannot do what was asked (bad id, unreadable folder)."""


@dataclass(frozen=True)
class StoredArtifact:
    artifact_id: str
    path: Path
    size: int
    kind: str
    name: str
    created: str
    key_id: str
    stored_at: float


@dataclass(frozen=True)
class StoreProblem:
    artifact_id: str  # or the stray file's name
    problem: str


def is_artifact_id(text: str) -> bool:
    return bool(_HEX64.match(text))


def load_keep_list(state_file: Path) -> Set[str]:
    """Artifact ids the daemon marked as in use (`"keep_artifacts"` in state.json); empty if none."""
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {state_file}: {exc}; fix or remove it before collecting garbage") from None
    keep = data.get("keep_artifacts", []) if isinstance(data, dict) else []
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise StoreError(f"{state_file}: 'keep_artifacts' must be a list of artifact ids")
    return set(keep)


def store_for(state_dir: Path) -> ArtifactStore:
    """The device's artifact store inside its state folder (the one place that names the folder)."""
    return ArtifactStore(Path(state_dir) / ARTIFACTS_DIR)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.meta_dir = self.root / META_DIR
        self.partial_dir = self.root / PARTIAL_DIR

    # names ------------------------------------------------------------------------------------------------
    def path(self, artifact_id: str) -> Path:
        if not is_artifact_id(artifact_id):
            raise StoreError(f"not an artifact id (64 lowercase hex characters): {artifact_id!r}")
        return self.root / artifact_id

    def meta_path(self, artifact_id: str) -> Path:
        return self.meta_dir / f"{self.path(artifact_id).name}.json"

    def partial_path(self, artifact_id: str, suffix: str = ".part") -> Path:
        return self.partial_dir / f"{self.path(artifact_id).name}{suffix}"

    def has(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    def manifest(self, artifact_id: str) -> Optional[Dict[str, Any]]:
        """The stored copy of the manifest an artifact arrived with, or None."""
        try:
            data = json.loads(self.meta_path(artifact_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # writing ----------------------------------------------------------------------------------------------
    def install(self, artifact_id: str, source: Path, manifest: Mapping[str, Any]) -> Path:
        """Move a verified file into the store (atomic rename; same filesystem) with its manifest beside it.
        The manifest copy goes first: a crash between the two leaves metadata without data, which `has()`
        ignores and `gc` removes, never data that `list()` cannot describe."""
        target = self.path(artifact_id)
        record = dict(manifest)
        record["stored_at"] = round(time.time(), 3)
        record.pop("block_sha256", None)  # kept in the partial folder while needed; not worth keeping forever
        atomic_write_json(self.meta_path(artifact_id), record)
        os.chmod(source, 0o444)
        atomic_move(source, target)
        return target

    def remove(self, artifact_id: str) -> bool:
        removed = False
        for path in (self.path(artifact_id), self.meta_path(artifact_id)):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        fsync_dir(self.root)
        return removed

    def remove_partial(self, artifact_id: str) -> None:
        for suffix in PARTIAL_SUFFIXES:
            try:
                self.partial_path(artifact_id, suffix).unlink()
            except FileNotFoundError:
                pass

    # reading ----------------------------------------------------------------------------------------------
    def ids(self) -> List[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_artifact_id(n) and (self.root / n).is_file())

    def list(self) -> List[StoredArtifact]:
        out: List[StoredArtifact] = []
        for artifact_id in self.ids():
            path = self.root / artifact_id
            meta = self.manifest(artifact_id) or {}
            out.append(
                StoredArtifact(
                    artifact_id=artifact_id,
                    path=path,
                    size=path.stat().st_size,
                    kind=str(meta.get("kind", "?")),
                    name=str(meta.get("name", "?")),
                    created=str(meta.get("created", "")),
                    key_id=str(meta.get("key_id", "")),
                    stored_at=float(meta.get("stored_at", path.stat().st_mtime)),
                )
            )
        return out

    def partials(self) -> List[str]:
        try:
            names = os.listdir(self.partial_dir)
        except FileNotFoundError:
            return []
        return sorted({n.split(".", 1)[0] for n in names if is_artifact_id(n.split(".", 1)[0])})

    def verify(self) -> List[StoreProblem]:
        """Re-hash every artifact and check its manifest copy; report stray files. Changes nothing."""
        problems: List[StoreProblem] = []
        for artifact_id in self.ids():
            path = self.root / artifact_id
            try:
                actual = sha256_file(path)
            except OSError as exc:
                problems.append(StoreProblem(artifact_id, f"unreadable: {exc.strerror or exc}"))
                continue
            if actual != artifact_id:
                problems.append(StoreProblem(artifact_id, f"content hash is {actual}, not its name: the file is corrupt (remove it and pull again)"))
            meta = self.manifest(artifact_id)
            if meta is None:
                problems.append(StoreProblem(artifact_id, "no manifest copy in .meta/: kind and name unknown"))
            elif meta.get("size") != path.stat().st_size:
                problems.append(StoreProblem(artifact_id, f"size {path.stat().st_size} differs from the manifest's {meta.get('size')}"))
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        for name in sorted(names):
            if name in (META_DIR, PARTIAL_DIR) or is_artifact_id(name):
                continue
            problems.append(StoreProblem(name, "unexpected file in the artifact store"))
        try:
            metas = os.listdir(self.meta_dir)
        except FileNotFoundError:
            metas = []
        for name in sorted(metas):
            stem = name[: -len(".json")] if name.endswith(".json") else name
            if not (is_artifact_id(stem) and (self.root / stem).is_file()):
                problems.append(StoreProblem(stem, "manifest copy without its artifact (gc removes it)"))
        return problems

    # space ------------------------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return int(shutil.disk_usage(str(probe)).free)

    def space_shortfall(self, needed_bytes: int, floor_bytes: int) -> int:
        """How many bytes are missing to write `needed_bytes` and still keep `floor_bytes` free (0: enough)."""
        return max(0, needed_bytes + floor_bytes - self.free_bytes())

    def gc(self, keep: Iterable[str], *, dry_run: bool = False) -> List[str]:
        """Remove artifacts (and abandoned partial transfers) not in `keep`. A partial transfer that a running
        pull holds locked is left alone. Returns the removed ids (with `dry_run`, those it would remove)."""
        keep_set = set(keep)
        if dry_run:
            doomed = [a for a in self.ids() if a not in keep_set]
            doomed += [p for p in self.partials() if p not in keep_set and not self._partial_in_use(p)]
            return sorted(set(doomed))
        removed: List[str] = []
        for artifact_id in self.ids():
            if artifact_id not in keep_set and self.remove(artifact_id):
                removed.append(artifact_id)
        try:
            metas = os.listdir(self.meta_dir)
        except FileNotFoundError:
            metas = []
        for name in metas:
            stem = name[: -len(".json")]
            if is_artifact_id(stem) and stem not in keep_set and not (self.root / stem).exists():
                (self.meta_dir / name).unlink()
        for artifact_id in self.partials():
            if artifact_id in keep_set or self._partial_in_use(artifact_id):
                continue
            self.remove_partial(artifact_id)
            removed.append(artifact_id)
        return sorted(set(removed))

    def _partial_in_use(self, artifact_id: str) -> bool:
        log_path = self.partial_path(artifact_id, ".log")
        try:
            fd = os.open(str(log_path), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the lock if we got it
        return False
