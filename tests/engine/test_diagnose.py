"""The TensorRT log classifier on real log lines (the shared samples and tests/engine/data/trt_logs_public.txt, each with
its source), and the plan header sniff on real plan headers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli.main import main
from agent.engine.diagnose import (
    KINDS,
    SUB_KINDS,
    LogContext,
    classify_line,
    diagnose_log,
    sniff_plan,
    verdict,
)
from agent.engine.remedy import describe
from tests import helpers

PUBLIC = Path(__file__).parent / "data" / "trt_logs_public.txt"


def _blocks(path: Path) -> List[Tuple[str, List[str]]]:
    """('# source: ...' header, its lines) for each sample; '# section' headers ('######## N.') and '# expect:' lines
    are folded into the header so a test can read them."""
    blocks: List[Tuple[str, List[str]]] = []
    current: Optional[List[str]] = None
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("########"):
            section = line
        if line.startswith("# source:"):
            current = []
            blocks.append((f"{section} {line}", current))
        elif line.startswith("# expect:") and blocks:
            blocks[-1] = (blocks[-1][0] + "\n" + line, blocks[-1][1])
        elif line.startswith("#") or not line.strip():
            current = None if not line.strip() else current
        elif current is not None:
            current.append(line)
    return [(header, lines) for header, lines in blocks if lines]


def _real_file(name: str) -> Path:
    base = helpers.shared_dir()
    path = base / "testdata" / "real" / name if base is not None else None
    if path is None or not path.is_file():
        pytest.skip(f"missing real-data file: real/{name}")
    return path


@pytest.fixture(scope="module")
def samples() -> Path:
    return _real_file("trt_error_messages.txt")


# The verdict of every sample section of trt_error_messages.txt (section number -> the kinds its samples may get).
SECTION_KINDS = {
    1: {"version_mismatch", "corrupt"},
    2: {"device_mismatch"},
    3: {"device_mismatch"},
    4: {"corrupt", "version_mismatch"},  # TensorRT 10 says "incompatible serialization version" with the magic-tag assertion
    5: {"version_mismatch"},
    7: {"dla", "api_usage"},  # cuDLA-samples#34: the builder-flag conflict comes before the DLA assertion
    8: {"no_implementation"},
    9: {"out_of_memory", "no_implementation"},  # onnxruntime#21001: tactics skipped for memory, then no kernel
    10: {"unsupported_op"},
    11: {"plugin_missing", "batch_mismatch"},  # tensorflow/models#5876 is TF-TRT's engine cache, not a plugin
    12: {"calibration", "api_usage"},  # Deep-Learning-Accelerator-SW#26: an input bound to nullptr (the cause is not logged)
    13: {"no_implementation"},
}


def _section(header: str) -> int:
    match = re.match(r"######## (\d+)\.", header)
    assert match, header
    return int(match.group(1))


def test_every_real_message_group_gets_a_kind(samples: Path) -> None:
    blocks = _blocks(samples)
    assert len(blocks) == 75
    counts: Dict[str, int] = {}
    for header, lines in blocks:
        problems = diagnose_log("\n".join(lines))
        main = verdict(problems)
        assert main is not None, f"nothing recognised in {header}"
        assert main.kind != "unknown", f"{header}: {main.line}"
        assert main.kind in SECTION_KINDS[_section(header)], (header, main.kind)
        for problem in problems:
            assert problem.kind in KINDS and (problem.sub_kind is None or problem.sub_kind in SUB_KINDS.get(problem.kind, ())), problem
        # a generic follow-up never stands alone after a specific problem
        assert not any(p.kind == "unknown" and re.search(r"deserialization failed|Deserialize|nullptr|Failed to parse", p.line) for p in problems[1:]), header
        counts[main.kind] = counts.get(main.kind, 0) + 1
    assert set(counts) >= {"version_mismatch", "device_mismatch", "corrupt", "out_of_memory", "unsupported_op", "plugin_missing",
                           "calibration", "no_implementation", "dla"}


def test_every_error_line_gets_a_verdict_or_is_folded(samples: Path) -> None:
    for header, lines in _blocks(samples) + _blocks(PUBLIC):
        problems = diagnose_log("\n".join(lines))
        covered = " ".join(p.line + " " + " ".join(p.related) for p in problems)
        for line in lines:
            if not re.search(r"\[E\]|\bE\]|ERROR\b|Error Code|\[E:", line) or re.search(r"--- End node ---|In function \w+:\s*$", line):
                continue  # the parser's node-dump marker and a location whose message follows later say nothing wrong
            words = re.findall(r"\w{4,}", line)[:3]
            assert all(word in covered for word in words), f"{header}: line not classified: {line}"


FIRST: Dict[str, Tuple[str, Optional[str], Optional[str], Optional[str], Dict[str, Any]]] = {  # source -> (kind, sub_kind, runtime, plan, fields the verdict must state)
    "jetson-inference#426": ("version_mismatch", None, "5.1.6", "5.0.6", {}),
    "NVIDIA/TensorRT#574": ("corrupt", None, "5.1.5", "0.0.0", {}),
    "SthPhoenix/InsightFace-REST#84": ("version_mismatch", None, "8.2.3", "8.2.1", {}),
    "RootKit-Org/AI-Aimbot#109": ("version_mismatch", None, "8.5.1.7", "8.5.3.1", {}),
    "PointPillarTensorRT-ROS#7": ("device_mismatch", None, "7.2", "8.7", {}),
    "fs-id 30237751230": ("version_mismatch", None, "205", "213", {}),
    "fs-id 55078853986": ("version_mismatch", None, "240", "239", {}),
    "triton-inference-server/server#4087": ("out_of_memory", None, None, None, {"requested_bytes": 2168 << 20, "available_bytes": 1536 << 20, "tactic": "1"}),
    "open-mmlab/mmdeploy#641": ("out_of_memory", None, None, None, {"memory": "host"}),
    "DeepStream-Yolo#366": ("out_of_memory", None, None, None, {"requested_bytes": 4294967296, "tactic": "0x0000000000000004", "phase": "build"}),
    "NVIDIA/TensorRT#3355": ("out_of_memory", None, None, None, {"requested_bytes": 4229 << 20, "available_bytes": 2658 << 20, "tactic": "0x0000000000000074"}),
    "open-mmlab/Live2Diff#9": ("out_of_memory", None, None, None, {"requested_bytes": 1180463648, "phase": "deserialize"}),
    "ultralytics/ultralytics#22271": ("out_of_memory", None, None, None, {"requested_bytes": 629145600, "available_bytes": 302 << 20, "tactic": "0x9d562342491490bf"}),
    "TensorRT-LLM#7650": ("out_of_memory", None, None, None, {"requested_bytes": 5658624, "available_bytes": 0}),
    "microsoft/onnxruntime#21001": ("no_implementation", "workspace", None, None, {"node": "{ForeignNode[onnx::Cast_507[Constant]...Concat_372]}"}),
    "onnx/onnx-tensorrt#37": ("unsupported_op", "operator", None, None, {"operator": "Unsqueeze", "node_number": 2}),
    "onnx/onnx-tensorrt#152": ("unsupported_op", "data_type", None, None, {"data_type": "INT64", "data_type_code": 7}),
    "onnx/onnx-tensorrt#400": ("unsupported_op", "data_type", None, None, {"data_type": "UINT8"}),
    "onnx/onnx-tensorrt#520": ("unsupported_op", "operator", None, None, {"operator": "ReverseSequence", "node_number": 54}),
    "yolov5-deepsort-tensorrt#20": ("unsupported_op", "node", None, None, {"node_number": 0, "operator": "Conv"}),
    "NVIDIA/TensorRT#1997": ("unsupported_op", "node", None, None, {"node": "Range_271", "explanation": "All inputs to range should be initializers."}),
    "Tau-J/rtmlib#12": ("unsupported_op", "node", None, None, {"node": "TopK_587"}),
    "NVIDIA/TensorRT#3894": ("unsupported_op", "data_type", None, None, {"data_type": "8", "initializer": "classes"}),
    "HFNet_SLAM#19": ("unsupported_op", "attribute", None, None, {"node": "pred/MobilenetV2/Conv/Conv2D__49", "attribute": "allowzero"}),
    "tensorflow/models#5876": ("batch_mismatch", None, None, None, {"requested_batch": 100}),
    "enazoe/yolo-tensorrt#117": ("plugin_missing", None, None, None, {"plugin": "YoloLayer_TRT", "plugin_version": "1"}),
    "zhangcheng828/TensorRT-Plugin#4": ("plugin_missing", None, None, None, {"plugin": "Custom", "plugin_version": "1"}),
    "microsoft/onnxruntime#7757": ("plugin_missing", None, None, None, {"plugin": "GroupNorm", "plugin_version": "1"}),
    "ditto-talkinghead#45": ("plugin_missing", None, None, None, {"plugin": "GridSample3D", "node_number": 11, "node": "/dense_motion_network/GridSample"}),
    "tensorflow/tensorflow#30871": ("calibration", "zero_tensor", None, None, {"tensor": "(Unnamed Layer* 2) [Constant]_output"}),
    "yolov3_tensorRT_int8_calibration#2": ("calibration", "missing_ranges", None, None, {"tensor": "softmax0 copy"}),
    "NVIDIA/TensorRT#663": ("calibration", "zero_tensor", None, None, {"tensor": "(Unnamed Layer* 371) [Constant]_output"}),
    "tensorrt-utils#24": ("calibration", "missing_ranges", None, None, {"tensor": "1316"}),
    "NVIDIA/TensorRT#815": ("calibration", "calibrator_failed", None, None, {}),
    "ELS-RD/transformer-deploy#43": ("calibration", "missing_ranges", None, None, {"tensors": "all"}),
    "NVIDIA/TensorRT#2462": ("calibration", "missing_ranges", None, None, {"tensor": "768"}),
    "super-gradients#1784": ("calibration", "algorithm_mismatch", None, None, {"route": "explicit Q/DQ"}),
    "Deep-Learning-Accelerator-SW#26": ("api_usage", None, None, None, {"tensor": "input"}),
    "torch2trt#36": ("no_implementation", "workspace", None, None, {"node": "(Unnamed Layer* 202) [Deconvolution]"}),
    "onnx/onnx-tensorrt#564": ("no_implementation", "format", None, None, {"node": "ArgMax_532"}),
    "onnx/onnx-tensorrt#758": ("no_implementation", "workspace", None, None, {"node": "{ForeignNode[transformer.wte.weight...MatMul_2899]}"}),
    "NVIDIA/TensorRT#2918": ("no_implementation", "format", None, None, {"node": "{ForeignNode[177...Reshape_81 + (Unnamed Layer* 146) [Shuffle]]}"}),
    "NVIDIA/TensorRT#3046": ("no_implementation", "workspace", None, None, {"node": "/patch_embed/patch_embed.0/Conv"}),
    "fs-id 62050258831": ("no_implementation", "format", None, None, {"node": "/cnet/layer1/layer1.0/conv2/Conv + .../relu_1/Relu + PWN(.../Add + .../relu_2/Relu)"}),
}


def test_the_verdicts_state_what_the_lines_say(samples: Path) -> None:
    found = set()
    for header, lines in _blocks(samples):
        for source, (kind, sub_kind, runtime, plan, fields) in FIRST.items():
            if source not in header:
                continue
            found.add(source)
            main = verdict(diagnose_log("\n".join(lines)))
            assert main is not None and (main.kind, main.sub_kind, main.runtime, main.plan) == (kind, sub_kind, runtime, plan), (header, main)
            assert fields.items() <= main.fields.items(), (header, main.fields)
    assert found == set(FIRST)


def _expectation(header: str) -> Tuple[str, Optional[str], Dict[str, str]]:
    match = re.search(r"# expect: (\w+)(?:/(\w+))?(.*)$", header)
    assert match, header
    return match.group(1), match.group(2), dict(re.findall(r"(\w+)=(.+?)(?=\s+\w+=|$)", match.group(3).strip()))


def test_the_public_samples_are_sourced_and_get_their_kind() -> None:
    blocks = _blocks(PUBLIC)
    assert len(blocks) >= 15
    for header, lines in blocks:
        assert re.search(r"# source: https://github\.com/[\w.-]+/[\w.-]+/(?:issues|pull)/\d+", header), header
        kind, sub_kind, fields = _expectation(header)
        main = verdict(diagnose_log("\n".join(lines)))
        assert main is not None and main.kind == kind and (sub_kind is None or main.sub_kind == sub_kind), (header, main)
        for key, value in fields.items():
            got = main.layer if key == "layer" else main.fields.get(key)
            assert str(got) == value, (header, key, got)
        if kind == "unknown":  # never guessed: the line is quoted
            assert main.line.strip() in [line.strip() for line in lines] and main.line.strip()[:60] in describe(main)


def test_follow_up_lines_join_the_cause_before_them() -> None:
    log = PUBLIC.read_text(encoding="utf-8").split("# source: https://github.com/DanaHan/Yolov5-in-Deepstream-5.0/issues/14")[1].split("\n\n")[0]
    problems = diagnose_log(log)
    assert [p.kind for p in problems] == ["plugin_missing"]
    assert any("INVALID_STATE: std::exception" in r for r in problems[0].related)
    assert any("Deserialize the cuda engine failed" in r for r in problems[0].related)
    # alone, a follow-up names nothing: it stays unknown, quoted
    alone = diagnose_log("ERROR: [TRT]: INVALID_CONFIG: Deserialize the cuda engine failed.")
    assert [p.kind for p in alone] == ["unknown"] and "Deserialize the cuda engine failed" in alone[0].line


def test_the_caller_context_fills_plugins_and_memory() -> None:
    line = "[10/02/2022-14:40:17] [E] [TRT] 3: getPluginCreator could not find plugin: Custom version: 1"
    problem = diagnose_log(line, LogContext(plugins_configured=False))[0]
    assert problem.fields["plugin_library_configured"] is False and "no plugin library" in problem.advice
    problem = diagnose_log(line, LogContext(plugins_configured=True))[0]
    assert problem.fields["plugin_library_configured"] is True and "does not register" in problem.advice
    oom = "[09/26/2023-18:37:19] [W] [TRT] Tactic Device request: 4229MB Available: 2658MB. Device memory is insufficient to use tactic."
    problem = diagnose_log(oom, LogContext(free_ram_mb=2600, processes=[("python3", 1800), ("chromium", 700)]))[0]
    assert "4229 MiB asked, 2658 MiB free" in problem.advice and "free RAM now 2600 MiB" in problem.advice and "chromium (700 MiB)" in problem.advice
    assert "workspace" in problem.advice and "shares RAM" in problem.advice


def test_onnxruntime_unsupported_operators_are_named() -> None:
    # onnxruntime's own message for a node it has no schema for, printed by the onnxruntime of this venv for the
    # DCNv2 test model of tests/engine/test_remedy.py (its file name shortened to m.onnx)
    problem = diagnose_log('[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from m.onnx failed:This is an invalid model. In Node, '
                           '("dcn_7", DCNv2, "", -1) : ("y": tensor(float),) -> ("z": tensor(float),) , Error No Op registered for DCNv2 '
                           'with domain_version of 13')[0]
    assert (problem.kind, problem.fields["operator"], problem.fields["node"], problem.fields["opset"]) == ("unsupported_op", "DCNv2", "dcn_7", 13)


def test_the_issue_examples() -> None:
    version = classify_line("[TRT] [E] 6: The engine plan file is not compatible with this version of TensorRT, expecting library version 8.2.3 got 8.2.1, please rebuild.")
    assert version is not None and (version.kind, version.runtime, version.plan) == ("version_mismatch", "8.2.3", "8.2.1")
    device = classify_line("The engine plan file is generated on an incompatible device, expecting compute 6.1 got compute 7.5, please rebuild.")
    assert device is not None and (device.kind, device.runtime, device.plan) == ("device_mismatch", "6.1", "7.5")


def test_dla_lines_name_their_layer(samples: Path) -> None:
    problems = diagnose_log(samples.read_text(encoding="utf-8"))
    layers = {p.layer for p in problems if p.kind == "dla"}
    assert {"leaky_1", "route_3", "/model.24/Constant_1_output_0", "/avgpool/GlobalAveragePool", "/Flatten"} <= layers


def test_calibration_and_quiet_lines() -> None:
    # the project's own wording of a table it cannot read (agent.calib.table), not a TensorRT line
    unreadable = classify_line("not a TensorRT calibration cache (header must be TRT-<ver>-<algo>)")
    assert unreadable is not None and (unreadable.kind, unreadable.sub_kind) == ("calibration", "table_unreadable")
    assert classify_line("[I] [TRT] Loaded engine size: 12 MiB") is None
    assert classify_line("[10/02/2022-14:40:17] [I] [TRT] No importer registered for op: Custom. Attempting to import as plugin.") is None
    assert classify_line("") is None


def test_cli_diagnose_prints_one_json_object_a_problem(samples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engine", "diagnose", "--log", str(samples), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    objects = [json.loads(line) for line in lines]
    assert len(objects) >= 75
    assert all(set(o) >= {"kind", "runtime", "plan", "line"} for o in objects)
    assert {"kind": "version_mismatch", "runtime": "8.2.3", "plan": "8.2.1"}.items() <= next(o for o in objects if o["runtime"] == "8.2.3").items()
    assert any(o["kind"] == "out_of_memory" and o.get("fields", {}).get("requested_bytes") == 4294967296 for o in objects)


def _headers(path: Path) -> List[Tuple[bytes, int]]:
    """(first 64 bytes, file size stated in the comment) for each dumped plan."""
    out: List[Tuple[bytes, int]] = []
    size = 0
    data = b""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            if data:
                out.append((data, size))
            data = b""
            match = re.search(r"(\d+) bytes", line)
            size = int(match.group(1)) if match else 0
        elif re.match(r"^[0-9a-f]{8}: ", line):
            data += bytes.fromhex("".join(line[10:49].split()))
    if data:
        out.append((data, size))
    return out


def test_header_sniff_on_real_plans_is_a_consistent_hint() -> None:
    headers = _headers(helpers.testdata("real", "engine_headers_hex.txt"))
    assert len(headers) >= 5
    for head, size in headers:
        hint = sniff_plan(head, size)
        assert hint.magic in ("ptrt", "ftrt")
        if size:  # the header's size field explains the stated file size...
            assert size in hint.expected_bytes, (head[:16], size, hint.expected_bytes)
            assert not hint.looks_truncated
            assert sniff_plan(head, size - 1000).looks_truncated  # ...and a shorter file looks truncated
    assert sniff_plan(headers[0][0]).serialization_tag == 213
    assert sniff_plan(b"").looks_truncated and sniff_plan(b"\x10\x00\x00\x00{\"a\":1}").magic is None


def test_cli_diagnose_text_ends_with_the_verdict_and_the_action(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = PUBLIC.read_text(encoding="utf-8").split("# source: https://github.com/enazoe/yolo-tensorrt/issues/168")[1].split("\n\n")[0]
    path = tmp_path / "deepstream.log"
    path.write_text(log)
    assert main(["engine", "diagnose", "--log", str(path)]) == 0
    out = capsys.readouterr().out
    assert "verdict: missing plugin(s): DETECT_TRT version 1.0" in out and "the agent would: refuse" in out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["[TRT] [E] ", "ERROR: ", "[W] ", "(", ")", "[", "]", "3: ", "In function parseGraph:", "[8] ", "node ",
                                 "Could not find any implementation for node ", "Tactic Device request: 5MB Available: 0MB",
                                 "requested size of 12", "While parsing node number 4 [Op]:", "\n", "x", "Tensor t is uniformly zero"]), max_size=40))
def test_any_text_gives_known_kinds_and_never_raises(parts: List[str]) -> None:
    for problem in diagnose_log("".join(parts)):
        assert problem.kind in KINDS and problem.line
        json.dumps(problem.to_dict())
