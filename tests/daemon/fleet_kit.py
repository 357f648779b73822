"""The operator's side for the daemon tests: signing keys, an artifacts folder served by a real ArtifactServer,
and the artifacts of a deployment (a model, its calibration table computed on the CPU, a validation set)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from agent.config import BrokerConfig
from agent.fleet.artifact_protocol import describe_file, sign_manifest
from agent.fleet.deployment import Deployment, deployment_from_dict
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.fleet.signing import generate_keys, load_private_key
from agent.operator.artifact_server import ArtifactServer, add_to_folder, publish_manifest
from agent.operator.client import Operator

TINY_PREPROCESS: Dict[str, Any] = {"size": [16, 16], "resize": "stretch", "color": "rgb", "scale": 1 / 127.5, "offset": -1.0}


class FleetKit:
    """`kit.publish(path, "model")` -> artifact id; `kit.deploy("dev", id=..., model=...)`; `kit.close()`."""

    def __init__(self, broker: LocalBroker, root: Path, *, rate_limit_bps: float = 0.0, chunk_bytes: int = 16 * 1024) -> None:
        self.broker = broker
        self.root = root
        self.keys = generate_keys(root / "keys")
        self.private_key = load_private_key(self.keys.private_path)
        self.folder = root / "artifacts"
        self.chunk_bytes = chunk_bytes
        self.broker_config = BrokerConfig(host=broker.host, port=broker.port)
        self.link = MqttLink(self.broker_config, unique_client_id("kit"), persistent_session=False)
        self.link.start()
        if not self.link.wait_connected(10):
            raise RuntimeError("the test operator cannot reach the broker")
        self.server = ArtifactServer(self.link, "edge", self.folder, rate_limit_bps=rate_limit_bps)
        self.server.start()
        self.operator = Operator(self.broker_config, "edge").connect()

    @property
    def public_key(self) -> str:
        return str(self.keys.public_path)

    def publish(self, path: Path, kind: str, name: Optional[str] = None) -> str:
        manifest = sign_manifest(describe_file(path, kind, name or path.name, self.chunk_bytes), self.private_key)
        add_to_folder(self.folder, path, manifest)
        publish_manifest(self.link, "edge", manifest)
        return manifest.artifact_id

    def deploy(self, device: Optional[str] = None, group: Optional[str] = None, **fields: Any) -> Deployment:
        deployment = deployment_from_dict(fields)
        self.operator.deploy(deployment, device=device, group=group)
        return deployment

    def close(self) -> None:
        self.operator.close()
        self.server.stop()
        self.link.stop()


@dataclass
class TinyArtifacts:
    model: Path
    table: Path
    bad_table: Path
    shrunk_table: Path  # every scale divided by 100: passes the table check, must fail the accuracy gate
    validation: Path
    other_model: Path  # a second model (another deployment)
    other_validation: Path


def make_tiny_artifacts(folder: Path) -> TinyArtifacts:
    """A real tiny classifier, its TensorRT-format table computed with onnxruntime on drawn frames, a corrupt
    table (every scale zero), and validation sets made on the CPU: everything an INT8 deployment needs."""
    from agent.calib.make import make_table
    from agent.calib.table import new_table, write_table_file
    from agent.gate.validation import make_validation
    from agent.vision.preprocess import prepare, spec_from
    from tests.helpers import drawn_frames, tiny_classifier_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_classifier_onnx(folder / "tiny.onnx", num_classes=6, size=16, seed=0)
    other = tiny_classifier_onnx(folder / "tiny-b.onnx", num_classes=6, size=16, seed=7)
    frames = drawn_frames(12, 64, 48)
    spec = spec_from(TINY_PREPROCESS)
    tensors: List[np.ndarray] = [prepare(frame, spec)[0] for frame in frames]
    table = make_table(model, iter(tensors), method="minmax")
    table_path = folder / "tiny.cache"
    write_table_file(table_path, table)
    bad_path = folder / "tiny-zero.cache"
    write_table_file(bad_path, new_table({name: 0.0 for name in table.entries}))
    shrunk_path = folder / "tiny-shrunk.cache"
    write_table_file(shrunk_path, new_table({name: scale / 100.0 for name, scale in table.entries.items()}))
    validation = folder / "tiny.validation.npz"
    make_validation(model, iter(frames), n=len(frames), preprocess=TINY_PREPROCESS).save(validation)
    other_validation = folder / "tiny-b.validation.npz"
    make_validation(other, iter(frames), n=len(frames), preprocess=TINY_PREPROCESS).save(other_validation)
    return TinyArtifacts(model, table_path, bad_path, shrunk_path, validation, other, other_validation)



def wide_classifier_onnx(path: Path) -> Path:
    """A real classifier of about 1 MB (32000 classes), for transfers long enough to be interrupted."""
    from tests.helpers import tiny_classifier_onnx

    return tiny_classifier_onnx(path, num_classes=32000, size=16, seed=3)
