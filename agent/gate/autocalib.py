"""The calibration method chosen by measured accuracy (`edge-agent calib make --method auto`).

The forum's advice for a model that loses accuracy in INT8 is "try the legacy (minmax) calibrator instead of
entropy", followed by hand. Here every candidate table (entropy, minmax, percentile at a few points; computed
together by agent.calib.make.make_tables) becomes the CPU Q/DQ model TensorRT would build (agent.calib.qdq,
"tensorrt" flavour by default), runs on onnxruntime over the validation set, and is judged by the accuracy
gate's own metric and thresholds (agent.gate.gate.run_gate). These are onnxruntime's INT8 numbers for TensorRT's
Q/DQ placement, not a TensorRT engine's: close, not identical; the device gates its own engine again. The best
candidate wins:

1. a table `calib check` would block (a zero, inf, nan or negative scale on a tensor of the model: the outcome
   names the tensors) or whose Q/DQ model could not be built or run ranks last;
2. then a candidate that passes the gate before one that fails;
3. then the task's metrics in order: classification: top-1 agreement (as gated), top-5 containment, the mean
   probability L1 distance to FP32; detection: the F1 of box recall and precision against FP32, recall, mean
   IoU; generic: the worst output's mean cosine, the largest absolute error;
4. ties keep the candidates' order (entropy first: TensorRT's default calibrator).

This module lives in the gate package because it needs both calibration (below the gate) and the gate's
metric; agent.calib never imports agent.gate. The CLI (agent/cli/calib_cmd.py) only parses and prints.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from agent.calib.check import check_table
from agent.calib.qdq import FLAVOR_TENSORRT, to_qdq
from agent.calib.table import CalibError, CalibTable, json_float
from agent.gate.gate import GateResult, run_gate
from agent.gate.onnx_reference import load_model
from agent.gate.thresholds import GateError, GateThresholds
from agent.gate.validation import Decoder, ValidationSet
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.store.hashing import sha256_file

HEADLINE = {"classification": "top1_agreement", "detection": "det_f1", "generic": "cosine"}
# the metrics printed per task: the gated ones, then the tie-breakers
COLUMNS = {
    "classification": ("top1_agreement", "top5_containment", "top1_agreement_all_frames", "mean_prob_l1"),
    "detection": ("det_recall", "det_precision", "det_f1", "det_mean_iou"),
    "generic": ("cosine", "max_abs_error"),
}


def detection_f1(metrics: Mapping[str, Optional[float]]) -> Optional[float]:
    recall, precision = metrics.get("det_recall"), metrics.get("det_precision")
    if recall is None or precision is None or not (math.isfinite(recall) and math.isfinite(precision)):
        return None
    return 0.0 if recall + precision == 0 else 2.0 * recall * precision / (recall + precision)


def _larger(value: Optional[float]) -> float:
    """A larger-is-better metric for ranking: missing or non-finite ranks lowest."""
    return float(value) if value is not None and math.isfinite(value) else -math.inf


def _smaller(value: Optional[float]) -> float:
    """A smaller-is-better metric (an error) for ranking, negated; missing or non-finite ranks lowest."""
    return -float(value) if value is not None and math.isfinite(value) else -math.inf


def ranking_metrics(task: str, metrics: Mapping[str, Optional[float]]) -> Tuple[float, ...]:
    """The task's metrics in order of importance, each larger-is-better."""
    if task == "classification":
        # top-1 with the reference's near-ties counted is shown, not ranked: those frames flip at random under any
        # precision change (the gate leaves them out for that reason), while the probability distance is smooth
        return (
            _larger(metrics.get("top1_agreement")),
            _larger(metrics.get("top5_containment")),
            _smaller(metrics.get("mean_prob_l1")),
        )
    if task == "detection":
        return (_larger(metrics.get("det_f1")), _larger(metrics.get("det_recall")), _larger(metrics.get("det_mean_iou")))
    return (_larger(metrics.get("cosine")), _smaller(metrics.get("max_abs_error")))


@dataclass
class CandidateOutcome:
    """One candidate table measured: the gate's verdict and metrics, and what is wrong with its scales."""

    label: str  # "entropy", "minmax", "percentile:99.99"
    table: CalibTable
    passed: bool = False
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    gated: List[str] = field(default_factory=list)  # the metrics that decide the gate for this task
    failed: List[str] = field(default_factory=list)  # the gate's failure messages
    problems: Dict[str, List[str]] = field(default_factory=dict)  # blocking check finding code -> tensors
    problem_messages: List[str] = field(default_factory=list)
    left_float: List[str] = field(default_factory=list)  # tensors the Q/DQ model keeps float (no usable scale)
    error: Optional[str] = None  # the Q/DQ model could not be built or run
    seconds: float = 0.0
    chosen: bool = False

    @property
    def usable(self) -> bool:
        """Deployable as far as the table goes: built, ran, and nothing `calib check` blocks."""
        return self.error is None and not self.problems

    def headline(self, task: str) -> Tuple[str, Optional[float]]:
        name = HEADLINE.get(task, "cosine")
        return name, self.metrics.get(name)

    def rank_key(self, task: str) -> Tuple[Any, ...]:
        return (self.usable, self.passed, *ranking_metrics(task, self.metrics))

    def to_dict(self, task: str) -> Dict[str, Any]:
        name, value = self.headline(task)
        return {
            "method": self.label,
            "algorithm": self.table.algorithm,
            "metric": name,
            "value": json_float(value),
            "passed": self.passed,
            "chosen": self.chosen,
            "metrics": {k: json_float(v) for k, v in self.metrics.items() if k != "inference_seconds"},
            "failed": list(self.failed),
            "scale_problems": {code: list(names) for code, names in self.problems.items()},
            "left_float": list(self.left_float),
            "error": self.error,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class AutoCalibReport:
    task: str
    flavor: str
    thresholds: GateThresholds
    validation: Dict[str, Any]
    outcomes: List[CandidateOutcome]

    @property
    def chosen(self) -> Optional[CandidateOutcome]:
        return next((o for o in self.outcomes if o.chosen), None)

    @property
    def passed(self) -> bool:
        """The chosen table passes the gate and nothing in it blocks deployment."""
        chosen = self.chosen
        return chosen is not None and chosen.passed and chosen.usable

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON for the table's provenance sidecar and `--json`."""
        chosen = self.chosen
        return {
            "rule": "usable table first, then gate passed, then the task's metrics (see agent/gate/autocalib.py)",
            "task": self.task,
            "metric": HEADLINE.get(self.task, "cosine"),
            "flavor": self.flavor,
            "validation": dict(self.validation),
            "thresholds": self.thresholds.to_dict(),
            "chosen": chosen.label if chosen else None,
            "passed": self.passed,
            "candidates": [o.to_dict(self.task) for o in self.outcomes],
        }

    def header(self) -> Tuple[str, ...]:
        return ("method", *COLUMNS.get(self.task, COLUMNS["generic"]), "gate", "scales")

    def rows(self) -> List[Tuple[str, ...]]:
        """The comparison as printed, under `header()`: method (* chosen), metrics, gate verdict, scale problems."""
        out = []
        for outcome in self.outcomes:
            metrics = [_fmt(outcome.metrics.get(name)) for name in COLUMNS.get(self.task, COLUMNS["generic"])]
            verdict = "error" if outcome.error else ("pass" if outcome.passed else "FAIL")
            out.append((("* " if outcome.chosen else "  ") + outcome.label, *metrics, verdict, _problems_cell(outcome)))
        return out


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _problems_cell(outcome: CandidateOutcome) -> str:
    if outcome.error:
        return outcome.error
    if not outcome.problems:
        return "ok"
    parts = []
    for code, names in outcome.problems.items():
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        parts.append(f"{code}: {shown}" if names else code)
    return "; ".join(parts)


def require_same_model(validation: ValidationSet, model_path: Union[str, Path]) -> str:
    """The model's sha256, after checking the validation set was made with this model (its references apply)."""
    digest = sha256_file(model_path)
    if digest != validation.model_sha256:
        raise GateError(
            f"the validation set was made with model {validation.model_sha256[:12]}, not {Path(model_path).name} ({digest[:12]}): "
            "its reference outputs do not apply (make one with `edge-agent fleet make-validation --model` this model)"
        )
    return digest


def evaluate_table(
    model: Any,
    label: str,
    table: CalibTable,
    validation: ValidationSet,
    thresholds: GateThresholds,
    *,
    flavor: str = FLAVOR_TENSORRT,
    decoder: Optional[Decoder] = None,
    threads: int = 0,
    workdir: Union[str, Path],
) -> CandidateOutcome:
    """Check `table` against `model` (an onnx.ModelProto), build its Q/DQ model, and gate it on `validation`."""
    started = time.monotonic()
    outcome = CandidateOutcome(label, table, gated=[name for name, _, _ in thresholds.gated(validation.task)])
    for finding in check_table(table, model).findings:
        if finding.severity == "error":
            outcome.problems[finding.code] = list(finding.tensors)
            outcome.problem_messages.append(finding.message)
    try:
        built = to_qdq(model, table, flavor)
    except CalibError as exc:
        outcome.error = f"Q/DQ model: {exc}"
        outcome.seconds = time.monotonic() - started
        return outcome
    outcome.left_float = list(built.skipped)
    path = Path(workdir) / f"{''.join(c if c.isalnum() else '_' for c in label)}.qdq.onnx"
    try:
        path.write_bytes(built.model.SerializeToString())
        result: GateResult = run_gate(OnnxRuntimeRunner(path, threads=threads, name=f"{label} Q/DQ"), validation, thresholds, decoder=decoder)
    except (GateError, CalibError) as exc:
        outcome.error = f"gate: {exc}"
    except Exception as exc:  # onnxruntime's own errors for a Q/DQ graph it cannot run
        outcome.error = f"gate: {type(exc).__name__}: {exc}"
    else:
        outcome.passed = result.passed
        outcome.metrics = dict(result.metrics)
        if validation.task == "detection":
            outcome.metrics["det_f1"] = detection_f1(result.metrics)
        outcome.failed = [f.message() for f in result.failed]
    finally:
        path.unlink(missing_ok=True)  # one candidate's model on disk at a time
    outcome.seconds = time.monotonic() - started
    return outcome


def choose_table(
    model_path: Union[str, Path],
    tables: Mapping[str, CalibTable],
    validation: ValidationSet,
    thresholds: Optional[GateThresholds] = None,
    *,
    flavor: str = FLAVOR_TENSORRT,
    decoder: Optional[Decoder] = None,
    threads: int = 0,
    progress: Optional[Callable[[CandidateOutcome], None]] = None,
) -> AutoCalibReport:
    """Measure every table (label -> table, in preference order for ties) and mark the best one chosen."""
    if not tables:
        raise GateError("no candidate tables to compare")
    thresholds = thresholds or GateThresholds()
    digest = require_same_model(validation, model_path)
    model = load_model(model_path)
    outcomes: List[CandidateOutcome] = []
    with tempfile.TemporaryDirectory(prefix="edge-agent-autocalib-") as workdir:
        for label, table in tables.items():
            outcome = evaluate_table(model, label, table, validation, thresholds, flavor=flavor, decoder=decoder, threads=threads, workdir=workdir)
            outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    task = validation.task
    best = sorted(outcomes, key=lambda o: o.rank_key(task), reverse=True)[0]  # stable: ties keep the given order
    best.chosen = True
    return AutoCalibReport(
        task=task,
        flavor=flavor,
        thresholds=thresholds,
        validation={"sha256": validation.sha256, "frames": validation.count, "task": task, "model_sha256": digest},
        outcomes=outcomes,
    )
