"""`edge-agent fleet make-validation` and `edge-agent engine validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import pytest

from agent.cli.main import main
from tests.gate.conftest import BLAZEFACE_DECODER, perturbed_copy


def run_cli(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, str]:
    """`edge-agent ARGV`: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, tiny_frames) -> Path:
    import cv2

    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(tiny_frames[:6]):
        cv2.imwrite(str(folder / f"f{i:02d}.png"), frame)
    return folder


@pytest.fixture(scope="module")
def video_file(tmp_path_factory, tiny_frames) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for frame in tiny_frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def cli_validation(tmp_path_factory, tiny_model_path, tiny_spec, frames_dir, video_file) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny.npz"
    argv = ["fleet", "make-validation", "--model", str(tiny_model_path), "--frames", str(frames_dir), "--frames", str(video_file)]
    assert main([*argv, "-n", "10", "--preprocess", json.dumps(tiny_spec), "-o", str(out)]) == 0
    return out


def test_make_validation_from_a_folder_and_a_video(cli_validation, tiny_model_path, tiny_spec, frames_dir, video_file, tmp_path, capsys):
    out = tmp_path / "v.npz"
    argv = ["fleet", "make-validation", "--model", str(tiny_model_path), "--frames", str(frames_dir), "--frames", str(video_file)]
    code, stdout, _ = run_cli([*argv, "-n", "10", "--preprocess", json.dumps(tiny_spec), "-o", str(out), "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["frames"] == 10 and summary["task"] == "classification"
    assert summary["bytes"] == out.stat().st_size
    from agent.gate.validation import load_validation

    names = load_validation(out).frame_names
    assert names[0] == "f00.png" and names[-1].startswith("clip.avi#")


def test_make_validation_with_a_missing_source_is_an_error(tiny_model_path, tmp_path, capsys):
    code, _, err = run_cli(["fleet", "make-validation", "--model", str(tiny_model_path), "--frames", str(tmp_path / "nope"), "-o", str(tmp_path / "v.npz")], capsys)
    assert code == 1
    assert "not found" in err


def test_validate_passes_and_prints_json(cli_validation, tiny_model_path, capsys):
    code, stdout, _ = run_cli(["engine", "validate", str(tiny_model_path), "--validation", str(cli_validation), "--json"], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["passed"] is True
    assert result["metrics"]["top1_agreement"] == 1.0


def test_validate_exits_1_when_the_gate_fails(cli_validation, tiny_model_path, tmp_path, capsys):
    damaged = perturbed_copy(tiny_model_path, tmp_path / "damaged.onnx", "fc_w", noise=3.0)
    thresholds = json.dumps({"top1_agreement": 0.99, "top5_containment": 0.99})
    code, stdout, _ = run_cli(["engine", "validate", str(damaged), "--validation", str(cli_validation), "--thresholds", thresholds], capsys)
    assert code == 1
    assert "FAILED" in stdout and "by" in stdout


def test_validate_a_cached_engine_folder(cli_validation, tiny_model_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(tmp_path / "state"))
    code, stdout, _ = run_cli(["engine", "build", str(tiny_model_path), "--target", "cpu", "--json"], capsys)
    assert code == 0
    folder = Path(json.loads(stdout)["path"]).parent  # the cache folder, with manifest.json beside the engine
    code, stdout, _ = run_cli(["engine", "validate", str(folder), "--validation", str(cli_validation)], capsys)
    assert code == 0
    assert "passed" in stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--thresholds", '{"top1": 0.9}'], "accuracy.top1: unknown key"),
        (["--thresholds", "{not json"], "not valid JSON"),
    ],
)
def test_bad_thresholds_are_clear_errors(cli_validation, tiny_model_path, capsys, extra, message):
    code, _, err = run_cli(["engine", "validate", str(tiny_model_path), "--validation", str(cli_validation), *extra], capsys)
    assert code in (1, 2)
    assert message in err


def test_missing_validation_and_engine_are_clear_errors(cli_validation, tiny_model_path, tmp_path, capsys):
    code, _, err = run_cli(["engine", "validate", str(tiny_model_path), "--validation", str(tmp_path / "none.npz")], capsys)
    assert code == 1 and "cannot read validation set" in err
    code, _, err = run_cli(["engine", "validate", str(tmp_path / "none.onnx"), "--validation", str(cli_validation)], capsys)
    assert code == 1 and "not found" in err
    folder = tmp_path / "empty"
    folder.mkdir()
    code, _, err = run_cli(["engine", "validate", str(folder), "--validation", str(cli_validation)], capsys)
    assert code == 1 and "manifest.json" in err


def test_validate_corrupted_int8_names_culprits(effnet_int8_corrupted, corrupted_table, effnet_validation, effnet_path, tmp_path, capsys):
    from agent.calib import table as table_module

    table_path = tmp_path / "corrupted.cache"
    table_module.write_table_file(table_path, corrupted_table)
    validation = tmp_path / "effnet.npz"
    effnet_validation.save(validation)
    argv = ["engine", "validate", str(effnet_int8_corrupted), "--validation", str(validation), "--table", str(table_path)]
    code, stdout, _ = run_cli([*argv, "--reference-model", str(effnet_path), "--fallback", "fp16_engine", "--diagnose-budget", "30", "--json"], capsys)
    assert code == 1
    result = json.loads(stdout)
    assert result["passed"] is False
    culprits = {c["tensor"]: c["reason"] for c in result["culprits"]}
    assert culprits["conv_11"] == "zero_scale"
    assert culprits["input"] == "saturated"
    assert result["fallback"]["policy"] == "fp16_engine"


def test_make_validation_for_detection_with_a_named_decoder(blazeface_path, tmp_path, capsys):
    from tests.helpers import testdata

    out = tmp_path / "faces.npz"
    argv = ["fleet", "make-validation", "--model", str(blazeface_path), "--frames", str(testdata("video", "faces.avi")), "-n", "4"]
    preprocess = json.dumps({"preset": "blazeface", "size": [192, 192]})
    code, stdout, _ = run_cli([*argv, "--preprocess", preprocess, "--decoder", json.dumps(BLAZEFACE_DECODER), "-o", str(out), "--json"], capsys)
    assert code == 0, stdout
    summary = json.loads(stdout)
    assert summary["task"] == "detection" and summary["reference_boxes"] >= 4
    code, stdout, _ = run_cli(["engine", "validate", str(blazeface_path), "--validation", str(out), "--json"], capsys)
    assert code == 0
    assert json.loads(stdout)["metrics"]["det_recall"] == 1.0


def test_labels_file_by_frame_name(frames_dir, tiny_model_path, tiny_spec, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"f00.png": 1, "f01.png": 2}))
    out = tmp_path / "v.npz"
    argv = ["fleet", "make-validation", "--model", str(tiny_model_path), "--frames", str(frames_dir), "-n", "6"]
    code, _, _ = run_cli([*argv, "--preprocess", json.dumps(tiny_spec), "--labels", str(labels), "-o", str(out)], capsys)
    assert code == 0
    from agent.gate.validation import load_validation

    assert load_validation(out).labels.tolist() == [1, 2, -1, -1, -1, -1]
