"""Computing a table on the CPU: ranges match an independent evaluation, entropy as TensorRT defines it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest

from agent.calib.make import (
    Candidate,
    auto_candidates,
    entropy_threshold,
    make_table,
    make_tables,
    parse_candidate,
    percentile_threshold,
)
from agent.calib.table import CalibError, CalibTable, write_table
from agent.vision.framesets import evenly
from tests.calib.conftest import tiny_inputs


def reference_amax(model_path: Path, inputs: List[np.ndarray], names: List[str]) -> List[float]:
    """max |x| per tensor with onnx's reference evaluator (not onnxruntime, which make_table uses)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(model_path)))
    peaks = np.zeros(len(names))
    for x in inputs:
        values = evaluator.run([n for n in names if n != "input"], {"input": x})
        values = [x, *values] if names[0] == "input" else values
        peaks = np.maximum(peaks, [np.abs(v).max() for v in values])
    return peaks.tolist()


def test_minmax_table_holds_max_abs_of_every_tensor(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    names = ["input", "conv_out", "relu_out", "gap_out", "flat_out", "logits"]
    assert list(tiny_table.entries) == names  # graph input first, then node outputs in graph order
    assert tiny_table.header == "TRT-100300-MinMaxCalibration"
    expected = reference_amax(tiny_onnx, tiny_inputs(), names)
    assert [tiny_table.amax(n) for n in names] == pytest.approx(expected, rel=1e-5)


def test_entropy_and_percentile_clip_at_or_below_the_max(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    entropy = make_table(tiny_onnx, tiny_inputs(), "entropy")
    percentile = make_table(tiny_onnx, tiny_inputs(), "percentile", percentile=99.0)
    assert entropy.algorithm == "EntropyCalibration2" and list(entropy.entries) == list(tiny_table.entries)
    for name in tiny_table.entries:
        assert 0 < entropy.entries[name] <= tiny_table.entries[name] * 1.0001
        assert 0 < percentile.entries[name] <= tiny_table.entries[name] * 1.0001


def test_one_shot_iterator_gives_the_same_table_as_a_list(tiny_onnx: Path) -> None:
    def frames() -> Iterator[np.ndarray]:
        yield from tiny_inputs()

    from_list = make_table(tiny_onnx, tiny_inputs(), "entropy", trt_version="8.6.1")
    from_iterator = make_table(tiny_onnx, frames(), "entropy", trt_version="8.6.1")  # spooled for the second pass
    assert write_table(from_iterator) == write_table(from_list)
    assert from_list.header == "TRT-8601-EntropyCalibration2"


def test_frames_without_batch_axis_are_accepted(tiny_onnx: Path, tiny_table: CalibTable) -> None:
    table = make_table(tiny_onnx, [x[0] for x in tiny_inputs()], "minmax")
    assert write_table(table) == write_table(tiny_table)


def loop_entropy(hist: np.ndarray, edges: np.ndarray, nq: int = 128) -> float:
    """The evaluation's appendix B loop, kept as the oracle for the vectorised version."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    best, best_i = np.inf, len(bins)
    for i in range(nq, len(bins) + 1):
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        chunk = (np.arange(i) * nq) // i
        nz = bins[:i] != 0
        s = np.bincount(chunk, weights=bins[:i], minlength=nq)
        c = np.bincount(chunk, weights=nz.astype(float), minlength=nq)
        q = np.where(nz, (s / np.maximum(c, 1))[chunk], 0.0)
        if ref.sum() == 0 or q.sum() == 0:
            continue
        p, q = ref / ref.sum(), q / q.sum()
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.where(q[m] > 0, q[m], 1e-12))))
        if kl <= best:
            best, best_i = kl, i
    return float(edges[best_i])


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_entropy_equals_the_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = [np.abs(rng.normal(0, 1, 20000)), np.abs(rng.laplace(0, 1, 20000)), np.r_[np.zeros(5000), rng.uniform(0, 6, 5000)], rng.exponential(1, 300)][seed]
    amax = samples.max()
    hist = np.bincount(np.minimum((samples * 2048 / amax).astype(int), 2047), minlength=2048)
    edges = np.linspace(0, amax, 2049)
    assert entropy_threshold(hist, edges) == loop_entropy(hist, edges)


def test_threshold_edge_cases() -> None:
    edges = np.linspace(0, 4.0, 2049)
    assert entropy_threshold(np.zeros(2048), edges) == 4.0
    spike = np.zeros(2048)
    spike[10] = 100
    assert entropy_threshold(spike, edges) <= 4.0
    uniform = np.ones(2048)
    assert percentile_threshold(uniform, edges, 50.0) == pytest.approx(2.0, abs=0.01)
    assert percentile_threshold(uniform, edges, 100.0) == 4.0


def test_bad_requests_are_clear_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibError, match="no calibration frames"):
        make_table(tiny_onnx, [], "minmax")
    with pytest.raises(CalibError, match="unknown calibration method"):
        make_table(tiny_onnx, tiny_inputs(), "kl")
    with pytest.raises(CalibError, match="failed on a frame"):
        make_table(tiny_onnx, [np.zeros((1, 3, 5), np.float32)], "minmax")
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(CalibError, match="not a readable ONNX model"):
        make_table(not_onnx, tiny_inputs(), "minmax")
    with pytest.raises(CalibError, match="cannot read model"):
        make_table(tmp_path / "absent.onnx", tiny_inputs(), "minmax")


def test_even_sampling_spans_the_source() -> None:
    assert evenly(795, 5) == [0, 198, 397, 596, 794]
    assert evenly(3, 10) == [0, 1, 2]
    assert evenly(10, 1) == [0] and evenly(0, 4) == []


def test_several_methods_from_one_run_equal_one_run_each(tiny_onnx: Path) -> None:
    candidates = auto_candidates((99.0, 99.99))
    assert [c.label for c in candidates] == ["entropy", "minmax", "percentile:99", "percentile:99.99"]
    together = make_tables(tiny_onnx, iter(tiny_inputs()), candidates)  # one-shot iterator: spooled once for all
    assert list(together) == [c.label for c in candidates]
    for candidate in candidates:
        alone = make_table(tiny_onnx, tiny_inputs(), candidate.method, percentile=candidate.percentile)
        assert write_table(together[candidate.label]) == write_table(alone), candidate.label


def test_candidate_labels_parse_back() -> None:
    assert parse_candidate("percentile:99.9") == Candidate("percentile", 99.9)
    assert parse_candidate("entropy").label == "entropy"
    assert parse_candidate("percentile").label == "percentile:99.99"
    for bad, message in (("minmax:99", "only percentile"), ("percentile:x", "must be a number"), ("percentile:101", "percentile must be"), ("kl", "unknown")):
        with pytest.raises(CalibError, match=message):
            parse_candidate(bad)


def test_tensors_computed_from_shapes_alone_are_not_calibrated(tmp_path: Path) -> None:
    """YOLOv8 exports build their anchor grid from the input's shape (Shape -> ConstantOfShape -> ...): all zeros or
    fixed values whatever the frames. A table entry for them says nothing, and a zero one reads as a dead branch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Relu", ["input"], ["relu_out"]),
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Add", ["zeros", "one"], ["ones"]),
        helper.make_node("Mul", ["relu_out", "ones"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_branch",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [numpy_helper.from_array(np.ones((), np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "shape_branch.onnx"
    onnx.save(model, str(path))
    table = make_table(path, tiny_inputs(), "minmax")
    assert list(table.entries) == ["input", "relu_out", "output"]
    assert all(scale > 0 for scale in table.entries.values())
