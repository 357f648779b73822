"""The accuracy gate: no engine serves until it has matched its FP32 reference on a validation set.

validation.py  the validation set artifact (frames + FP32 reference outputs + metadata) and how to make one
metrics.py     agreement metrics by task (pure numpy)
thresholds.py  GateThresholds, the deployment's `accuracy` block
gate.py        run_gate(runner, validation, thresholds, table) -> GateResult
culprits.py    suspicious table scales and saturated tensors
diagnose.py    the layer-by-layer FP32 vs Q/DQ comparison on onnxruntime
decoders.py    finding the box decoder a detection set names
frames.py      reading frames from image folders and videos for make-validation
"""

from __future__ import annotations

from agent.gate.gate import Failure, GateResult, run_gate
from agent.gate.metrics import Detections
from agent.gate.thresholds import FALLBACK_POLICIES, GateError, GateThresholds, parse_thresholds
from agent.gate.validation import ValidationFileError, ValidationSet, load_validation, make_validation

__all__ = [
    "FALLBACK_POLICIES",
    "Detections",
    "Failure",
    "GateError",
    "GateResult",
    "GateThresholds",
    "ValidationFileError",
    "ValidationSet",
    "load_validation",
    "make_validation",
    "parse_thresholds",
    "run_gate",
]
