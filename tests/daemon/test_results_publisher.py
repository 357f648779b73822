"""The daemon's results publisher on a real broker: QoS 0, rate-limited or on change (the vision throttle), with
frame id, timestamp and latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import BrokerConfig
from agent.daemon.results_publisher import ResultsPublisher, publish_snapshot
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.topics import Topics
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.vision.capture import Capture
from agent.vision.options import ResultsConfig
from agent.vision.pipeline import Pipeline
from agent.vision.results import ResultThrottle
from agent.vision.sources import SourceOptions
from tests.helpers import Collector, json_of, tiny_classifier_onnx
from tests.vision.conftest import TINY_PREPROCESS, write_video

pytest.importorskip("cv2")


@pytest.fixture()
def tiny_onnx(tmp_path: Path) -> Path:
    return tiny_classifier_onnx(tmp_path / "tiny.onnx")


@pytest.fixture()
def short_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "short.avi")


def test_rate_limit_per_source() -> None:
    throttle = ResultThrottle(ResultsConfig(min_interval_s=1.0))
    assert throttle.admit("a", ("x",), 10.0) == (True, "")
    assert throttle.admit("a", ("x",), 10.5) == (False, "rate")
    assert throttle.admit("b", ("x",), 10.5) == (True, "")
    assert throttle.admit("a", ("y",), 11.0) == (True, "")


def test_on_change_with_a_heartbeat() -> None:
    throttle = ResultThrottle(ResultsConfig(on_change=True, heartbeat_s=5.0))
    assert throttle.admit("a", ("cat",), 0.0)[0]
    assert throttle.admit("a", ("cat",), 1.0) == (False, "unchanged")
    assert throttle.admit("a", ("dog",), 2.0)[0]
    assert throttle.admit("a", ("dog",), 6.0) == (False, "unchanged")
    assert throttle.admit("a", ("dog",), 7.5)[0]  # heartbeat: 5 s since the last one went out


def test_results_config_errors() -> None:
    from agent.errors import ConfigError
    from agent.models import parse

    with pytest.raises(ConfigError, match=r"results\.every: unknown key"):
        parse(ResultsConfig, {"every": 3}, root="results")
    with pytest.raises(ConfigError, match=r"results\.min_interval_s: expected float >= 0"):
        parse(ResultsConfig, {"min_interval_s": -1}, root="results")


def test_results_arrive_on_a_real_broker(broker: Any, tiny_onnx: Path, short_video: Path) -> None:
    topics = Topics("edge", "cam-results-test")
    collector = Collector(broker.host, broker.port, [topics.results, topics.snapshot])
    link = MqttLink(BrokerConfig(host=broker.host, port=broker.port), unique_client_id("results-test"))
    runner = OnnxRuntimeRunner(tiny_onnx, threads=1)
    link.start()
    try:
        assert link.wait_connected(10)
        publisher = ResultsPublisher(link, topics, ResultsConfig(max_classes=2))
        capture = Capture(f"file://{short_video}", SourceOptions(loop=False), stop_at_end=True, depth=4)
        pipeline = Pipeline(capture, runner, TINY_PREPROCESS, {"type": "classification", "top_k": 3}, publisher, batch=2)
        try:
            pipeline.start()
            assert pipeline.wait_finished(30)
            jpeg = pipeline.snapshot()
        finally:
            pipeline.stop()
        message = json_of(collector.wait_for(lambda m: m.topic == topics.results and json_of(m)["frame"] == 23))
        assert message["kind"] == "result" and message["schema"] == 1
        assert message["ts"] > 0 and message["captured"] > 0 and message["latency_ms"] >= message["infer_ms"] >= 0
        assert len(message["classes"]) == 2 and {"label", "index", "score"} <= set(message["classes"][0])
        assert message["detections"] == [] and message["size"] == [64, 48]
        assert publisher.counters()["published"] == 24
        assert jpeg is not None and publish_snapshot(link, topics, jpeg)
        snapshot = collector.wait_for(lambda m: m.topic == topics.snapshot)
        assert snapshot.payload == jpeg
    finally:
        link.stop()
        collector.close()
        runner.deactivate()


def test_results_are_not_kept_while_the_broker_is_away(tiny_onnx: Path) -> None:
    from agent.fleet.local_broker import free_port

    link = MqttLink(BrokerConfig(host="127.0.0.1", port=free_port()), unique_client_id("results-offline"))
    publisher = ResultsPublisher(link, Topics("edge", "offline"))
    from agent.vision.pipeline import FrameResult
    from agent.vision.postprocess.base import Findings

    result = FrameResult("cam", 1, 0.0, 1.0, 0.5, 1, 64, 48, "tiny", Findings())
    assert publisher(result) is False
    assert publisher.counters()["not_sent"] == 1 and len(link.outbox) == 0
