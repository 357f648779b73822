"""Fixtures of the daemon tests: an agent configuration on a real broker, an in-process Daemon, an
`edge-agent run` subprocess, and a collector of what the agent publishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from agent.config import AgentConfig, load_config
from agent.fleet.local_broker import LocalBroker
from tests.helpers import REPO_ROOT, Collector, json_of


def agent_env(broker: Any, state_dir: Path, device_id: str, **extra: str) -> Dict[str, str]:
    env = {
        "EDGE_AGENT_BROKER_HOST": broker.host,
        "EDGE_AGENT_BROKER_PORT": str(broker.port),
        "EDGE_AGENT_BROKER_RECONNECT_MIN_S": "1",
        "EDGE_AGENT_BROKER_RECONNECT_MAX_S": "1",
        "EDGE_AGENT_DEVICE_ID": device_id,
        "EDGE_AGENT_STATE_DIR": str(state_dir),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": "3600",
        "EDGE_AGENT_TELEMETRY_TEGRASTATS": "false",
        "EDGE_AGENT_TELEMETRY_NVML": "false",
        "EDGE_AGENT_ARTIFACTS_ALLOW_UNSIGNED": "true",
        "EDGE_AGENT_ARTIFACTS_BLOCK_TIMEOUT_S": "1",
    }
    env.update({f"EDGE_AGENT_{k.upper()}": v for k, v in extra.items()})
    return env


def make_config(broker: Any, state_dir: Path, device_id: str, **extra: str) -> AgentConfig:
    return load_config(None, env=agent_env(broker, state_dir, device_id, **extra))


class AgentProcess:
    """`edge-agent run` as a real subprocess (for kill -9 and SIGTERM tests)."""

    def __init__(self, env: Dict[str, str], log_path: Path) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        full.update(env)
        full["PYTHONPATH"] = str(REPO_ROOT)
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "--log-level", "INFO", "run"], env=full, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT)
            )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: List[AgentProcess] = []

    def spawn(env: Dict[str, str]) -> AgentProcess:
        agent = AgentProcess(env, tmp_path / f"agent-{len(started)}.log")
        started.append(agent)
        return agent

    yield spawn
    for agent in started:
        agent.close()


@pytest.fixture()
def collector_for() -> Iterator[Callable[..., Collector]]:
    made: List[Collector] = []

    def make(broker: LocalBroker, topics: List[str], protocol: str = "5") -> Collector:
        collector = Collector(broker.host, broker.port, topics, protocol=protocol)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def is_reply(job_id: str, state: Optional[str] = None) -> Callable[[Any], bool]:
    def check(msg: Any) -> bool:
        if not msg.topic.endswith("/reply"):
            return False
        data = json_of(msg)
        return bool(data.get("job_id") == job_id and (state is None or data.get("state") == state))

    return check


def is_status(predicate: Callable[[Dict[str, Any]], bool]) -> Callable[[Any], bool]:
    def check(msg: Any) -> bool:
        return bool(msg.topic.endswith("/status") and msg.payload and predicate(json_of(msg)))

    return check


@pytest.fixture(scope="module")
def tls_broker_readable(mosquitto_available: None) -> Iterator[Dict[str, Any]]:
    """A TLS-only mosquitto whose certificates sit where a broker started as root (which drops to the
    `mosquitto` user) can read them; the shared `tls_broker` fixture's pytest folder is mode 0700."""
    import shutil
    import tempfile

    from tests.conftest import make_test_pki

    folder = Path(tempfile.mkdtemp(prefix="edge-agent-pki-"))
    try:
        pki = make_test_pki(folder / "pki")
        for path in [folder, folder / "pki", *pki.values()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        with LocalBroker(tls_cert=str(pki["server.crt"]), tls_key=str(pki["server.key"]), tls_ca=str(pki["ca"])) as local:
            yield {"broker": local, **pki}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
