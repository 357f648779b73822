"""The accuracy gate: run a candidate engine on the validation set, compare with the FP32 reference, decide.

The daemon calls `run_gate` after a build and before the swap; a failed result keeps the previous engine
serving (the daemon's job) and says which metric failed by how much. When an INT8 build fails, the result
names likely culprits (bad table scales, saturated tensors, the layers that diverge most) and records the
deployment's fallback policy as a recommendation: the engine layer applies it (rebuild with those layers, or
the whole engine, in FP16) and gates the new engine again. The gate itself never builds anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from agent.gate.box_decoders import Decoder, resolve_decoder
from agent.gate.culprits import Culprit, scale_issues, table_scales
from agent.gate.divergence import Diagnosis, LayerDivergence, diagnose
from agent.gate.metrics import (
    Detections,
    classification_agreement,
    detection_agreement,
    finite_or_none,
    label_accuracy,
    output_agreement,
)
from agent.gate.onnx_reference import ModelSource
from agent.gate.thresholds import GateError, GateThresholds
from agent.gate.validation import ValidationSet
from agent.lazy import deferred
from agent.runtime.base import Runner, batch_size_of

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

DYNAMIC_BATCH = 8  # frames per inference when the engine takes any batch
MIN_LABELLED_SHARE = 0.5  # labels on at least half the frames before they may overrule agreement


@dataclass
class Failure:
    metric: str
    value: Optional[float]  # None: not finite, or not computed
    threshold: float
    direction: str  # "min": value must be at least threshold; "max": at most

    @property
    def by(self) -> Optional[float]:
        """How far past the limit, always positive; None when the value is missing or not finite."""
        if self.value is None:
            return None
        return self.threshold - self.value if self.direction == "min" else self.value - self.threshold

    def message(self) -> str:
        if self.value is None:
            return f"{self.metric} could not be computed (non-finite outputs?); limit {self.threshold:g}"
        sign = "<" if self.direction == "min" else ">"
        return f"{self.metric} {self.value:.4g} {sign} {self.threshold:g} (by {self.by:.4g})"

    def to_dict(self) -> Dict[str, Any]:
        by = self.by
        return {
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "direction": self.direction,
            "by": None if by is None else round(by, 6),
            "message": self.message(),
        }


@dataclass
class GateResult:
    passed: bool
    task: str
    frames: int
    seconds: float
    metrics: Dict[str, Optional[float]]
    thresholds: GateThresholds
    failed: List[Failure] = field(default_factory=list)
    better_than_reference: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)
    table_issues: List[Culprit] = field(default_factory=list)  # from the table alone, pass or fail
    culprits: List[Culprit] = field(default_factory=list)  # on a failed INT8 build: table + range findings
    divergent_layers: List[LayerDivergence] = field(default_factory=list)
    diagnosis: Optional[Dict[str, Any]] = None  # how the culprit search went (frames, seconds, truncated, skipped)
    fallback: Optional[Dict[str, Any]] = None  # recommendation for the engine layer, failed INT8 builds only
    validation: Dict[str, Any] = field(default_factory=dict)
    runner: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON (no NaN/inf): for the engine manifest, the status document and the event."""
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "task": self.task,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "metrics": {k: (None if v is None else finite_or_none(v)) for k, v in self.metrics.items()},
            "thresholds": self.thresholds.to_dict(),
            "gated": [name for name, _, _ in self.thresholds.gated(self.task)],
            "failed": [f.to_dict() for f in self.failed],
            "better_than_reference": list(self.better_than_reference),
            "notes": list(self.notes),
            "details": self.details,
            "table_issues": [c.to_dict() for c in self.table_issues],
            "culprits": [c.to_dict() for c in self.culprits],
            "divergent_layers": [layer.to_dict() for layer in self.divergent_layers],
            "diagnosis": self.diagnosis,
            "fallback": self.fallback,
            "validation": dict(self.validation),
            "runner": dict(self.runner),
        }

    def summary(self) -> str:
        """One line for logs and events."""
        gated = ", ".join(f"{name} {_fmt(self.metrics.get(name))}" for name, _, _ in self.thresholds.gated(self.task))
        if self.passed:
            extra = f"; better than the reference: {self.better_than_reference[0]}" if self.better_than_reference else ""
            return f"accuracy gate passed ({self.task}, {self.frames} frames, {self.seconds:.1f} s): {gated}{extra}"
        failed = "; ".join(f.message() for f in self.failed)
        names = ", ".join(c.tensor for c in self.culprits[:5])
        blame = f"; likely culprits: {names}{' ...' if len(self.culprits) > 5 else ''}" if names else ""
        return f"accuracy gate FAILED ({self.task}, {self.frames} frames): {failed}{blame}"


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


# running the candidate --------------------------------------------------------------------------------------


def _map_names(wanted: Sequence[str], offered: Sequence[str], what: str, notes: List[str]) -> Dict[str, str]:
    """validation name -> runner name: by name, or by position when the counts match but names differ."""
    if all(name in offered for name in wanted):
        return {name: name for name in wanted}
    if len(wanted) == len(offered):
        notes.append(f"{what} names differ (validation {list(wanted)}, engine {list(offered)}): matched by position")
        return dict(zip(wanted, offered))
    raise GateError(f"the engine's {what}s {list(offered)} do not match the validation set's {list(wanted)}")


def run_candidate(runner: Runner, validation: ValidationSet, notes: List[str]) -> Dict[str, np.ndarray]:
    """All validation frames through the runner, in batches it accepts; outputs keyed by the validation's names."""
    inputs = validation.inputs
    input_map = _map_names(validation.input_names, runner.input_names, "input", notes)
    specs = {spec.name: spec for spec in runner.inputs}
    first = specs[input_map[validation.input_names[0]]]
    fixed = batch_size_of(first)
    batch = fixed or DYNAMIC_BATCH
    count = validation.count
    collected: Dict[str, List[np.ndarray]] = {}
    for begin in range(0, count, batch):
        end = min(count, begin + batch)
        feed: Dict[str, np.ndarray] = {}
        for name, engine_name in input_map.items():
            chunk = inputs[name][begin:end]
            if fixed and len(chunk) < fixed:  # a fixed-batch engine: pad with the last frame, drop its outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), axis=0)])
            dtype = specs[engine_name].dtype if engine_name in specs else "float32"
            feed[engine_name] = np.ascontiguousarray(chunk.astype(np.dtype(dtype), copy=False))
        result = runner.infer(feed)
        for name, value in result.items():
            collected.setdefault(name, []).append(np.asarray(value)[: end - begin])
    outputs = {name: np.concatenate(values) for name, values in collected.items()}
    output_map = _map_names(validation.output_names, list(outputs), "output", notes)
    return {name: outputs[engine_name] for name, engine_name in output_map.items()}


def _decode_all(decoder: Decoder, outputs: Mapping[str, np.ndarray], count: int, threshold: float) -> List[Detections]:
    return [decoder({name: value[i : i + 1] for name, value in outputs.items()}, threshold) for i in range(count)]


# the gate ---------------------------------------------------------------------------------------------------


def run_gate(
    runner: Runner,
    validation: ValidationSet,
    thresholds: Optional[GateThresholds] = None,
    table: Any = None,
    *,
    decoder: Optional[Decoder] = None,
    reference_model: Optional[ModelSource] = None,
    candidate_model: Optional[ModelSource] = None,
    model_sha256: Optional[str] = None,
    precision: Optional[str] = None,
    diagnose_budget_s: float = 60.0,
    diagnose_frames: int = 4,
) -> GateResult:
    """Judge `runner` (activated here if it is not yet; left as found) against `validation`.

    `table`: the calibration table of an INT8 build (a CalibTable or a mapping name -> scale); its scales are
    checked always, and on a failure they seed the culprit search. `reference_model`: the FP32 ONNX, enabling
    the range check and the layer comparison; `candidate_model`: the Q/DQ ONNX the engine was built from
    (built from the table with agent.calib.qdq when absent). `model_sha256`: the deployment's model, which must
    be the one the validation set was made with. `precision`: "int8" marks an INT8 build without a table
    (an already quantised Q/DQ model). `decoder`: for detection, else resolved from the set's decoder config.
    The culprit search runs only on a failed INT8 gate, over `diagnose_frames` frames, for at most
    `diagnose_budget_s` seconds.
    """
    thresholds = thresholds or GateThresholds()
    start = time.monotonic()
    if model_sha256 and model_sha256 != validation.model_sha256:
        raise GateError(
            f"the validation set was made with model {validation.model_sha256[:12]}, not this deployment's {model_sha256[:12]}: "
            "its reference outputs do not apply (make a new one with `edge-agent fleet make-validation`)"
        )
    notes: List[str] = []
    details: Dict[str, Any] = {}
    metrics: Dict[str, Optional[float]] = {}
    better: List[str] = []
    activated_here = not runner.is_active
    runner.activate()
    try:
        infer_start = time.monotonic()
        outputs = run_candidate(runner, validation, notes)
        metrics["inference_seconds"] = time.monotonic() - infer_start
    finally:
        if activated_here:
            runner.deactivate()
    names = validation.frame_names
    references = validation.references

    # generic metrics on every output the set stores: gated for generic models, information otherwise
    per_output = []
    for name, reference in references.items():
        if name not in outputs:
            raise GateError(f"the engine did not produce output '{name}'")
        if outputs[name].shape != reference.shape:
            raise GateError(f"output '{name}' has shape {outputs[name].shape}, the validation set's reference {reference.shape}")
        per_output.append(output_agreement(name, reference, outputs[name]))
    if per_output:
        metrics["cosine"] = min(o.cosine_mean for o in per_output)
        metrics["max_abs_error"] = max(o.max_abs_error for o in per_output)
        details["outputs"] = [o.to_dict() for o in per_output]
        bad = sum(o.non_finite for o in per_output)
        if bad:
            notes.append(f"the engine produced {bad} NaN/inf values")

    if validation.task == "classification":
        primary = validation.primary_output
        agreement = classification_agreement(references[primary], outputs[primary])
        metrics.update(
            top1_agreement=agreement.top1_agreement,
            top5_containment=agreement.top5_containment,
            top1_agreement_without_near_ties=agreement.top1_agreement_without_near_ties,
            mean_prob_l1=agreement.mean_prob_l1,
        )
        if thresholds.near_ties == "exclude" and agreement.near_ties:
            # the gated top-1 figure is the one on decisive frames; the all-frames figure stays in the report
            metrics["top1_agreement_all_frames"] = agreement.top1_agreement
            metrics["top1_agreement"] = agreement.top1_agreement_without_near_ties
        info = agreement.to_dict()
        info["disagreements"] = [names[i] for i in agreement.disagreements]
        info["near_tie_disagreements"] = [names[i] for i in agreement.disagreements if i in agreement.near_ties]
        details["classification"] = info
        if info["near_tie_disagreements"]:
            notes.append(f"{len(info['near_tie_disagreements'])} of {len(agreement.disagreements)} top-1 disagreements are reference near-ties")
        better += _compare_with_labels(validation, references[primary], outputs[primary], metrics)
    elif validation.task == "detection":
        config = validation.decoder_config or {}
        threshold = float(config.get("score_threshold", 0.5))
        if decoder is None:
            decoder = resolve_decoder(config)
        candidates = _decode_all(decoder, outputs, validation.count, max(0.0, threshold - thresholds.score_tolerance))
        reference_boxes = validation.detections or []
        agreement_det = detection_agreement(reference_boxes, candidates, thresholds.iou, thresholds.score_tolerance, threshold)
        metrics.update(det_recall=agreement_det.recall, det_precision=agreement_det.precision, det_mean_iou=agreement_det.mean_iou)
        info = agreement_det.to_dict()
        info["missed_frames"] = [names[i] for i in agreement_det.missed_frames]
        info["iou_threshold"] = thresholds.iou
        info["score_threshold"] = threshold
        details["detection"] = info

    failures = _check(metrics, thresholds, validation.task)
    failures, overruled = _overrule_with_labels(failures, metrics, validation)
    notes += overruled

    result = GateResult(
        passed=not failures,
        task=validation.task,
        frames=validation.count,
        seconds=0.0,
        metrics=metrics,
        thresholds=thresholds,
        failed=failures,
        better_than_reference=better,
        notes=notes,
        details=details,
        validation={"sha256": validation.sha256, "model_sha256": validation.model_sha256, "created": validation.meta.get("created")},
        runner={"backend": getattr(runner, "backend", "?"), "name": getattr(runner, "name", "")},
    )
    scales = table_scales(table) if table is not None else {}
    result.table_issues = scale_issues(scales)
    if result.table_issues and result.passed:
        result.notes.append(f"the table has {len(result.table_issues)} suspicious scales, but the engine passed")
    is_int8 = table is not None or candidate_model is not None or (precision or "").lower() == "int8"
    if failures and is_int8:
        found = diagnose(validation, reference_model, candidate_model, table, budget_s=diagnose_budget_s, max_frames=diagnose_frames)
        _attach_diagnosis(result, found, thresholds.fallback)
    result.seconds = time.monotonic() - start
    return result


def _check(metrics: Mapping[str, Optional[float]], thresholds: GateThresholds, task: str) -> List[Failure]:
    failures = []
    for name, direction, limit in thresholds.gated(task):
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            failures.append(Failure(name, None, limit, direction))
        elif (direction == "min" and value < limit) or (direction == "max" and value > limit):
            failures.append(Failure(name, float(value), limit, direction))
    return failures


def _labelled(validation: ValidationSet) -> Optional[np.ndarray]:
    labels = validation.labels
    if labels is None or (labels >= 0).mean() < MIN_LABELLED_SHARE:
        return None
    return labels


def _compare_with_labels(validation: ValidationSet, reference: np.ndarray, candidate: np.ndarray, metrics: Dict[str, Optional[float]]) -> List[str]:
    labels = _labelled(validation)
    if labels is None:
        return []
    ref_acc = label_accuracy(reference, labels)
    cand_acc = label_accuracy(candidate, labels)
    metrics["label_accuracy_reference"] = ref_acc
    metrics["label_accuracy_candidate"] = cand_acc
    if cand_acc > ref_acc:
        return [f"top-1 accuracy on the {int((labels >= 0).sum())} labelled frames is {cand_acc:.4g}, the FP32 reference's {ref_acc:.4g}"]
    return []


def _overrule_with_labels(failures: List[Failure], metrics: Mapping[str, Optional[float]], validation: ValidationSet) -> Tuple[List[Failure], List[str]]:
    """Agreement below the limit is no regression when the candidate is at least as accurate on labelled frames."""
    ref_acc, cand_acc = metrics.get("label_accuracy_reference"), metrics.get("label_accuracy_candidate")
    if ref_acc is None or cand_acc is None or not (math.isfinite(ref_acc) and math.isfinite(cand_acc)) or cand_acc < ref_acc:
        return failures, []
    kept, notes = [], []
    for failure in failures:
        if failure.metric in ("top1_agreement", "top5_containment") and failure.value is not None:
            notes.append(f"{failure.message()}, but the candidate is at least as accurate as the reference on labelled frames ({cand_acc:.4g} vs {ref_acc:.4g}): not a regression")
        else:
            kept.append(failure)
    return kept, notes


def _attach_diagnosis(result: GateResult, found: Diagnosis, policy: str) -> None:
    result.culprits = found.culprits
    result.divergent_layers = found.layers
    result.diagnosis = found.to_dict()
    if policy == "fp16_engine":
        result.fallback = {
            "policy": policy,
            "precision": "fp16",
            "applies": "recommendation: the engine layer rebuilds the whole engine in FP16 and gates it again",
        }
    elif policy == "fp16_layers":
        result.fallback = {
            "policy": policy,
            "layers": list(found.fp16_layers),
            "tensors": [c.tensor for c in found.culprits],
            "applies": "recommendation: the engine layer rebuilds with these layers in FP16 (their tensors left unquantised) and gates it again",
        }
        if not found.fp16_layers:
            result.fallback["note"] = "no layer could be singled out (no FP32 model or no divergence found): consider fp16_engine"
    else:
        result.fallback = {"policy": "none", "applies": "no fallback: the previous engine keeps serving"}
