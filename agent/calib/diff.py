"""Compare two calibration tables: entries added, removed, and changed by more than a relative tolerance, for
comparing tables across exports, calibrators or devices."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from agent.calib.table import CalibError, CalibTable


@dataclass(frozen=True)
class EntryChange:
    name: str
    a: float  # scale in the first table
    b: float  # scale in the second
    rel: float  # |a - b| / max(|a|, |b|); inf where one side is inf or nan and the other is not


@dataclass
class TableDiff:
    added: List[str]  # in b only
    removed: List[str]  # in a only
    changed: List[EntryChange]  # in both, relative difference above rel_tol (largest first)
    unchanged: int
    rel_tol: float
    header: Dict[str, Tuple[object, object]] = field(default_factory=dict)  # field -> (a, b) where they differ
    max_rel: float = 0.0  # largest relative difference over the common entries

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)


def relative_difference(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if a == b:
        return 0.0  # includes inf == inf and 0 == -0
    if math.isinf(a) or math.isinf(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def diff_tables(a: CalibTable, b: CalibTable, rel_tol: float = 1e-3) -> TableDiff:
    if not rel_tol >= 0 or math.isinf(rel_tol):
        raise CalibError(f"relative tolerance must be a finite number >= 0, got {rel_tol}")
    added = [n for n in b.entries if n not in a.entries]
    removed = [n for n in a.entries if n not in b.entries]
    changed = []
    unchanged = 0
    max_rel = 0.0
    for name, scale_a in a.entries.items():
        if name not in b.entries:
            continue
        rel = relative_difference(scale_a, b.entries[name])
        max_rel = max(max_rel, rel)
        if rel > rel_tol:
            changed.append(EntryChange(name, scale_a, b.entries[name], rel))
        else:
            unchanged += 1
    changed.sort(key=lambda c: -c.rel)
    header = {
        key: (getattr(a, key), getattr(b, key))
        for key in ("format", "trt_version", "algorithm")
        if getattr(a, key) != getattr(b, key)
    }
    return TableDiff(added, removed, changed, unchanged, rel_tol, header, max_rel)
