"""The operator's side, over the fleet protocol (agent.fleet): publishing and serving artifacts, desired state,
commands, the fleet's status, staged rollouts and the Prometheus exporter. See docs/protocol.md and
docs/rollouts.md."""

from __future__ import annotations
