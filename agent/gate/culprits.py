"""Which tensors of an INT8 build are likely to blame when the gate fails. Pure numpy over the table's scales
and (when the FP32 model is at hand) the ranges the FP32 model really produces on the validation frames.

- From the table alone: scales that are zero, negative, NaN/inf, absurdly small or large, or decades away
  from the rest of the table (a layer whose output was all zeros during calibration gets scale 0; a broken
  calibrator writes 7f800000).
- Against real activations: a tensor whose values run far past the table's range (scale x 127) is clipped
  ("saturated"); one whose values stay inside a sliver of it is quantised to a handful of levels ("coarse").
  An /100 table passes every table-only check but saturates everywhere; this is how it is found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

QMAX = 127.0
TINY_AMAX = 1e-6  # a table range below this cannot represent any real activation
HUGE_AMAX = 1e6
OUTLIER_DECADES = 4.0  # this many decades from the table's median scale
SATURATED_FRACTION = 0.01  # more than 1% of the values clipped
SATURATED_RATIO = 4.0  # or the real |x|max at least 4x the table range
COARSE_RATIO = 1.0 / 64.0  # real |x|max under 1/64 of the table range: two levels or fewer used


@dataclass
class Culprit:
    tensor: str
    reason: str  # zero_scale | negative_scale | non_finite_scale | tiny_scale | huge_scale | outlier_scale | saturated | coarse
    detail: str
    scale: Optional[float] = None
    severity: float = 0.0  # for ordering: larger is worse

    def to_dict(self) -> Dict[str, Any]:
        scale = self.scale if self.scale is None or math.isfinite(self.scale) else str(self.scale)
        return {"tensor": self.tensor, "reason": self.reason, "detail": self.detail, "scale": scale}


@dataclass
class TensorRange:
    """What the FP32 model produced for one tensor over the validation frames, judged against a scale."""

    amax: float
    clipped: int  # values with |x| beyond the quantised range (scale x 127.5)
    count: int

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.count if self.count else 0.0


def table_scales(table: Any) -> Dict[str, float]:
    """name -> scale from a CalibTable (its `.entries`), a mapping of floats, or entries with a `.scale`."""
    if table is None:
        return {}
    entries = getattr(table, "entries", table)
    if not isinstance(entries, Mapping):
        raise TypeError(f"a calibration table or a mapping of scales, got {type(table).__name__}")
    scales: Dict[str, float] = {}
    for name, value in entries.items():
        scale: Any = getattr(value, "scale", value)
        try:
            scales[str(name)] = float(scale)
        except (TypeError, ValueError):
            scales[str(name)] = float("nan")
    return scales


def scale_issues(scales: Mapping[str, float]) -> List[Culprit]:
    """Culprits found in the table alone, worst first."""
    found: List[Culprit] = []
    logs = [math.log10(s) for s in scales.values() if math.isfinite(s) and s > 0]
    median = float(np.median(logs)) if len(logs) >= 8 else None
    for name, scale in scales.items():
        if not math.isfinite(scale):
            found.append(Culprit(name, "non_finite_scale", f"scale is {scale}: the calibrator saw NaN/inf or wrote garbage", scale, 1e12))
        elif scale == 0:
            found.append(Culprit(name, "zero_scale", "scale is 0: the tensor was all zeros during calibration, or the entry is corrupt", scale, 1e12))
        elif scale < 0:
            found.append(Culprit(name, "negative_scale", f"scale {scale:g} is negative", scale, 1e12))
        elif scale * QMAX < TINY_AMAX:
            found.append(Culprit(name, "tiny_scale", f"range ±{scale * QMAX:.3g} is too small for any real activation", scale, 1e9))
        elif scale * QMAX > HUGE_AMAX:
            found.append(Culprit(name, "huge_scale", f"range ±{scale * QMAX:.3g} is absurdly large: every value quantises to 0", scale, 1e9))
        elif median is not None and abs(math.log10(scale) - median) > OUTLIER_DECADES:
            decades = math.log10(scale) - median
            found.append(Culprit(name, "outlier_scale", f"scale {scale:.3g} is {abs(decades):.1f} decades {'above' if decades > 0 else 'below'} the table's median", scale, 1e6 * abs(decades)))
    return sorted(found, key=lambda c: -c.severity)


def range_issues(scales: Mapping[str, float], ranges: Mapping[str, TensorRange]) -> List[Culprit]:
    """Culprits found by comparing each usable scale with the real FP32 activations, worst first."""
    found: List[Culprit] = []
    for name, observed in ranges.items():
        scale = scales.get(name)
        if scale is None or not math.isfinite(scale) or scale <= 0 or observed.count == 0:
            continue
        table_amax = scale * QMAX
        ratio = observed.amax / table_amax
        if observed.clipped_fraction > SATURATED_FRACTION or ratio >= SATURATED_RATIO:
            found.append(
                Culprit(
                    name,
                    "saturated",
                    f"values reach ±{observed.amax:.4g} but the table's range is ±{table_amax:.4g} ({ratio:.3g}x): "
                    f"{100 * observed.clipped_fraction:.1f}% of values clipped",
                    scale,
                    ratio + 100 * observed.clipped_fraction,
                )
            )
        elif observed.amax > 0 and ratio < COARSE_RATIO:
            found.append(
                Culprit(
                    name,
                    "coarse",
                    f"values stay within ±{observed.amax:.4g} of a ±{table_amax:.4g} range: they use {observed.amax / scale:.2g} of 127 levels",
                    scale,
                    1.0 / max(ratio, 1e-12),
                )
            )
    return sorted(found, key=lambda c: -c.severity)


def accumulate_range(values: np.ndarray, scale: Optional[float], previous: Optional[TensorRange]) -> TensorRange:
    """Fold one frame's values of a tensor into its running range and clip count."""
    magnitude = np.abs(values.astype(np.float64, copy=False))
    amax = float(magnitude.max(initial=0.0))
    clipped = 0
    if scale is not None and math.isfinite(scale) and scale > 0:
        clipped = int((magnitude > scale * (QMAX + 0.5)).sum())
    if previous is None:
        return TensorRange(amax, clipped, int(magnitude.size))
    return TensorRange(max(previous.amax, amax), previous.clipped + clipped, previous.count + int(magnitude.size))


def merge_culprits(*groups: List[Culprit]) -> List[Culprit]:
    """One list, worst first, one entry per (tensor, reason)."""
    seen: Dict[Any, Culprit] = {}
    for group in groups:
        for culprit in group:
            key = (culprit.tensor, culprit.reason)
            if key not in seen or seen[key].severity < culprit.severity:
                seen[key] = culprit
    return sorted(seen.values(), key=lambda c: -c.severity)
