"""`edge-agent telemetry --once --json` and `edge-agent telemetry parse-tegrastats FILE --json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.telemetry.document import validate_document
from tests import helpers


def test_once_json_prints_one_valid_document(agent_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["telemetry", "--once", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "test-device" and validate_document(doc) == []
    assert doc["system"]["disk"]["path"]  # the isolated state folder's nearest existing parent


def test_once_compact_and_the_human_summary(agent_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["telemetry", "--once", "--compact", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compact"] is True and "sys" in doc and validate_document(doc) == []
    assert main(["telemetry", "--once"]) == 0
    assert "memory" in capsys.readouterr().out


def test_config_option_is_honoured(agent_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "from-file"\n[telemetry]\ninterval_s = 2.5\nnvml = false\n')
    import os

    os.environ.pop("EDGE_AGENT_DEVICE_ID", None)
    assert main(["--config", str(config), "telemetry", "--once", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "from-file" and doc["interval_s"] == 2.5 and "nvml" in doc["unavailable"]


def test_parse_tegrastats_prints_one_object_per_data_line(capsys: pytest.CaptureFixture[str]) -> None:
    path = helpers.testdata("real", "tegrastats_samples.txt")
    data_lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert main(["telemetry", "parse-tegrastats", str(path), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(data_lines)
    for row in map(json.loads, out):
        assert row["ram"]["used_mb"] > 0 and row["cpus"] and row["temps_c"] and row["power_mw"]
        assert {"swap", "gpu", "other"} <= set(row)


def test_parse_tegrastats_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "t.log"
    log.write_text("# comment\n\nRAM 1/2MB CPU [1%@2,off] FUTURE 9%\n")
    assert main(["telemetry", "parse-tegrastats", str(log)]) == 0
    out = capsys.readouterr().out
    assert "1/2" in out and "FUTURE" in out
    assert main(["telemetry", "parse-tegrastats", str(tmp_path / "missing.log")]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["telemetry", "parse-tegrastats"])
    assert exit_info.value.code == 2
