"""`edge-agent bench`: throughput and latency per batch size on the onnxruntime backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.bench_cmd import parse_batches
from agent.cli.main import main
from agent.errors import UsageError
from tests.helpers import tiny_classifier_onnx

pytest.importorskip("onnxruntime")


def test_bench_reports_each_batch_size(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(tiny_model), "--batch", "1,4", "--threads", "1", "--seconds", "0.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime" and [r["batch"] for r in report["results"]] == [1, 4]
    for row in report["results"]:
        assert row["throughput"] > 0 and row["runs"] >= 5
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"]


def test_bench_skips_batches_a_fixed_batch_model_cannot_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier_onnx(tmp_path / "fixed.onnx", dynamic_batch=False)
    assert main(["bench", "--model", str(model), "--batch", "1,8", "--seconds", "0.1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert "throughput" in rows[0] and rows[1] == {"batch": 8, "skipped": "the engine takes fixed batch 1"}


def test_batch_list_parsing() -> None:
    assert parse_batches("32,1,8,8") == [1, 8, 32]
    with pytest.raises(UsageError):
        parse_batches("1,x")
    with pytest.raises(UsageError):
        parse_batches("0")


def test_int8_needs_a_table(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", str(tiny_model), "--precision", "int8"]) == 2
    assert "--table" in capsys.readouterr().err
