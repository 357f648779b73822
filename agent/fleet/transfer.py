"""The device side of an artifact transfer: read the signed manifest, fetch blocks with a window in flight,
resume from what is on disk, verify, install into the content-addressed store.

The protocol (both sides in agent/fleet/artifact_protocol.py), on MQTT 3.1.1 or 5, per-device topics only:

    device  -> <prefix>/<device>/artifact-req    JSON {artifact_id, chunk_size, blocks: [i, ...]}   QoS 1
    server  -> <prefix>/<device>/artifact-data   binary frame: 88-byte header + block bytes         QoS 0

Reliability is ours, not the broker's: data is QoS 0 and every request has a deadline (`block_timeout_s`);
a block that does not come is asked for again. QoS 1 data would add two acknowledgements a block and, with a
persistent session, make the broker replay stale blocks after a reconnect. After a reconnect the blocks that
were in flight are asked for at once rather than after their timeout.

Resume: blocks are written in place into `.partial/<sha>.part` and each written block's number is appended to
`.partial/<sha>.log` (no fsync: a killed process loses nothing the kernel already has; after a power cut the
blocks the log names are re-hashed against the signed block list before they are trusted). A block leaves
the in-flight set only once logged, so a kill -9 costs at most one window of blocks.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from agent.config import ArtifactsConfig
from agent.fleet.artifact_protocol import (
    ArtifactError,
    ArtifactManifest,
    ArtifactUnavailableError,
    BlockOutsideManifestError,
    BlockRejectedError,
    CorruptBlockError,
    DiskSpaceError,
    HashMismatchError,
    MalformedBlockError,
    ManifestError,
    ManifestMismatchError,
    ManifestNotFoundError,
    TamperedBlockError,
    TransferBusyError,
    TransferCancelledError,
    TransferStalledError,
    TransferTimeoutError,
    check_expectations,
    decode_block,
    decode_manifest,
    encode_request,
    validate_artifact_id,
    verify_manifest,
)
from agent.fleet.artifact_trust import KindTrust
from agent.fleet.link import MqttLink, ensure_no_delay
from agent.fleet.signing import load_public_keys
from agent.fleet.topics import Topics
from agent.store.artifacts import ArtifactStore
from agent.store.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

EventSink = Callable[[Dict[str, Any]], None]

MAX_BLOCK_RETRIES = 5  # requests for one block, while connected, before the pull is declared stalled
MAX_REJECTED_BLOCKS = 3  # of one reason; a healthy server sends none, so this tolerates a fluke, not a pattern
PROGRESS_INTERVAL_S = 1.0
_LOG_MAGIC = b"EAPL"
_LOG_HEADER = struct.Struct(">4sIQ")  # magic, chunk size, artifact size
_LOG_RECORD = struct.Struct(">I")


@dataclass
class TransferStats:
    artifact_id: str = ""
    size: int = 0
    resumed_bytes: int = 0  # already on disk when the pull started
    received_bytes: int = 0  # good blocks written in this pull
    duplicate_bytes: int = 0  # blocks that came twice (a re-request crossed a late answer)
    requested_blocks: int = 0
    rerequested_blocks: int = 0  # after a timeout, a rejection or a reconnect
    rejected_blocks: int = 0
    elapsed_s: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.received_bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0


class PartialFile:
    """`.partial/<sha>.part` and its block log, locked against a second process pulling the same artifact.

    The whole-file sha256 is computed as the blocks come, in order: a block that arrives at the hashing frontier
    is hashed from memory, blocks that arrived early are read back when the frontier reaches them, so the final
    check costs no second pass over the file. Written data is flushed to disk in the background every
    SYNC_EVERY bytes, so the fsync before the atomic install has little left to do."""

    SYNC_EVERY = 16 * 1024 * 1024

    def __init__(self, store: ArtifactStore, manifest: ArtifactManifest) -> None:
        self.manifest = manifest
        self.part_path = store.partial_path(manifest.artifact_id, ".part")
        self.log_path = store.partial_path(manifest.artifact_id, ".log")
        self.have: Set[int] = set()
        self._part_fd = -1
        self._log_fd = -1
        self._whole = hashlib.sha256()
        self._hashed = 0  # blocks [0, _hashed) are in _whole
        self._unsynced = 0
        self._sync_thread: Optional[threading.Thread] = None

    def open(self) -> Set[int]:
        """Lock, create or reopen, and return the blocks already on disk that still match their hashes."""
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fd = os.open(str(self.log_path), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._log_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._log_fd)
            self._log_fd = -1
            raise TransferBusyError(
                f"artifact {self.manifest.artifact_id[:12]}: another process is pulling it now ({self.log_path} is locked)"
            ) from None
        self._part_fd = os.open(str(self.part_path), os.O_RDWR | os.O_CREAT, 0o644)
        logged = self._read_log()
        if os.fstat(self._part_fd).st_size != self.manifest.size:
            os.ftruncate(self._part_fd, self.manifest.size)  # sparse: space is used as blocks arrive
        self.have = self._still_good(logged)
        self._advance()
        return self.have

    def _read_log(self) -> List[int]:
        raw = b""
        size = os.fstat(self._log_fd).st_size
        if size:
            raw = os.pread(self._log_fd, size, 0)
        header = _LOG_HEADER.pack(_LOG_MAGIC, self.manifest.chunk_size, self.manifest.size)
        if raw[: _LOG_HEADER.size] != header:
            if raw:
                log.info("artifact %s: partial transfer was for another layout; starting over", self.manifest.artifact_id[:12])
            os.ftruncate(self._log_fd, 0)
            os.ftruncate(self._part_fd, 0)
            os.write(self._log_fd, header)
            return []
        body = raw[_LOG_HEADER.size :]
        usable = len(body) - len(body) % _LOG_RECORD.size  # a torn last record is ignored
        count = self.manifest.block_count
        return [i for (i,) in _LOG_RECORD.iter_unpack(body[:usable]) if i < count]

    def _still_good(self, logged: List[int]) -> Set[int]:
        good: Set[int] = set()
        for index in set(logged):
            offset, length = self.manifest.block_range(index)
            data = os.pread(self._part_fd, length, offset)
            if hashlib.sha256(data).hexdigest() == self.manifest.block_sha256[index]:
                good.add(index)
        dropped = len(set(logged)) - len(good)
        if dropped:
            log.warning("artifact %s: %d logged blocks did not match their hashes (power cut?); fetching them again",
                        self.manifest.artifact_id[:12], dropped)
        return good

    def write(self, index: int, offset: int, data: memoryview) -> None:
        written = os.pwrite(self._part_fd, data, offset)
        if written != len(data):  # pragma: no cover - a regular file write is complete or raises
            raise OSError(errno.EIO, f"short write to {self.part_path}")
        os.write(self._log_fd, _LOG_RECORD.pack(index))
        self.have.add(index)
        if index == self._hashed:
            self._whole.update(data)
            self._hashed += 1
        self._advance()
        self._unsynced += len(data)
        if self._unsynced >= self.SYNC_EVERY and (self._sync_thread is None or not self._sync_thread.is_alive()):
            self._unsynced = 0
            self._sync_thread = threading.Thread(target=self._sync_quietly, name="artifact-sync", daemon=True)
            self._sync_thread.start()

    def _advance(self) -> None:
        while self._hashed < self.manifest.block_count and self._hashed in self.have:
            offset, length = self.manifest.block_range(self._hashed)
            self._whole.update(os.pread(self._part_fd, length, offset))
            self._hashed += 1

    def _sync_quietly(self) -> None:
        try:
            os.fdatasync(self._part_fd)
        except OSError:  # the final fsync reports what matters
            pass

    def finish(self) -> str:
        """Flush and close the data file; return its sha256 (every block must be present)."""
        self._advance()
        if self._hashed != self.manifest.block_count:  # pragma: no cover - the transfer loop ends only when complete
            raise ArtifactError(f"artifact {self.manifest.artifact_id[:12]}: finishing with blocks missing")
        self._join_sync()
        os.fsync(self._part_fd)
        os.close(self._part_fd)
        self._part_fd = -1
        return self._whole.hexdigest()

    def _join_sync(self) -> None:
        if self._sync_thread is not None:
            self._sync_thread.join()
            self._sync_thread = None

    def close(self) -> None:
        """Close the files and release the lock (the partial stays for the next attempt)."""
        self._join_sync()  # never close a descriptor a flush is using
        for attr in ("_part_fd", "_log_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


class ArtifactPuller:
    """Fetches artifacts into an ArtifactStore over an MqttLink. One pull at a time; `pull` blocks the caller."""

    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        store: ArtifactStore,
        config: ArtifactsConfig,
        events: Optional[EventSink] = None,
        *,
        min_free_mb: int = 200,
        manifest_timeout_s: Optional[float] = None,
    ) -> None:
        self.link = link
        self.topics = topics
        self.store = store
        self.config = config
        self.min_free_mb = min_free_mb
        self.manifest_timeout_s = manifest_timeout_s if manifest_timeout_s is not None else max(5.0, config.block_timeout_s)
        self.trust = KindTrust.parse(getattr(config, "key_kinds", []) or [])  # which keys may sign which kinds
        self.public_keys = self.trust.public_keys(load_public_keys(config.public_keys))
        self.last_stats = TransferStats()
        self._events = events
        self._run: Optional[_Transfer] = None  # the transfer frames go to, while one runs
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        link.subscribe(topics.artifact_data, self._on_frame, qos=0)

    # public --------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Abort the pull in progress and refuse later ones (shutdown). The partial file stays for next time."""
        self._cancel.set()

    def close(self) -> None:
        """Cancel and stop listening for blocks (the link itself belongs to the caller)."""
        self.cancel()
        self.link.unsubscribe(self.topics.artifact_data)

    def pull(
        self,
        artifact_id: str,
        expect_kind: Optional[str] = None,
        expect_name: Optional[str] = None,
        timeout_s: Optional[float] = None,
        precheck: Optional[Callable[[Dict[str, Any]], None]] = None,
        manifest: Optional[ArtifactManifest] = None,
    ) -> Path:
        """The stored path of `artifact_id`, fetching it if needed. Raises an ArtifactError subclass, after an
        `artifact.refused` event and a log line, when the artifact is refused or cannot be fetched; nothing
        already stored is touched then. `precheck(fields)` runs on the accepted manifest's fields before any block is
        fetched (a shared plan's embedded engine manifest against this device); an ArtifactError it raises refuses.
        `manifest`: use this one (checked like any other) instead of the retained one at the artifact's topic (a plan's
        manifest comes with its class's index, agent.fleet.plans: the same bytes may be the plan of two classes)."""
        try:
            validate_artifact_id(artifact_id)
            with self._lock:
                try:
                    return self._pull(artifact_id, expect_kind, expect_name, timeout_s, precheck, manifest)
                except OSError as exc:
                    raise _write_error(artifact_id, self.store.root, exc) from None
        except ArtifactError as exc:
            log.warning("artifact %s refused: %s", str(artifact_id)[:12], exc)
            self._emit({"event": "artifact.refused", "artifact_id": artifact_id, "code": exc.code,
                        "error": type(exc).__name__, "reason": str(exc)})
            raise

    # the steps ------------------------------------------------------------------------------------------
    def _pull(self, artifact_id: str, expect_kind: Optional[str], expect_name: Optional[str], timeout_s: Optional[float],
              precheck: Optional[Callable[[Dict[str, Any]], None]] = None, given: Optional[ArtifactManifest] = None) -> Path:
        if self._cancel.is_set():
            raise TransferCancelledError(f"artifact {artifact_id[:12]}: the agent is shutting down")
        deadline = time.monotonic() + timeout_s if timeout_s else None
        if given is not None:
            self._accept(given, artifact_id, expect_kind, expect_name)
        if self.store.has(artifact_id):
            if precheck is not None:  # the stored manifest was checked and signed when it was stored
                precheck(given.to_dict() if given is not None else self.store.manifest(artifact_id) or {})
            return self._already_stored(artifact_id, expect_kind, expect_name)
        manifest = given if given is not None else self._cached_manifest(artifact_id)
        if manifest is not None and given is None:
            try:
                self._accept(manifest, artifact_id, expect_kind, expect_name)
            except ArtifactError as exc:  # keys rotated or labels corrected since: ask the broker for the current one
                log.info("artifact %s: the manifest of the partial transfer no longer passes (%s); fetching it again",
                         artifact_id[:12], exc)
                manifest = None
        if manifest is None:
            manifest = self._fetch_manifest(artifact_id, deadline)
            self._accept(manifest, artifact_id, expect_kind, expect_name)
        if precheck is not None:
            precheck(manifest.to_dict())
        partial = PartialFile(self.store, manifest)
        fresh = not partial.log_path.exists()
        have = partial.open()
        try:
            have_bytes = sum(manifest.block_range(i)[1] for i in have)
            shortfall = self.store.space_shortfall(manifest.size - have_bytes, self.min_free_mb * 1024 * 1024)
            if shortfall:
                if fresh:  # refused before a byte was fetched: leave no trace
                    partial.close()
                    self.store.remove_partial(artifact_id)
                raise DiskSpaceError(
                    f"artifact {artifact_id[:12]}: {manifest.size - have_bytes} more bytes would leave less than "
                    f"state.min_free_mb = {self.min_free_mb} MB free under {self.store.root} ({shortfall} bytes short); "
                    "free space or run edge-agent store gc"
                )
            self._save_manifest(manifest)
            stats = TransferStats(artifact_id=artifact_id, size=manifest.size, resumed_bytes=have_bytes)
            self.last_stats = stats
            if have:
                self._emit({"event": "artifact.resumed", **manifest.summary(), "bytes": have_bytes,
                            "blocks": len(have), "total_blocks": manifest.block_count})
            self._transfer(manifest, partial, have, stats, deadline)
            return self._install(manifest, partial, stats)
        finally:
            partial.close()

    def _already_stored(self, artifact_id: str, expect_kind: Optional[str], expect_name: Optional[str]) -> Path:
        meta = self.store.manifest(artifact_id) or {}
        for label, expected, actual in (("kind", expect_kind, meta.get("kind")), ("name", expect_name, meta.get("name"))):
            if expected is not None and actual is not None and actual != expected:
                raise ManifestMismatchError(
                    f"artifact {artifact_id[:12]}: the deployment asked for {label} {expected!r}; the stored copy is {actual!r}"
                )
        self._emit({"event": "artifact.present", "artifact_id": artifact_id, "kind": meta.get("kind"), "name": meta.get("name")})
        return self.store.path(artifact_id)

    def _cached_manifest(self, artifact_id: str) -> Optional[ArtifactManifest]:
        """The manifest a partial transfer was started with (it is signed, so it is checked again like any other);
        lets a resume work even if the broker lost its retained messages."""
        path = self.store.partial_path(artifact_id, ".manifest.json")
        try:
            return decode_manifest(read_json(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ManifestError) as exc:
            log.warning("artifact %s: ignoring unreadable cached manifest %s: %s", artifact_id[:12], path, exc)
            return None

    def _accept(self, manifest: ArtifactManifest, artifact_id: str, expect_kind: Optional[str], expect_name: Optional[str]) -> None:
        """Signature, identity, name, kind, size: raises the specific refusal."""
        verdict = verify_manifest(manifest, self.public_keys, self.config.allow_unsigned)
        self.trust.check(manifest, verdict)
        if verdict != "signed":
            log.warning("artifact %s: accepting an unverified manifest because artifacts.allow_unsigned is on", artifact_id[:12])
        check_expectations(manifest, artifact_id, expect_kind=expect_kind, expect_name=expect_name, max_bytes=self.config.max_bytes)

    def _save_manifest(self, manifest: ArtifactManifest) -> None:
        path = self.store.partial_path(manifest.artifact_id, ".manifest.json")
        cached = self._cached_manifest(manifest.artifact_id) if path.exists() else None
        if cached != manifest:
            atomic_write_json(path, manifest.to_dict())

    def _fetch_manifest(self, artifact_id: str, deadline: Optional[float]) -> ArtifactManifest:
        topic = self.topics.artifact_manifest(artifact_id)
        arrived: queue.Queue[bytes] = queue.Queue()
        wait = self.manifest_timeout_s
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        ensure_no_delay(self.link)
        self.link.subscribe(topic, lambda msg: arrived.put(bytes(msg.payload)), qos=1)
        try:
            end = time.monotonic() + wait
            while True:
                if self._cancel.is_set():
                    raise TransferCancelledError(f"artifact {artifact_id[:12]}: the agent is shutting down")
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    payload = arrived.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if payload:  # an empty retained payload is a deleted manifest
                    return decode_manifest(payload)
        finally:
            self.link.unsubscribe(topic)
        if not self.link.connected.is_set():
            raise ManifestNotFoundError(
                f"artifact {artifact_id[:12]}: broker not reachable for {wait:.0f} s ({self.link.last_error or 'not connected'})"
            )
        raise ManifestNotFoundError(
            f"artifact {artifact_id[:12]}: no manifest at {topic} within {wait:.0f} s; publish it with "
            "edge-agent fleet publish (or start edge-agent fleet serve, which republishes the manifests it holds)"
        )

    def _on_frame(self, msg: Any) -> None:
        run = self._run
        if run is not None:
            run.on_frame(bytes(msg.payload))

    def _transfer(self, manifest: ArtifactManifest, partial: PartialFile, have: Set[int], stats: TransferStats,
                  deadline: Optional[float]) -> None:
        ensure_no_delay(self.link)
        run = _Transfer(self, manifest, partial, have, stats, deadline)
        self._run = run
        try:
            run.loop()
        finally:
            self._run = None

    def _install(self, manifest: ArtifactManifest, partial: PartialFile, stats: TransferStats) -> Path:
        actual = partial.finish()
        part_path = partial.part_path
        if actual != manifest.artifact_id:
            partial.close()
            self.store.remove_partial(manifest.artifact_id)  # every block matched a list that does not add up: useless
            raise HashMismatchError(
                f"artifact {manifest.artifact_id[:12]}: the assembled file hashes to {actual[:12]}; the manifest's block "
                "list does not describe this artifact (republish it); nothing was stored"
            )
        path = self.store.install(manifest.artifact_id, part_path, manifest.to_dict())
        self.store.remove_partial(manifest.artifact_id)
        self._emit({"event": "artifact.stored", **manifest.summary(), "path": str(path),
                    "stats": {**asdict(stats), "mb_per_s": round(stats.mb_per_s, 2)}})
        log.info("artifact %s (%s %s, %d bytes) stored in %.1f s", manifest.artifact_id[:12], manifest.kind,
                 manifest.name, manifest.size, stats.elapsed_s)
        return path

    def _emit(self, event: Dict[str, Any]) -> None:
        if self._events is None:
            return
        try:
            self._events(event)
        except Exception:  # the event sink must not break a transfer
            log.exception("artifact event handler failed")


class _Transfer:
    """One run of the block loop: a window of requests in flight, frames checked and written as they come.

    Frames are handled on paho's network thread (`on_frame`): checking a block (one sha256) and writing it
    (one pwrite, both releasing the GIL) take well under a millisecond, and handing 256 KB frames to another
    thread would cost more in GIL hand-offs than the work itself. The caller's thread (`loop`) does the rest:
    timeouts, reconnects, cancel, deadlines, events."""

    def __init__(self, puller: ArtifactPuller, manifest: ArtifactManifest, partial: PartialFile, have: Set[int],
                 stats: TransferStats, deadline: Optional[float]) -> None:
        self.p = puller
        self.m = manifest
        self.partial = partial
        self.have = have
        self.stats = stats
        self.deadline = deadline
        self.window = max(1, puller.config.window)
        self.block_timeout = max(0.05, puller.config.block_timeout_s)
        self.missing: Deque[int] = deque(i for i in range(manifest.block_count) if i not in have)
        self.in_flight: OrderedDict[int, float] = OrderedDict()  # block -> when requested
        self.tries: Dict[int, int] = {}
        self.rejections: Dict[str, int] = {}
        self.started = time.monotonic()
        self.last_progress = 0.0
        self.connects = puller.link.connects
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.failure: Optional[BaseException] = None
        self.pending_events: List[Dict[str, Any]] = []
        self.server_said = ""  # an error frame's reason, reported if the block it was about never comes

    @property
    def complete(self) -> bool:
        return len(self.have) >= self.m.block_count

    def on_frame(self, payload: bytes) -> None:
        """paho's network thread: check and write one frame, then keep the window full."""
        with self.lock:
            if self.done.is_set():
                return
            try:
                self._take(payload)
                if self.complete:
                    self.done.set()
                    return
                self._request_more()
            except (ArtifactError, OSError) as exc:
                self.failure = exc
                self.done.set()

    def loop(self) -> None:
        try:
            self._progress(force=True)
            with self.lock:
                if self.complete:
                    self.done.set()
                self._request_more()
            while True:
                with self.lock:
                    wait = 0.25
                    if self.in_flight:
                        oldest = next(iter(self.in_flight.values()))
                        wait = min(wait, max(0.005, oldest + self.block_timeout - time.monotonic()))
                if self.done.wait(wait):
                    break
                with self.lock:
                    self._check_limits()
                    self._after_reconnect()
                    self._expire()
                    self._request_more()
                self._flush_events()
                self._progress()
        finally:
            with self.lock:
                self.done.set()  # from here on, late frames are ignored: the files may be closed
            self._flush_events()
        if self.failure is not None:
            raise self.failure
        self.stats.elapsed_s = time.monotonic() - self.started
        self._progress(force=True)

    def _check_limits(self) -> None:
        if self.p._cancel.is_set():
            raise TransferCancelledError(f"artifact {self.m.artifact_id[:12]}: cancelled (the partial file is kept)")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TransferTimeoutError(
                f"artifact {self.m.artifact_id[:12]}: not complete within the time allowed "
                f"({len(self.have)}/{self.m.block_count} blocks; the next pull resumes)"
            )

    def _flush_events(self) -> None:
        with self.lock:
            events, self.pending_events = self.pending_events, []
        for event in events:
            self.p._emit(event)

    # requests ------------------------------------------------------------------------------------------
    def _request_more(self) -> None:
        if not self.p.link.connected.is_set():
            return
        batch: List[int] = []
        while len(self.in_flight) + len(batch) < self.window and self.missing:
            index = self.missing.popleft()
            if index not in self.have and index not in self.in_flight:
                batch.append(index)
        if not batch:
            return
        payload = encode_request(self.m.artifact_id, self.m.chunk_size, batch)
        if not self.p.link.publish(self.p.topics.artifact_request, payload, qos=1, keep_if_offline=False):
            self.missing.extendleft(reversed(batch))  # the broker went away between the check and the send
            return
        now = time.monotonic()
        for index in batch:
            self.in_flight[index] = now
        self.stats.requested_blocks += len(batch)

    def _again(self, index: int) -> None:
        """Ask for in-flight block `index` again on the next round (front of the queue). A block not in flight
        is already queued or on disk."""
        if self.in_flight.pop(index, None) is None:
            return
        self.stats.rerequested_blocks += 1
        self.missing.appendleft(index)

    def _after_reconnect(self) -> None:
        if self.p.link.connects == self.connects or not self.p.link.connected.is_set():
            return
        self.connects = self.p.link.connects
        ensure_no_delay(self.p.link)
        lost = list(self.in_flight)
        log.info("artifact %s: broker reconnected; asking again for %d blocks in flight", self.m.artifact_id[:12], len(lost))
        for index in reversed(lost):
            self._again(index)

    def _expire(self) -> None:
        if not self.p.link.connected.is_set():
            # requests cannot be answered while the broker is away; their clocks restart after the reconnect
            now = time.monotonic()
            for index in self.in_flight:
                self.in_flight[index] = now
            return
        now = time.monotonic()
        late = [i for i, sent in self.in_flight.items() if now - sent >= self.block_timeout]
        if late and self.server_said:
            raise ArtifactUnavailableError(
                f"artifact {self.m.artifact_id[:12]}: the artifact server says: {self.server_said} "
                f"(and no other server sent block {late[0]} within {self.block_timeout:g} s)"
            )
        for index in late:
            self.tries[index] = self.tries.get(index, 0) + 1
            if self.tries[index] >= MAX_BLOCK_RETRIES:
                raise TransferStalledError(
                    f"artifact {self.m.artifact_id[:12]}: no answer for block {index} after {MAX_BLOCK_RETRIES} requests "
                    f"{self.block_timeout:g} s apart; is edge-agent fleet serve running for this broker? "
                    "(the partial file is kept; the next pull resumes)"
                )
        if late:
            log.info("artifact %s: %d blocks timed out; asking again", self.m.artifact_id[:12], len(late))
            for index in reversed(late):
                self._again(index)

    # frames --------------------------------------------------------------------------------------------
    def _take(self, payload: bytes) -> None:
        try:
            block = decode_block(payload)
        except MalformedBlockError as exc:
            self._reject(exc, None)
            return
        if block.artifact_id != self.m.artifact_id:
            return  # an answer to an earlier pull, or to another process on this device's topic
        if block.error:
            # Not fatal yet: with several servers (replicas, or another operator's folder) one that lacks the
            # artifact answers this while another sends the block. If the block then does not come, the first
            # timeout reports this reason instead of retrying in silence.
            self.server_said = block.error
            return
        index = block.index
        if index >= self.m.block_count or (block.offset, len(block.data)) != self.m.block_range(index):
            self._reject(BlockOutsideManifestError(
                f"artifact {self.m.artifact_id[:12]}: block {index} at offset {block.offset} with {len(block.data)} bytes "
                f"is outside the manifest ({self.m.block_count} blocks of {self.m.chunk_size} bytes, {self.m.size} bytes)"
            ), index if index < self.m.block_count else None)
            return
        if index in self.have:
            self.stats.duplicate_bytes += len(block.data)
            return
        digest = hashlib.sha256(block.data).digest()
        if digest != block.digest:
            self._reject(CorruptBlockError(
                f"artifact {self.m.artifact_id[:12]}: block {index} does not match its own checksum (corrupted on the way)"
            ), index)
            return
        if digest.hex() != self.m.block_sha256[index]:
            self._reject(TamperedBlockError(
                f"artifact {self.m.artifact_id[:12]}: block {index} does not match the signed manifest's hash for it"
            ), index)
            return
        self.partial.write(index, block.offset, block.data)  # adds it to self.have (the same set)
        self.in_flight.pop(index, None)
        self.stats.received_bytes += len(block.data)

    def _reject(self, exc: BlockRejectedError, index: Optional[int]) -> None:
        self.stats.rejected_blocks += 1
        count = self.rejections[exc.code] = self.rejections.get(exc.code, 0) + 1
        log.warning("%s (rejected, %d so far)", exc, count)
        self.pending_events.append({"event": "artifact.block_rejected", "artifact_id": self.m.artifact_id, "block": index,
                      "code": exc.code, "reason": str(exc)})
        if count >= MAX_REJECTED_BLOCKS:
            raise type(exc)(f"{exc}; {count} blocks rejected for this reason, giving up (good blocks are kept)")
        if index is not None:
            self._again(index)

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_INTERVAL_S:
            return
        self.last_progress = now
        done = self.stats.resumed_bytes + self.stats.received_bytes
        elapsed = max(1e-6, now - self.started)
        rate = self.stats.received_bytes / elapsed
        eta = (self.m.size - done) / rate if rate > 0 else None
        self.p._emit({"event": "artifact.progress", **self.m.summary(), "bytes": done, "total": self.m.size,
                      "percent": round(100.0 * done / self.m.size, 1) if self.m.size else 100.0,
                      "rate_bps": round(rate), "eta_s": None if eta is None else round(eta, 1)})


def _write_error(artifact_id: str, root: Path, exc: OSError) -> ArtifactError:
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"artifact {artifact_id[:12]}: the disk under {root} is full; free space or run edge-agent store gc "
                              "(the blocks written so far are kept)")
    where = f" ({exc.filename})" if exc.filename else ""
    return ArtifactError(f"artifact {artifact_id[:12]}: disk error under {root}: {exc.strerror or exc}{where}")


WantedArtifact = Tuple[str, Optional[str], Optional[str]]  # (artifact id, kind, name); None: any


def pull_artifacts(puller: ArtifactPuller, wanted: Sequence[WantedArtifact], timeout_s: Optional[float] = None) -> Dict[str, Path]:
    """Fetch every wanted artifact (skipping those stored), in order; the first refusal raises and stops.
    Returns artifact id -> stored path."""
    paths: Dict[str, Path] = {}
    for artifact_id, kind, name in wanted:
        paths[artifact_id] = puller.pull(artifact_id, expect_kind=kind, expect_name=name, timeout_s=timeout_s)
    return paths


__all__ = ["ArtifactError", "ArtifactPuller", "PartialFile", "TransferStats", "WantedArtifact", "pull_artifacts"]
