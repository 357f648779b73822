"""Fixtures for artifact tests: signing keys, an operator that publishes and serves on the session broker, device
pullers with their own stores, and a rogue server that answers block requests with crafted frames."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import ArtifactsConfig, BrokerConfig
from agent.fleet.artifact_protocol import (
    ArtifactManifest,
    decode_request,
    describe_file,
    encode_manifest,
    sign_manifest,
)
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import GeneratedKeys, generate_keys, load_private_key
from agent.fleet.topics import Topics
from agent.fleet.transfer import ArtifactPuller
from agent.operator.artifact_server import (
    ArtifactServer,
    add_to_folder,
    folder_manifest_path,
    publish_manifest,
)
from agent.store.artifacts import ArtifactStore

PREFIX = "art"  # not "edge": other packages' tests run their own artifact servers there on the same broker
_device_ids = itertools.count(1)


def broker_config(broker: LocalBroker, protocol: str = "5") -> BrokerConfig:
    return BrokerConfig(host=broker.host, port=broker.port, protocol=protocol, reconnect_min_s=1, reconnect_max_s=2)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKeys:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> GeneratedKeys:
    """A valid key pair that no device trusts."""
    return generate_keys(tmp_path_factory.mktemp("other-keys"))


class Operator:
    """Publishes artifacts (retained manifests) and serves their blocks from one folder."""

    def __init__(self, broker: LocalBroker, folder: Path, keys: GeneratedKeys, prefix: str = PREFIX,
                 protocol: str = "5", rate_limit_bps: float = 0.0) -> None:
        self.broker = broker
        self.folder = folder
        self.keys = keys
        self.prefix = prefix
        self.private_key = load_private_key(keys.private_path)
        self._sources = folder.parent / f"{folder.name}-sources"
        self._sources.mkdir(parents=True, exist_ok=True)
        holder: List[ArtifactServer] = []

        def republish() -> None:
            if holder:
                holder[0].republish_manifests()

        self.link = MqttLink(broker_config(broker, protocol), unique_client_id("test-operator"), persistent_session=False,
                             on_connected=republish)
        self.server = ArtifactServer(self.link, prefix, folder, rate_limit_bps=rate_limit_bps)
        holder.append(self.server)
        self.server.start()
        self.link.start()
        assert self.link.wait_connected(10)

    def describe(self, data: bytes, kind: str = "model", name: str = "model.onnx", chunk_size: int = 4096) -> Tuple[Path, ArtifactManifest]:
        source = self._sources / hashlib.sha256(data).hexdigest()
        source.write_bytes(data)
        return source, describe_file(source, kind, name, chunk_size)

    def publish(self, data: bytes, kind: str = "model", name: str = "model.onnx", chunk_size: int = 4096,
                signed: bool = True, key: Any = None,
                before_sign: Optional[Callable[[ArtifactManifest], ArtifactManifest]] = None,
                after_sign: Optional[Callable[[ArtifactManifest], ArtifactManifest]] = None) -> ArtifactManifest:
        """Describe, edit (a lying but signed manifest), sign (unless not), edit again (a tampered manifest),
        store in the folder, publish retained."""
        source, manifest = self.describe(data, kind, name, chunk_size)
        if before_sign is not None:
            manifest = before_sign(manifest)
        if signed:
            manifest = sign_manifest(manifest, key or self.private_key)
        if after_sign is not None:
            manifest = after_sign(manifest)
        if manifest.artifact_id == hashlib.sha256(data).hexdigest():
            add_to_folder(self.folder, source, manifest)
        else:  # a manifest that lies about the content: the server must still hold the bytes under that id
            (self.folder / manifest.artifact_id).write_bytes(data)
            folder_manifest_path(self.folder, manifest.artifact_id).write_bytes(encode_manifest(manifest))
        self.publish_manifest(manifest)
        return manifest

    def publish_manifest(self, manifest: ArtifactManifest) -> None:
        publish_manifest(self.link, self.prefix, manifest)

    def publish_raw(self, artifact_id: str, payload: bytes) -> None:
        info = self.link.client.publish(Topics(self.prefix, "x").artifact_manifest(artifact_id), payload, qos=1, retain=True)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.server.stop()
        self.link.stop()


@pytest.fixture(scope="session")
def operator(broker: LocalBroker, keys: GeneratedKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(broker, tmp_path_factory.mktemp("operator") / "artifacts", keys)
    yield op
    op.close()


@pytest.fixture()
def make_operator(broker: LocalBroker, keys: GeneratedKeys, tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """make_operator(prefix, rate_limit_bps=0, on=broker, protocol="5", folder=None): an operator of the test's own
    (its own artifacts folder unless one is named), closed after it."""
    made: List[Operator] = []

    def make(prefix: str, rate_limit_bps: float = 0.0, on: Optional[LocalBroker] = None, protocol: str = "5",
             folder: str = "") -> Operator:
        op = Operator(on or broker, tmp_path / (folder or f"operator-{prefix}"), keys, prefix=prefix, protocol=protocol,
                      rate_limit_bps=rate_limit_bps)
        made.append(op)
        return op

    yield make
    for op in made:
        op.close()


@dataclasses.dataclass
class Device:
    puller: ArtifactPuller
    store: ArtifactStore
    link: MqttLink
    events: List[Dict[str, Any]]
    device_id: str

    def pull(self, manifest_or_id: Any, **kwargs: Any) -> Path:
        artifact_id = manifest_or_id.artifact_id if isinstance(manifest_or_id, ArtifactManifest) else manifest_or_id
        return self.puller.pull(artifact_id, **kwargs)

    def event_names(self) -> List[str]:
        return [e["event"] for e in self.events]


DeviceFactory = Callable[..., Device]


@pytest.fixture()
def make_device(broker: LocalBroker, keys: GeneratedKeys, tmp_path: Path) -> Iterator[DeviceFactory]:
    """make_device(**artifacts_config_overrides, broker=, protocol=, prefix=, min_free_mb=, store_root=, device_id=)"""
    links: List[MqttLink] = []

    def make(*, on: Optional[LocalBroker] = None, protocol: str = "5", prefix: str = PREFIX, min_free_mb: int = 0,
             store_root: Optional[Path] = None, device_id: str = "", manifest_timeout_s: float = 3.0, **overrides: Any) -> Device:
        device_id = device_id or f"dev-{os.getpid()}-{next(_device_ids)}"
        settings: Dict[str, Any] = {"public_keys": [keys.public_hex], "block_timeout_s": 1.0, "window": 8}
        settings.update(overrides)
        link = MqttLink(broker_config(on or broker, protocol), unique_client_id(device_id))
        links.append(link)
        link.start()
        assert link.wait_connected(10)
        store = ArtifactStore(store_root or tmp_path / f"store-{device_id}")
        events: List[Dict[str, Any]] = []
        puller = ArtifactPuller(link, Topics(prefix, device_id), store, ArtifactsConfig(**settings), events.append,
                                min_free_mb=min_free_mb, manifest_timeout_s=manifest_timeout_s)
        return Device(puller, store, link, events, device_id)

    yield make
    for link in links:
        link.stop()


class RogueServer:
    """Answers a device's block requests with frames made by `craft(manifest, index, data) -> frame bytes`."""

    def __init__(self, broker: LocalBroker, prefix: str, device_id: str, content: bytes, manifest: ArtifactManifest,
                 craft: Callable[[ArtifactManifest, int, bytes], bytes]) -> None:
        self.content = content
        self.manifest = manifest
        self.craft = craft
        self.topics = Topics(prefix, device_id)
        ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(self.topics.artifact_request, qos=1)
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10), "rogue server could not subscribe"

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        request = decode_request(msg.payload)
        for index in request.blocks:
            offset, length = self.manifest.block_range(index)
            frame = self.craft(self.manifest, index, self.content[offset : offset + length])
            client.publish(self.topics.artifact_data, frame, qos=0)

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes the network thread, which loop_stop then joins at once
        self.client.loop_stop()


def store_snapshot(store: ArtifactStore) -> Dict[str, str]:
    """Every stored file outside .partial (artifacts and their manifest copies) with its content hash."""
    out: Dict[str, str] = {}
    if not store.root.exists():
        return out
    for path in sorted(store.root.rglob("*")):
        rel = path.relative_to(store.root)
        if path.is_file() and rel.parts[0] != ".partial":
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def write_config(path: Path, broker: LocalBroker, *, device_id: str, state_dir: Path, public_key: str,
                 prefix: str = PREFIX, extra: str = "") -> Path:
    path.write_text(
        f'[device]\nid = "{device_id}"\n'
        f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\ntopic_prefix = "{prefix}"\nreconnect_max_s = 2.0\n'
        f'[state]\ndir = "{state_dir}"\nmin_free_mb = 0\n'
        f'[artifacts]\npublic_keys = [{json.dumps(public_key)}]\nblock_timeout_s = 1.0\n{extra}'
    )
    return path
