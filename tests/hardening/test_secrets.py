"""Secrets never leave the machine that holds them: the broker password, the TLS client key and the fleet's
signing key appear in no log (DEBUG included), no file the agent writes, nothing it publishes (status,
telemetry, events, replies, the diagnostics report) and no CLI output."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from agent.config import BrokerConfig
from tests.hardening.conftest import Probe, ShippedBroker
from tests.hardening.harness import AgentProcess, OperatorSide, SigningKeys, Watch, agent_env, cpu_deployment
from tests.helpers import REPO_ROOT, tiny_classifier_onnx

DEVICE = "dev2"


def pem_body(path: Path) -> List[str]:
    """The base64 lines of a PEM file and the raw key they hold, in the spellings a leak could take."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]
    body = "".join(lines)
    raw = base64.b64decode(body)
    return [body, *[line for line in lines if len(line) >= 16], raw.hex(), raw[-32:].hex()]


def cli(env: Dict[str, str], *args: str) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    full.update(env)
    full["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-m", "agent", "--log-level", "DEBUG", *args], env=full, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_secrets_never_appear_in_logs_files_messages_or_cli_output(
    secure_broker: ShippedBroker, signing_keys: SigningKeys, tmp_path: Path, probes: List[Probe]
) -> None:
    creds = secure_broker.credentials
    password = creds.passwords[DEVICE]
    secrets = {"broker password": [password], "signing key": pem_body(signing_keys.private_path),
               "TLS client key": pem_body(creds.folder / f"{DEVICE}.key")}
    operator_config = BrokerConfig(host="127.0.0.1", port=secure_broker.operator_port, tls=True, ca_file=creds.ca,
                                   cert_file=creds.cert("operator")[0], key_file=creds.cert("operator")[1])
    fleet = OperatorSide(operator_config, tmp_path / "fleet", signing_key=signing_keys.private_key)
    watch = Watch(secure_broker.operator_port, tls=True, ca=creds.ca, cert=creds.cert("operator"))
    watch.probe.subscribe(f"edge/{DEVICE}/#")
    state = tmp_path / "state"
    device_broker = BrokerConfig(host="127.0.0.1", port=secure_broker.port, tls=True, ca_file=creds.ca, username=DEVICE, password=password)
    env = agent_env(device_broker, state, DEVICE, artifacts_public_keys=signing_keys.public_path, telemetry_interval_s="1",
                    broker_cert_file=creds.cert(DEVICE)[0], broker_key_file=creds.cert(DEVICE)[1])
    agent = AgentProcess(env, tmp_path / "agent.log", level="DEBUG")
    outputs: Dict[str, str] = {}
    try:
        model = fleet.publish(tiny_classifier_onnx(tmp_path / "tiny.onnx"), "model")
        fleet.deploy(DEVICE, cpu_deployment("secrets-1", model))
        watch.wait_serving(DEVICE, "secrets-1", timeout=60)
        for command in ("diagnostics", "status", "telemetry", "ping"):
            fleet.operator.command(DEVICE, command, wait=False, command_id=f"secrets-{command}")
        for command in ("diagnostics", "status", "telemetry", "ping"):
            watch.wait_reply(DEVICE, f"secrets-{command}", "SUCCEEDED", timeout=60)
        watch.wait(lambda: any(m.topic.endswith("/telemetry") for m in watch.probe.messages), 10, lambda: "no telemetry")
        outputs["edge-agent status"] = cli(env, "status", "--json")
        outputs["edge-agent doctor"] = cli(env, "doctor", "--json", "--no-cameras")
        outputs["edge-agent fleet publish"] = cli(
            env, "fleet", "publish", str(tmp_path / "tiny.onnx"), "--kind", "model", "--key", str(signing_keys.private_path),
            "--offline", "--artifacts", str(tmp_path / "cli-fleet"),
        )
    finally:
        assert agent.terminate() == 0
        agent.close()
        fleet.close()
        watch.probe.publish(f"edge/{DEVICE}/status", b"", retain=True)
        watch.close()
    outputs["agent log (DEBUG)"] = agent.log()
    for path in sorted(p for p in state.rglob("*") if p.is_file() and p.stat().st_size < 2_000_000):
        if path.suffix in (".json", ".jsonl", ".log", ".txt", "") or "status" in path.name:
            outputs[f"file {path.relative_to(state)}"] = path.read_text(errors="replace")
    for msg in watch.probe.messages:
        key = f"message {msg.topic}"
        outputs[key] = outputs.get(key, "") + bytes(msg.payload).decode("utf-8", "replace")
    assert any(k.endswith("/telemetry") for k in outputs) and any(k.endswith("/reply") for k in outputs)
    assert "secrets-1" in outputs["agent log (DEBUG)"] and " DEBUG " in outputs["agent log (DEBUG)"], "not the agent's DEBUG log"
    assert any(k.startswith("file ") for k in outputs), "the agent wrote no files to check"
    leaks = [f"{what} in {where}" for where, text in outputs.items() for what, needles in secrets.items() if any(n in text for n in needles)]
    assert not leaks, f"secrets leaked: {leaks}"
    # the redaction is visible where the configuration is shown, so the check above is not vacuous
    assert password not in outputs["edge-agent doctor"] and "dev2" in outputs["edge-agent doctor"]


def test_config_repr_and_redacted_view_hide_the_password() -> None:
    from agent.config import load_config

    config = load_config(None, env={"EDGE_AGENT_DEVICE_ID": "d", "EDGE_AGENT_BROKER_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(config)
    assert "hunter2-secret" not in repr(config.broker)
    assert "hunter2-secret" not in str(config.redacted())
