"""`edge-agent fleet deploy | cmd | status | watch`: desired state, commands and the fleet's view.

Registered into `edge-agent fleet` by `register_operator(actions)` (the `fleet` sub-parsers object).

    edge-agent fleet deploy cam-017 --id effnet-v3 --model SHA --table SHA --validation SHA \\
        --precision int8 --target dla:0 --camera rtsp://10.0.0.5/stream --preprocess efficientnet_lite
    edge-agent fleet deploy --group lobby --file deployment.json
    edge-agent fleet cmd cam-017 rebuild --arg cold=true --wait
    edge-agent fleet status [cam-017] [--json]
    edge-agent fleet watch [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional

from agent.cli.options import add_json_flag, add_preprocess_option, add_target_option, json_or_name
from agent.cli.output import print_json, print_table
from agent.config import load_config
from agent.errors import UsageError
from agent.fleet.commands import COMMANDS, JobState, coerce_cli_args
from agent.fleet.deployment import DeploymentError, deployment_from_dict
from agent.fleet.messages import MessageError
from agent.operator.client import Operator, format_reply
from agent.operator.desired import deployment_document
from agent.operator.plan_builds import build_and_name_plans, format_plan_view, plan_view
from agent.operator.rollout_runner import RolloutBoard


def register_operator(actions: Any) -> None:
    deploy = actions.add_parser("deploy", help="set the desired deployment of a device or a group (retained)")
    deploy.add_argument("device", nargs="?", help="the device id (or use --group)")
    deploy.add_argument("--group", help="a device group (devices list their groups in device.groups)")
    deploy.add_argument("--file", help="the deployment as a JSON file (flags below override its fields)")
    deploy.add_argument("--id", dest="deployment_id", help="deployment id, e.g. effnet-v3 (default: from the model id and time)")
    deploy.add_argument("--model", help="artifact id of the ONNX model (or the path of the published file)")
    deploy.add_argument("--table", help="artifact id of the calibration table (or the file)")
    deploy.add_argument("--validation", help="artifact id of the validation set (or the file)")
    deploy.add_argument("--labels", help="artifact id of a labels file (or the file)")
    deploy.add_argument("--precision", choices=("fp32", "fp16", "int8", "best"))
    add_target_option(deploy)
    deploy.add_argument("--batch", type=int)
    deploy.add_argument("--gpu-fallback", action="store_true", default=None, help="DLA: let unsupported layers run on the GPU")
    deploy.add_argument("--camera", action="append", default=None, help="camera URI (repeat for several)")
    add_preprocess_option(deploy)
    deploy.add_argument("--postprocess", help="a plugin name (classification, blazeface, yolo), inline JSON, or a JSON file")
    deploy.add_argument("--accuracy", action="append", default=None, metavar="KEY=VALUE", help="accuracy gate threshold, e.g. top1_agreement=0.9")
    deploy.add_argument("--telemetry-interval", type=float, help="seconds between telemetry documents")
    deploy.add_argument("--clear", action="store_true", help="remove the retained desired state (devices keep serving what they have)")
    deploy.add_argument("--dry-run", action="store_true", help="validate and print, do not publish")
    deploy.add_argument("--build-plans", action="append", default=None, metavar="CLASS",
                        help="first ask the builder of this hardware class for a shared plan, and name it in the deployment (repeat)")
    add_json_flag(deploy)
    deploy.set_defaults(func=_deploy)

    cmd = actions.add_parser("cmd", help="send a command to a device; --wait for its job to finish")
    cmd.add_argument("device")
    cmd.add_argument("type", choices=sorted(COMMANDS), metavar="TYPE", help=", ".join(sorted(COMMANDS)))
    cmd.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a command argument (repeat)")
    cmd.add_argument("--id", dest="command_id", help="command id (default: time + random); the same id twice runs once")
    cmd.add_argument("--timeout", type=float, help="the job's timeout on the device, seconds")
    cmd.add_argument("--wait", action="store_true", help="wait for the final state and print every transition")
    cmd.add_argument("--wait-timeout", type=float, default=60.0, help="seconds to wait with --wait (default 60)")
    add_json_flag(cmd)
    cmd.set_defaults(func=_cmd)

    status = actions.add_parser("status", help="the reported state of one device or all")
    status.add_argument("device", nargs="?")
    status.add_argument("--wait", type=float, default=1.5, help="seconds to collect retained statuses (default 1.5)")
    status.add_argument("--plans", action="store_true", help="per deployment and class: devices on the shared plan, and who built locally and why")
    add_json_flag(status)
    status.set_defaults(func=_status)

    watch = actions.add_parser("watch", help="a live table of devices: state, engine, fps, temperature")
    watch.add_argument("device", nargs="?")
    watch.add_argument("--interval", type=float, default=2.0)
    watch.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    add_json_flag(watch, help="one JSON line per refresh instead of a table")
    watch.add_argument("--plans", action="store_true", help="also show, per deployment and class, who uses the shared plan")
    watch.set_defaults(func=_watch)


def _operator(args: argparse.Namespace) -> Any:
    config = load_config(args.config)
    return Operator(config.broker, config.broker.topic_prefix).connect()


def _accuracy_pairs(pairs: Optional[List[str]]) -> Dict[str, Any]:
    """--accuracy KEY=VALUE (repeated), as text: the GateThresholds model converts each value to its field's type."""
    accuracy: Dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"--accuracy takes KEY=VALUE, got {pair!r}")
        accuracy[key.strip()] = text.strip()
    return accuracy


def deployment_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    base = json_or_name(args.file, "--file") if args.file else None
    if base is not None and not isinstance(base, dict):
        raise UsageError(f"--file {args.file}: a JSON object is needed")
    fields = {
        "id": args.deployment_id, "model": args.model, "table": args.table, "validation": args.validation, "labels": args.labels,
        "precision": args.precision, "target": args.target, "batch": args.batch, "gpu_fallback": args.gpu_fallback,
        "cameras": args.camera, "preprocess": json_or_name(args.preprocess, "--preprocess"),
        "postprocess": json_or_name(args.postprocess, "--postprocess"), "telemetry_interval_s": args.telemetry_interval,
    }
    return deployment_document(base, fields, _accuracy_pairs(args.accuracy))


def _deploy(args: argparse.Namespace) -> int:
    if bool(args.device) == bool(args.group):
        raise UsageError("name a DEVICE or --group GROUP (one of them)")
    deployment = None
    if not args.clear:
        try:
            deployment = deployment_from_dict(deployment_from_args(args))
        except DeploymentError as exc:
            raise UsageError(str(exc)) from None
    if deployment is not None and getattr(args, "build_plans", None) and not args.dry_run:
        _answers, deployment = build_and_name_plans(load_config(args.config), deployment, args.build_plans, 3600.0)
    if args.dry_run:
        print_json({"deployment": deployment.to_dict() if deployment else None, "digest": deployment.digest() if deployment else None})
        return 0
    operator = _operator(args)
    try:
        topic = operator.deploy(deployment, device=args.device, group=args.group)
    finally:
        operator.close()
    result = {"topic": topic, "deployment": deployment.to_dict() if deployment else None, "digest": deployment.digest() if deployment else None}
    if args.json:
        print_json(result)
    elif deployment is None:
        sys.stdout.write(f"cleared the desired state on {topic}\n")
    else:
        sys.stdout.write(f"desired {deployment.describe()} (digest {deployment.digest()}) on {topic}\n")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    try:
        command_args = coerce_cli_args(args.type, args.arg)
    except MessageError as exc:
        raise UsageError(str(exc)) from None
    operator = _operator(args)

    def show(reply: Any) -> None:
        if not args.json:
            sys.stdout.write(format_reply(reply) + "\n")
            sys.stdout.flush()

    try:
        replies = operator.command(
            args.device,
            args.type,
            command_args,
            command_id=args.command_id,
            timeout_s=args.timeout,
            wait=args.wait,
            wait_s=args.wait_timeout,
            on_reply=show,
        )
    finally:
        operator.close()
    if args.json:
        print_json(
            [
                {"job_id": r.job_id, "type": r.type, "state": r.state.value, "detail": r.detail, "result": r.result, "ts": r.ts}
                for r in replies
            ]
        )
    elif not args.wait:
        sys.stdout.write(f"sent {args.type} to {args.device}\n")
    if replies and replies[-1].state != JobState.SUCCEEDED:
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    operator = _operator(args)
    try:
        rows = operator.status(args.device, wait_s=args.wait)
    finally:
        operator.close()
    if args.device and args.device not in rows:
        raise_missing = f"no status from {args.device} (never connected, or another topic prefix)"
        if args.json:
            print_json({"device": args.device, "status": None, "error": raise_missing})
        else:
            sys.stderr.write(raise_missing + "\n")
        return 1
    if getattr(args, "plans", False):
        view = plan_view(rows.values())
        if args.json:
            print_json(view)
        else:
            sys.stdout.write("\n".join(format_plan_view(view) or ["no device reports a deployment"]) + "\n")
        return 0
    if args.json:
        print_json(rows[args.device].status if args.device else {name: row.status for name, row in rows.items()})
        return 0
    _print_rows(list(rows.values()), with_error=True)
    return 0


def _print_rows(rows: List[Any], with_error: bool = False) -> None:
    headers = ["DEVICE", "STATE", "ENGINE", "APPLYING", "FPS", "TEMP_C"] + (["LAST ERROR"] if with_error else [])
    table = []
    for row in rows:
        line = [row.device, row.state, row.engine, row.applying, row.fps, row.temperature_c]
        if with_error:
            line.append(row.error[:80])
        table.append(line)
    print_table(headers, table)


def _watch(args: argparse.Namespace) -> int:
    operator = _operator(args)
    board = RolloutBoard(operator.link, operator.prefix)  # staged rollouts in progress, one line each
    try:
        for rows in operator.watch(interval_s=args.interval, duration_s=args.duration, device=args.device):
            if args.json:
                sys.stdout.write(json.dumps([{k: v for k, v in r.to_dict().items() if k != "status"} for r in rows], default=str) + "\n")
            else:
                if sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")
                sys.stdout.write(time.strftime("%H:%M:%S ") + f"{len(rows)} devices\n")
                for line in board.lines():
                    sys.stdout.write(line + "\n")
                _print_rows(rows)
                if getattr(args, "plans", False):
                    sys.stdout.write("\n".join(format_plan_view(plan_view(rows))) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        operator.close()
    return 0
