"""What serves now: one loaded engine and, when the deployment names cameras, the camera pipeline feeding it.

`swap()` puts a new engine in service without stopping the cameras when only the engine changed (the
pipeline's `swap_runner`), and rebuilds the pipeline when the cameras or the pre/postprocessing changed.
The old runner is freed only after the new one serves, so a failed swap leaves the old one in place.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.errors import AgentError
from agent.fleet.deployment import Deployment

from .steps import Loaded

log = logging.getLogger(__name__)

# (deployment, activated runner) -> a started pipeline object (agent.vision.pipeline.Pipeline)
CAMERA_PROGRESS_S = 45.0  # a reconnecting camera retries at least this often (capture backoff 30 s + open timeout)
RECONNECTING = ("starting", "opening", "waiting")
PipelineFactory = Callable[[Deployment, Any], Any]


class Serving:
    def __init__(self, pipeline_factory: PipelineFactory) -> None:
        self.pipeline_factory = pipeline_factory
        self.deployment: Optional[Deployment] = None
        self.loaded: Optional[Loaded] = None
        self.pipeline: Any = None
        self.since = 0.0
        self._progress: Dict[str, Tuple[Tuple[Any, ...], float]] = {}  # camera -> (its counters, when they last changed)
        self._lock = threading.RLock()

    @property
    def digest(self) -> Optional[str]:
        with self._lock:
            return self.deployment.digest() if self.deployment is not None else None

    def swap(self, deployment: Deployment, loaded: Loaded) -> None:
        with self._lock:
            old_loaded, old_deployment = self.loaded, self.deployment
            if deployment.cameras:
                self._serve_cameras(deployment, loaded, old_deployment)
            elif self.pipeline is not None:
                self._stop_pipeline()
            self.deployment, self.loaded, self.since = deployment, loaded, time.time()
        if old_loaded is not None and old_loaded is not loaded:
            old_loaded.close()

    def _serve_cameras(self, deployment: Deployment, loaded: Loaded, old: Optional[Deployment]) -> None:
        same_inputs = (
            old is not None
            and self.pipeline is not None
            and old.cameras == deployment.cameras
            and old.preprocess == deployment.preprocess
            and old.postprocess == deployment.postprocess
            and old.labels == deployment.labels
            and old.batch == deployment.batch
        )
        if same_inputs:
            self.pipeline.swap_runner(loaded.runner)
            return
        pipeline = self.pipeline_factory(deployment, loaded.runner)
        self._stop_pipeline()
        self.pipeline = pipeline
        self._progress.clear()

    def _stop_pipeline(self) -> None:
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except Exception:
                log.exception("stopping the camera pipeline failed")

    def restart_pipeline(self) -> Dict[str, Any]:
        with self._lock:
            if self.deployment is None or self.loaded is None:
                raise AgentError("nothing is serving: no pipeline to restart")
            if not self.deployment.cameras:
                raise AgentError(f"deployment {self.deployment.id} names no cameras: there is no pipeline to restart")
            self._stop_pipeline()
            self.pipeline = self.pipeline_factory(self.deployment, self.loaded.runner)
            self._progress.clear()
            return {"deployment_id": self.deployment.id, "cameras": len(self.deployment.cameras)}

    def stop(self) -> None:
        with self._lock:
            self._stop_pipeline()
            loaded, self.loaded, self.deployment = self.loaded, None, None
        if loaded is not None:
            loaded.close()

    # reading ----------------------------------------------------------------------------------------------
    def metrics(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            pipeline = self.pipeline
        if pipeline is None:
            return None
        try:
            return dict(pipeline.metrics())
        except Exception as exc:
            return {"error": str(exc)}

    def frames_flowing(self, max_age_s: float, progress_s: float = CAMERA_PROGRESS_S) -> bool:
        """For the watchdog: True when no camera is configured, when a camera delivered a frame within
        `max_age_s`, or when a camera that is down is visibly trying to reconnect (its state or failure count
        changed within `progress_s`: restarting the agent would not bring it back). False when the pipeline is
        gone or every camera is stuck (an open or a read that never returns)."""
        with self._lock:
            deployment, pipeline = self.deployment, self.pipeline
        if deployment is None or not deployment.cameras:
            return True
        if pipeline is None:
            return False
        metrics = self.metrics() or {}
        if metrics.get("running") is False or "error" in metrics:
            return False
        sources: List[Dict[str, Any]] = metrics.get("sources") or []  # Pipeline.metrics(): one CaptureStats each
        if not sources:  # a pipeline has at least one capture: none reported, nothing flows
            return False
        now = time.monotonic()
        for source in sources:
            name = str(source.get("name"))
            mark = tuple(source.get(k) for k in ("frames", "state", "open_failures", "reconnects", "disconnects"))
            if self._progress.get(name, ((), 0.0))[0] != mark:
                self._progress[name] = (mark, now)
            age = source.get("seconds_since_frame")
            if source.get("state") == "streaming" and age is not None and age <= max_age_s:
                return True
            if source.get("state") in RECONNECTING and now - self._progress[name][1] <= progress_s:
                return True
        return False

    def snapshot(self, camera: int) -> Tuple[bytes, Dict[str, Any]]:
        """The newest processed frame with its results drawn (JPEG) and that frame's result."""
        with self._lock:
            pipeline, deployment = self.pipeline, self.deployment
        if pipeline is None or deployment is None:
            raise AgentError("no camera pipeline is running: nothing to snapshot")
        if not 0 <= camera < len(deployment.cameras):
            raise AgentError(f"camera {camera} does not exist: deployment {deployment.id} has {len(deployment.cameras)} cameras")
        image = pipeline.snapshot()
        if image is None:
            raise AgentError("no frame has been processed yet: try again in a moment")
        latest = pipeline.latest()
        return bytes(image), (latest.to_dict() if latest is not None else {})
