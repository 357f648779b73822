"""Failure points for crash tests: `EDGE_AGENT_FAILPOINTS="build=pause:30,fetch=crash"`.

The kill -9 tests need the agent to be *inside* a step when it dies. Rather than racing a fast step, a test
sets a failure point: `pause:S` holds the step for S seconds (the test kills the agent meanwhile), `crash`
ends the process at once with os._exit (no cleanup, like a power cut), `fail` raises as the step would, `bug`
raises a RuntimeError (not an AgentError: what a bug inside a step raises, which the daemon must wrap).
Nothing here runs unless the variable is set; the daemon logs a warning when it is.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Dict, Mapping, Optional

from agent.errors import AgentError

log = logging.getLogger(__name__)
ENV = "EDGE_AGENT_FAILPOINTS"


class FailpointError(AgentError):
    """Raised by a `fail` failure point."""


def parse(text: str) -> Dict[str, str]:
    points: Dict[str, str] = {}
    for item in text.split(","):
        if "=" in item:
            name, action = item.split("=", 1)
            points[name.strip()] = action.strip()
    return points


class Failpoints:
    def __init__(self, env: Optional[Mapping[str, str]] = None) -> None:
        self.points = parse((os.environ if env is None else env).get(ENV, ""))
        if self.points:
            log.warning("failure points active (%s): for tests only", ENV)

    def hit(self, name: str, cancel: Optional[threading.Event] = None) -> None:
        action = self.points.get(name)
        if not action:
            return
        log.warning("failure point %s: %s", name, action)
        if action == "crash":
            os._exit(86)
        if action == "fail":
            raise FailpointError(f"failure point {name} fired")
        if action == "bug":
            raise RuntimeError(f"failure point {name} fired (bug)")
        if action.startswith("pause:"):
            deadline = time.monotonic() + float(action.split(":", 1)[1])
            while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
                time.sleep(0.05)
