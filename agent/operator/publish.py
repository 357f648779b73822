"""Publishing an artifact and serving the operator's artifacts folder: `fleet publish` and `fleet serve`.

The operator's folders default to the state folder of the same configuration file the agent reads:
`<state>/fleet-keys` (the signing key pair) and `<state>/fleet-artifacts` (what `fleet serve` answers from).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fleet.artifact_protocol import ArtifactManifest, describe_file, sign_manifest, validate_name
from agent.fleet.limits import block_size_for
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.signing import PRIVATE_KEY_NAME, load_private_key
from agent.fleet.topics import Topics
from agent.operator.artifact_server import (
    ArtifactServer,
    ServerStats,
    add_to_folder,
    folder_manifests,
    publish_manifest,
)

KEYS_FOLDER = "fleet-keys"
ARTIFACTS_FOLDER = "fleet-artifacts"


def keys_folder(config: AgentConfig, folder: Optional[str] = None) -> Path:
    return Path(folder) if folder else config.state_dir / KEYS_FOLDER


def artifacts_folder(config: AgentConfig, folder: Optional[str] = None) -> Path:
    return Path(folder) if folder else config.state_dir / ARTIFACTS_FOLDER


@dataclass
class Published:
    manifest: ArtifactManifest
    topic: str
    stored: Path
    published: bool

    def to_dict(self) -> Dict[str, Any]:
        manifest = self.manifest
        return {**manifest.summary(), "signed": manifest.signed, "chunk_size": manifest.chunk_size, "blocks": manifest.block_count,
                "topic": self.topic, "published": self.published, "stored": str(self.stored)}


def publish_artifact(
    config: AgentConfig,
    source: Path,
    kind: str,
    *,
    name: Optional[str] = None,
    key: Optional[str] = None,
    unsigned: bool = False,
    chunk_size: Optional[int] = None,
    folder: Optional[str] = None,
    offline: bool = False,
    timeout_s: float = 15.0,
) -> Published:
    """Describe `source`, sign it (unless `unsigned`), copy it into the artifacts folder and publish its manifest
    retained (unless `offline`: `fleet serve` publishes it when it connects)."""
    source = Path(source)
    if not source.is_file():
        raise AgentError(f"no such file: {source}")
    label = validate_name(name if name else source.name)
    private_key = None if unsigned else load_private_key(Path(key) if key else keys_folder(config) / PRIVATE_KEY_NAME)
    try:  # blocks sized so that one block frame fits the broker's packet limit
        chunk = chunk_size or block_size_for(config.broker.max_payload, config.artifacts.chunk_bytes)
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    manifest = describe_file(source, kind, label, chunk)
    if private_key is not None:
        manifest = sign_manifest(manifest, private_key)
    stored = add_to_folder(artifacts_folder(config, folder), source, manifest)
    topic = Topics(config.broker.topic_prefix, "fleet").artifact_manifest(manifest.artifact_id)
    if not offline:
        link = MqttLink(config.broker, unique_client_id("publish"), persistent_session=False)
        link.start()
        try:
            publish_manifest(link, config.broker.topic_prefix, manifest, timeout_s=timeout_s)
        finally:
            link.stop()
    return Published(manifest, topic, stored, not offline)


def serve_artifacts(
    config: AgentConfig,
    folder: Path,
    stop: threading.Event,
    *,
    rate_limit_bps: float = 0.0,
    share: str = "",
    on_started: Optional[Any] = None,
) -> ServerStats:
    """Answer devices' block requests from `folder` until `stop` is set; the manifests are published again on
    every (re)connect, so a broker restarted without persistence gets them back. `on_started(link, count)` is
    called once the server runs (the CLI says where it serves from)."""
    holder: List[ArtifactServer] = []

    def republish() -> None:
        if holder:
            holder[0].republish_manifests()

    link = MqttLink(config.broker, unique_client_id("serve"), persistent_session=False, on_connected=republish)
    server = ArtifactServer(link, config.broker.topic_prefix, folder, rate_limit_bps=rate_limit_bps, share=share)
    holder.append(server)
    server.start()
    link.start()
    try:
        if on_started is not None:
            on_started(link, len(folder_manifests(folder)))
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        link.stop()
    return server.stats
