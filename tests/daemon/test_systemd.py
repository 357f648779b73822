"""systemd integration: the notify protocol over a real datagram socket, READY and WATCHDOG from a running
daemon, and the unit file checked by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from agent.daemon.daemon import Daemon
from agent.daemon.sdnotify import Notifier, notify, watchdog_interval
from agent.fleet.local_broker import LocalBroker
from tests.daemon.conftest import make_config
from tests.helpers import REPO_ROOT

UNIT = REPO_ROOT / "systemd" / "edge-agent.service"


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[Tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()


def received(sock: socket.socket, until: float) -> List[str]:
    messages: List[str] = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode())
        except socket.timeout:
            continue
    return messages


def test_notify_writes_one_datagram(notify_socket: Tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=hello"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_systemd_notify_is_a_no_op() -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "relative/path"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"}) is False


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000"}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 4.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_ready_is_sent_once() -> None:
    notifier = Notifier({})
    notifier.ready("x")
    notifier.ready("y")
    assert notifier.ready_sent


def test_daemon_sends_ready_then_feeds_the_watchdog(
    broker: LocalBroker, tmp_path: Path, notify_socket: Tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = make_config(broker, tmp_path / "state", "notify-dev")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000", "WATCHDOG_PID": str(os.getpid())}
    daemon = Daemon(config, env=env).start()
    try:
        messages = received(sock, time.monotonic() + 1.4)
    finally:
        daemon.stop()
    ready = [m for m in messages if m.startswith("READY=1")]
    assert len(ready) == 1 and "degraded: no deployment" in ready[0]  # no deployment: READY at once
    first_ready = messages.index(ready[0])
    watchdog = [i for i, m in enumerate(messages) if m == "WATCHDOG=1"]
    assert len(watchdog) >= 2 and min(watchdog) > first_ready  # fed every WATCHDOG_USEC/2, only after READY
    assert any(m.startswith("STATUS=") for m in messages)
    tail = received(sock, time.monotonic() + 0.3)
    assert "WATCHDOG=1" not in tail  # no feeding after stop


def test_watchdog_starves_when_the_loop_is_unhealthy(
    broker: LocalBroker, tmp_path: Path, notify_socket: Tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = make_config(broker, tmp_path / "state", "starve-dev")
    daemon = Daemon(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}).start()
    try:
        received(sock, time.monotonic() + 0.5)
        daemon.reconciler._stop.set()  # the reconcile thread ends, as if it had died
        daemon.reconciler._wake.set()
        time.sleep(0.4)  # a feed may have been decided just before
        assert not daemon.healthy()
        starving = received(sock, time.monotonic() + 0.9)
    finally:
        daemon.stop()
    assert "WATCHDOG=1" not in starving


def test_unit_has_what_the_issue_asks() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/edge-agent",
        "StateDirectory=edge-agent",
        "SupplementaryGroups=video",
        "DeviceAllow=/dev/nvmap rw",
        "DeviceAllow=char-nvhost* rw",
        "DeviceAllow=/dev/nvhost-nvdla0 rw",
    ):
        assert line in text, line


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is not installed (Debian package systemd; tests/run.sh installs it)"
    executable = Path(shutil.which("edge-agent") or (Path(sys.executable).parent / "edge-agent"))
    if not executable.exists():  # run from a checkout (PYTHONPATH) rather than an install: the same agent
        executable = tmp_path / "edge-agent"
        executable.write_text(f"#!/bin/sh\nexec {sys.executable} -m agent \"$@\"\n")
        executable.chmod(0o755)
    # verify checks that ExecStart exists: point it at this environment's edge-agent
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(executable)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "edge-agent.service" not in result.stderr, result.stderr
