"""What serves: the hot swap between two engines under a running camera, and the watchdog's view of cameras
(frames flowing, a dead camera that keeps reconnecting, a camera that is stuck)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List

import pytest

from agent.config import BrokerConfig, load_config
from agent.daemon.pipeline_steps import camera_pipeline_factory
from agent.daemon.serving import Serving
from agent.daemon.steps import EngineInfo, Loaded, warm_up
from agent.fleet.deployment import Deployment, deployment_from_dict
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.local_broker import LocalBroker
from agent.fleet.topics import Topics
from agent.runtime.factory import open_runner
from tests.daemon.fleet_kit import TINY_PREPROCESS
from tests.helpers import Collector, drawn_frames, tiny_classifier_onnx, wait_until


@pytest.fixture()
def serving(tmp_path: Path, broker: LocalBroker) -> Iterator[Serving]:
    """Serving with the daemon's own camera pipeline factory, its results published to a real broker."""
    results: List[Any] = []
    config = load_config(None, env={"EDGE_AGENT_STATE_DIR": str(tmp_path / "state"), "EDGE_AGENT_DEVICE_ID": "serve-1"})
    topics = Topics(config.broker.topic_prefix, "serve-1")
    collector = Collector(broker.host, broker.port, [topics.results])
    collector.client.on_message = lambda _c, _u, msg: results.append(msg)
    link = MqttLink(BrokerConfig(host=broker.host, port=broker.port), unique_client_id("serving-test"))
    link.start()
    assert link.wait_connected(10)
    made = Serving(camera_pipeline_factory(config, link, topics))
    made.results = results  # type: ignore[attr-defined]
    yield made
    made.stop()
    link.stop()
    collector.close()


def loaded(path: Path) -> Loaded:
    runner = open_runner("onnxruntime", path, threads=1)
    runner.activate()
    return Loaded(runner, EngineInfo(path=str(path), backend="onnxruntime"), warmup_ms=warm_up(runner))


def camera_deployment(tmp_path: Path, camera: str, name: str = "cam-v1", **extra: Any) -> Deployment:
    return deployment_from_dict(
        {"id": name, "model": "a" * 64, "precision": "fp32", "target": "cpu", "cameras": [camera], "preprocess": TINY_PREPROCESS,
         "postprocess": "classification", "camera_options": {"realtime": True, "fps": 20, "loop": True, "open_timeout_s": 1, "read_timeout_s": 1}, **extra}
    )


def image_folder(tmp_path: Path) -> str:
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir(exist_ok=True)
    for index, frame in enumerate(drawn_frames(4, 64, 48)):
        cv2.imwrite(str(folder / f"{index}.png"), frame)
    return f"images://{folder}"


def test_engine_swap_keeps_the_cameras_running(serving: Serving, tmp_path: Path) -> None:
    first = loaded(tiny_classifier_onnx(tmp_path / "a.onnx", num_classes=6, size=16, seed=0))
    second = loaded(tiny_classifier_onnx(tmp_path / "b.onnx", num_classes=6, size=16, seed=5))
    camera = image_folder(tmp_path)
    serving.swap(camera_deployment(tmp_path, camera), first)
    pipeline = serving.pipeline
    wait_until(lambda: len(serving.results) > 3, 10)  # type: ignore[attr-defined]
    assert serving.frames_flowing(5.0)
    serving.swap(camera_deployment(tmp_path, camera, name="cam-v2"), second)  # only the engine changed
    assert serving.pipeline is pipeline and pipeline.runner is second.runner  # hot swap: same pipeline
    assert not first.runner.is_active  # the old engine freed after the new one serves
    count = len(serving.results)  # type: ignore[attr-defined]
    wait_until(lambda: len(serving.results) > count + 3, 10)  # type: ignore[attr-defined]
    serving.swap(camera_deployment(tmp_path, camera, name="cam-v3", batch=2), loaded(tmp_path / "a.onnx"))
    assert serving.pipeline is not pipeline and not pipeline.running  # new inputs: a new pipeline


def test_a_dead_camera_that_keeps_reconnecting_is_not_a_hang(serving: Serving, tmp_path: Path) -> None:
    runner = loaded(tiny_classifier_onnx(tmp_path / "a.onnx", num_classes=6, size=16))
    serving.swap(camera_deployment(tmp_path, str(tmp_path / "no-such-camera.avi")), runner)
    wait_until(lambda: (serving.metrics() or {}).get("open_failures", 0) >= 1, 10)
    assert serving.frames_flowing(5.0)  # reconnecting: restarting the agent would not help
    wait_until(lambda: not serving.frames_flowing(5.0, progress_s=0.05), 5)  # no progress for longer than allowed: stuck
    serving.stop()
    assert serving.frames_flowing(5.0)  # nothing configured any more
