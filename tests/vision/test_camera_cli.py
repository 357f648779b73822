"""`edge-agent camera probe` and `camera run` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main

pytest.importorskip("cv2")


def test_probe_prints_json(short_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["camera", "probe", f"file://{short_video}", "-n", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["width"], report["height"], report["frames"]) == (64, 48, 5)
    assert report["declared_fps"] == pytest.approx(25.0) and report["decode_ms_p50"] >= 0


def test_probe_text_says_when_the_source_ended_early(short_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["camera", "probe", f"file://{short_video}", "-n", "100"]) == 0
    out = capsys.readouterr().out
    assert "64x48" in out and "24 (ended early)" in out


def test_probe_of_a_missing_camera_is_exit_1_with_what_was_tried(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["camera", "probe", "v4l2:///dev/video95"]) == 1
    assert "tried [1] v4l2 /dev/video95" in capsys.readouterr().err


def test_camera_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["camera"]) == 2
    assert "probe" in capsys.readouterr().err


def test_camera_run_prints_results(short_video: Path, tiny_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    code = main(
        ["camera", "run", f"file://{short_video}", "--model", str(tiny_onnx), "--preprocess", '{"size": [8, 8]}', "--stop-at-end", "--seconds", "20"]
    )
    captured = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(24))
    assert json.loads(captured.err.strip().splitlines()[-1])["results"] == 24
