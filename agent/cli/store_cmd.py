"""`edge-agent store`: placeholder until its issue lands."""

from __future__ import annotations

import argparse
from typing import Any

from agent.errors import AgentError


def register(sub: Any) -> None:
    parser = sub.add_parser("store", help="(not implemented yet)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    raise AgentError("'store' is not implemented yet")
