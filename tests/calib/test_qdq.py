"""Table -> explicit Q/DQ: the TensorRT placement (as ModelOpt places it) and the onnxruntime flavour."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from agent.calib.qdq import ort_flavor_supported, quantize_weight, require_ort_flavor, to_qdq
from agent.calib.table import CalibError, CalibTable
from agent.lazy import module_version
from tests.calib.conftest import tiny_inputs
from tests.calib.test_check import damaged

ORT_FLAVOR_HERE = ort_flavor_supported(module_version("onnxruntime"))
needs_ort_flavor = pytest.mark.skipif(not ORT_FLAVOR_HERE, reason="the onnxruntime flavour needs onnxruntime >= 1.20")


def producers(model: Any) -> Dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def initializer(model: Any, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def run(model: Any, inputs: List[np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for x in inputs]


def test_ort_flavour_version_gate() -> None:
    assert not ort_flavor_supported("1.19.2")  # the newest onnxruntime on Python 3.8
    assert not ort_flavor_supported("1.16.3") and not ort_flavor_supported(None) and not ort_flavor_supported("dev")
    assert ort_flavor_supported("1.20.0") and ort_flavor_supported("1.32.0") and ort_flavor_supported("2.0.1")
    with pytest.raises(CalibError, match=r"needs onnxruntime >= 1\.20 \(found 1\.19\.2.*--flavor tensorrt"):
        require_ort_flavor("1.19.2")


def test_weights_quantize_per_channel_symmetrically() -> None:
    weights = np.array([[1.0, -2.0], [0.0, 0.0], [0.5, 0.25]], np.float32)
    values, scale = quantize_weight(weights, 0)
    assert scale.tolist() == pytest.approx([2 / 127, 1.0, 0.5 / 127])  # an all-zero channel gets scale 1
    assert values.dtype == np.int8 and values[0].tolist() == [64, -127] and values[1].tolist() == [0, 0]
    flat_values, flat_scale = quantize_weight(np.array([3.0, -1.5], np.float32), None)
    assert flat_scale.shape == () and flat_values.tolist() == [127, -64]


def test_tensorrt_flavour_places_qdq_like_modelopt(effnet: Any, effnet_table: CalibTable) -> None:
    import onnx

    original = effnet.SerializeToString()
    result = to_qdq(effnet, effnet_table, "tensorrt")
    assert effnet.SerializeToString() == original  # the argument is not modified
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    made_by = producers(model)
    nodes = model.graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 49 and result.skipped == [] and result.quantized_nodes == 60
    for conv in convs:
        activation, weight = made_by[conv.input[0]], made_by[conv.input[1]]
        assert activation.op_type == "DequantizeLinear" and made_by[activation.input[0]].op_type == "QuantizeLinear"
        assert weight.op_type == "DequantizeLinear" and {a.name: a.i for a in weight.attribute}["axis"] == 0
        assert initializer(model, weight.input[0]).dtype == np.int8
        assert not np.any(initializer(model, weight.input[2]))  # zero points 0
    for clip in (n for n in nodes if n.op_type == "Clip"):
        assert made_by[clip.input[0]].op_type == "Conv"  # nothing between a Conv and its activation
    for add in (n for n in nodes if n.op_type == "Add"):
        kinds = sorted(made_by[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"]  # only the skip input is quantized
    assert made_by["logits"].op_type == "Gemm"  # no Q/DQ on the graph output
    gap = next(n for n in nodes if n.op_type == "GlobalAveragePool")
    assert made_by[gap.input[0]].op_type == "DequantizeLinear"
    for q in (n for n in nodes if n.op_type == "QuantizeLinear"):
        assert initializer(model, q.input[1]) == np.float32(effnet_table.entries[q.input[0]])  # the table's scale, exactly
        assert initializer(model, q.input[2]).dtype == np.int8 and initializer(model, q.input[2]) == 0


def test_tensorrt_flavour_keeps_fp32_top1(effnet: Any, effnet_table: CalibTable, photos: List[np.ndarray]) -> None:
    reference = [int(y.argmax()) for y in run(effnet, photos)]
    quantized = [int(y.argmax()) for y in run(to_qdq(effnet, effnet_table, "tensorrt").model, photos)]
    assert quantized == reference


def test_excluding_gemm_leaves_the_classifier_float(effnet: Any, effnet_table: CalibTable) -> None:
    result = to_qdq(effnet, effnet_table, "tensorrt", exclude_op_types=("Gemm",))
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    assert producers(result.model)[gemm.input[0]].op_type == "Flatten" and gemm.input[1] == "fc_w_192"
    assert result.quantized_nodes == 59


@needs_ort_flavor
def test_onnxruntime_flavour_fuses_and_keeps_fp32_top1(effnet: Any, effnet_table: CalibTable, photos: List[np.ndarray]) -> None:
    result = to_qdq(effnet, effnet_table, "onnxruntime")
    nodes = result.model.graph.node
    # every Clip is removed (the uint8 range, lower bound 0, clips) except the one after the float image stem
    assert [n.input[0] for n in nodes if n.op_type == "Clip"] == ["conv_3"]
    assert "conv_3" in result.notes[-1] and result.quantized_nodes == 60
    zero_points = [initializer(result.model, n.input[2]) for n in nodes if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    assert [int(y.argmax()) for y in run(result.model, photos)] == [int(y.argmax()) for y in run(effnet, photos)]


@pytest.mark.skipif(ORT_FLAVOR_HERE, reason="onnxruntime >= 1.20 here has the flavour; the refusal is tested on older ones")
def test_onnxruntime_flavour_refuses_old_onnxruntime(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    import onnx

    with pytest.raises(CalibError, match=r"1\.20"):
        to_qdq(onnx.load(str(tiny_onnx)), tiny_table, "onnxruntime")


# ids must not be the bare word "tensorrt": tests/conftest.py skips any test carrying that keyword
@pytest.mark.parametrize("flavor", [pytest.param("tensorrt", id="trt-flavour"), pytest.param("onnxruntime", id="ort-flavour", marks=needs_ort_flavor)])
def test_tiny_model_quantized_output_stays_close(tiny_onnx: Path, tiny_table: CalibTable, flavor: str) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    inputs = tiny_inputs()
    result = to_qdq(model, tiny_table, flavor)
    assert result.skipped == [] and result.quantized_nodes >= 3  # conv, gap, fc
    for ref, got in zip(run(model, inputs), run(result.model, inputs)):
        assert np.allclose(got, ref, atol=0.05 * np.abs(ref).max())


def test_missing_and_degenerate_scales_leave_nodes_float(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    result = to_qdq(model, damaged(tiny_table, {"relu_out": None, "flat_out": float("inf")}), "tensorrt")
    assert result.skipped == ["relu_out", "flat_out"]
    made_by = producers(result.model)
    gemm = next(n for n in result.model.graph.node if n.op_type == "Gemm")
    assert made_by[gemm.input[0]].op_type == "Flatten" and gemm.input[1] == "fc_w"
    assert result.quantized_nodes == 1  # only the Conv
    run(result.model, tiny_inputs(1))


def test_old_opset_is_converted(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.opset_import[0].version = 11
    result = to_qdq(model, tiny_table, "tensorrt")
    assert result.model.opset_import[0].version == 13 and "opset converted from 11" in result.notes[0]
    run(result.model, tiny_inputs(1))


def test_refusals(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    import onnx

    model = onnx.load(str(tiny_onnx))
    with pytest.raises(CalibError, match="already quantized"):
        to_qdq(to_qdq(model, tiny_table, "tensorrt").model, tiny_table, "tensorrt")
    with pytest.raises(CalibError, match="no table entry matches"):
        to_qdq(model, damaged(tiny_table, {name: (f"other_{name}",) for name in tiny_table.entries}), "tensorrt")
    with pytest.raises(CalibError, match="unknown Q/DQ flavour"):
        to_qdq(model, tiny_table, "openvino")
