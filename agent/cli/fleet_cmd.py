"""`edge-agent fleet`: the operator's side. `keys generate`, `publish`, `serve` here; `make-validation` from
`gate_cmd`; `deploy`, `cmd`, `status`, `watch` from `operator_cmd`.

Operator commands read the same `--config` file as the agent (its [broker] section, and [state] for the default
folders), so one TOML serves a laptop that both publishes and pulls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli import gate_cmd, operator_cmd, plans_cmd, rollout_cmd
from agent.cli.options import add_json_flag, require_action
from agent.cli.output import print_json
from agent.cli.signals import stop_on_signals
from agent.config import load_config
from agent.fleet.artifact_protocol import KINDS as ARTIFACT_KINDS
from agent.fleet.signing import generate_keys
from agent.operator.publish import artifacts_folder, keys_folder, publish_artifact, serve_artifacts


def register(sub: Any) -> None:
    parser = sub.add_parser("fleet")
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION")

    keys = actions.add_parser("keys", help="signing keys")
    key_actions = keys.add_subparsers(dest="keys_action", metavar="ACTION")
    generate = key_actions.add_parser("generate", help="make an ed25519 key pair (private key mode 0600)")
    generate.add_argument("-o", "--out", help="folder for fleet-signing.key and fleet-signing.pub (default: <state dir>/fleet-keys)")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_json_flag(generate)
    generate.set_defaults(func=_keys_generate)
    require_action(keys)

    publish = actions.add_parser("publish", help="sign an artifact, copy it into the artifacts folder, publish its manifest (retained)")
    publish.add_argument("file", help="the artifact: calibration table, ONNX model or validation set")
    publish.add_argument("--kind", required=True, choices=ARTIFACT_KINDS)
    publish.add_argument("--name", help="a label without path separators (default: the file name)")
    publish.add_argument("--key", help="ed25519 private key PEM (default: <state dir>/fleet-keys/fleet-signing.key)")
    publish.add_argument("--unsigned", action="store_true", help="publish without a signature (only devices with allow_unsigned take it)")
    publish.add_argument("--chunk-size", type=int, help="block size in bytes (default: artifacts.chunk_bytes, less if broker.max_payload needs it)")
    publish.add_argument("--artifacts", help="the operator's artifacts folder (default: <state dir>/fleet-artifacts)")
    publish.add_argument("--offline", action="store_true", help="only add it to the folder; fleet serve publishes the manifest when it connects")
    publish.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the broker (default 15)")
    add_json_flag(publish)
    publish.set_defaults(func=_publish)

    serve = actions.add_parser("serve", help="answer devices' block requests from the artifacts folder (until Ctrl-C)")
    serve.add_argument("--artifacts", help="the operator's artifacts folder (default: <state dir>/fleet-artifacts)")
    serve.add_argument("--rate-limit", type=float, default=0.0, metavar="MB_PER_S", help="cap the upload rate (0: none)")
    serve.add_argument("--share", default="", metavar="GROUP", help="MQTT shared subscription group, to run several servers")
    add_json_flag(serve, help="print the counters as JSON when stopped")
    serve.set_defaults(func=_serve)

    gate_cmd.register_fleet(actions)  # make-validation
    operator_cmd.register_operator(actions)  # deploy, cmd, status, watch
    plans_cmd.register_fleet(actions)  # build, builder (shared plans, docs/engines.md)
    rollout_cmd.register_fleet(actions)  # rollout start|status|pause|resume|abort, exporter
    require_action(parser)


def _keys_generate(args: argparse.Namespace) -> int:
    keys = generate_keys(keys_folder(load_config(args.config), args.out), overwrite=args.force)
    if args.json:
        print_json(keys)
    else:
        print(f"private key: {keys.private_path} (mode 0600; keep it on the operator's machine)")
        print(f"public key:  {keys.public_path}")
        print(f"key id:      {keys.key_id}")
        print("devices trust it with, in their agent.toml:")
        print(f'  [artifacts]\n  public_keys = ["{keys.public_hex}"]')
    return 0


def _publish(args: argparse.Namespace) -> int:
    done = publish_artifact(
        load_config(args.config), Path(args.file), args.kind, name=args.name, key=args.key, unsigned=args.unsigned,
        chunk_size=args.chunk_size, folder=args.artifacts, offline=args.offline, timeout_s=args.timeout,
    )
    manifest = done.manifest
    if args.json:
        print_json(done.to_dict())
    else:
        print(manifest.artifact_id)
        state = "published (retained) at" if done.published else "added to the folder; fleet serve will publish it at"
        sys.stderr.write(f"{manifest.kind} {manifest.name!r}, {manifest.size} bytes, "
                         f"{'signed by key ' + manifest.key_id if manifest.signed else 'UNSIGNED'}: {state} {done.topic}\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    folder = artifacts_folder(config, args.artifacts)
    stop = stop_on_signals()

    def started(link: Any, count: int) -> None:
        where = f"{config.broker.host}:{config.broker.port}"
        if not link.wait_connected(10.0):
            sys.stderr.write(f"broker {where} not reachable yet ({link.last_error}); still trying\n")
        sys.stderr.write(f"serving {count} artifacts from {folder} via {where} (Ctrl-C to stop)\n")
        sys.stderr.flush()

    stats = serve_artifacts(config, folder, stop, rate_limit_bps=args.rate_limit * 1e6, share=args.share, on_started=started)
    if args.json:
        print_json(stats)
        return 0
    sys.stderr.write(f"served {stats.blocks_sent} blocks ({stats.bytes_sent} bytes) for {stats.requests} requests; "
                     f"resent {stats.resent_bytes} bytes\n")
    return 0
