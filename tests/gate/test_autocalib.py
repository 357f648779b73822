"""`calib make --method auto`: every calibration method measured by the accuracy gate on its Q/DQ model, the best
table written, the comparison printed and kept in the table's provenance. On the tests' tiny classifier, then
end to end on the real EfficientNet-Lite0 and BlazeFace of the test material, calibrated on its two videos."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from agent.calib.make import auto_candidates, make_tables
from agent.calib.table import new_table, read_table
from agent.cli.main import main
from agent.gate.autocalib import CandidateOutcome, choose_table, detection_f1, ranking_metrics
from agent.gate.thresholds import GateError, GateThresholds
from agent.gate.validation import ValidationSet, make_validation
from agent.vision.preprocess import prepare, spec_from
from tests.gate.conftest import BLAZEFACE_PREPROCESS
from tests.helpers import testdata, tiny_classifier_onnx


def _tiny_tables(model: Path, frames: List[np.ndarray], spec: Dict[str, Any]) -> Dict[str, Any]:
    prepared = [prepare(frame, spec_from(spec))[0] for frame in frames]
    return make_tables(model, prepared, auto_candidates())


def test_candidates_are_every_method_once() -> None:
    labels = [c.label for c in auto_candidates((99.9, 99.99, 99.99))]
    assert labels == ["entropy", "minmax", "percentile:99.9", "percentile:99.99"]


def test_detection_f1_and_ranking_order() -> None:
    assert detection_f1({"det_recall": 1.0, "det_precision": 0.5}) == pytest.approx(2 / 3)
    assert detection_f1({"det_recall": None, "det_precision": 0.5}) is None
    assert detection_f1({"det_recall": 0.0, "det_precision": 0.0}) == 0.0
    better = ranking_metrics("classification", {"top1_agreement": 1.0, "top5_containment": 1.0, "mean_prob_l1": 0.1})
    worse = ranking_metrics("classification", {"top1_agreement": 1.0, "top5_containment": 1.0, "mean_prob_l1": 0.2})
    assert better > worse
    assert ranking_metrics("generic", {"cosine": float("nan")})[0] == -math.inf


def test_best_table_wins_and_broken_ones_say_which_tensor(
    tiny_model_path: Path, tiny_frames: List[np.ndarray], tiny_spec: Dict[str, Any], tiny_validation: ValidationSet
) -> None:
    tables = _tiny_tables(tiny_model_path, tiny_frames, tiny_spec)
    good = tables["entropy"]
    candidates = {
        "zeroed": dataclasses.replace(good, entries=dict(good.entries, relu_out=0.0)),
        "nan": dataclasses.replace(good, entries=dict(good.entries, flat_out=float("nan"))),
        "squashed": dataclasses.replace(good, entries={name: scale / 100.0 for name, scale in good.entries.items()}),
        **tables,
    }
    report = choose_table(tiny_model_path, candidates, tiny_validation, GateThresholds(top1_agreement=0.9))
    by_label = {o.label: o for o in report.outcomes}
    assert [o.label for o in report.outcomes] == list(candidates)
    assert by_label["zeroed"].problems == {"zero_scale": ["relu_out"]} and not by_label["zeroed"].usable
    assert by_label["nan"].problems == {"nan_scale": ["flat_out"]}
    assert "relu_out" in by_label["zeroed"].left_float
    assert not by_label["squashed"].passed and by_label["squashed"].failed
    chosen = report.chosen
    assert chosen is not None and chosen.label in tables and chosen.passed and report.passed
    assert all(chosen.rank_key("classification") >= o.rank_key("classification") for o in report.outcomes)
    rows = {row[0].strip("* "): row for row in report.rows()}
    assert "zero_scale: relu_out" in rows["zeroed"][-1] and rows["squashed"][-2] == "FAIL"
    json.dumps(report.to_dict(), allow_nan=False)


def test_ties_keep_the_given_order(tiny_model_path: Path, tiny_frames: List[np.ndarray], tiny_spec: Dict[str, Any], tiny_validation: ValidationSet) -> None:
    table = _tiny_tables(tiny_model_path, tiny_frames, tiny_spec)["minmax"]
    report = choose_table(tiny_model_path, {"first": table, "second": table}, tiny_validation)
    assert report.chosen is not None and report.chosen.label == "first"


def test_validation_of_another_model_is_refused(tmp_path: Path, tiny_validation: ValidationSet) -> None:
    other = tiny_classifier_onnx(tmp_path / "other.onnx", num_classes=6, size=16, seed=7)
    with pytest.raises(GateError, match="validation set was made with model"):
        choose_table(other, {"x": new_table({"input": 0.01})}, tiny_validation)


def test_outcome_of_a_table_that_fits_no_tensor(tiny_model_path: Path, tiny_validation: ValidationSet) -> None:
    report = choose_table(tiny_model_path, {"unrelated": new_table({"nothing_here": 0.01})}, tiny_validation)
    outcome: CandidateOutcome = report.outcomes[0]
    assert outcome.chosen  # the only one, so chosen, but the report says what it is
    assert outcome.error is not None and outcome.error.startswith("Q/DQ model: no table entry matches")
    assert outcome.problems == {"no_match": ["nothing_here"]} and not outcome.passed and not report.passed
    assert report.rows()[0][-2] == "error"


# the CLI ----------------------------------------------------------------------------------------------------


def _write_frames(frames: List[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), frame)
    return folder


def _auto(capsys: pytest.CaptureFixture, *args: str) -> Any:
    code = main(["calib", "make", "--method", "auto", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_cli_writes_the_best_table_and_its_provenance(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    tiny_model_path: Path,
    tiny_frames: List[np.ndarray],
    tiny_spec: Dict[str, Any],
    tiny_validation: ValidationSet,
) -> None:
    folder = _write_frames(tiny_frames, tmp_path / "frames")
    validation = tmp_path / "val.npz"
    tiny_validation.save(validation)
    out = tmp_path / "tiny.cache"
    base = ["--model", str(tiny_model_path), "--frames", str(folder), "-n", "12", "--preprocess", json.dumps(tiny_spec)]
    code, text, _ = _auto(capsys, *base, "--validation", str(validation), "-o", str(out))
    assert code == 0, text
    for label in ("entropy", "minmax", "percentile:99.9", "percentile:99.99", "percentile:99.999"):
        assert label in text
    assert "top1_agreement" in text and "pass" in text
    provenance = json.loads(out.with_name("tiny.cache.json").read_text(encoding="utf-8"))
    selection = provenance["selection"]
    assert provenance["method"] == selection["chosen"]
    assert [c["method"] for c in selection["candidates"]][:2] == ["entropy", "minmax"]
    assert sum(c["chosen"] for c in selection["candidates"]) == 1
    assert selection["validation"]["sha256"] == tiny_validation.sha256
    assert provenance["model"]["sha256"] == selection["validation"]["model_sha256"]
    assert read_table(out).header == provenance["header"]
    assert "--method auto --validation" in provenance["command"]

    code, report, _ = _auto(capsys, *base, "--validation", str(validation), "--percentiles", "99.5", "-o", str(out), "--json")
    assert code == 0
    report = json.loads(report)
    assert [c["method"] for c in report["selection"]["candidates"]] == ["entropy", "minmax", "percentile:99.5"]


def test_cli_refuses_auto_without_a_fitting_validation_set(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_model_path: Path, tiny_validation: ValidationSet) -> None:
    code, _, err = _auto(capsys, "--model", str(tiny_model_path), "--frames", str(tmp_path), "-o", str(tmp_path / "t.cache"))
    assert code != 0 and "--validation" in err
    other = tiny_classifier_onnx(tmp_path / "other.onnx", num_classes=6, size=16, seed=3)
    validation = tmp_path / "val.npz"
    tiny_validation.save(validation)
    code, _, err = _auto(capsys, "--model", str(other), "--frames", str(tmp_path), "--validation", str(validation), "-o", str(tmp_path / "t.cache"))
    assert code == 1 and "validation set was made with model" in err
    assert not (tmp_path / "t.cache").exists()


def test_plain_make_writes_provenance_too(capsys: pytest.CaptureFixture, tmp_path: Path, tiny_model_path: Path, tiny_frames: List[np.ndarray], tiny_spec: Dict[str, Any]) -> None:
    folder = _write_frames(tiny_frames, tmp_path / "frames")
    out = tmp_path / "t.cache"
    code = main(["calib", "make", "--model", str(tiny_model_path), "--frames", str(folder), "-n", "4", "--preprocess", json.dumps(tiny_spec), "--method", "percentile", "--percentile", "99.9", "-o", str(out)])
    capsys.readouterr()
    assert code == 0
    provenance = json.loads((tmp_path / "t.cache.json").read_text(encoding="utf-8"))
    assert provenance["method"] == "percentile:99.9" and "selection" not in provenance
    assert provenance["frames"]["count"] == 4 and provenance["frames"]["sources"]["frames"]


# the real models --------------------------------------------------------------------------------------------


# Calibration takes 16 frames from each of the material's videos (faces.avi, objects.avi), which are made from 6 of
# the 18 photos, so calibration and validation share content: these tests check the selection end to end (every
# method measured, the best by the task's ranking written with its provenance), not how a table generalises.


def _best_by_ranking(selection: Dict[str, Any]) -> None:
    """The chosen candidate ranks first among those that passed (the first of equals)."""
    task = selection["task"]
    chosen = next(c for c in selection["candidates"] if c["chosen"])
    eligible = [c for c in selection["candidates"] if c["passed"]] if selection["passed"] else selection["candidates"]
    best = max(ranking_metrics(task, c["metrics"]) for c in eligible)
    assert ranking_metrics(task, chosen["metrics"]) == best
    assert chosen is next(c for c in eligible if ranking_metrics(task, c["metrics"]) == best)


def test_real_efficientnet_lite0(capsys: pytest.CaptureFixture, tmp_path: Path, effnet_path: Path, effnet_validation: ValidationSet) -> None:
    """Measured (16 photos to validate): every method passes with top-1 1.00 on the gated frames (0.81 to 0.88
    with near ties counted); all tie on top-1 and top-5, so the mean probability L1 to FP32 decides: percentile
    99.999 0.2635, minmax and percentile 99.99 0.2643, percentile 99.9 0.2928, entropy 0.3247."""
    validation = tmp_path / "effnet_val.npz"
    effnet_validation.save(validation)
    video = [str(testdata("video", "faces.avi")), str(testdata("video", "objects.avi"))]
    out = tmp_path / "effnet.cache"
    code, text, _ = _auto(
        capsys, "--model", str(effnet_path), "--frames", *video, "-n", "16", "--preprocess", "efficientnet_lite", "--validation", str(validation), "-o", str(out)
    )
    with capsys.disabled():
        print("\nEfficientNet-Lite0, calib make --method auto:\n" + text)
    assert code == 0, text
    selection = json.loads(out.with_name("effnet.cache.json").read_text(encoding="utf-8"))["selection"]
    assert len(selection["candidates"]) == 5 and selection["passed"]
    assert all(c["error"] is None and not c["scale_problems"] for c in selection["candidates"])
    chosen = next(c for c in selection["candidates"] if c["chosen"])
    assert chosen["metrics"]["top1_agreement"] == max(c["metrics"]["top1_agreement"] for c in selection["candidates"])
    _best_by_ranking(selection)


def test_real_blazeface(capsys: pytest.CaptureFixture, tmp_path: Path, blazeface_path: Path, blazeface_frames: List[Tuple[str, np.ndarray]]) -> None:
    """Measured (the astronaut and the cameraman, 2 photos and 14 frames of faces.avi, to validate): every method
    finds every face FP32 finds and nothing else (recall and precision 1.00), so the mean IoU decides: percentile
    99.999 0.9753, entropy 0.9752, minmax 0.9711, percentile 99.9 0.9594, percentile 99.99 0.9555. (Calibrated on
    the 16 photos without a face instead, every method still finds them all: two large frontal faces are easy.)"""
    # the postprocessing package's own decoder, resolved from the set's config as on a device
    decoder = {"kind": "blazeface", "score_threshold": 0.5, "nms_threshold": 0.3}
    made = make_validation(blazeface_path, (f for _, f in blazeface_frames), n=len(blazeface_frames), preprocess=BLAZEFACE_PREPROCESS, decoder_config=decoder)
    validation = tmp_path / "bf_val.npz"
    made.save(validation)
    video = [str(testdata("video", "faces.avi")), str(testdata("video", "objects.avi"))]
    out = tmp_path / "blazeface.cache"
    code, text, _ = _auto(
        capsys,
        "--model", str(blazeface_path), "--frames", *video, "-n", "16", "--preprocess", json.dumps(BLAZEFACE_PREPROCESS),
        "--validation", str(validation), "-o", str(out),
    )  # fmt: skip
    with capsys.disabled():
        print("\nBlazeFace (full range), calib make --method auto:\n" + text)
    assert "det_recall" in text and "det_precision" in text
    selection = json.loads(out.with_name("blazeface.cache.json").read_text(encoding="utf-8"))["selection"]
    assert selection["task"] == "detection" and len(selection["candidates"]) == 5
    chosen = next(c for c in selection["candidates"] if c["chosen"])
    assert chosen["metrics"]["det_f1"] == max(c["metrics"]["det_f1"] for c in selection["candidates"] if c["passed"] or not selection["passed"])
    _best_by_ranking(selection)
    assert code == (0 if selection["passed"] else 1)
