"""`edge-agent engine build|check|inspect|list|gc` on a real onnxruntime engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest

from agent.cli.main import main


def run(args: List[str], capsys: pytest.CaptureFixture[str]) -> Any:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_build_check_inspect_list_gc(tiny: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["engine", "build", str(tiny), "--target", "cpu", "--json"], capsys)
    assert code == 0, err
    built = json.loads(out)
    assert built["cache_hit"] is False and built["key"].startswith("ort-fp32-cpu-")
    assert built["manifest"]["versions"]["onnxruntime"] and built["manifest"]["engine_sha256"]
    assert "build_started" in err  # progress goes to stderr
    code, out, _ = run(["engine", "build", str(tiny), "--target", "cpu", "--json"], capsys)
    assert code == 0 and json.loads(out)["cache_hit"] is True

    engine = Path(built["path"])
    code, out, _ = run(["engine", "check", str(engine), "--json"], capsys)
    verdict = json.loads(out)
    assert code == 0 and verdict["loadable"] and verdict["key"] == built["key"]

    code, out, _ = run(["engine", "inspect", built["key"][:18], "--json"], capsys)
    inspected = json.loads(out)
    assert code == 0 and inspected["loadable_here"] and inspected["manifest"]["report"]["layers"] == 4

    code, out, _ = run(["engine", "list", "--json"], capsys)
    assert code == 0 and [e["key"] for e in json.loads(out)] == [built["key"]]

    manifest_path = engine.parent / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["device"]["module"] = "Jetson Orin NX 16GB"
    manifest_path.write_text(json.dumps(data))
    code, out, _ = run(["engine", "check", str(engine), "--json"], capsys)
    verdict = json.loads(out)
    assert code == 1 and not verdict["loadable"]
    assert verdict["mismatches"][0]["field"] == "module" and "Jetson Orin NX 16GB" in verdict["reasons"][0]

    code, out, _ = run(["engine", "gc", "--dry-run", "--json"], capsys)
    assert code == 0 and json.loads(out)["removed"] == [built["key"]]
    code, out, _ = run(["engine", "gc", "--keep", built["key"], "--json"], capsys)
    assert code == 0 and json.loads(out)["removed"] == [] and engine.exists()
    code, out, _ = run(["engine", "gc", "--json"], capsys)
    assert code == 0 and json.loads(out)["removed"] == [built["key"]] and not engine.exists()


def test_check_a_foreign_plan_and_a_truncated_engine(tmp_path: Path, tiny: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "foreign.engine"
    plan.write_bytes(bytes.fromhex("70747274000000 00d5000000000000 00a50c250000000000".replace(" ", "")) + bytes(40))
    code, out, _ = run(["engine", "check", str(plan), "--json"], capsys)
    verdict = json.loads(out)
    assert code == 1 and not verdict["loadable"] and verdict["manifest"] is None
    assert any("probably truncated" in hint for hint in verdict["hints"])  # the header sniff: a hint only

    code, out, _ = run(["engine", "build", str(tiny), "--target", "cpu", "--json"], capsys)
    engine = Path(json.loads(out)["path"])
    engine.write_bytes(engine.read_bytes()[:100])
    code, out, _ = run(["engine", "check", str(engine.parent), "--json"], capsys)
    verdict = json.loads(out)
    assert code == 1 and verdict["reasons"][0].startswith("truncated: the engine file has 100 bytes")


def test_build_errors_are_clear(tiny: Path, agent_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["engine", "build", str(tiny), "--target", "gpu"], capsys)
    assert code == 1 and "needs TensorRT" in err
    code, _, err = run(["engine", "build", str(tiny), "--target", "cpu", "--precision", "int8"], capsys)
    assert code == 1 and "needs a calibration table" in err
    code, _, err = run(["engine", "build", str(tiny), "--target", "dla:0", "--batch", "1:2:4", "--precision", "fp16"], capsys)
    assert code == 1 and "fixed batch" in err
    code, _, err = run(["engine", "diagnose", "--log", "/nonexistent.log"], capsys)
    assert code == 2 and "cannot read" in err
