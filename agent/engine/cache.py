"""The engine cache on disk:

    <state>/engines/
        <key>/manifest.json            written last: no manifest, no engine
        <key>/engine.plan | model.opt.onnx
        <key>/build.log                the backend's log of the build
        <key>/failure.json             a build of this key failed (kept so a broken input does not rebuild forever)
        inputs/<sha256>                the model and table each engine was built from, to rebuild without a download
        timing/tensorrt-<ver>-sm<cc>.cache   TensorRT timing caches, one per TensorRT version and GPU
        pins.json                      {"current": key, "previous": key}: what gc keeps by default
        .tmp-<key>-*                   builds in progress (renamed into place when done)
        .lock                          one build at a time across processes

The folder's writability is checked before any build with a clear error, so a read-only engine folder never
turns into a rebuild on every start (the DeepStream and jetson-inference failure): what is cached still loads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set

from agent.device.fingerprint import DeviceFingerprint
from agent.engine import compat
from agent.engine.manifest import MANIFEST_NAME, STATUS_OK, Manifest, ManifestError, read_manifest
from agent.engine.spec import is_key
from agent.errors import AgentError
from agent.store.atomic import atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

INPUTS = "inputs"
TIMING = "timing"
PINS = "pins.json"
LOCK = ".lock"
FAILURE = "failure.json"
BUILD_LOG = "build.log"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class EngineCacheError(AgentError):
    """The engine cache cannot be used as asked (not writable, locked, missing entry)."""


@dataclass
class CacheEntry:
    key: str
    path: Path
    status: str  # ok | rejected | failed | incomplete | unreadable
    manifest: Optional[Manifest] = None
    problem: str = ""
    failure: Optional[Dict[str, Any]] = None
    size_bytes: int = 0
    pinned: List[str] = field(default_factory=list)

    @property
    def engine_path(self) -> Optional[Path]:
        return self.path / self.manifest.engine_file if self.manifest is not None else None

    def summary(self) -> Dict[str, Any]:
        manifest = self.manifest
        return {
            "key": self.key,
            "status": self.status,
            "backend": manifest.backend if manifest else None,
            "precision": manifest.spec.to_dict()["precision"] if manifest else None,
            "target": manifest.spec.target if manifest else None,
            "built_at": manifest.built_at if manifest else None,
            "engine": str(self.engine_path) if manifest else None,
            "size_bytes": self.size_bytes,
            "pinned": self.pinned,
            "problem": self.problem or None,
        }


@dataclass
class GcResult:
    removed: List[str] = field(default_factory=list)
    removed_inputs: List[str] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False


def _tree_size(path: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_state(cls, state_dir: Path) -> EngineCache:
        return cls(Path(state_dir) / "engines")

    # --- writability -----------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise EngineCacheError unless a file can really be created (and removed) in the cache folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in (INPUTS, TIMING):
                folder = self.root / sub
                if folder.exists():
                    self._probe(folder)
            self._probe(self.root)
        except OSError as exc:
            raise EngineCacheError(
                f"the engine cache {self.root} is not writable ({exc.strerror or exc}). The agent does not build an engine "
                "it cannot keep, because that would rebuild it on every start; engines already cached there still load. "
                "Make the folder writable by the user running edge-agent (chown/chmod), mount it read-write, or set "
                "state.dir to a writable folder."
            ) from None

    @staticmethod
    def _probe(folder: Path) -> None:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=str(folder))
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)

    # --- entries ---------------------------------------------------------------------------------------
    def entry_dir(self, key: str) -> Path:
        if not is_key(key):
            raise EngineCacheError(f"not an engine cache key: {key!r}")
        return self.root / key

    def lookup(self, key: str) -> Optional[CacheEntry]:
        folder = self.entry_dir(key)
        if not folder.is_dir():
            return None
        return self._entry(key, folder)

    def _entry(self, key: str, folder: Path) -> CacheEntry:
        entry = CacheEntry(key=key, path=folder, status="incomplete", size_bytes=_tree_size(folder))
        failure_path = folder / FAILURE
        if failure_path.is_file():
            try:
                entry.failure = json.loads(failure_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entry.failure = {"error": "failure.json unreadable"}
        manifest_path = folder / MANIFEST_NAME
        if entry.failure is not None and (not manifest_path.exists() or _mtime(failure_path) >= _mtime(manifest_path)):
            entry.status, entry.problem = "failed", str(entry.failure.get("error", ""))
            return entry  # the latest build of this key failed: what it left behind is not an engine to load
        if not manifest_path.exists():
            entry.problem = "no manifest: the build did not finish"
            return entry
        try:
            entry.manifest = read_manifest(folder / MANIFEST_NAME)
        except ManifestError as exc:
            entry.status, entry.problem = "unreadable", str(exc)
            return entry
        entry.status = entry.manifest.status if entry.manifest.status != STATUS_OK else "ok"
        if entry.manifest.key != key:
            entry.status, entry.problem = "unreadable", f"the manifest is for key {entry.manifest.key}, not {key}"
        elif entry.manifest.policy_violations:
            entry.problem = "; ".join(entry.manifest.policy_violations)
        return entry

    def entries(self) -> List[CacheEntry]:
        if not self.root.is_dir():
            return []
        pins = self.pins()
        out = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and is_key(folder.name):
                entry = self._entry(folder.name, folder)
                entry.pinned = [role for role, key in pins.items() if key == folder.name]
                out.append(entry)
        return out

    def find(self, key_or_path: str) -> CacheEntry:
        """An entry by key, key prefix, or the path of its folder or engine file."""
        path = Path(key_or_path)
        if path.exists():
            folder = path if path.is_dir() else path.parent
            if is_key(folder.name):
                return self._entry(folder.name, folder)
            raise EngineCacheError(f"{key_or_path} is not inside an engine cache folder")
        matches = [e for e in self.entries() if e.key == key_or_path or e.key.startswith(key_or_path)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise EngineCacheError(f"no cached engine matches {key_or_path!r} in {self.root}")
        raise EngineCacheError(f"{key_or_path!r} matches {len(matches)} engines: give more of the key")

    def verify(self, entry: CacheEntry, fp: DeviceFingerprint, full_hash: bool = True) -> compat.Verdict:
        """Manifest against this device, then the file against the manifest. Policy verdicts are separate."""
        if entry.manifest is None:
            return compat.Verdict(loadable=False, reasons=[entry.problem or f"entry {entry.key} has no manifest"])
        if entry.status == "unreadable":
            return compat.Verdict(loadable=False, reasons=[entry.problem])
        device = compat.check_manifest(entry.manifest, fp)
        artifact = compat.check_artifact(entry.path / entry.manifest.engine_file, entry.manifest, full_hash=full_hash)
        return compat.merge(device, artifact)

    # --- inputs and timing caches ------------------------------------------------------------------------
    def input_path(self, sha256: Optional[str]) -> Optional[Path]:
        if not sha256:
            return None
        path = self.root / INPUTS / sha256
        return path if path.is_file() else None

    def store_input(self, source: Path, sha256: str) -> Path:
        """Keep a build input (content-addressed) so the engine can be rebuilt without fetching it again.
        A hard link where the filesystem allows, else an atomic copy."""
        target = self.root / INPUTS / sha256
        if target.is_file() and target.stat().st_size == Path(source).stat().st_size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{sha256}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        fsync_dir(target.parent)
        return target

    def timing_cache_path(self, fp: DeviceFingerprint) -> Path:
        version = (fp.tensorrt or "unknown").replace("/", "_")
        sm = (fp.compute_capability or "unknown").replace(".", "")
        return self.root / TIMING / f"tensorrt-{version}-sm{sm}.cache"

    # --- installing builds -------------------------------------------------------------------------------
    def new_build_dir(self, key: str) -> Path:
        self.entry_dir(key)  # validates the key
        folder = self.root / f"{TMP_PREFIX}{key}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True)
        return folder

    def install(self, key: str, build_dir: Path) -> Path:
        """Move a finished build folder into place, replacing what was there (kept aside, then removed)."""
        target = self.entry_dir(key)
        trash: Optional[Path] = None
        if target.exists():
            trash = self.root / f"{TRASH_PREFIX}{key}-{uuid.uuid4().hex[:6]}"
            os.replace(target, trash)
        os.replace(build_dir, target)
        fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return target

    def record_failure(self, key: str, info: Dict[str, Any]) -> None:
        """Remember that building `key` failed, so the same inputs are not rebuilt on every start."""
        data = dict(info)
        data.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            atomic_write_json(self.entry_dir(key) / FAILURE, data)
        except OSError as exc:
            log.warning("could not record the failed build of %s: %s", key, exc)

    def clear_failure(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.entry_dir(key) / FAILURE).unlink()

    # --- pins and garbage collection ---------------------------------------------------------------------
    def pins(self) -> Dict[str, str]:
        try:
            data = json.loads((self.root / PINS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    def promote(self, key: str) -> None:
        """`key` now serves: it becomes `current`, the former current becomes `previous` (gc keeps both)."""
        pins = self.pins()
        if pins.get("current") == key:
            return
        if pins.get("current"):
            pins["previous"] = pins["current"]
        pins["current"] = key
        atomic_write_json(self.root / PINS, pins)

    def gc(self, keep: Iterable[str] = (), dry_run: bool = False) -> GcResult:
        """Remove every engine not in `keep` or pinned, unfinished or abandoned build folders, and inputs no kept
        engine needs. Timing caches stay (small, and they speed up the next build)."""
        result = GcResult(dry_run=dry_run)
        if not self.root.is_dir():
            return result
        keep_keys: Set[str] = set(keep) | set(self.pins().values())
        needed_inputs: Set[str] = set()
        for entry in self.entries():
            if entry.key in keep_keys:
                result.kept.append(entry.key)
                if entry.manifest is not None:
                    needed_inputs.update(v for v in entry.manifest.inputs.values() if v)
                continue
            result.removed.append(entry.key)
            result.freed_bytes += entry.size_bytes
            if not dry_run:
                shutil.rmtree(entry.path, ignore_errors=True)
        for folder in self.root.iterdir():
            if folder.name.startswith(TRASH_PREFIX) or (folder.name.startswith(TMP_PREFIX) and not _build_alive(folder.name)):
                result.freed_bytes += _tree_size(folder)
                if not dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
        inputs = self.root / INPUTS
        if inputs.is_dir():
            for path in inputs.iterdir():
                if path.is_file() and path.name not in needed_inputs:
                    result.removed_inputs.append(path.name)
                    result.freed_bytes += path.stat().st_size
                    if not dry_run:
                        path.unlink()
        return result

    @contextlib.contextmanager
    def lock(self, timeout_s: float = 0.0) -> Iterator[None]:
        """One build at a time across processes (the daemon and a CLI build). Waits up to `timeout_s`."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / LOCK, "a+")  # noqa: SIM115 - held for the with-block
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                        raise EngineCacheError(f"another engine build holds {self.root / LOCK}; try again when it ends") from None
                    time.sleep(0.2)
            yield
        finally:
            handle.close()


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _build_alive(name: str) -> bool:
    """'.tmp-<key>-<pid>-<rand>': is the process that made it still running?"""
    parts = name.rsplit("-", 2)
    try:
        pid = int(parts[-2])
    except (IndexError, ValueError):
        return False
    return pid == os.getpid() or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Is process `pid` running (another user's process counts)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def keys_in_state_file(state_file: Path) -> Set[str]:
    """Engine keys the agent's state.json mentions (serving, previous, applying deployments), whatever the shape:
    every string value under a 'key' field that looks like an engine key."""
    try:
        data = json.loads(Path(state_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    found: Set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if isinstance(value, str) and name in ("key", "engine_key") and is_key(value):
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found
