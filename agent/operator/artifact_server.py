"""The operator side of artifact transfer: the artifacts folder, publishing manifests, and `fleet serve`.

The folder holds `<sha256>` (the file) and `<sha256>.manifest.json` (its signed manifest) for each artifact.
`ArtifactServer` answers block requests on `<prefix>/+/artifact-req` with binary frames on the asking
device's own `<prefix>/<device>/artifact-data`, and republishes every manifest it holds (retained) each time
it connects, so a broker restarted without persistence gets them back. Several servers can share the load
through an MQTT shared subscription (`share=`), which mosquitto, EMQX and HiveMQ all offer.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, List, Optional, Tuple, Union

from agent.errors import AgentError
from agent.fleet.artifact_protocol import (
    ArtifactManifest,
    BlockRequest,
    ManifestError,
    decode_manifest,
    decode_request,
    encode_block,
    encode_block_error,
    encode_manifest,
)
from agent.fleet.link import MqttLink, ensure_no_delay, wait_acknowledged
from agent.fleet.messages import MessageError
from agent.fleet.topics import Topics, all_devices, device_of
from agent.store.artifacts import is_artifact_id
from agent.store.atomic import atomic_copy, atomic_write_bytes, read_json
from agent.store.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
_OPEN_FILES = 32
_TRACKED_TRANSFERS = 4096
_INLINE_REQUEST_BYTES = 4096  # a request message this small ...
_INLINE_SERVE_BYTES = 8 * 1024 * 1024  # ... asking for at most this much is served on the network thread


_NOT_HELD = "artifact not held by this server"


class _TooBigForInline(Exception):
    """The request is answered by the worker thread instead."""


# ------------------------------------------------------------------------------------------------ folder
def folder_manifest_path(folder: Path, artifact_id: str) -> Path:
    return folder / f"{artifact_id}{MANIFEST_SUFFIX}"


def add_to_folder(folder: Path, source: Path, manifest: ArtifactManifest) -> Path:
    """Copy `source` into the operator's folder as `<sha256>` (unless an intact copy is there) and write its
    manifest beside it. The copy is streamed to a temporary file, fsynced, and renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / manifest.artifact_id
    if not (target.is_file() and target.stat().st_size == manifest.size and sha256_file(target) == manifest.artifact_id):

        def unchanged(copy: str) -> None:
            if sha256_file(copy) != manifest.artifact_id:
                raise AgentError(f"{source} changed while it was being published; publish it again")

        atomic_copy(source, target, mode=0o444, check=unchanged)
    atomic_write_bytes(folder_manifest_path(folder, manifest.artifact_id), encode_manifest(manifest))
    return target


def folder_manifests(folder: Path) -> List[ArtifactManifest]:
    """Every manifest in the folder whose artifact file is present; unreadable ones are logged and skipped."""
    out: List[ArtifactManifest] = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        artifact_id = name[: -len(MANIFEST_SUFFIX)]
        if not is_artifact_id(artifact_id) or not (folder / artifact_id).is_file():
            continue
        try:
            out.append(decode_manifest(read_json(folder / name)))
        except (OSError, ValueError, ManifestError) as exc:
            log.warning("skipping %s: %s", folder / name, exc)
    return out


def publish_manifest(link: MqttLink, prefix: str, manifest: ArtifactManifest, timeout_s: float = 10.0) -> None:
    """Publish the manifest retained (QoS 1) and wait until the broker has it."""
    if not link.wait_connected(timeout_s):
        raise AgentError(f"cannot reach the broker {link.broker.host}:{link.broker.port} ({link.last_error or 'no answer'})")
    topic = Topics(prefix, "fleet").artifact_manifest(manifest.artifact_id)
    payload = encode_manifest(manifest)
    if not link.fits(topic, payload):
        raise AgentError(f"the manifest of {manifest.name!r} ({manifest.block_count} blocks) is {len(payload)} bytes, over "
                         f"broker.max_payload ({link.broker.max_payload}): the artifact is too large for this broker's limit")
    info = link.client.publish(topic, payload, qos=1, retain=True)
    wait_acknowledged(info, timeout_s, f"the manifest for {manifest.artifact_id[:12]}")


# ------------------------------------------------------------------------------------------------ server
@dataclass
class ServerStats:
    requests: int = 0
    bad_requests: int = 0
    blocks_sent: int = 0
    bytes_sent: int = 0
    error_frames: int = 0
    resent_blocks: int = 0  # a block sent again to the same device (its first copy was lost or late)
    resent_bytes: int = 0


class ArtifactServer:
    """Serves the artifacts of one folder. `start()` subscribes and starts the worker; `stop()` ends it."""

    def __init__(
        self,
        link: MqttLink,
        prefix: str,
        folder: Path,
        *,
        rate_limit_bps: float = 0.0,
        share: str = "",
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.folder = Path(folder)
        self.rate_limit_bps = rate_limit_bps
        self.request_filter = all_devices(prefix, "artifact-req")
        if share:
            self.request_filter = f"$share/{share}/{self.request_filter}"
        self.stats = ServerStats()
        self._requests: queue.Queue[Optional[Tuple[str, bytes]]] = queue.Queue()
        # artifact id -> (fd, size, its manifest if readable)
        self._files: collections.OrderedDict[str, Tuple[int, int, Optional[ArtifactManifest]]] = collections.OrderedDict()
        self._sent: collections.OrderedDict[Tuple[str, str, int], bytearray] = collections.OrderedDict()
        self._next_send = 0.0
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.recent_errors: Deque[str] = collections.deque(maxlen=20)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._work, name="artifact-server", daemon=True)
        self._thread.start()
        self.link.subscribe(self.request_filter, self._on_request, qos=1)
        if self.link.connected.is_set():
            self.republish_manifests()

    def stop(self) -> None:
        self.link.unsubscribe(self.request_filter)
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for fd, _size, _manifest in self._files.values():
                os.close(fd)
            self._files.clear()

    def republish_manifests(self) -> int:
        """Publish (retained) every manifest in the folder; call on each connect. Returns how many."""
        manifests = folder_manifests(self.folder)
        topics = Topics(self.prefix, "fleet")
        for manifest in manifests:
            self.link.publish(topics.artifact_manifest(manifest.artifact_id), encode_manifest(manifest), qos=1, retain=True)
        if manifests:
            log.info("republished %d artifact manifests", len(manifests))
        return len(manifests)

    def _on_request(self, msg: Any) -> None:
        """paho's network thread. A usual request (a window's refill: a few blocks, a few MB read from the page
        cache) is answered right here: handing it to another thread costs more in GIL hand-offs than reading
        and publishing it, and halved the throughput in bench/transfer.py. Big or rate-limited requests go to
        the worker, so this thread never sleeps or stalls on a large read."""
        ensure_no_delay(self.link)  # every call: the socket is new after a reconnect; a setsockopt is cheap
        if self.rate_limit_bps <= 0 and len(msg.payload) <= _INLINE_REQUEST_BYTES:
            try:
                self._serve(msg.topic, msg.payload, inline_limit=_INLINE_SERVE_BYTES)
                return
            except _TooBigForInline:
                pass
            except Exception:  # one bad request must not stop the server
                log.exception("artifact request on %s failed", msg.topic)
                return
        self._requests.put((msg.topic, msg.payload))

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            topic, payload = item
            try:
                self._serve(topic, payload)
            except Exception:  # one bad request must not stop the server
                log.exception("artifact request on %s failed", topic)

    def _serve(self, topic: str, payload: bytes, inline_limit: int = 0) -> None:
        device = device_of(topic, self.prefix)
        if not device:
            self.stats.bad_requests += 1
            return
        reply_topic = Topics(self.prefix, device).artifact_data
        try:
            request = decode_request(payload)
        except MessageError as exc:
            self.stats.bad_requests += 1
            self.recent_errors.append(f"{device}: {exc}")
            log.warning("bad artifact request from %s: %s", device, exc)
            return
        if inline_limit and len(request.blocks) * request.chunk_size > inline_limit:
            raise _TooBigForInline
        with self._lock:
            self.stats.requests += 1
        for index in request.blocks:
            block = self._read(request, index)
            if isinstance(block, str):
                self._error(reply_topic, request, index, block)
                if block == _NOT_HELD:
                    return
                continue
            offset, data, digest, size = block
            self._throttle(len(data))
            frame = encode_block(request.artifact_id, index, offset, data, digest)
            if not self.link.fits(reply_topic, frame):
                self._error(reply_topic, request, index, f"a block of {request.chunk_size} bytes does not fit broker.max_payload "
                            f"({self.link.broker.max_payload}); publish the artifact again (fleet publish sizes blocks to the limit)")
                return
            if not self.link.publish(reply_topic, frame, qos=0, keep_if_offline=False):
                continue  # the broker is away; the device asks again after it returns
            self._count(device, request, index, len(data), size)

    def _read(self, request: BlockRequest, index: int) -> Union[str, Tuple[int, bytes, Optional[bytes], int]]:
        """(offset, data, digest or None, artifact size), or the reason it cannot be served. Under the lock, so
        that a descriptor is never closed (evicted) while another thread reads through it."""
        with self._lock:
            opened = self._open(request.artifact_id)
            if opened is None:
                return _NOT_HELD
            fd, size, manifest = opened
            offset = index * request.chunk_size
            if offset >= size:
                return f"block {index} is past the end ({size} bytes)"
            data = os.pread(fd, min(request.chunk_size, size - offset), offset)
        # the signed block list already holds each block's hash; hashing it again here would only cost CPU
        digest = None
        if manifest is not None and manifest.chunk_size == request.chunk_size:
            digest = bytes.fromhex(manifest.block_sha256[index])
        return offset, data, digest, size

    def _open(self, artifact_id: str) -> Optional[Tuple[int, int, Optional[ArtifactManifest]]]:
        """The cached (fd, size, manifest) of an artifact in the folder; the caller holds the lock."""
        if artifact_id in self._files:
            self._files.move_to_end(artifact_id)
            return self._files[artifact_id]
        try:
            fd = os.open(str(self.folder / artifact_id), os.O_RDONLY)
        except OSError:
            return None
        try:
            manifest: Optional[ArtifactManifest] = decode_manifest(read_json(folder_manifest_path(self.folder, artifact_id)))
        except (OSError, ValueError, ManifestError):
            manifest = None  # served all the same; each block is hashed as it is sent
        size = os.fstat(fd).st_size
        if manifest is not None and manifest.size != size:
            manifest = None
        self._files[artifact_id] = (fd, size, manifest)
        while len(self._files) > _OPEN_FILES:
            os.close(self._files.popitem(last=False)[1][0])
        return self._files[artifact_id]

    def _error(self, topic: str, request: BlockRequest, index: int, reason: str) -> None:
        with self._lock:
            self.stats.error_frames += 1
        self.link.publish(topic, encode_block_error(request.artifact_id, index, reason), qos=0, keep_if_offline=False)

    def _throttle(self, nbytes: int) -> None:
        if self.rate_limit_bps <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next_send)
        self._next_send = start + nbytes / self.rate_limit_bps
        if start > now:
            time.sleep(start - now)

    def _count(self, device: str, request: BlockRequest, index: int, nbytes: int, size: int) -> None:
        with self._lock:
            self.stats.blocks_sent += 1
            self.stats.bytes_sent += nbytes
            self._count_resend(device, request, index, nbytes, size)

    def _count_resend(self, device: str, request: BlockRequest, index: int, nbytes: int, size: int) -> None:
        """Remember which blocks each device got, to count what is sent twice (bounded: oldest transfers forgotten)."""
        key = (device, request.artifact_id, request.chunk_size)
        sent = self._sent.get(key)
        if sent is None:
            sent = self._sent[key] = bytearray((size // request.chunk_size + 8) // 8 + 1)
            while len(self._sent) > _TRACKED_TRANSFERS:
                self._sent.popitem(last=False)
        byte, bit = divmod(index, 8)
        if sent[byte] & (1 << bit):
            self.stats.resent_blocks += 1
            self.stats.resent_bytes += nbytes
        else:
            sent[byte] |= 1 << bit


def serve_forever(server: ArtifactServer, stop: threading.Event, report_every_s: float = 0.0) -> None:
    """Run until `stop` is set, optionally logging the counters now and then (the CLI's `fleet serve`)."""
    last = time.monotonic()
    while not stop.wait(0.5):
        if report_every_s and time.monotonic() - last >= report_every_s:
            last = time.monotonic()
            log.info("served %d blocks (%d bytes) for %d requests", server.stats.blocks_sent, server.stats.bytes_sent, server.stats.requests)


__all__ = ["ArtifactServer", "ServerStats", "add_to_folder", "folder_manifests", "publish_manifest", "serve_forever"]
