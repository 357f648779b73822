"""The systemd notify protocol, written directly: one datagram to $NOTIFY_SOCKET per message
(`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`). See sd_notify(3).

An address starting with '@' is a Linux abstract socket (the '@' stands for a leading NUL byte). Without
NOTIFY_SOCKET (not under systemd, or Type=simple) every call is a no-op that returns False.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping, Optional

log = logging.getLogger(__name__)


def _address(env: Mapping[str, str]) -> Optional[str]:
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return None
    return "\0" + address[1:] if address[0] == "@" else address


def notify(message: str, env: Optional[Mapping[str, str]] = None) -> bool:
    """Send one notify message; True if a systemd socket took it. Never raises."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        return True
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False


def watchdog_interval(env: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """Seconds between the watchdog deadlines systemd set (WatchdogSec), or None when there is no watchdog
    for this process (WATCHDOG_PID names another). Feed at half of it."""
    environ = os.environ if env is None else env
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1e6


class Notifier:
    """The daemon's view: READY once, WATCHDOG while healthy, STATUS lines for `systemctl status`."""

    def __init__(self, env: Optional[Mapping[str, str]] = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.enabled = _address(self.env) is not None
        self.watchdog_s = watchdog_interval(self.env)
        self.ready_sent = False
        self.watchdog_pings = 0

    def ready(self, status: str = "") -> None:
        if self.ready_sent:
            return
        self.ready_sent = True
        notify("READY=1" + (f"\nSTATUS={status}" if status else ""), self.env)

    def watchdog(self) -> None:
        if notify("WATCHDOG=1", self.env):
            self.watchdog_pings += 1

    def status(self, text: str) -> None:
        notify(f"STATUS={text[:200]}", self.env)

    def stopping(self) -> None:
        notify("STOPPING=1", self.env)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start (or stop) time, e.g. while the first engine builds before READY."""
        notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", self.env)
