"""The limits a candidate engine must meet, read from the deployment's `accuracy` block.

    "accuracy": {"top1_agreement": 0.9, "det_recall": 0.85, "fallback": "fp16_layers"}

Unknown keys are refused (a typo must not silently loosen the gate). `fallback` is a policy, not a limit: it is
what the gate recommends when an INT8 build fails; the engine layer applies it and the gate runs again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from agent.errors import AgentError

FALLBACK_POLICIES = ("none", "fp16_layers", "fp16_engine")
TASKS = ("classification", "detection", "generic")


class GateError(AgentError):
    """The gate cannot run: bad thresholds, a validation set that does not fit the engine, a missing decoder."""


@dataclass(frozen=True)
class GateThresholds:
    top1_agreement: float = 0.85  # classification: share of frames whose top-1 equals the reference's
    top5_containment: float = 0.95  # classification: share whose reference top-1 is in the candidate's top 5
    cosine: float = 0.98  # generic: mean per-frame cosine similarity, for every output
    max_abs_error: Optional[float] = None  # generic: largest |reference - candidate| allowed (None: not gated)
    det_precision: float = 0.8  # detection: matched candidate boxes / candidate boxes
    det_recall: float = 0.8  # detection: matched reference boxes / reference boxes
    iou: float = 0.5  # detection: a box matches at this IoU or more ...
    score_tolerance: float = 0.1  # ... with scores this close (also the borderline band at the threshold)
    fallback: str = "none"  # none | fp16_layers | fp16_engine: recommendation recorded when an INT8 build fails
    # exclude: top-1 agreement is judged on the frames the reference is sure about (top-1 minus top-2 probability
    # >= 0.1); a near-tie flips under any precision change, so counting it rejects good engines at random. Those
    # frames still count in top-5 containment. count: every frame counts for top-1.
    near_ties: str = "exclude"

    def __post_init__(self) -> None:
        for name in ("top1_agreement", "top5_containment", "det_precision", "det_recall", "iou", "score_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise GateError(f"accuracy.{name}: a number from 0 to 1, got {value!r}")
        if not (isinstance(self.cosine, (int, float)) and -1.0 <= float(self.cosine) <= 1.0):
            raise GateError(f"accuracy.cosine: a number from -1 to 1, got {self.cosine!r}")
        if self.max_abs_error is not None and not (
            isinstance(self.max_abs_error, (int, float)) and math.isfinite(self.max_abs_error) and self.max_abs_error >= 0
        ):
            raise GateError(f"accuracy.max_abs_error: a non-negative number or null, got {self.max_abs_error!r}")
        if self.near_ties not in ("exclude", "count"):
            raise GateError(f"accuracy.near_ties: 'exclude' or 'count', got {self.near_ties!r}")
        if self.fallback not in FALLBACK_POLICIES:
            raise GateError(f"accuracy.fallback: one of {FALLBACK_POLICIES}, got {self.fallback!r}")

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> GateThresholds:
        """From the deployment's `accuracy` block; missing keys keep their defaults."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise GateError(f"accuracy: an object of thresholds, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GateError(f"accuracy: unknown keys {unknown} (known: {sorted(known)})")
        values: Dict[str, Any] = {}
        for key, value in data.items():
            if key in ("fallback", "near_ties"):
                values[key] = str(value)
            elif key == "max_abs_error" and value is None:
                values[key] = None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GateError(f"accuracy.{key}: a number, got {value!r}")
            else:
                values[key] = float(value)
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def gated(self, task: str) -> List[Tuple[str, str, float]]:
        """(metric, direction 'min'|'max', limit) for the metrics that decide pass or fail for this task."""
        if task == "classification":
            return [("top1_agreement", "min", self.top1_agreement), ("top5_containment", "min", self.top5_containment)]
        if task == "detection":
            return [("det_recall", "min", self.det_recall), ("det_precision", "min", self.det_precision)]
        limits = [("cosine", "min", self.cosine)]
        if self.max_abs_error is not None:
            limits.append(("max_abs_error", "max", self.max_abs_error))
        return limits
