"""The fleet around an agent under test: the operator's side (artifact folder, `fleet serve`, `fleet deploy`)
built from the real agent.fleet classes, the agent itself in-process or as an `edge-agent run` process that
can be SIGKILLed, and a watcher of what the agent reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.config import BrokerConfig, load_config
from agent.fleet.artifact_protocol import ArtifactManifest, describe_file, sign_manifest
from agent.fleet.deployment import Deployment
from agent.fleet.link import MqttLink, unique_client_id
from agent.operator.artifact_server import ArtifactServer, add_to_folder, publish_manifest
from agent.operator.client import Operator
from tests.hardening.conftest import Probe
from tests.helpers import REPO_ROOT, wait_until

PREFIX = "edge"


def agent_env(broker: BrokerConfig, state_dir: Path, device_id: str, **extra: str) -> Dict[str, str]:
    """The environment of an agent on `broker`: fast reconnects, no telemetry noise, CPU backend."""
    env = {
        "EDGE_AGENT_BROKER_HOST": broker.host,
        "EDGE_AGENT_BROKER_PORT": str(broker.port),
        "EDGE_AGENT_BROKER_PROTOCOL": broker.protocol,
        "EDGE_AGENT_BROKER_RECONNECT_MIN_S": "1",
        "EDGE_AGENT_BROKER_RECONNECT_MAX_S": "1",
        "EDGE_AGENT_DEVICE_ID": device_id,
        "EDGE_AGENT_STATE_DIR": str(state_dir),
        "EDGE_AGENT_STATE_MIN_FREE_MB": "0",
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "3600",
        "EDGE_AGENT_TELEMETRY_TEGRASTATS": "false",
        "EDGE_AGENT_TELEMETRY_NVML": "false",
        "EDGE_AGENT_ENGINE_BACKEND": "onnxruntime",
        "EDGE_AGENT_ARTIFACTS_BLOCK_TIMEOUT_S": "1",
    }
    if broker.username:
        env["EDGE_AGENT_BROKER_USERNAME"] = broker.username
        env["EDGE_AGENT_BROKER_PASSWORD"] = broker.password
    if broker.tls:
        env["EDGE_AGENT_BROKER_TLS"] = "true"
        env["EDGE_AGENT_BROKER_CA_FILE"] = broker.ca_file
    env.update({f"EDGE_AGENT_{key.upper()}": value for key, value in extra.items()})
    return env


def start_daemon(env: Dict[str, str]) -> Any:
    from agent.daemon.daemon import Daemon

    return Daemon(load_config(None, env=env), env=env).start()


def cpu_deployment(deployment_id: str, model: ArtifactManifest, **fields: Any) -> Deployment:
    return Deployment(id=deployment_id, model=model.artifact_id, precision="fp32", target="cpu", postprocess={"type": "classification"}, **fields)


class OperatorSide:
    """`fleet publish` + `fleet serve` + `fleet deploy`/`cmd` over one broker connection each. Manifests are
    also published to every broker in `also_retain_on` (RabbitMQ 3.x keeps retained messages per node)."""

    def __init__(self, broker: BrokerConfig, folder: Path, *, signing_key: Any = None, also_retain_on: Optional[List[BrokerConfig]] = None,
                 rate_limit_bps: float = 0.0) -> None:
        self.broker = broker
        self.folder = folder
        self.signing_key = signing_key
        self.link = MqttLink(broker, unique_client_id("serve"), persistent_session=False, on_connected=self._republish)
        self.server = ArtifactServer(self.link, PREFIX, folder, rate_limit_bps=rate_limit_bps)
        self.link.start()
        if not self.link.wait_connected(15):
            raise RuntimeError(f"operator cannot reach the broker: {self.link.last_error}")
        self.server.start()
        self.retain_links = [self.link]
        for other in also_retain_on or []:
            link = MqttLink(other, unique_client_id("publish"), persistent_session=False)
            link.start()
            if not link.wait_connected(15):
                raise RuntimeError(f"operator cannot reach {other.host}:{other.port}: {link.last_error}")
            self.retain_links.append(link)
        self.operator = Operator(broker, PREFIX).connect()

    def _republish(self) -> None:
        # `fleet serve` republishes its manifests on every connect (a broker restarted without persistence)
        if getattr(self, "server", None) is not None and self.link.connected.is_set():
            self.server.republish_manifests()

    def publish(self, path: Path, kind: str, name: Optional[str] = None, chunk: int = 4096) -> ArtifactManifest:
        manifest = describe_file(path, kind, name or path.name, chunk)
        if self.signing_key is not None:
            manifest = sign_manifest(manifest, self.signing_key)
        add_to_folder(self.folder, path, manifest)
        for link in self.retain_links:
            publish_manifest(link, PREFIX, manifest)
        return manifest

    def deploy(self, device: str, deployment: Optional[Deployment]) -> None:
        self.operator.deploy(deployment, device=device)

    def close(self) -> None:
        self.operator.close()
        self.server.stop()
        for link in self.retain_links:
            link.stop()


class Watch:
    """Everything the fleet's devices report (status, replies, events), as an operator sees it."""

    def __init__(self, port: int, **probe: Any) -> None:
        self.probe = Probe(port, tls=probe.pop("tls", False), client_id=probe.pop("client_id", unique_client_id("watch")), **probe).connect()
        if not self.probe.accepted:
            raise RuntimeError(f"watch cannot connect: {self.probe.connack} {self.probe.connect_error}")
        for channel in ("status", "reply", "events"):
            self.probe.subscribe(f"{PREFIX}/+/{channel}")

    def documents(self, device: str, channel: str) -> List[Dict[str, Any]]:
        out = []
        for msg in list(self.probe.messages):
            if msg.topic == f"{PREFIX}/{device}/{channel}" and msg.payload:
                try:
                    out.append(json.loads(msg.payload))
                except ValueError:
                    continue
        return out

    def status(self, device: str) -> Dict[str, Any]:
        documents = self.documents(device, "status")
        return documents[-1] if documents else {}

    def wait(self, what: Callable[[], Any], timeout: float, describe: Callable[[], str]) -> Any:
        return wait_until(what, timeout, describe)

    def wait_status(self, device: str, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 30.0) -> Dict[str, Any]:
        def latest() -> Optional[Dict[str, Any]]:
            document = self.status(device)
            return document if document and predicate(document) else None

        return self.wait(latest, timeout, lambda: f"{device} status is {json.dumps(self.status(device))[:600]}")  # type: ignore[no-any-return]

    def wait_serving(self, device: str, deployment_id: str, timeout: float = 30.0) -> Dict[str, Any]:
        def serving_or_failed(status: Dict[str, Any]) -> bool:
            error = status.get("last_error") or {}
            if status.get("state") == "degraded" and error.get("deployment_id") == deployment_id and not status.get("applying"):
                raise AssertionError(f"{device} failed to apply {deployment_id}: {error}")
            return status.get("state") == "serving" and serving_id(status) == deployment_id

        return self.wait_status(device, serving_or_failed, timeout)

    def wait_reply(self, device: str, job_id: str, state: str, timeout: float = 30.0) -> Dict[str, Any]:
        def found() -> Optional[Dict[str, Any]]:
            for reply in self.documents(device, "reply"):
                if reply.get("job_id") == job_id and reply.get("state") == state:
                    return reply
            return None

        return self.wait(found, timeout, lambda: f"replies of {device}: {self.documents(device, 'reply')[-4:]}")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.probe.close()


def serving_id(status: Dict[str, Any]) -> Optional[str]:
    return (status.get("serving") or {}).get("deployment_id")


class SigningKeys:
    """An ed25519 key pair made by agent.fleet.signing: the operator signs, agents trust `public_path`."""

    def __init__(self, folder: Path) -> None:
        from agent.fleet.signing import generate_keys, load_private_key

        generated = generate_keys(folder)
        self.public_path = str(generated.public_path)
        self.private_path = generated.private_path
        self.private_key = load_private_key(generated.private_path)
        self.key_id = generated.key_id


class AgentProcess:
    """`edge-agent run` as a child process, for SIGKILL. Its log is kept for the secrets check."""

    def __init__(self, env: Dict[str, str], log_path: Path, level: str = "INFO") -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        full.update(env)
        full["PYTHONPATH"] = str(REPO_ROOT)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - the child writes to it until close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--log-level", level, "run"], env=full, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT)
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"the agent did not log {text!r} within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
