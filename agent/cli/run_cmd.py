"""`edge-agent run`: the agent as a service (systemd Type=notify) or in a terminal."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from agent.config import load_config
from agent.daemon.daemon import Daemon


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        description=(
            "Run the agent until SIGTERM or Ctrl-C. Starts even when the broker is down (it keeps trying) and "
            "serves what it served before from disk. Under systemd (Type=notify) it reports READY once the "
            "engine is loaded and warmed (at once with no deployment) and feeds the watchdog while healthy."
        ),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    level = (args.log_level or config.log.level).upper()
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)

    return Daemon(config).run_forever()
