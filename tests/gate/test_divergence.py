"""The culprit search on a small real model and its Q/DQ builds (a model built here, no fetched material)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from agent.calib import qdq
from agent.calib import table as table_module
from agent.gate.divergence import diagnose, qdq_scales
from agent.gate.gate import run_gate
from agent.gate.onnx_reference import ReferenceSession, load_model, with_all_outputs
from agent.gate.thresholds import GateThresholds
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

QUANTISED = ("input", "relu_out", "flat_out")


@pytest.fixture(scope="module")
def tiny_table(tiny_model_path, tiny_validation):
    marked, _ = with_all_outputs(load_model(tiny_model_path))
    values = ReferenceSession(marked, optimize=False).run({"input": tiny_validation.inputs["input"]})
    values["input"] = tiny_validation.inputs["input"]
    entries = {name: float(np.abs(values[name]).max()) / 127.0 for name in QUANTISED}
    return table_module.CalibTable(format="tensorrt", version_code=100300, algorithm="EntropyCalibration2", entries=entries)


def _qdq_file(model_path: Path, table, out: Path) -> Path:
    import onnx

    onnx.save(qdq.to_qdq(onnx.load(str(model_path)), table, "tensorrt").model, str(out))
    return out


@pytest.fixture(scope="module")
def tiny_builds(tiny_model_path, tiny_table, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_int8")
    broken = dataclasses.replace(tiny_table, entries={k: v / 100 for k, v in tiny_table.entries.items()})
    return {
        "good": _qdq_file(tiny_model_path, tiny_table, folder / "good.onnx"),
        "broken": _qdq_file(tiny_model_path, broken, folder / "broken.onnx"),
        "broken_table": broken,
    }


def test_scales_are_read_back_from_a_qdq_model(tiny_builds, tiny_table):
    scales = qdq_scales(load_model(tiny_builds["good"]))
    assert set(scales) == set(QUANTISED)
    assert scales["input"] == pytest.approx(tiny_table.entries["input"], rel=1e-6)


def test_good_build_shows_no_culprits(tiny_validation, tiny_model_path, tiny_builds, tiny_table):
    found = diagnose(tiny_validation, tiny_model_path, tiny_builds["good"], tiny_table, max_frames=4)
    assert found.culprits == []
    assert found.frames == 4 and not found.truncated


def test_broken_build_fails_and_blames_saturated_tensors(tiny_validation, tiny_model_path, tiny_builds):
    result = run_gate(
        OnnxRuntimeRunner(tiny_builds["broken"]),
        tiny_validation,
        GateThresholds(top1_agreement=0.99, fallback="fp16_layers"),
        tiny_builds["broken_table"],
        reference_model=tiny_model_path,
        candidate_model=tiny_builds["broken"],
    )
    assert not result.passed
    assert {c.tensor for c in result.culprits if c.reason == "saturated"} == set(QUANTISED)
    assert result.divergent_layers and result.divergent_layers[0].op_type in ("Conv", "Gemm", "Relu", "GlobalAveragePool")
    assert set(result.fallback["layers"]) >= {"conv", "fc"}  # the weighted layers fed by culprit tensors


def test_without_a_qdq_model_it_is_built_from_the_table(tiny_validation, tiny_model_path, tiny_builds):
    found = diagnose(tiny_validation, tiny_model_path, None, tiny_builds["broken_table"], max_frames=2)
    assert found.layers  # the Q/DQ model came from agent.calib.qdq
    assert not found.skipped


def test_budget_truncates_the_search(tiny_validation, tiny_model_path, tiny_builds, tiny_table):
    found = diagnose(tiny_validation, tiny_model_path, tiny_builds["good"], tiny_table, budget_s=0.0)
    assert found.truncated and found.frames == 0


def test_an_unreadable_model_is_skipped_not_raised(tiny_validation, tmp_path, tiny_table):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    found = diagnose(tiny_validation, bad, None, tiny_table)
    assert found.skipped and "cannot read ONNX model" in found.skipped[0]
