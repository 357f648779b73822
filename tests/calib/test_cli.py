"""`edge-agent calib ...`: JSON out, exit 0 when done, 1 with a message (never a traceback) otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from agent.calib.table import read_table, write_table
from agent.cli.main import main
from tests.calib.test_check import damaged
from tests.helpers import EFFNET_TABLE, drawn_frames
from tests.helpers import testdata as data_file

TINY_PREPROCESS = '{"size": [8, 8], "resize": "stretch", "interpolation": "area"}'


def calib(capsys: pytest.CaptureFixture, *args: str) -> Tuple[int, Any, str]:
    code = main(["calib", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, (json.loads(out) if "--json" in args and out else out), err


def test_inspect_reports_format_header_and_degenerate_names(capsys: pytest.CaptureFixture) -> None:
    path = str(data_file("real", "calib", "calib_12_segformer_b2_zeros_unnamed_trt8.4.cache"))
    code, report, _ = calib(capsys, "inspect", path, "--json")
    assert code == 0
    assert (report["format"], report["trt_version"], report["algorithm"], report["entries"]) == ("tensorrt", "8.4.1", "EntropyCalibration2", 786)
    assert (report["zero"], report["inf"], report["nan"], report["denormal"]) == (2, 0, 0, 0)
    assert report["degenerate_names"] == ["(Unnamed Layer* 64) [Shuffle]_output", "366"]
    assert report["min_scale"] == 0.0 and report["max_scale"] > 0
    code, text, _ = calib(capsys, "inspect", path)
    assert code == 0 and "zero: 366" in text


def test_inspect_spells_inf_for_json(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "inf.cache"
    path.write_bytes(b"TRT-8601-EntropyCalibration2\na: 7f800000\n")
    code, report, _ = calib(capsys, "inspect", str(path), "--json")
    assert code == 0 and report["inf"] == 1 and report["max_scale"] is None


def test_unparseable_table_exits_1_with_a_message(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "model.cache"
    path.write_bytes(b"ftrt\x00\x00\x00\x57 a plan")
    code, _, err = calib(capsys, "inspect", str(path), "--json")
    assert code == 1 and "serialized TensorRT engine" in err and "model.cache" in err
    code, _, err = calib(capsys, "check", str(tmp_path / "absent.cache"))
    assert code == 1 and "cannot read" in err


def test_check_blocks_the_segformer_table(capsys: pytest.CaptureFixture) -> None:
    path = str(data_file("real", "calib", "calib_12_segformer_b2_zeros_unnamed_trt8.4.cache"))
    code, report, _ = calib(capsys, "check", path, "--trt-version", "8.6.2", "--target", "dla", "--json")
    assert code == 1 and report["blocking"] and report["route"]["method"] == "cache_calibrator"
    assert {f["code"] for f in report["findings"]} >= {"zero_scale", "header_version_mismatch"}


def test_check_against_the_model(capsys: pytest.CaptureFixture, tmp_path: Path, effnet_path: Path, effnet_table: Any) -> None:
    reference = str(EFFNET_TABLE)
    code, report, _ = calib(capsys, "check", reference, "--model", str(effnet_path), "--trt-version", "10.3.0", "--json")
    assert code == 0 and not report["blocking"] and report["coverage"]["int8_layers"] == 60
    broken = tmp_path / "broken.cache"
    broken.write_bytes(write_table(damaged(effnet_table, {"relu6_10": None, "relu6_17": 0.0})))
    code, report, _ = calib(capsys, "check", str(broken), "--model", str(effnet_path), "--json")
    assert code == 1
    found = {f["code"]: f["tensors"] for f in report["findings"]}
    assert found["zero_scale"] == ["relu6_17"] and found["missing_scales"] == ["relu6_10"]
    code, text, _ = calib(capsys, "check", str(broken), "--model", str(effnet_path))
    assert code == 1 and "BLOCKED" in text


def test_diff_json(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    a, b = tmp_path / "a.cache", tmp_path / "b.cache"
    a.write_bytes(b"TRT-8601-EntropyCalibration2\nx: 3c010a14\ny: 3c010a14\n")
    b.write_bytes(b"TRT-8601-EntropyCalibration2\nx: 3d010a14\nz: 7f800000\n")
    code, report, _ = calib(capsys, "diff", str(a), str(b), "--json")
    assert code == 0 and report["added"] == ["z"] and report["removed"] == ["y"]
    assert report["changed"][0]["name"] == "x" and report["changed"][0]["b_amax"] == pytest.approx(4.0, rel=1e-3)
    code, _, _ = calib(capsys, "diff", str(a), str(b), "--fail-on-diff")
    assert code == 1


def write_video(path: Path, frames: List[Any]) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def test_make_from_images_and_video_then_to_qdq(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_onnx: Path) -> None:
    import cv2
    import onnx

    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(drawn_frames(5)):
        cv2.imwrite(str(folder / f"{k:02d}.png"), frame)
    video = write_video(tmp_path / "clip.avi", drawn_frames(12))
    table_path = tmp_path / "tiny.cache"
    code, report, _ = calib(
        capsys, "make", "--model", str(tiny_onnx), "--frames", str(folder), str(video), "-n", "4", "--preprocess", TINY_PREPROCESS, "--method", "minmax", "-o", str(table_path), "--json"
    )
    assert code == 0 and report["frames"] == 8 and report["entries"] == 6
    assert read_table(table_path).header == "TRT-100300-MinMaxCalibration"
    out = tmp_path / "tiny.qdq.onnx"
    code, report, _ = calib(capsys, "to-qdq", "--model", str(tiny_onnx), "--table", str(table_path), "--flavor", "tensorrt", "-o", str(out), "--json")
    assert code == 0 and report["quantized_nodes"] == 3 and report["skipped"] == []
    onnx.checker.check_model(onnx.load(str(out)))


def test_make_refuses_bad_sources_and_presets(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_onnx: Path) -> None:
    out = str(tmp_path / "t.cache")
    code, _, err = calib(capsys, "make", "--model", str(tiny_onnx), "--frames", str(tmp_path), "-o", out)
    assert code == 1 and "no images" in err
    not_video = tmp_path / "notes.txt"
    not_video.write_text("hello")
    code, _, err = calib(capsys, "make", "--model", str(tiny_onnx), "--frames", str(not_video), "-o", out)
    assert code == 1 and "cannot open" in err
    code, _, err = calib(capsys, "make", "--model", str(tiny_onnx), "--frames", str(not_video), "--preprocess", "resnet_magic", "-o", out)
    assert code == 1 and "preset" in err
    assert not Path(out).exists()


def test_to_qdq_refuses_a_model_that_is_not_onnx(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    table = tmp_path / "t.cache"
    table.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x00garbage")
    code, _, err = calib(capsys, "to-qdq", "--model", str(model), "--table", str(table), "--flavor", "tensorrt", "-o", str(tmp_path / "o.onnx"))
    assert code == 1 and "not a readable ONNX model" in err


def test_calib_without_action_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["calib"]) == 2
