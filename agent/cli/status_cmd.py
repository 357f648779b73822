"""`edge-agent status [--json]`: the live state of the agent on this machine, from its state folder.

Reads state.json (what the agent remembers) and status.json (what the running daemon writes every few
seconds), so it works without the broker. Exit 1 when no agent is running.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict

from agent.cli.options import add_json_flag
from agent.cli.output import print_json
from agent.config import load_config
from agent.daemon.reported import live_status


def register(sub: Any) -> None:
    parser = sub.add_parser("status")
    add_json_flag(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    report = live_status(config.state_dir)
    if args.json:
        print_json(report)
        return 0 if report["running"] else 1
    write_text(report, sys.stdout)
    return 0 if report["running"] else 1


def write_text(report: Dict[str, Any], out: Any) -> None:
    """The human form of `live_status()`'s report: state, deployment, broker, outbox, pipeline, each camera."""
    status = report["status"] or {}
    live = report["live"] or {}
    state = report["state"] or {}
    if report["running"]:
        out.write(f"edge-agent running (pid {live.get('pid')}, up {live.get('uptime_s')} s): {status.get('state')}\n")
    else:
        age = report["status_age_s"]
        out.write("edge-agent is not running" + (f" (last status {age:.0f} s ago)" if age is not None else "") + "\n")
    serving = (state.get("serving") or {}).get("deployment") or {}
    out.write(f"  serving:   {serving.get('id', '-')}" + (f" ({serving.get('precision')} on {serving.get('target')})" if serving else "") + "\n")
    applying = state.get("applying") or {}
    if applying:
        out.write(f"  applying:  {(applying.get('deployment') or {}).get('id')} at step {applying.get('step')} (attempt {applying.get('attempts')})\n")
    desired = (state.get("desired") or {})
    out.write(f"  desired:   {(desired.get('deployment') or {}).get('id', '-')}" + (f" from {desired.get('source')}" if desired else "") + "\n")
    error = state.get("last_error") or {}
    if error:
        out.write(f"  last error: {error.get('step')}: {error.get('reason')}\n")
    broker = live.get("broker") or {}
    if broker:
        out.write(f"  broker:    {broker.get('host')}:{broker.get('port')} {'connected' if broker.get('connected') else 'away'}"
                  f" ({broker.get('reconnects')} reconnects)\n")
    outbox = live.get("outbox") or {}
    if outbox:
        out.write(f"  outbox:    {outbox.get('queued')} queued, {outbox.get('dropped')} dropped (max {outbox.get('max')})\n")
    pipeline = live.get("pipeline") or {}
    if pipeline:
        out.write(f"  pipeline:  {pipeline.get('fps')} fps, {pipeline.get('results')} results, {pipeline.get('drops')} drops\n")
        for camera in pipeline.get("sources") or []:
            if isinstance(camera, dict):
                out.write(f"  camera:    {camera.get('name')} {camera.get('state')} {camera.get('width')}x{camera.get('height')}, "
                          f"{camera.get('frames')} frames, {camera.get('reconnects')} reconnects, {camera.get('stalls', 0)} stalls, "
                          f"{camera.get('open_failures')} failed opens"
                          + (f"; {camera.get('last_error')}" if camera.get("state") != "streaming" and camera.get("last_error") else "") + "\n")
