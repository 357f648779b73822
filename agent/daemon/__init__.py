"""The daemon: the reconcile loop that ties the packages together, fleet command jobs, systemd notify and
watchdog, and `edge-agent doctor`. See docs/daemon.md."""

from __future__ import annotations
