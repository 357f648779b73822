"""Transfers survive a broker restart and an agent kill -9, and what was on disk is never asked for again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict

import pytest

from agent.fleet.artifact_protocol import ArtifactManifest, TransferBusyError, TransferCancelledError
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import GeneratedKeys, load_private_key
from agent.store.hashing import sha256_file
from tests.artifacts.conftest import Device, DeviceFactory, Operator, write_config
from tests.helpers import REPO_ROOT, wait_until


class BackgroundPull:
    """A pull in a thread; `.wait_for_bytes(n)` until it has n bytes; `.join()` returns its path or raises its error."""

    def __init__(self, device: Device, manifest: ArtifactManifest) -> None:
        self.device = device
        self.outcome: Dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(manifest,))
        self.thread.start()

    def _run(self, manifest: ArtifactManifest) -> None:
        try:
            self.outcome["path"] = self.device.pull(manifest, timeout_s=60)
        except Exception as exc:  # handed to join()
            self.outcome["error"] = exc

    def wait_for_bytes(self, count: int) -> None:
        wait_until(lambda: self.device.puller.last_stats.received_bytes >= count, 20, f"{count} bytes")

    def join(self) -> Path:
        self.thread.join(60)
        if "error" in self.outcome:
            raise self.outcome["error"]
        return Path(self.outcome["path"])


def cancelled_midway(device: Device, manifest: ArtifactManifest, after_bytes: int) -> None:
    background = BackgroundPull(device, manifest)
    background.wait_for_bytes(after_bytes)
    device.puller.cancel()
    with pytest.raises(TransferCancelledError):
        background.join()
    assert manifest.artifact_id in device.store.partials()


def test_broker_restart_mid_transfer_resumes_and_resends_at_most_a_window(
    fresh_broker: LocalBroker, make_operator: Any, make_device: DeviceFactory
) -> None:
    chunk, window = 16 * 1024, 8
    operator = make_operator("restart", rate_limit_bps=1_500_000, on=fresh_broker)
    device = make_device(on=fresh_broker, prefix="restart", window=window)
    manifest = operator.publish(os.urandom(1_500_000), chunk_size=chunk)
    background = BackgroundPull(device, manifest)
    background.wait_for_bytes(300_000)
    fresh_broker.restart()
    assert sha256_file(background.join()) == manifest.artifact_id
    assert device.link.reconnects >= 1 and operator.link.reconnects >= 1
    assert operator.server.stats.resent_bytes <= window * chunk
    assert device.store.partials() == []


def test_agent_kill_9_mid_transfer_resumes_from_disk(
    broker: LocalBroker, keys: GeneratedKeys, make_operator: Any, make_device: DeviceFactory, tmp_path: Path
) -> None:
    chunk, window, prefix, device_id = 8192, 8, "killtest", f"kill-{os.getpid()}"
    operator = make_operator(prefix, rate_limit_bps=400_000)
    manifest = operator.publish(os.urandom(1_000_000), chunk_size=chunk)
    state = tmp_path / "state"
    config = write_config(tmp_path / "agent.toml", broker, device_id=device_id, state_dir=state,
                          public_key=keys.public_hex, prefix=prefix, extra=f"window = {window}\n")
    log_path = state / "artifacts" / ".partial" / f"{manifest.artifact_id}.log"
    child = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "store", "pull", manifest.artifact_id],
                             cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: log_path.exists() and log_path.stat().st_size >= 16 + 4 * 30, 30, "30 blocks on disk")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    operator.server.rate_limit_bps = 0  # the rest at full speed

    device = make_device(prefix=prefix, device_id=device_id, store_root=state / "artifacts", window=window)
    path = device.pull(manifest)
    assert sha256_file(path) == manifest.artifact_id
    resumed = [e for e in device.events if e["event"] == "artifact.resumed"]
    assert resumed and resumed[0]["blocks"] >= 30
    stats = device.puller.last_stats
    # blocks on disk are never asked for again (fewer, if a late answer to the killed process's requests came in)
    assert stats.requested_blocks - stats.rerequested_blocks <= manifest.block_count - resumed[0]["blocks"]
    assert operator.server.stats.resent_bytes <= window * chunk  # at most the window that was in flight
    assert device.store.partials() == []


def test_a_second_process_cannot_pull_the_same_artifact_at_once(
    make_operator: Any, make_device: DeviceFactory, tmp_path: Path
) -> None:
    operator = make_operator("busy", rate_limit_bps=200_000)
    manifest = operator.publish(os.urandom(400_000), chunk_size=8192)
    first = make_device(prefix="busy", store_root=tmp_path / "shared-store")
    second = make_device(prefix="busy", store_root=tmp_path / "shared-store")
    background = BackgroundPull(first, manifest)
    background.wait_for_bytes(1)
    with pytest.raises(TransferBusyError, match="another process"):
        second.pull(manifest)
    operator.server.rate_limit_bps = 0
    assert background.join() == first.store.path(manifest.artifact_id)


def test_cancel_keeps_the_partial_and_a_later_pull_resumes_under_a_rotated_key(
    keys: GeneratedKeys, other_keys: GeneratedKeys, make_operator: Any, make_device: DeviceFactory, tmp_path: Path
) -> None:
    operator = make_operator("rotate", rate_limit_bps=300_000)
    data = os.urandom(300_000)
    manifest = operator.publish(data, chunk_size=8192)
    first = make_device(prefix="rotate", store_root=tmp_path / "store", public_keys=[keys.public_hex])
    cancelled_midway(first, manifest, 50_000)

    # the fleet rotates its key: the partial's manifest (old key) no longer passes, the broker has a new one
    operator.publish(data, chunk_size=8192, key=load_private_key(other_keys.private_path))
    operator.server.rate_limit_bps = 0
    second = make_device(prefix="rotate", store_root=tmp_path / "store", public_keys=[other_keys.public_hex])
    assert sha256_file(second.pull(manifest)) == manifest.artifact_id
    resumed = [e for e in second.events if e["event"] == "artifact.resumed"]
    assert resumed and resumed[0]["bytes"] >= 50_000 and resumed[0]["key_id"] == other_keys.key_id


def test_blocks_logged_but_not_on_disk_after_a_power_cut_are_fetched_again(
    make_operator: Any, make_device: DeviceFactory, tmp_path: Path
) -> None:
    operator = make_operator("powercut", rate_limit_bps=300_000)
    manifest = operator.publish(os.urandom(200_000), chunk_size=8192)
    first = make_device(prefix="powercut", store_root=tmp_path / "store")
    cancelled_midway(first, manifest, 40_000)
    part = first.store.partial_path(manifest.artifact_id)
    with open(part, "r+b") as handle:  # block 0 is logged; its bytes never reached the disk
        handle.write(bytes(8192))
    operator.server.rate_limit_bps = 0
    second = make_device(prefix="powercut", store_root=tmp_path / "store")
    assert sha256_file(second.pull(manifest)) == manifest.artifact_id
    assert second.puller.last_stats.resumed_bytes >= 40_000 - 8192


def test_an_empty_artifact_is_fine(operator: Operator, make_device: DeviceFactory) -> None:
    device = make_device()
    manifest = operator.publish(b"", kind="validation", name="empty.npz")
    assert device.pull(manifest).read_bytes() == b""

