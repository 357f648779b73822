"""What a frame's result becomes before it leaves the device: the deployment's `results` options, the per-source
throttle (rate limit and on-change with a heartbeat) and the message body.

Transport-free: the daemon's ResultsPublisher (agent/daemon/results_publisher.py) sends what this admits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from agent.errors import ConfigError
from agent.vision.config_schema import from_mapping
from agent.vision.pipeline import FrameResult


@dataclass(frozen=True)
class ResultsConfig:
    min_interval_s: float = 0.0  # at most one result per source per interval (0: every frame)
    on_change: bool = False  # publish only when the top class or the set of detected labels changes
    heartbeat_s: float = 0.0  # with on_change: publish at least this often even without a change (0: never)
    max_detections: int = 50  # cap the message size
    max_classes: int = 5

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> ResultsConfig:
        return from_mapping(cls, data, "results")

    def validate(self) -> None:
        if self.min_interval_s < 0 or self.heartbeat_s < 0:
            raise ConfigError("results.min_interval_s and results.heartbeat_s must not be negative")
        if self.max_detections < 0 or self.max_classes < 0:
            raise ConfigError("results.max_detections and results.max_classes must not be negative")


class ResultThrottle:
    """Decides, per source, whether a result goes out: rate limit first, then on-change with a heartbeat.
    Pure apart from the clock you pass in."""

    def __init__(self, config: ResultsConfig) -> None:
        self.config = config
        self._last: Dict[str, Tuple[float, Tuple[Any, ...]]] = {}

    def admit(self, source: str, signature: Tuple[Any, ...], now: float) -> Tuple[bool, str]:
        """(publish?, why not) for a result with this signature at `now` (monotonic seconds)."""
        last = self._last.get(source)
        if last is not None:
            last_time, last_signature = last
            if self.config.min_interval_s > 0 and now - last_time < self.config.min_interval_s:
                return False, "rate"
            if self.config.on_change and signature == last_signature:
                heartbeat_due = self.config.heartbeat_s > 0 and now - last_time >= self.config.heartbeat_s
                if not heartbeat_due:
                    return False, "unchanged"
        self._last[source] = (now, signature)
        return True, ""


def result_message(result: FrameResult, config: ResultsConfig) -> Dict[str, Any]:
    """The body of a result message (the envelope adds schema, kind and ts)."""
    body = result.to_dict()
    if "classes" in body:
        body["classes"] = body["classes"][: config.max_classes]
    if len(body["detections"]) > config.max_detections:
        body["detections_total"] = len(body["detections"])
        body["detections"] = body["detections"][: config.max_detections]
    return body
