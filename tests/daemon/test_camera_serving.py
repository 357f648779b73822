"""The real classifier (EfficientNet-Lite0 and its INT8 table, tests/helpers.testdata) deployed to an agent
with a camera: it serves, publishes results, answers snapshot, telemetry and restart-pipeline, keeps the
watchdog fed while frames flow, and shows up in `fleet watch`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

from agent.daemon.daemon import Daemon
from agent.fleet.local_broker import LocalBroker
from deploy.demo.material import OBJECTS_VIDEO
from tests.daemon.conftest import make_config
from tests.daemon.fleet_kit import FleetKit
from tests.helpers import EFFNET_TABLE, Collector, json_of, wait_until
from tests.helpers import testdata as data_file


def classifier_artifacts(folder: Path) -> Dict[str, Any]:
    """Paths and settings of the classifier to deploy: EfficientNet-Lite0 with its shipped table, labels, a
    validation set from eight photos, and the objects video as the camera (tests/helpers.testdata)."""
    import cv2

    from agent.gate.validation import make_validation

    model = data_file("models", "efficientnet_lite0.onnx")
    images = sorted(data_file("images").glob("*.*"))[:8]
    frames = [cv2.imread(str(p)) for p in images]
    validation = folder / "effnet.validation.npz"
    make_validation(model, iter(frames), n=len(frames), preprocess="efficientnet_lite").save(validation)
    return {
        "name": "effnet-lite0",
        "model": model,
        "table": EFFNET_TABLE,
        "validation": validation,
        "labels": data_file("models", "imagenet_labels.txt"),
        "preprocess": "efficientnet_lite",
        "camera": str(data_file("video", OBJECTS_VIDEO.name)),
        "accuracy": {"top1_agreement": 0.75, "top5_containment": 0.9},
    }


@pytest.fixture()
def served(broker: LocalBroker, tmp_path: Path) -> Iterator[Dict[str, Any]]:
    chosen = classifier_artifacts(tmp_path)
    kit = FleetKit(broker, tmp_path / "fleet", chunk_bytes=1024 * 1024)
    daemon = None
    try:
        ids = {
            "model": kit.publish(chosen["model"], "model"),
            "table": kit.publish(chosen["table"], "calib"),
            "validation": kit.publish(chosen["validation"], "validation"),
        }
        ids["labels"] = kit.publish(chosen["labels"], "labels")
        config = make_config(broker, tmp_path / "state", "cam-1", artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false", engine_threads="1")
        daemon = Daemon(config).start()
        kit.deploy(
            "cam-1",
            id=chosen["name"],
            precision="int8",
            target="cpu",
            preprocess=chosen["preprocess"],
            postprocess={"type": "classification", "top_k": 3},
            cameras=[chosen["camera"]],
            camera_options={"realtime": True, "fps": 8, "loop": True},
            accuracy=chosen["accuracy"],
            telemetry_interval_s=30,
            **ids,
        )
        yield {"daemon": daemon, "kit": kit, "chosen": chosen}
    finally:
        if daemon is not None:
            daemon.stop()
        kit.close()


def test_classifier_serves_a_camera_and_answers_the_fleet(broker: LocalBroker, served: Dict[str, Any], collector_for: Callable[..., Collector]) -> None:
    daemon: Daemon = served["daemon"]
    kit: FleetKit = served["kit"]
    live = collector_for(broker, ["edge/cam-1/results", "edge/cam-1/snapshot", "edge/cam-1/telemetry"])
    wait_until(lambda: daemon.serving.deployment is not None and daemon.serving.pipeline is not None, 60)
    status = daemon.status_document()
    assert status["serving"]["gate"]["passed"] is True and status["serving"]["cameras"] == 1

    result = json_of(live.wait_for(lambda m: m.topic.endswith("/results"), timeout=20))
    assert result["deployment_id"] == served["chosen"]["name"] and len(result["classes"]) == 3
    assert not result["classes"][0]["label"].isdigit()  # names from the labels artifact
    assert daemon.healthy()  # frames flow: the watchdog is fed

    snap = kit.operator.command("cam-1", "snapshot", wait=True, wait_s=20)
    assert snap[-1].state.value == "SUCCEEDED", snap[-1].detail
    image = live.wait_for(lambda m: m.topic.endswith("/snapshot"), timeout=10)
    assert image.payload[:2] == b"\xff\xd8" and snap[-1].result["bytes"] == len(image.payload)

    tele = kit.operator.command("cam-1", "telemetry", wait=True, wait_s=20)
    assert tele[-1].state.value == "SUCCEEDED", tele[-1].detail
    document = json_of(live.wait_for(lambda m: m.topic.endswith("/telemetry"), timeout=10))
    assert document["engine"]["backend"] == "onnxruntime" and document["pipeline"]["frames"] > 0
    from agent.telemetry.document import validate_document

    assert validate_document(document) == []

    restarted = kit.operator.command("cam-1", "restart-pipeline", wait=True, wait_s=20)
    assert restarted[-1].state.value == "SUCCEEDED", restarted[-1].detail
    live.wait_for(lambda m: m.topic.endswith("/results"), timeout=20)

    rows = next(iter(kit.operator.watch(interval_s=0.3, duration_s=0.3, device="cam-1")))
    assert rows and rows[0].state == "serving" and rows[0].engine.startswith(served["chosen"]["name"])
