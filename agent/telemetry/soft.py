"""Fail-soft calls for collectors: a source that is missing or broken gives None and ONE log line per outage
(not one per interval), and one line when it comes back."""

from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, TypeVar

T = TypeVar("T")

log = logging.getLogger("agent.telemetry")


class SoftSources:
    """Remembers which named sources are failing so each outage is logged once."""

    def __init__(self, logger: Optional[logging.Logger] = None) -> None:
        self.log = logger or log
        self.failing: Dict[str, str] = {}  # source name -> why, while it fails

    def call(self, name: str, fn: Callable[[], Optional[T]]) -> Optional[T]:
        """`fn()`, or None when it raises (logged once until it works again)."""
        try:
            value = fn()
        except Exception as exc:  # any failure of an optional source must cost only its own field
            # an absent source (no sensor, no tool, not installed) is normal on some hosts: info, not warning
            absent = isinstance(exc, (FileNotFoundError, ImportError))
            self.fail(name, f"{type(exc).__name__}: {exc}", logging.INFO if absent else logging.WARNING)
            return None
        self.ok(name)
        return value

    def fail(self, name: str, reason: str, level: int = logging.WARNING) -> None:
        if name not in self.failing:
            self.log.log(level, "telemetry: %s unavailable (%s); reporting null until it returns", name, reason)
        self.failing[name] = reason

    def ok(self, name: str) -> None:
        if self.failing.pop(name, None) is not None:
            self.log.info("telemetry: %s is available again", name)
