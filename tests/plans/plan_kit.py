"""Simulated devices and a class builder on a real broker, for the shared-plan tests: each device is the deployment
steps the daemon runs (agent.daemon.pipeline_steps.PackageSteps: fetch, check_table, build, validate) with its own
state folder, MQTT connection and, where a test says so, a fingerprint read from a Jetson sysroot."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from agent.config import AgentConfig
from agent.daemon.pipeline_steps import PackageSteps
from agent.daemon.steps import EngineInfo
from agent.device.fingerprint import DeviceFingerprint, fingerprint
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.topics import Topics
from tests.daemon.conftest import make_config

ORIN_COMPATIBLE = b"nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0"
ORIN_NX_COMPATIBLE = b"nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0"


def jetson_sysroot(root: Path, *, l4t: Tuple[int, int, int] = (36, 4, 3), compatible: bytes = ORIN_COMPATIBLE,
                   model: str = "NVIDIA Jetson AGX Orin Developer Kit", tensorrt: Optional[str] = None) -> Path:
    """The files the fingerprint reads on a Jetson (the layout tests/device/samples.py lays out from real captures)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    major, minor, patch = l4t
    (root / "etc/nv_tegra_release").write_text(
        f"# R{major} (release), REVISION: {minor}.{patch}, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    )
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    (root / "proc/device-tree/compatible").write_bytes(compatible)
    if tensorrt is not None:  # the header JetPack installs with TensorRT
        header = root / "usr/include/aarch64-linux-gnu/NvInferVersion.h"
        header.parent.mkdir(parents=True, exist_ok=True)
        names = ("MAJOR", "MINOR", "PATCH", "BUILD")
        header.write_text("".join(f"#define NV_TENSORRT_{n} {v}\n" for n, v in zip(names, tensorrt.split("."))))
    return root


def sysroot_fingerprint(root: Path) -> DeviceFingerprint:
    """A Jetson's fingerprint from its files, with this machine's onnxruntime and CPU features: the CPU backend
    runs here for real, the Jetson fields come from the sysroot."""
    live = fingerprint()
    return dataclasses.replace(fingerprint(root), onnxruntime=live.onnxruntime, cpu_features=list(live.cpu_features))


def device_config(broker: Any, state: Path, device_id: str, *, operator_pub: str, builder_pub: str = "", prefix: str = "edge",
                  **extra: str) -> AgentConfig:
    settings = {
        "artifacts_allow_unsigned": "false",
        "artifacts_public_keys": operator_pub,
        "engine_backend": "onnxruntime",
        "broker_topic_prefix": prefix,
    }
    if builder_pub:
        settings["artifacts_key_kinds"] = f"{builder_pub}=engine"
    settings.update(extra)
    return make_config(broker, state, device_id, **settings)


class SimDevice:
    def __init__(self, config: AgentConfig, fp: Optional[DeviceFingerprint] = None) -> None:
        self.config = config
        self.id = config.device.id
        self.events: List[Dict[str, Any]] = []
        self.timings: Dict[str, float] = {}  # seconds of each step of the last apply
        self.link = MqttLink(config.broker, unique_client_id(self.id), persistent_session=False)
        self.link.start()
        if not self.link.wait_connected(10):
            raise RuntimeError(f"{self.id} cannot reach the broker")
        self.steps = PackageSteps(config, self.link, Topics(config.broker.topic_prefix, self.id), config.state_dir, self.events.append)
        if fp is not None:
            self.steps._fingerprint = fp

    def apply(self, deployment: Any) -> Tuple[EngineInfo, Dict[str, Any]]:
        """fetch -> check_table -> build -> validate, as the reconcile loop runs them; (engine, gate)."""
        cancel = threading.Event()
        marks = [time.monotonic()]
        artifacts = self.steps.fetch(deployment, cancel)
        marks.append(time.monotonic())
        self.steps.check_table(deployment, artifacts)
        marks.append(time.monotonic())
        engine = self.steps.build(deployment, artifacts, cold=False, cancel=cancel, beat=lambda: None)
        marks.append(time.monotonic())
        loaded = self.steps.validate(deployment, artifacts, engine)
        marks.append(time.monotonic())
        loaded.close()
        self.timings = {name: round(b - a, 3) for name, a, b in zip(("fetch_s", "check_s", "build_s", "validate_s"), marks, marks[1:])}
        return engine, loaded.gate

    def named(self, event: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def close(self) -> None:
        self.steps.cancel()
        self.link.stop()
