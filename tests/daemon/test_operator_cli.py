"""`edge-agent fleet deploy | cmd | status | watch` (agent/cli/operator_cmd.py) against a running agent."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.cli.operator_cmd import register_operator
from agent.daemon.daemon import Daemon
from agent.errors import UsageError
from agent.fleet.local_broker import LocalBroker
from agent.store.hashing import sha256_file
from tests.daemon.conftest import make_config
from tests.helpers import tiny_classifier_onnx, wait_until


def fleet(argv: List[str]) -> int:
    """The `fleet` sub-command as `edge-agent fleet` runs it (its parser gets these actions from register_operator)."""
    parser = argparse.ArgumentParser(prog="edge-agent fleet")
    parser.add_argument("--config", default=None)
    register_operator(parser.add_subparsers(dest="action"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture()
def agent(broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    for name in ("BROKER_HOST", "BROKER_PORT"):
        monkeypatch.setenv(f"EDGE_AGENT_{name}", broker.host if name.endswith("HOST") else str(broker.port))
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path / "operator"))
    daemon = Daemon(make_config(broker, tmp_path / "state", "cli-1")).start()
    assert daemon.link.wait_connected(10)
    yield daemon
    daemon.stop()


def test_deploy_validates_before_publishing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_classifier_onnx(tmp_path / "tiny.onnx")
    assert fleet(["deploy", "cli-1", "--model", str(model), "--precision", "fp32", "--target", "cpu", "--accuracy", "top1_agreement=0.9", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["deployment"]["model"] == sha256_file(model)  # a file path becomes its artifact id
    assert printed["deployment"]["accuracy"] == {"top1_agreement": 0.9} and printed["deployment"]["id"].startswith(sha256_file(model)[:8])
    with pytest.raises(UsageError, match=r"deployment\.table: an INT8 deployment needs a calibration table"):
        fleet(["deploy", "cli-1", "--model", "a" * 64, "--precision", "int8", "--dry-run"])
    with pytest.raises(UsageError, match="DEVICE or --group"):
        fleet(["deploy", "--model", "a" * 64, "--dry-run"])


def test_deploy_cmd_status_and_watch_against_a_running_agent(agent: Daemon, capsys: pytest.CaptureFixture) -> None:
    assert fleet(["deploy", "cli-1", "--id", "never-there", "--model", "b" * 64, "--precision", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["topic"] == "edge/cli-1/desired"
    wait_until(lambda: agent.reconciler.desired_view().get("deployment_id") == "never-there", 10)

    assert fleet(["cmd", "cli-1", "ping", "--wait", "--json"]) == 0
    replies = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in replies] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]

    level = logging.getLogger().level
    try:
        assert fleet(["cmd", "cli-1", "set-log-level", "--arg", "level=debug", "--wait"]) == 0
        assert "SUCCEEDED" in capsys.readouterr().out and logging.getLogger().level == logging.DEBUG
    finally:
        logging.getLogger().setLevel(level)

    assert fleet(["cmd", "cli-1", "diagnostics", "--wait", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[-1]["result"]
    assert {c["name"] for c in result["checks"]} >= {"python", "state folder", "agent"}

    assert fleet(["cmd", "cli-1", "snapshot", "--wait"]) == 1  # no camera: FAILED, exit 1, with the reason
    assert "no camera pipeline is running" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"args\.colder: unknown key \(known: cold\)"):
        fleet(["cmd", "cli-1", "rebuild", "--arg", "colder=1"])

    assert fleet(["status", "cli-1", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["device"] == "cli-1" and status["desired"]["deployment_id"] == "never-there"
    assert fleet(["status", "--wait", "0.5"]) == 0
    assert "cli-1" in capsys.readouterr().out
    assert fleet(["status", "nobody-here", "--wait", "0.3"]) == 1

    assert fleet(["watch", "cli-1", "--interval", "0.3", "--duration", "0.7", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and lines[-1][0]["device"] == "cli-1" and lines[-1][0]["state"] in ("applying", "degraded")
