"""Verdicts: degenerate scales, fit to the model, and what the target TensorRT does with the table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

import pytest

from agent.calib.check import check_table
from agent.calib.table import CalibError, CalibTable, parse_table, with_header_version
from tests.helpers import testdata as data_file


def damaged(table: CalibTable, changes: Dict[str, Any]) -> CalibTable:
    """A copy with entries replaced (value), removed (None) or renamed ((new_name,))."""
    entries = dict(table.entries)
    for name, change in changes.items():
        if change is None:
            del entries[name]
        elif isinstance(change, tuple):
            entries[change[0]] = entries.pop(name)
        else:
            entries[name] = change
    return replace(table, entries=entries, spelling={})


def test_segformer_zeros_block_without_a_model() -> None:
    table = parse_table(data_file("real", "calib", "calib_12_segformer_b2_zeros_unnamed_trt8.4.cache").read_bytes())
    report = check_table(table)
    assert report.blocking
    zero = report.by_code("zero_scale")[0]
    assert zero.severity == "error"
    assert zero.tensors == ["(Unnamed Layer* 64) [Shuffle]_output", "366"]
    assert "prune" in zero.message and "recalibrate" in zero.message


def test_bert_inf_scales_block() -> None:
    table = parse_table(data_file("real", "calib", "calib_24_bert_trt10.10.cache").read_bytes())
    report = check_table(table)
    assert report.blocking and len(report.by_code("inf_scale")[0].tensors) == 3


def test_reference_table_fits_its_model(effnet: Any, effnet_table: CalibTable) -> None:
    report = check_table(effnet_table, effnet)
    assert not report.blocking
    assert report.coverage is not None
    assert report.coverage.with_scale == report.coverage.network_tensors == 95
    assert report.coverage.int8_layers == len(report.coverage.layers) == 60  # 49 Conv, 9 residual Add, GAP, Gemm


def test_damaged_table_is_caught_against_the_real_model(effnet: Any, effnet_table: CalibTable) -> None:
    table = damaged(
        effnet_table,
        {
            "relu6_10": None,  # conv_11's input: missing
            "relu6_17": 0.0,  # conv_18's input: all zeros
            "add_36": float("inf"),  # conv_37's input and a residual: broken
            "relu6_21": ("relu6_21:0",),  # a TensorFlow-style rename
            "logits": float("nan"),
        },
    )
    table.entries["(Unnamed Layer* 3) [Shuffle]_output"] = 0.01
    report = check_table(table, effnet, "10.3.0")
    assert report.blocking
    assert report.by_code("zero_scale")[0].tensors == ["relu6_17"]
    assert report.by_code("inf_scale")[0].tensors == ["add_36"]
    assert report.by_code("nan_scale")[0].tensors == ["logits"]
    missing = report.by_code("missing_scales")[0]
    assert missing.severity == "warning" and missing.tensors == ["relu6_10", "relu6_21"]
    assert "conv_11" in missing.message and "conv_22" in missing.message
    assert report.by_code("unmatched_entries")[0].tensors == ["relu6_21:0"]
    assert report.coverage is not None and report.coverage.rename_hints == {"relu6_21:0": "relu6_21"}
    assert report.by_code("trt_internal_names")[0].severity == "info"
    float_layers = {layer.node: layer for layer in report.coverage.layers if not layer.int8}
    assert set(float_layers) == {"conv_11", "conv_18", "conv_22", "conv_37"}
    assert float_layers["conv_18"].degenerate == ["relu6_17"]


def test_damaged_table_is_caught_against_the_tiny_model(tiny_onnx: Any, tiny_table: CalibTable) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    assert not check_table(tiny_table, model).blocking
    report = check_table(damaged(tiny_table, {"relu_out": None, "flat_out": 0.0}), model)
    assert report.blocking
    assert report.by_code("missing_scales")[0].tensors == ["relu_out"]  # the GlobalAveragePool input
    assert report.by_code("zero_scale")[0].tensors == ["flat_out"]  # the Gemm input
    assert {layer.node for layer in report.coverage.layers if not layer.int8} == {"gap", "fc"}  # type: ignore[union-attr]


def test_degenerate_scale_outside_the_model_only_warns(tiny_onnx: Any, tiny_table: CalibTable) -> None:
    import onnx

    table = damaged(tiny_table, {})
    table.entries["some_other_branch"] = 0.0
    report = check_table(table, onnx.load(str(tiny_onnx)))
    assert not report.blocking
    assert report.by_code("zero_scale")[0].severity == "warning"


def test_table_for_another_model_matches_nothing(effnet: Any) -> None:
    table = parse_table(data_file("real", "calib", "calib_18_vgg16_trt7.2.cache").read_bytes())
    report = check_table(table, effnet)
    assert report.blocking and report.by_code("no_match")[0].severity == "error"


def test_empty_table_blocks() -> None:
    assert check_table(parse_table(b"TRT-8601-EntropyCalibration2\n")).codes == ["empty"]


def test_extreme_and_colon_names_are_reported() -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\nhuge: 47000000\ntiny: 2e000000\nrelu:0: 3c010a14\n")
    report = check_table(table)
    assert report.by_code("extreme_scale")[0].tensors == ["huge"]
    assert report.by_code("tiny_scale")[0].tensors == ["tiny"]
    assert report.by_code("colon_in_names")[0].tensors == ["relu:0"]
    assert not report.blocking


@pytest.mark.parametrize(
    "trt, target, portable, method, codes",
    [
        ("10.3.0", "gpu", False, "dynamic_range", {"header_not_consulted", "implicit_int8_deprecated"}),
        ("8.6.2", "gpu", False, "dynamic_range", {"header_not_consulted"}),
        ("8.6.1", "gpu", True, "cache_calibrator", {"header_version_match", "algorithm_ok"}),
        ("10.3.0", "gpu", True, "cache_calibrator", {"header_version_mismatch"}),
        ("10.3.0", "dla:0", False, "cache_calibrator", {"header_version_mismatch", "algorithm_ok"}),
        ("11.1.0", "gpu", False, "qdq_tensorrt", {"needs_qdq"}),
        (None, "cpu", False, "qdq_onnxruntime", {"needs_qdq"}),
    ],
)
def test_route_verdicts_follow_the_target_tensorrt(trt: Any, target: str, portable: bool, method: str, codes: set) -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    report = check_table(table, None, trt, target, portable=portable)
    assert report.route is not None and report.route.method.value == method
    assert codes <= set(report.codes)
    assert not report.blocking


def test_dla_refuses_what_it_cannot_take() -> None:
    minmax = parse_table(b"TRT-8602-MinMaxCalibration\ninput: 3c010a14\n")
    report = check_table(minmax, None, "8.6.2", "dla")
    assert report.blocking and report.by_code("dla_needs_entropy2")[0].severity == "error"
    assert not check_table(with_header_version(minmax, "8.6.2", "EntropyCalibration2"), None, "8.6.2", "dla").blocking
    no_dla = check_table(parse_table(b"TRT-101000-EntropyCalibration2\ninput: 3c010a14\n"), None, "10.10.0", "dla")
    assert no_dla.blocking and no_dla.codes[0] == "dla_unavailable"


def test_headerless_table_on_the_cache_route_needs_a_header() -> None:
    report = check_table(parse_table(b"input: 3c010a14\n"), None, "10.3.0", "dla")
    assert report.by_code("no_header")[0].severity == "warning"


def test_bad_arguments_are_clear_errors() -> None:
    table = parse_table(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    with pytest.raises(CalibError, match="target"):
        check_table(table, None, "10.3.0", "npu")
    with pytest.raises(CalibError, match="TensorRT version"):
        check_table(table, None, "ten", "gpu")
