"""run_gate on a small real model with the real onnxruntime runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.errors import AgentError
from agent.gate.gate import run_gate
from agent.gate.thresholds import GateError, GateThresholds
from agent.gate.validation import load_validation, make_validation, make_validation_from_tensors
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from tests.gate.conftest import perturbed_copy


@pytest.fixture(scope="module")
def damaged_model(tiny_model_path, tmp_path_factory):
    return perturbed_copy(tiny_model_path, tmp_path_factory.mktemp("damaged") / "damaged.onnx", "fc_w", noise=3.0)


def test_the_reference_model_passes_its_own_gate(tiny_validation, tiny_model_path):
    result = run_gate(OnnxRuntimeRunner(tiny_model_path), tiny_validation)
    assert result.passed
    assert result.metrics["top1_agreement"] == 1.0
    assert result.metrics["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert result.failed == [] and result.culprits == []
    assert result.frames == 12 and result.seconds > 0


def test_a_damaged_engine_fails_and_says_by_how_much(tiny_validation, damaged_model):
    result = run_gate(OnnxRuntimeRunner(damaged_model), tiny_validation, GateThresholds(top1_agreement=0.99, top5_containment=0.99))
    assert not result.passed
    failed = {f.metric: f for f in result.failed}
    assert "top1_agreement" in failed
    top1 = failed["top1_agreement"]
    assert top1.by == pytest.approx(0.99 - result.metrics["top1_agreement"])
    assert "by" in top1.message()
    assert "FAILED" in result.summary()
    assert result.culprits == [] and result.fallback is None  # not an INT8 build: no culprit search


def test_result_is_plain_json(tiny_validation, damaged_model):
    result = run_gate(OnnxRuntimeRunner(damaged_model), tiny_validation)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["task"] == "classification"
    assert data["summary"].startswith("accuracy gate")
    assert data["gated"] == ["top1_agreement", "top5_containment"]
    assert set(data["metrics"]) >= {"top1_agreement", "top5_containment", "cosine", "max_abs_error"}
    assert data["details"]["classification"]["disagreements"][0].startswith("drawn_")


def test_an_active_runner_is_left_active_and_an_idle_one_idle(tiny_validation, tiny_model_path):
    runner = OnnxRuntimeRunner(tiny_model_path)
    run_gate(runner, tiny_validation)
    assert not runner.is_active
    with runner:
        run_gate(runner, tiny_validation)
        assert runner.is_active


def test_a_better_candidate_is_reported_as_such_not_failed(tiny_model_path, tiny_frames, tiny_spec, damaged_model):
    # labels that the damaged model gets right more often than the reference: it disagrees, but is not worse
    import onnxruntime as ort

    validation = make_validation(tiny_model_path, iter(tiny_frames), n=len(tiny_frames), preprocess=tiny_spec)
    session = ort.InferenceSession(str(damaged_model), providers=["CPUExecutionProvider"])
    (damaged_logits,) = session.run(None, {"input": validation.inputs["input"]})
    labels = np.argmax(damaged_logits, axis=1)
    labelled = make_validation(tiny_model_path, iter(tiny_frames), n=len(tiny_frames), preprocess=tiny_spec, labels=labels.tolist())
    result = run_gate(OnnxRuntimeRunner(damaged_model), labelled, GateThresholds(top1_agreement=0.99, top5_containment=0.99))
    assert result.metrics["label_accuracy_candidate"] == 1.0
    assert result.metrics["label_accuracy_reference"] < 1.0
    assert result.better_than_reference
    assert result.passed
    assert any("not a regression" in note for note in result.notes)


def test_validation_made_for_another_model_is_refused(tiny_validation, tiny_model_path):
    with pytest.raises(GateError, match="validation set was made with model"):
        run_gate(OnnxRuntimeRunner(tiny_model_path), tiny_validation, model_sha256="0" * 64)


def test_engine_with_other_inputs_is_refused(tiny_validation, blazeface_path):
    with pytest.raises(AgentError, match="shape"):
        run_gate(OnnxRuntimeRunner(blazeface_path), tiny_validation)


def test_generic_task_gates_on_cosine(tiny_model_path, damaged_model):
    inputs = {"input": np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)}
    validation = load_validation(make_validation_from_tensors(tiny_model_path, inputs).to_bytes())
    good = run_gate(OnnxRuntimeRunner(tiny_model_path), validation, GateThresholds(max_abs_error=1e-3))
    assert good.passed and good.metrics["cosine"] > 0.999
    bad = run_gate(OnnxRuntimeRunner(damaged_model), validation, GateThresholds(cosine=0.999))
    assert not bad.passed
    assert [f.metric for f in bad.failed] == ["cosine"]


def test_int8_failure_without_models_still_reports_table_culprits_and_fallback(tiny_validation, damaged_model):
    table = {"input": 1 / 127, "conv_out": 0.0, "relu_out": float("inf")}
    result = run_gate(OnnxRuntimeRunner(damaged_model), tiny_validation, GateThresholds(top1_agreement=0.99, fallback="fp16_engine"), table)
    assert not result.passed
    assert {c.tensor: c.reason for c in result.culprits} == {"conv_out": "zero_scale", "relu_out": "non_finite_scale"}
    assert result.fallback["policy"] == "fp16_engine"
    assert "engine layer" in result.fallback["applies"]
    assert "no FP32 reference model" in result.diagnosis["skipped"][0]
    json.dumps(result.to_dict(), allow_nan=False)
