"""`edge-agent fleet`: the operator's side. `keys generate`, `publish`, `serve` here; `make-validation` from
`gate_cli`; `deploy`, `cmd`, `status`, `watch` from `operator_cli`.

Operator commands read the same `--config` file as the agent (its [broker] section, and [state] for the default
folders), so one TOML serves a laptop that both publishes and pulls.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, List

from agent.cli import gate_cli, operator_cli, rollout_cli
from agent.cli.output import add_json_flag, print_json
from agent.errors import UsageError
from agent.fleet.artifacts import KINDS as ARTIFACT_KINDS


def register(sub: Any) -> None:
    parser = sub.add_parser("fleet", help="operator side: signing keys, publishing and serving artifacts")
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION")

    keys = actions.add_parser("keys", help="signing keys")
    key_actions = keys.add_subparsers(dest="keys_action", metavar="ACTION")
    generate = key_actions.add_parser("generate", help="make an ed25519 key pair (private key mode 0600)")
    generate.add_argument("-o", "--out", help="folder for fleet-signing.key and fleet-signing.pub (default: <state dir>/fleet-keys)")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_json_flag(generate)
    generate.set_defaults(func=_keys_generate)
    keys.set_defaults(func=_missing_action(keys))

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
    serve.add_argument("--json", action="store_true", help="print the counters as JSON when stopped")
    serve.set_defaults(func=_serve)

    gate_cli.register_fleet(actions)  # make-validation
    operator_cli.register_operator(actions)  # deploy, cmd, status, watch
    rollout_cli.register(actions)  # rollout start|status|pause|resume|abort, exporter
    parser.set_defaults(func=_missing_action(parser))


def _missing_action(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        raise UsageError(f"choose an action:\n{parser.format_usage().strip()}")

    return run


def _config(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    return load_config(args.config)


def _artifacts_folder(args: argparse.Namespace, config: Any) -> Path:
    return Path(args.artifacts) if args.artifacts else config.state_dir / "fleet-artifacts"


def _keys_generate(args: argparse.Namespace) -> int:
    from agent.fleet.signing import generate_keys

    folder = Path(args.out) if args.out else _config(args).state_dir / "fleet-keys"
    keys = generate_keys(folder, overwrite=args.force)
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
    from agent.fleet.artifact_server import add_to_folder, publish_manifest
    from agent.fleet.artifacts import describe_file, sign_manifest, validate_name
    from agent.fleet.link import MqttLink, unique_client_id
    from agent.fleet.signing import PRIVATE_KEY_NAME, load_private_key
    from agent.fleet.topics import Topics

    config = _config(args)
    source = Path(args.file)
    if not source.is_file():
        raise UsageError(f"no such file: {source}")
    name = validate_name(args.name if args.name else source.name)
    private_key = None
    if not args.unsigned:
        key_path = Path(args.key) if args.key else config.state_dir / "fleet-keys" / PRIVATE_KEY_NAME
        private_key = load_private_key(key_path)
    from agent.fleet.limits import block_size_for

    try:  # blocks sized so that one block frame fits the broker's packet limit
        chunk = args.chunk_size or block_size_for(config.broker.max_payload, config.artifacts.chunk_bytes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    manifest = describe_file(source, args.kind, name, chunk)
    if private_key is not None:
        manifest = sign_manifest(manifest, private_key)
    folder = _artifacts_folder(args, config)
    stored = add_to_folder(folder, source, manifest)
    topic = Topics(config.broker.topic_prefix, "fleet").artifact_manifest(manifest.artifact_id)
    if not args.offline:
        link = MqttLink(config.broker, unique_client_id("publish"), persistent_session=False)
        link.start()
        try:
            publish_manifest(link, config.broker.topic_prefix, manifest, timeout_s=args.timeout)
        finally:
            link.stop()
    result = {**manifest.summary(), "signed": manifest.signed, "chunk_size": manifest.chunk_size,
              "blocks": manifest.block_count, "topic": topic, "published": not args.offline, "stored": str(stored)}
    if args.json:
        print_json(result)
    else:
        print(manifest.artifact_id)
        state = "published (retained) at" if not args.offline else "added to the folder; fleet serve will publish it at"
        sys.stderr.write(f"{manifest.kind} {manifest.name!r}, {manifest.size} bytes, "
                         f"{'signed by key ' + manifest.key_id if manifest.signed else 'UNSIGNED'}: {state} {topic}\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from agent.fleet.artifact_server import ArtifactServer, folder_manifests
    from agent.fleet.link import MqttLink, unique_client_id

    config = _config(args)
    folder = _artifacts_folder(args, config)
    holder: List[ArtifactServer] = []

    def republish() -> None:  # every (re)connect: a broker restarted without persistence gets them back
        if holder:
            holder[0].republish_manifests()

    link = MqttLink(config.broker, unique_client_id("serve"), persistent_session=False, on_connected=republish)
    server = ArtifactServer(link, config.broker.topic_prefix, folder,
                            rate_limit_bps=args.rate_limit * 1e6, share=args.share)
    holder.append(server)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_a: stop.set())
    server.start()
    link.start()
    if not link.wait_connected(10.0):
        sys.stderr.write(f"broker {config.broker.host}:{config.broker.port} not reachable yet ({link.last_error}); "
                         "still trying\n")
    sys.stderr.write(f"serving {len(folder_manifests(folder))} artifacts from {folder} via "
                     f"{config.broker.host}:{config.broker.port} (Ctrl-C to stop)\n")
    sys.stderr.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        link.stop()
    stats = server.stats
    if args.json:
        print_json(stats)
        return 0
    sys.stderr.write(f"served {stats.blocks_sent} blocks ({stats.bytes_sent} bytes) for {stats.requests} requests; "
                     f"resent {stats.resent_bytes} bytes\n")
    return 0
