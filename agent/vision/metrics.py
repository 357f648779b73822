"""Per-stage metrics of the camera pipeline: rate (fps) and latency percentiles over a sliding window.

Recording is a lock and an append, cheap enough for every frame; summaries (percentiles) are computed only
when telemetry asks.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

STAGES = ("capture", "preprocess", "batch", "infer", "postprocess", "publish")


class StageMetric:
    """Latency samples (ms) in a ring of `window`, and event counts over the last `rate_window_s` for fps."""

    def __init__(self, window: int = 2048, rate_window_s: float = 10.0) -> None:
        self.window = window
        self.rate_window_s = rate_window_s
        self.count = 0  # frames through this stage since start
        self._samples: Deque[float] = collections.deque(maxlen=window)
        self._events: Deque[Tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self._first: Optional[float] = None

    def record(self, ms: float, frames: int = 1, now: Optional[float] = None) -> None:
        """One sample of `ms` that covered `frames` frames (a batch of 8 is one sample, 8 frames)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.count += frames
            self._samples.append(float(ms))
            self._events.append((now, frames))
            if self._first is None:
                self._first = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.rate_window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def fps(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            if not self._events or self._first is None:
                return 0.0
            span = min(self.rate_window_s, now - self._first)
            frames = sum(n for _, n in self._events)
            return frames / span if span > 0 else 0.0

    def percentiles(self, qs: Tuple[float, ...] = (50, 95, 99)) -> List[float]:
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        if samples.size == 0:
            return [0.0 for _ in qs]
        return [float(v) for v in np.percentile(samples, qs)]

    def summary(self, now: Optional[float] = None) -> Dict[str, Any]:
        p50, p95, p99 = self.percentiles()
        with self._lock:
            mean = float(np.mean(self._samples)) if self._samples else 0.0
            count = self.count
        return {
            "count": count,
            "fps": round(self.fps(now), 2),
            "mean_ms": round(mean, 3),
            "p50_ms": round(p50, 3),
            "p95_ms": round(p95, 3),
            "p99_ms": round(p99, 3),
        }

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self._samples.clear()
            self._events.clear()
            self._first = None


class PipelineMetrics:
    """The stages, end-to-end latency (capture to published) and the agent's own share of it (minus inference)."""

    def __init__(self, window: int = 2048, rate_window_s: float = 10.0) -> None:
        self.stages: Dict[str, StageMetric] = {name: StageMetric(window, rate_window_s) for name in STAGES}
        self.end_to_end = StageMetric(window, rate_window_s)
        self.added = StageMetric(window, rate_window_s)
        self.errors = 0
        self.discarded = 0  # frames prepared for an engine that was swapped out before they ran
        self.last_error = ""
        self._lock = threading.Lock()

    def error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def discard(self, frames: int) -> None:
        with self._lock:
            self.discarded += frames

    def reset(self) -> None:
        for metric in (*self.stages.values(), self.end_to_end, self.added):
            metric.reset()

    def summary(self) -> Dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            errors, discarded, last_error = self.errors, self.discarded, self.last_error
        return {
            "stages": {name: metric.summary(now) for name, metric in self.stages.items()},
            "latency": self.end_to_end.summary(now),
            "added_latency": self.added.summary(now),
            "errors": errors,
            "discarded": discarded,
            "last_error": last_error,
        }
