"""Results to `<prefix>/<device>/results`: QoS 0, never queued while offline (a result is stale by the time the
broker returns), rate-limited and/or published only on change, as the deployment says.

The publisher is the camera pipeline's result callback; it runs on the pipeline's finish thread and only hands
the message to paho (non-blocking), so a slow or absent broker never slows the camera.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional

from agent.fleet.messages import encode
from agent.fleet.topics import Topics
from agent.vision.options import ResultsConfig
from agent.vision.pipeline import FrameResult
from agent.vision.results import ResultThrottle, result_message

RESULT_KIND = "result"


class ResultsPublisher:
    """`pipeline = Pipeline(..., on_result=ResultsPublisher(link, topics, config, deployment_id=...))`."""

    def __init__(self, link: Any, topics: Topics, config: Optional[ResultsConfig] = None, *, deployment_id: Optional[str] = None) -> None:
        self.link = link  # agent.fleet.link.MqttLink
        self.topics = topics
        self.config = config or ResultsConfig()
        self.deployment_id = deployment_id
        self.throttle = ResultThrottle(self.config)
        self.published = 0
        self.skipped_rate = 0
        self.skipped_unchanged = 0
        self.not_sent = 0  # broker away: dropped on purpose (QoS 0, not kept)
        self._lock = threading.Lock()

    def __call__(self, result: FrameResult) -> bool:
        admitted, why = self.throttle.admit(result.source, result.findings.signature(), time.monotonic())
        if not admitted:
            with self._lock:
                if why == "rate":
                    self.skipped_rate += 1
                else:
                    self.skipped_unchanged += 1
            return False
        body = result_message(result, self.config)
        if self.deployment_id is not None:
            body = {"deployment_id": self.deployment_id, **body}
        payload = encode(RESULT_KIND, body)
        sent = bool(self.link.publish(self.topics.results, payload, qos=0, retain=False, keep_if_offline=False))
        with self._lock:
            if sent:
                self.published += 1
            else:
                self.not_sent += 1
        return sent

    def counters(self) -> Dict[str, int]:
        with self._lock:
            return {
                "published": self.published,
                "skipped_rate": self.skipped_rate,
                "skipped_unchanged": self.skipped_unchanged,
                "not_sent": self.not_sent,
            }


def publish_snapshot(link: Any, topics: Topics, jpeg: bytes, qos: int = 1) -> bool:
    """A snapshot JPEG (raw bytes) to `<device>/snapshot`; not kept while offline."""
    return bool(link.publish(topics.snapshot, jpeg, qos=qos, retain=False, keep_if_offline=False))
