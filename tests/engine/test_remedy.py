"""The remedy table (agent/engine/remedy.py): one test per row, the rules around it (one retry, FP16 only when the
deployment allows, warnings only reported), the spec a retry builds, and a real onnxruntime build that fails on an
operator it has no kernel for: refused with the operator named, not a generic error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

from agent.device.fingerprint import DeviceFingerprint
from agent.engine.build import BuildError, _remedy_spec, ensure_engine
from agent.engine.cache import FAILURE, EngineCache
from agent.engine.diagnose import KINDS, SUB_KINDS, Problem, diagnose_log
from agent.engine.remedy import ACTIONS, REMEDIES, Decision, decide, remedy_for, smaller_workspace
from agent.engine.spec import BuildSpec, Precision
from agent.store.hashing import sha256_file
from tests.engine.conftest import cpu_spec


def problem(kind: str, sub_kind: Optional[str] = None, severity: str = "error", **fields: Any) -> Problem:
    return Problem(kind, None, None, f"a {kind} line", "what it means", severity=severity, sub_kind=sub_kind, fields=dict(fields))


EXPECTED = {  # (kind, sub_kind) -> action: the table as docs/engines.md states it
    ("version_mismatch", None): "rebuild",
    ("device_mismatch", None): "rebuild",
    ("corrupt", None): "rebuild",
    ("out_of_memory", None): "retry_smaller",
    ("unsupported_op", None): "refuse",
    ("plugin_missing", None): "refuse",
    ("calibration", "zero_tensor"): "fp16_layers",
    ("calibration", "missing_ranges"): "fp16_layers",
    ("calibration", "algorithm_mismatch"): "refuse",
    ("calibration", "table_unreadable"): "refuse",
    ("calibration", "calibrator_failed"): "refuse",
    ("no_implementation", "workspace"): "retry_smaller",
    ("no_implementation", "format"): "fp16_layers",
    ("dla", "fallback"): "report",
    ("dla", "error"): "refuse",
    ("batch_mismatch", None): "rebuild",
    ("api_usage", None): "refuse",
    ("unknown", None): "refuse",
}


def test_the_table_covers_every_kind_and_sub_kind_once() -> None:
    rows = [(r.kind, r.sub_kind) for r in REMEDIES]
    assert len(rows) == len(set(rows)) and set(rows) == set(EXPECTED)
    assert {r.action for r in REMEDIES} <= set(ACTIONS)
    for kind in KINDS:
        for sub_kind in SUB_KINDS.get(kind, (None,)):
            assert remedy_for(kind, sub_kind).kind == kind


@pytest.mark.parametrize("row", list(EXPECTED), ids=lambda row: "/".join(x for x in row if x))
def test_each_row_decides_its_action(row: Any) -> None:
    kind, sub_kind = row
    severity = "warning" if EXPECTED[row] == "report" else "error"
    decision = decide([problem(kind, sub_kind, severity, tensor="conv_out")])
    assert decision.action == EXPECTED[row], decision
    assert decision.problem is not None and decision.problem.kind == kind and decision.reason


def test_one_retry_then_refuse_and_fp16_only_when_allowed() -> None:
    oom = [problem("out_of_memory", requested_bytes=4 << 30)]
    assert decide(oom).action == "retry_smaller"
    again = decide(oom, retried=True)
    assert again.action == "refuse" and "after one retry" in again.reason
    zero = [problem("calibration", "zero_tensor", tensor="branch/out"), problem("calibration", "zero_tensor", tensor="branch/out2")]
    assert decide(zero).names == ["branch/out", "branch/out2"]
    strict = decide(zero, allow_fp16=False)
    assert strict.action == "refuse" and "requires INT8" in strict.reason
    assert decide([problem("calibration", "missing_ranges", tensors="all")]).names == []  # none has a scale: the whole network


def test_warnings_are_reported_and_the_verdict_decides() -> None:
    # real lines (NVIDIA/TensorRT#3355, then onnx/onnx-tensorrt#758 in trt_error_messages.txt): tactics skipped for
    # memory are a warning; the error after them decides, with the memory named as its cause
    log = ("[09/26/2023-18:37:19] [W] [TRT] Tactic Device request: 4229MB Available: 2658MB. Device memory is insufficient to use tactic.\n"
           "[02/19/2022-21:14:43] [TRT] [E] 10: [optimizer.cpp::computeCosts::2011] Error Code 10: Internal Error (Could not find any "
           "implementation for node {ForeignNode[transformer.wte.weight...MatMul_2899]}.)")
    decision = decide(diagnose_log(log))
    assert decision.action == "retry_smaller" and decision.problem is not None and decision.problem.sub_kind == "workspace"
    assert decide(diagnose_log(log.splitlines()[0])).action == "report"
    assert decide([]).action == "refuse"


def test_a_build_that_fails_right_after_tactics_skipped_for_memory_is_a_memory_failure() -> None:
    # two real lines put together by this test: NVIDIA/TensorRT#3355's tactic skipped for memory (a warning) and
    # NVIDIA/TensorRT#2918's build assertion (the follow-up saying the build failed)
    log = ("[09/26/2023-18:37:19] [W] [TRT] Skipping tactic 13 due to insufficient memory on requested size of 4229 detected for tactic 0x0000000000000074.\n"
           "[04/28/2023-14:06:47] [E] Error[2]: [builder.cpp::buildSerializedNetwork::751] Error Code 2: Internal Error (Assertion engine != nullptr failed. )")
    problems = diagnose_log(log)
    assert [(p.kind, p.severity) for p in problems] == [("out_of_memory", "error")]
    assert decide(problems).action == "retry_smaller"


def test_a_refusal_lists_every_unsupported_operator_and_missing_plugin() -> None:
    ops = [problem("unsupported_op", "operator", operator="DCN", node_number=70, opset=9), problem("unsupported_op", "operator", operator="GridSample", node="gs_1")]
    decision = decide(ops)
    assert decision.action == "refuse" and decision.names == ["DCN (node 70, opset 9)", "GridSample (gs_1)"]
    assert decision.reason.startswith("unsupported operator(s): DCN (node 70, opset 9), GridSample (gs_1)")
    plugins = decide([problem("plugin_missing", plugin="YoloLayer_TRT", plugin_version="1")])
    assert plugins.names == ["YoloLayer_TRT version 1"] and plugins.reason.startswith("missing plugin(s): YoloLayer_TRT version 1")


def test_unknown_is_refused_with_the_line_quoted() -> None:
    line = "[03/19/2024-16:10:14] [TRT] [E] 2: [pluginV2DynamicExtRunner.cpp::execute::115] Error Code 2: Internal Error (Assertion status == kSTATUS_SUCCESS failed.)"
    decision = decide(diagnose_log(line))  # Linaom1214/TensorRT-For-YOLO-Series#122, tests/engine/data/trt_logs_public.txt
    assert decision.action == "refuse" and "kSTATUS_SUCCESS" in decision.reason


def test_smaller_workspace() -> None:
    assert smaller_workspace(1024) == 512 and smaller_workspace(100) == 64 and smaller_workspace(0, free_mb=3000) == 1500


def _failed(decision: Decision) -> BuildError:
    error = BuildError("TensorRT could not build the engine", kind="build", decision=decision)
    error.failure = {"kind": "build", "error": "TensorRT could not build the engine"}
    return error


def test_the_spec_a_remedy_builds(tmp_path: Path, tiny_table: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    gpu = BuildSpec(model_sha256="a" * 64, precision=Precision.INT8, target="gpu", calib_sha256=sha256_file(tiny_table), workspace_mb=1024).validate()
    smaller = _remedy_spec(_failed(decide([problem("out_of_memory")])), gpu, cache, tiny_table)
    assert smaller is not None and smaller[0].workspace_mb == 512 and smaller[1] == tiny_table
    from agent.calib.table import read_table

    names = sorted(read_table(tiny_table).entries)[:2]
    zero = decide([problem("calibration", "zero_tensor", tensor=name) for name in names])
    spec, table, what = _remedy_spec(_failed(zero), gpu, cache, tiny_table)
    assert spec.calib_sha256 == sha256_file(table) != gpu.calib_sha256 and "2 tensor(s) left out" in what
    assert set(read_table(table).entries) == set(read_table(tiny_table).entries) - set(names)
    fp16 = _remedy_spec(_failed(decide([problem("no_implementation", "format", node="ArgMax_532")])), gpu, cache, tiny_table)
    assert fp16 is not None and fp16[0].precision == Precision.FP16 and fp16[0].calib_sha256 is None
    # nothing to retry: a refusal, a cpu build (onnxruntime has no workspace), a forced build that recorded nothing
    assert _remedy_spec(_failed(decide([problem("plugin_missing")])), gpu, cache, tiny_table) is None
    fp16_spec = BuildSpec(model_sha256="a" * 64, precision=Precision.FP16, target="gpu").validate()
    assert _remedy_spec(_failed(decide([problem("no_implementation", "format")])), fp16_spec, cache, None) is None
    assert _remedy_spec(_failed(decide([problem("out_of_memory")])), cpu_spec(tiny_table), cache, None) is None
    unrecorded = _failed(decide([problem("out_of_memory")]))
    unrecorded.failure = {}
    assert _remedy_spec(unrecorded, gpu, cache, tiny_table) is None


def _unknown_op_model(path: Path) -> Path:
    """A real ONNX model whose second node is an operator no runtime here implements (DCNv2, as in the public
    issues of deformable-convolution detectors)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu_0"), helper.make_node("DCNv2", ["y"], ["z"], name="dcn_7")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_unsupported_operator_fails_the_build_with_its_name(tmp_path: Path, here: DeviceFingerprint) -> None:
    model = _unknown_op_model(tmp_path / "dcn.onnx")
    cache = EngineCache(tmp_path / "engines")
    with pytest.raises(BuildError) as raised:
        ensure_engine(cpu_spec(model), cache, here, model=model)
    error = raised.value
    assert error.kind == "unsupported_op" and error.decision is not None and error.decision.action == "refuse"
    assert str(error).startswith("the model cannot be built here: unsupported operator(s): DCNv2 (dcn_7, opset 13)"), str(error)
    failure: Dict[str, Any] = json.loads((cache.entry_dir(error.key) / FAILURE).read_text())
    assert failure["decision"]["names"] == ["DCNv2 (dcn_7, opset 13)"] and failure["problems"][0]["kind"] == "unsupported_op"
    with pytest.raises(BuildError, match="DCNv2"):  # recorded: not rebuilt on the next start, the reason kept
        ensure_engine(cpu_spec(model), EngineCache(cache.root), here, model=model)


@pytest.mark.tensorrt
def test_tensorrt_refuses_an_operator_it_cannot_import_with_its_name(tmp_path: Path, here: DeviceFingerprint) -> None:
    """On a device with TensorRT: the parser meets DCNv2 (no importer, no plugin) and the build is refused with the
    operator or plugin named, from the classified log, not 'the build failed'."""
    model = _unknown_op_model(tmp_path / "dcn.onnx")
    spec = BuildSpec(model_sha256=sha256_file(model), precision=Precision.FP16, target="gpu")
    with pytest.raises(BuildError) as raised:
        ensure_engine(spec, EngineCache(tmp_path / "engines"), here, model=model)
    error = raised.value
    assert error.decision is not None and error.decision.action == "refuse", (str(error), error.problems)
    assert any("DCNv2" in name for name in error.decision.names) and "DCNv2" in str(error)
    assert error.decision.problem is not None and error.decision.problem.kind in ("unsupported_op", "plugin_missing")
