"""The operator's side, over the fleet protocol (agent.fleet): publishing and serving artifacts, desired state,
commands, and the fleet's status. See docs/protocol.md."""

from __future__ import annotations
