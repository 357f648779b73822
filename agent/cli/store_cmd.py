"""`edge-agent store`: the device's content-addressed artifact store, by hand. `pull`, `list`, `verify`, `gc`."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from agent.cli.options import add_json_flag, require_action
from agent.cli.output import print_json, print_table
from agent.config import load_config
from agent.errors import UsageError
from agent.fleet.artifact_protocol import KINDS as ARTIFACT_KINDS
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.topics import Topics
from agent.fleet.transfer import ArtifactPuller
from agent.store.artifacts import is_artifact_id, load_keep_list, store_for


def register(sub: Any) -> None:
    parser = sub.add_parser("store")
    actions = parser.add_subparsers(dest="store_action", metavar="ACTION")

    pull = actions.add_parser("pull", help="fetch an artifact by id over MQTT (signature, blocks and sha256 checked)")
    pull.add_argument("artifact_id", help="the artifact's sha256")
    pull.add_argument("--kind", choices=ARTIFACT_KINDS, help="refuse it unless it is this kind")
    pull.add_argument("--name", help="refuse it unless the manifest has this name")
    pull.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (the next pull resumes)")
    add_json_flag(pull)
    pull.set_defaults(func=_pull)

    listing = actions.add_parser("list", help="stored artifacts and transfers in progress")
    add_json_flag(listing)
    listing.set_defaults(func=_list)

    verify = actions.add_parser("verify", help="re-hash every stored artifact (exit 1 on a problem)")
    add_json_flag(verify)
    verify.set_defaults(func=_verify)

    gc = actions.add_parser("gc", help="remove artifacts no deployment keeps (state.json keep_artifacts, plus --keep)")
    gc.add_argument("--keep", nargs="*", default=[], metavar="ID", help="artifact ids to keep as well")
    gc.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    add_json_flag(gc)
    gc.set_defaults(func=_gc)

    require_action(parser)


def _pull(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = store_for(config.state_dir)
    link = MqttLink(config.broker, unique_client_id(f"{config.device.id}-store"), persistent_session=False)
    events: List[Dict[str, Any]] = []

    def show(event: Dict[str, Any]) -> None:
        events.append(event)
        if args.json:
            return
        if event["event"] == "artifact.progress":
            eta = event.get("eta_s")
            sys.stderr.write(f"\r{event['bytes'] / 1e6:8.1f} / {event['total'] / 1e6:.1f} MB  "
                             f"{event['rate_bps'] / 1e6:6.1f} MB/s  eta {'-' if eta is None else f'{eta:.0f} s'}   ")
            if event["bytes"] >= event["total"]:
                sys.stderr.write("\n")
        elif event["event"] == "artifact.resumed":
            sys.stderr.write(f"resuming: {event['bytes']} bytes already here\n")
        elif event["event"] == "artifact.block_rejected":
            sys.stderr.write(f"\nblock rejected: {event['reason']}\n")

    started = time.monotonic()
    link.start()
    try:
        puller = ArtifactPuller(link, Topics(config.broker.topic_prefix, config.device.id), store, config.artifacts, show,
                                min_free_mb=config.state.min_free_mb)
        path = puller.pull(args.artifact_id, expect_kind=args.kind, expect_name=args.name, timeout_s=args.timeout)
    finally:
        link.stop()
    meta = store.manifest(args.artifact_id) or {}
    result = {"artifact_id": args.artifact_id, "path": str(path), "kind": meta.get("kind"), "name": meta.get("name"),
              "size": path.stat().st_size, "seconds": round(time.monotonic() - started, 2),
              "stats": _stats(puller)}
    if args.json:
        print_json(result)
    else:
        print(path)
    return 0


def _stats(puller: Any) -> Optional[Dict[str, Any]]:
    stats = puller.last_stats
    return asdict(stats) if stats.artifact_id else None


def _list(args: argparse.Namespace) -> int:
    store = store_for(load_config(args.config).state_dir)
    items = store.list()
    partials = store.partials()
    if args.json:
        print_json({"root": str(store.root), "artifacts": items, "partial": partials})
        return 0
    print_table(
        ("ARTIFACT", "KIND", "NAME", "SIZE", "SIGNER"),
        [(a.artifact_id[:16], a.kind, a.name, _size(a.size), a.key_id or "-") for a in items],
    )
    for artifact_id in partials:
        print(f"(partial transfer: {artifact_id[:16]}; edge-agent store pull {artifact_id} resumes it)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    store = store_for(load_config(args.config).state_dir)
    problems = store.verify()
    if args.json:
        print_json({"root": str(store.root), "checked": len(store.ids()), "problems": problems})
    elif problems:
        for problem in problems:
            print(f"{problem.artifact_id[:16]}: {problem.problem}")
    else:
        print(f"{len(store.ids())} artifacts verified in {store.root}")
    return 1 if problems else 0


def _gc(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = store_for(config.state_dir)
    for artifact_id in args.keep:
        if not is_artifact_id(artifact_id):
            raise UsageError(f"--keep: not an artifact id: {artifact_id!r}")
    keep = load_keep_list(config.state_dir / "state.json") | set(args.keep)
    removed = store.gc(keep, dry_run=args.dry_run)
    if args.json:
        print_json({"kept": sorted(keep), "removed": removed, "dry_run": args.dry_run})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {len(removed)} artifacts; kept {len([a for a in store.ids() if a in keep])}")
        for artifact_id in removed:
            print(f"  {artifact_id}")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
