"""`edge-agent doctor [--json]`: everything that blocks or degrades the agent, each with a fix. Exit 1 on a fail."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.options import add_json_flag
from agent.cli.output import print_json, print_table
from agent.config import load_config
from agent.daemon.doctor import FAIL, run_checks, summarize

MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "-"}


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor")
    parser.add_argument("--no-broker", action="store_true", help="skip the broker checks (offline diagnosis)")
    parser.add_argument("--no-cameras", action="store_true", help="skip opening the configured cameras")
    add_json_flag(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    checks = run_checks(config, include_broker=not args.no_broker, include_cameras=not args.no_cameras)
    counts = summarize(checks)
    if args.json:
        print_json({"ok": counts[FAIL] == 0, "summary": counts, "checks": [c.to_dict() for c in checks]})
    else:
        print_table(["CHECK", "STATUS", "DETAIL"], [[c.name, MARKS.get(c.status, c.status), c.detail] for c in checks])
        fixes = [c for c in checks if c.fix and c.status in ("warn", "fail")]
        if fixes:
            sys.stdout.write("\nfixes:\n")
            for check in fixes:
                sys.stdout.write(f"  {check.name}: {check.fix}\n")
        sys.stdout.write(f"\n{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failures\n")
    return 1 if counts[FAIL] else 0
