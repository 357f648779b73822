"""Results to `<prefix>/<device>/results`: QoS 0, never queued while offline (a result is stale by the time the
broker returns), rate-limited and/or published only on change, as the deployment says.

The publisher is the pipeline's result callback; it runs on the pipeline's finish thread and only hands the
message to paho (non-blocking), so a slow or absent broker never slows the camera.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional, Tuple

from agent.fleet.deployment import ResultsConfig
from agent.fleet.messages import encode
from agent.fleet.topics import Topics
from agent.vision.pipeline import FrameResult

RESULT_KIND = "result"
SNAPSHOT_KIND = "snapshot"


class ResultGate:
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


class ResultsPublisher:
    """`pipeline = Pipeline(..., on_result=ResultsPublisher(link, topics, config))`."""

    def __init__(self, link: Any, topics: Topics, config: Optional[ResultsConfig] = None) -> None:
        self.link = link  # agent.fleet.link.MqttLink (anything with its publish())
        self.topics = topics
        self.config = config or ResultsConfig()
        self.gate = ResultGate(self.config)
        self.published = 0
        self.skipped_rate = 0
        self.skipped_unchanged = 0
        self.not_sent = 0  # broker away: dropped on purpose (QoS 0, not kept)
        self._lock = threading.Lock()

    def __call__(self, result: FrameResult) -> bool:
        admitted, why = self.gate.admit(result.source, result.findings.signature(), time.monotonic())
        if not admitted:
            with self._lock:
                if why == "rate":
                    self.skipped_rate += 1
                else:
                    self.skipped_unchanged += 1
            return False
        payload = encode(RESULT_KIND, result_message(result, self.config))
        sent = bool(self.link.publish(self.topics.results, payload, qos=0, retain=False, keep_if_offline=False))
        with self._lock:
            if sent:
                self.published += 1
            else:
                self.not_sent += 1
        return sent

    def publish_snapshot(self, jpeg: bytes, qos: int = 1) -> bool:
        """A snapshot JPEG (raw bytes) to `<device>/snapshot`; not kept while offline."""
        return bool(self.link.publish(self.topics.snapshot, jpeg, qos=qos, retain=False, keep_if_offline=False))

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return {
                "published": self.published,
                "skipped_rate": self.skipped_rate,
                "skipped_unchanged": self.skipped_unchanged,
                "not_sent": self.not_sent,
            }
