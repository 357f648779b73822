"""What a frame's result becomes before it leaves the device: the deployment's `results` options, the per-source
throttle (rate limit and on-change with a heartbeat) and the message body.

Transport-free: the daemon's ResultsPublisher (agent/daemon/results_publisher.py) sends what this admits.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from agent.vision.options import ResultsConfig
from agent.vision.pipeline import FrameResult


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
