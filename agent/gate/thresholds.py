"""The limits a candidate engine must meet, read from the deployment's `accuracy` block.

    "accuracy": {"top1_agreement": 0.9, "det_recall": 0.85, "fallback": "fp16_layers"}

Unknown keys are refused (a typo must not silently loosen the gate). `fallback` is a policy, not a limit: it is
what the gate recommends when an INT8 build fails; the engine layer applies it and the gate runs again.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional, Tuple, get_args

from msgspec.structs import astuple

from agent.errors import AgentError
from agent.models import Annotated, FrozenModel, Meta, parse

FallbackPolicy = Literal["none", "fp16_layers", "fp16_engine"]
FALLBACK_POLICIES: Tuple[str, ...] = get_args(FallbackPolicy)
TASKS = ("classification", "detection", "generic")


class GateError(AgentError):
    """The gate cannot run: bad thresholds, a validation set that does not fit the engine, a missing decoder."""


Share = Annotated[float, Meta(ge=0.0, le=1.0)]  # a number from 0 to 1


class GateThresholds(FrozenModel, frozen=True, kw_only=True, omit_defaults=True):
    """The deployment's `accuracy` block; read one with `parse_thresholds()`."""

    top1_agreement: Share = 0.85  # classification: share of frames whose top-1 equals the reference's
    top5_containment: Share = 0.95  # classification: share whose reference top-1 is in the candidate's top 5
    cosine: Annotated[float, Meta(ge=-1.0, le=1.0)] = 0.98  # generic: mean per-frame cosine similarity, for every output
    max_abs_error: Optional[Annotated[float, Meta(ge=0.0)]] = None  # generic: largest |reference - candidate| allowed (None: not gated)
    det_precision: Share = 0.8  # detection: matched candidate boxes / candidate boxes
    det_recall: Share = 0.8  # detection: matched reference boxes / reference boxes
    iou: Share = 0.5  # detection: a box matches at this IoU or more ...
    score_tolerance: Share = 0.1  # ... with scores this close (also the borderline band at the threshold)
    fallback: FallbackPolicy = "none"  # recommendation recorded when an INT8 build fails
    # exclude: top-1 agreement is judged on the frames the reference is sure about (top-1 minus top-2 probability
    # >= 0.1); a near-tie flips under any precision change, so counting it rejects good engines at random. Those
    # frames still count in top-5 containment. count: every frame counts for top-1.
    near_ties: Literal["exclude", "count"] = "exclude"

    def __post_init__(self) -> None:
        if self.max_abs_error is not None and not math.isfinite(self.max_abs_error):
            raise ValueError(f"max_abs_error: a non-negative number or null, got {self.max_abs_error!r}")

    def to_dict(self) -> Dict[str, Any]:
        """Every threshold, defaults included (for reports)."""
        return dict(zip(self.__struct_fields__, astuple(self)))

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


def parse_thresholds(data: Any) -> GateThresholds:
    """The `accuracy` block (None: the defaults) -> GateThresholds; GateError names the key and the allowed values."""
    return parse(GateThresholds, {} if data is None else data, error=GateError, root="accuracy")
