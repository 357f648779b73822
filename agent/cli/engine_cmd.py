"""`edge-agent engine`: placeholder until its issue lands."""

from __future__ import annotations

import argparse
from typing import Any

from agent.errors import AgentError


def register(sub: Any) -> None:
    parser = sub.add_parser("engine", help="(not implemented yet)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    raise AgentError("'engine' is not implemented yet")
