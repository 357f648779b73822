"""`edge-agent fleet rollout start|status|pause|resume|abort` and `edge-agent fleet exporter`.

    edge-agent fleet rollout start --deployment deployment.json --group lobby --waves 1,5%,25%,100% --bake 10m \\
        --abort-if 'gate_failures>10%' --abort-if 'fps_drop>20%'
    edge-agent fleet rollout status [--group lobby] [--json]
    edge-agent fleet rollout pause|resume|abort --group lobby
    edge-agent fleet exporter --listen :9108

The logic lives in agent/operator/ (rollout.py, rollout_runner.py, exporter.py); this module parses arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agent.cli.options import add_json_flag, require_action
from agent.cli.output import print_json
from agent.cli.signals import stop_on_signals, wait_for_stop
from agent.config import load_config
from agent.errors import UsageError
from agent.operator.desired import read_deployment
from agent.operator.exporter import FleetExporter, serve_http
from agent.operator.rollout import (
    RolloutBusy,
    RolloutError,
    one_line,
    parse_criteria,
    parse_duration,
    parse_waves,
    summary,
)
from agent.operator.rollout_runner import RolloutRunner, read_rollouts


def register_fleet(actions: Any) -> None:
    rollout = actions.add_parser("rollout", help="staged rollout of a deployment to a group, wave by wave, that stops itself")
    steps = rollout.add_subparsers(dest="rollout_action", metavar="ACTION")

    start = steps.add_parser("start", help="start a rollout and drive it until it completes or is rolled back")
    start.add_argument("--deployment", required=True, metavar="FILE", help="the deployment as JSON (as fleet deploy --file takes)")
    start.add_argument("--group", required=True)
    start.add_argument("--waves", default="1,5%,25%,100%", help="cumulative wave targets, counts or percentages (default 1,5%%,25%%,100%%)")
    start.add_argument("--canary", default="", metavar="DEV,DEV", help="the first wave: these devices")
    start.add_argument("--bake", default="0s", help="wait after each wave before checking the criteria again (e.g. 10m)")
    start.add_argument("--wave-timeout", default="30m", help="a device that has not finished by then counts as timed out")
    start.add_argument("--rollback-timeout", default="2m", help="how long a rollback command may take before its desired state is restored anyway")
    start.add_argument("--abort-if", action="append", default=[], metavar="CRITERION",
                       help="e.g. gate_failures>10%%, gate_failures>=2, pull_failures>5%%, build_failures>0, offline>10%%, "
                            "fps_drop>20%%, errors_rise>2, temp_rise>8 (repeat; default gate/build>10%%, pull/offline>25%%)")
    start.add_argument("--state-file", help="also keep the rollout state in this file (read first on resume)")
    start.add_argument("--id", dest="rollout_id", help="rollout id (default: ro-<time>-<random>)")
    start.add_argument("--detach", action="store_true", help="start it and return; `fleet rollout resume` drives it")
    add_json_flag(start)
    start.set_defaults(func=_start)

    status = steps.add_parser("status", help="the rollout of a group, or of every group")
    status.add_argument("--group")
    status.add_argument("--wait", type=float, default=1.0, help="seconds to collect retained states (default 1)")
    add_json_flag(status)
    status.set_defaults(func=_status)

    for action, text in (("pause", "send no further wave until resumed"),
                         ("resume", "resume a paused rollout, or drive one whose runner was killed"),
                         ("abort", "stop and roll back every changed device")):
        parser = steps.add_parser(action, help=text)
        parser.add_argument("--group", required=True)
        parser.add_argument("--state-file", help="the rollout's state file, if it was started with one")
        add_json_flag(parser)
        parser.set_defaults(func=_control, action=action)

    require_action(rollout)

    exporter = actions.add_parser("exporter", help="serve the fleet's telemetry and status as Prometheus metrics")
    exporter.add_argument("--listen", default=":9108", help="[HOST]:PORT (default :9108)")
    exporter.add_argument("--stale-after", default="60s", help="a device silent this long is marked stale (default 60s)")
    exporter.add_argument("--drop-after", default="1h", help="a device silent this long is dropped from the metrics (default 1h)")
    exporter.add_argument("--max-devices", type=int, default=10000, help="bound on devices (label cardinality; default 10000)")
    exporter.set_defaults(func=_exporter)


def _say(text: str) -> None:
    sys.stderr.write(time.strftime("%H:%M:%S ") + text + "\n")
    sys.stderr.flush()


def _runner(args: argparse.Namespace, group: str) -> Any:
    config = load_config(args.config)
    return RolloutRunner(config.broker, config.broker.topic_prefix, group, state_file=getattr(args, "state_file", None), say=_say).open()


def _drive(runner: Any, state: Any, as_json: bool) -> int:
    stop_on_signals(runner.stop)
    state = runner.run(state)
    if as_json:
        print_json(summary(state))
    else:
        print(one_line(state))
    if state.status == "completed":
        return 0
    if state.status == "aborted":
        return 3
    _say(f"stopped; rollout {state.id} stays {state.status}: `edge-agent fleet rollout resume --group {state.group}` continues it")
    return 1


def _start(args: argparse.Namespace) -> int:
    deployment = read_deployment(args.deployment)
    try:
        waves = parse_waves(args.waves)
        criteria = parse_criteria(args.abort_if)
        bake_s, wave_timeout_s, rollback_s = parse_duration(args.bake), parse_duration(args.wave_timeout), parse_duration(args.rollback_timeout)
    except RolloutError as exc:
        raise UsageError(str(exc)) from None
    canary = [d.strip() for d in args.canary.split(",") if d.strip()]
    runner = _runner(args, args.group)
    try:
        try:
            state = runner.start(deployment, waves=waves, criteria=criteria, canary=canary, bake_s=bake_s, wave_timeout_s=wave_timeout_s,
                                 rollback_timeout_s=rollback_s, rollout_id=args.rollout_id)
        except RolloutBusy as exc:
            if args.json:
                print_json({"error": str(exc), "rollout": exc.rollout_id})
            else:
                sys.stderr.write(f"refused: {exc}\n")
            return 2
        except RolloutError as exc:
            raise UsageError(str(exc)) from None
        if args.detach:
            print(state.id)
            return 0
        return _drive(runner, state, args.json)
    finally:
        runner.close()


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    states = read_rollouts(config.broker, config.broker.topic_prefix, group=args.group, wait_s=args.wait)
    if args.json:
        print_json([dict(summary(s), history=s.history[-10:]) for s in states])
        return 0
    if not states:
        print("no rollout" + (f" on group {args.group}" if args.group else ""))
        return 1 if args.group else 0
    for state in states:
        print(one_line(state))
        for line in state.history[-6:]:
            print("  " + line)
    return 0


def _control(args: argparse.Namespace) -> int:
    runner = _runner(args, args.group)
    try:
        try:
            done = runner.apply_control(args.action)
        except RolloutError as exc:
            raise UsageError(str(exc)) from None
        state = done.state
        if done.sent_to:
            if args.json:
                print_json({"rollout": state.id, "action": args.action, "sent_to": done.sent_to})
            else:
                print(f"{args.action} sent to rollout {state.id} (driven by {done.sent_to})")
            return 0
        if not done.drive:
            print_json(summary(state)) if args.json else print(one_line(state))
            return 0
        return _drive(runner, state, args.json)
    finally:
        runner.close()


def _listen(text: str) -> Any:
    host, _, port = text.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise UsageError(f"--listen: [HOST]:PORT, got {text!r}") from None


def _exporter(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        stale, drop = parse_duration(args.stale_after), parse_duration(args.drop_after)
    except RolloutError as exc:
        raise UsageError(str(exc)) from None
    host, port = _listen(args.listen)
    exporter = FleetExporter(config.broker, config.broker.topic_prefix, stale_after_s=stale, drop_after_s=drop, max_devices=args.max_devices).start()
    server = serve_http(exporter, host, port)
    _say(f"serving fleet metrics on http://{host}:{server.server_port}/metrics (broker {config.broker.host}:{config.broker.port})")
    try:
        wait_for_stop()
    finally:
        server.shutdown()
        exporter.close()
    return 0

