"""Long-running commands (`fleet serve`, `fleet builder`, `fleet exporter`, a rollout being driven) stop on
SIGINT or SIGTERM the same way: the signal sets an event the command waits on, and the command cleans up."""

from __future__ import annotations

import signal
import threading
from typing import Optional


def stop_on_signals(stop: Optional[threading.Event] = None) -> threading.Event:
    """`stop` (a new event when None), set by SIGINT or SIGTERM."""
    event = stop if stop is not None else threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_a: event.set())
    return event


def wait_for_stop(stop: Optional[threading.Event] = None) -> None:
    """Block until SIGINT or SIGTERM (or `stop` is set by someone else)."""
    event = stop_on_signals(stop)
    while not event.wait(0.5):
        pass
