"""`edge-agent fleet build` and `edge-agent fleet builder`: build once per hardware class (docs/engines.md).

    edge-agent fleet builder --key builder.key                  run as the designated builder of this machine's class
    edge-agent fleet build --deployment D.json --class C        ask the builder of class C for a plan of deployment D
    edge-agent fleet deploy ... --build-plans C [--build-plans C2]   the same, then deploy D naming the plans

The work is in agent.operator.plan_builds; this module parses the command line and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.options import add_json_flag
from agent.cli.output import print_json
from agent.cli.signals import wait_for_stop
from agent.config import load_config
from agent.fleet.signing import load_private_key
from agent.operator.desired import read_deployment
from agent.operator.plan_builds import PlanBuilder, build_and_name_plans


def register_fleet(actions: Any) -> None:
    build = actions.add_parser("build", help="ask the designated builder of a hardware class for a shared plan of a deployment")
    build.add_argument("--deployment", required=True, help="the deployment as a JSON file (as for fleet deploy --file)")
    build.add_argument("--class", dest="classes", action="append", required=True, metavar="CLASS",
                       help="hardware class key (edge-agent device --json on a device of the class); repeat for several")
    build.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for each build (default 3600)")
    add_json_flag(build)
    build.set_defaults(func=_build)

    builder = actions.add_parser("builder", help="run as the designated plan builder of this machine's class (until Ctrl-C)")
    builder.add_argument("--key", required=True, help="the builder's ed25519 private key (devices trust its public key for engines only)")
    builder.add_argument("--folder", help="where published plans are kept and served from (default: <state dir>/plans)")
    builder.set_defaults(func=_builder)


def _build(args: argparse.Namespace) -> int:
    deployment = read_deployment(args.deployment)
    answers, named = build_and_name_plans(load_config(args.config), deployment, args.classes, args.timeout)
    if args.json:
        print_json({"plans": answers, "deployment": named.to_dict()})
        return 0
    for klass, answer in answers.items():
        how = f"built in {answer.get('build_s')} s" if answer.get("built") else "engine was cached on the builder"
        sys.stdout.write(f"{klass}: plan {answer['artifact_id']} from {answer.get('builder')} ({how}; gate {answer.get('gate')})\n")
    sys.stdout.write("deploy with: " + json.dumps({"plans": named.plans}) + "\n")
    return 0


def _builder(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    builder = PlanBuilder(config, load_private_key(Path(args.key)), folder=Path(args.folder) if args.folder else None).start()
    sys.stdout.write(f"building plans for {config.device.id} on {config.broker.host}:{config.broker.port} (Ctrl-C stops)\n")
    sys.stdout.flush()
    try:
        wait_for_stop()
    finally:
        builder.stop()
    return 0
