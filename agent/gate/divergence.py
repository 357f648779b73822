"""The deep part of a failed INT8 gate: run the FP32 model (and the Q/DQ model, when there is one) on
onnxruntime with every node output exposed, then
- check each quantised tensor's scale against the real FP32 range (see culprits.range_issues);
- compare every intermediate tensor of the Q/DQ model with the FP32 one and rank layers by the similarity
  they *lose* (cosine of the output minus the worst cosine of its inputs), so the blame lands on the layer
  where the error appears, not on the last layer where it has piled up.

This is Polygraphy's `run --onnxrt --onnx-outputs mark all` comparison, made automatic and time-boxed: it stops
after `budget_s` seconds with what it has. On a TensorRT device it needs onnxruntime and the model's ONNX; the
engine itself exposes no intermediate tensors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from agent.calib.qdq import to_qdq
from agent.gate.culprits import (
    Culprit,
    TensorRange,
    accumulate_range,
    merge_culprits,
    range_issues,
    scale_issues,
    table_scales,
)
from agent.gate.onnx_reference import ModelSource, ReferenceSession, load_model, with_all_outputs
from agent.gate.thresholds import GateError
from agent.gate.validation import ValidationSet
from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

DIVERGENCE_MIN_DROP = 0.005  # a layer that loses less cosine than this is not listed
FIRST_DIVERGENT_DROP = 0.05  # where the damage starts: the first layer in graph order losing this much
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class LayerDivergence:
    node: str
    op_type: str
    output: str
    cosine: float  # the output's cosine similarity with FP32 over the diagnosed frames
    local_drop: float  # cosine lost in this layer: worst input cosine minus output cosine

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "output": self.output, "cosine": round(self.cosine, 6), "local_drop": round(self.local_drop, 6)}


@dataclass
class Diagnosis:
    culprits: List[Culprit] = field(default_factory=list)
    layers: List[LayerDivergence] = field(default_factory=list)  # worst first
    first_divergent: Optional[LayerDivergence] = None  # the earliest layer losing FIRST_DIVERGENT_DROP or more
    fp16_layers: List[str] = field(default_factory=list)  # weighted layers touching culprit tensors, then divergent ones
    frames: int = 0
    seconds: float = 0.0
    truncated: bool = False
    skipped: List[str] = field(default_factory=list)  # parts not done, with the reason

    def to_dict(self) -> Dict[str, Any]:
        return {
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "truncated": self.truncated,
            "skipped": list(self.skipped),
            "first_divergent_layer": self.first_divergent.to_dict() if self.first_divergent else None,
        }


def qdq_scales(model: Any) -> Dict[str, float]:
    """tensor -> scale of every per-tensor QuantizeLinear on an activation in a Q/DQ model."""
    from onnx import numpy_helper  # heavy (protobuf): imported only where a model is read or written

    initializers = {init.name: init for init in model.graph.initializer}
    scales: Dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 2 or node.input[0] in initializers:
            continue
        init = initializers.get(node.input[1])
        if init is None:
            continue
        value = numpy_helper.to_array(init)
        if value.size == 1:
            scales[node.input[0]] = float(value.reshape(-1)[0])
    return scales


def _build_qdq(reference: Any, table: Any) -> Tuple[Optional[Any], Optional[str]]:
    """The Q/DQ model of `reference` under `table` via the calibration package, or (None, why not)."""
    try:
        result = to_qdq(reference, table, flavor="tensorrt")
    except Exception as exc:  # a table the converter refuses is itself a finding, reported as skipped
        return None, f"could not build the Q/DQ model from the table: {exc}"
    return getattr(result, "model", result), None


def _consumers(model: Any) -> Dict[str, List[Any]]:
    consumers: Dict[str, List[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def diagnose(
    validation: ValidationSet,
    reference_model: Optional[ModelSource] = None,
    candidate_model: Optional[ModelSource] = None,
    table: Any = None,
    budget_s: float = 60.0,
    max_frames: int = 4,
    top: int = 10,
) -> Diagnosis:
    """Name the tensors and layers that make an INT8 build drift from FP32. Never raises for a model it cannot
    run: what it could not do is listed in `skipped`."""
    start = time.monotonic()
    scales = table_scales(table)
    diagnosis = Diagnosis(culprits=scale_issues(scales))
    if reference_model is None:
        diagnosis.skipped.append("no FP32 reference model: range check and layer comparison skipped")
        diagnosis.seconds = time.monotonic() - start
        return diagnosis
    try:
        reference = load_model(reference_model)
        candidate = load_model(candidate_model) if candidate_model is not None else None
    except GateError as exc:
        diagnosis.skipped.append(str(exc))
        diagnosis.seconds = time.monotonic() - start
        return diagnosis
    if candidate is None and scales:
        candidate, why = _build_qdq(reference, table)
        if why:
            diagnosis.skipped.append(why)
    elif candidate is None:
        diagnosis.skipped.append("no Q/DQ model and no table: layer comparison skipped")
    if not scales and candidate is not None:
        scales = qdq_scales(candidate)  # the scales the build really used
    try:
        ref_marked, _ = with_all_outputs(reference)
        ref_session = ReferenceSession(ref_marked, optimize=False)
        cand_session = ReferenceSession(with_all_outputs(candidate)[0], optimize=False) if candidate is not None else None
    except GateError as exc:
        diagnosis.skipped.append(f"cannot run the models for the layer comparison: {exc}")
        diagnosis.seconds = time.monotonic() - start
        return diagnosis

    inputs = validation.inputs
    ranges: Dict[str, TensorRange] = {}
    sums: Dict[str, List[float]] = {}  # tensor -> [dot, |ref|^2, |cand|^2]
    frames = min(max_frames, validation.count)
    for i in range(frames):
        if time.monotonic() - start > budget_s:
            diagnosis.truncated = True
            break
        feed = {name: inputs[name][i : i + 1] for name in ref_session.input_names if name in inputs}
        if len(feed) != len(ref_session.input_names):
            diagnosis.skipped.append(f"validation inputs {sorted(inputs)} do not match the model's {ref_session.input_names}")
            break
        ref_values = ref_session.run(feed)
        for name in scales:
            if name in ref_values:
                ranges[name] = accumulate_range(ref_values[name], scales[name], ranges.get(name))
            elif name in feed:
                ranges[name] = accumulate_range(feed[name], scales[name], ranges.get(name))
        if cand_session is not None:
            cand_values = cand_session.run(feed)
            for name, ref_value in ref_values.items():
                cand_value = cand_values.get(name)
                if cand_value is None or cand_value.shape != ref_value.shape or ref_value.dtype.kind != "f":
                    continue
                a = ref_value.astype(np.float64).ravel()
                b = np.nan_to_num(cand_value.astype(np.float64).ravel(), nan=0.0, posinf=0.0, neginf=0.0)
                acc = sums.setdefault(name, [0.0, 0.0, 0.0])
                acc[0] += float(a @ b)
                acc[1] += float(a @ a)
                acc[2] += float(b @ b)
        diagnosis.frames += 1

    diagnosis.culprits = merge_culprits(diagnosis.culprits, range_issues(scales, ranges))
    cosines = {name: _cosine(acc) for name, acc in sums.items()}
    ranked = _rank_layers(reference, cosines)
    diagnosis.layers = sorted(ranked, key=lambda layer: -layer.local_drop)[:top]
    diagnosis.first_divergent = next((layer for layer in ranked if layer.local_drop >= FIRST_DIVERGENT_DROP), None)
    diagnosis.fp16_layers = _fp16_layers(reference, diagnosis.culprits, diagnosis.layers)
    diagnosis.seconds = time.monotonic() - start
    return diagnosis


def _cosine(acc: List[float]) -> float:
    dot, ref_sq, cand_sq = acc
    if ref_sq == 0 and cand_sq == 0:
        return 1.0
    if ref_sq == 0 or cand_sq == 0:
        return 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(ref_sq * cand_sq)))


def _rank_layers(reference: Any, cosines: Mapping[str, float]) -> List[LayerDivergence]:
    """Layers losing at least DIVERGENCE_MIN_DROP, in graph order."""
    layers = []
    for node in reference.graph.node:
        outputs = [name for name in node.output if name in cosines]
        if not outputs:
            continue
        out_cos = min(cosines[name] for name in outputs)
        in_cos = min([cosines[name] for name in node.input if name in cosines] or [1.0])
        drop = in_cos - out_cos
        if drop >= DIVERGENCE_MIN_DROP:
            layers.append(LayerDivergence(node.name or outputs[0], node.op_type, outputs[0], out_cos, drop))
    return layers


def _fp16_layers(reference: Any, culprits: List[Culprit], layers: List[LayerDivergence]) -> List[str]:
    """Layers to keep in FP16: the weighted layers fed by a culprit tensor, then the divergent layers."""
    consumers = _consumers(reference)
    chosen: List[str] = []
    for culprit in culprits:
        for node in consumers.get(culprit.tensor, []):
            name = node.name or node.output[0]
            if node.op_type in WEIGHTED_OPS and name not in chosen:
                chosen.append(name)
    for layer in layers:
        if layer.node not in chosen:
            chosen.append(layer.node)
    return chosen
