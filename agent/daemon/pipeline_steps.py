"""The deployment steps over the real packages (the daemon's only knowledge of their APIs lives here).

Each method is one step of agent/daemon/reconcile.py and turns the package's own errors into
StepFailed(step, reason, retryable).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from agent.config import AgentConfig
from agent.errors import AgentError
from agent.fleet.deployment import Deployment
from agent.fleet.link import MqttLink
from agent.fleet.topics import Topics

from .steps import ROLE_KINDS, Beat, EngineInfo, Loaded, StepFailed, Steps, warm_up

log = logging.getLogger(__name__)

EventSink = Callable[[Dict[str, Any]], None]

# refusals that time can fix: the artifact is not published yet, the server or broker is away, the disk is full
RETRYABLE_FETCH_ERRORS = (
    "ManifestNotFoundError",
    "ArtifactUnavailableError",
    "TransferStalledError",
    "TransferTimeoutError",
    "DiskSpaceError",
    "TransferBusyError",
)


class PackageSteps(Steps):
    def __init__(self, config: AgentConfig, link: MqttLink, topics: Topics, state_dir: Path, events: Optional[EventSink] = None) -> None:
        from agent.fleet.transfer import ArtifactPuller
        from agent.store.artifacts import ArtifactStore

        self.config = config
        self.state_dir = Path(state_dir)
        self.artifacts = ArtifactStore(self.state_dir / "artifacts")
        self.puller = ArtifactPuller(link, topics, self.artifacts, config.artifacts, events, min_free_mb=config.state.min_free_mb)
        self._build_cancel = threading.Event()

    # fetch ---------------------------------------------------------------------------------------------------
    def fetch(self, deployment: Deployment, cancel: threading.Event) -> Dict[str, Path]:
        from agent.fleet.artifacts import ArtifactError

        paths: Dict[str, Path] = {}
        for role, artifact_id in deployment.artifact_ids():
            if cancel.is_set():
                raise StepFailed("fetch", "canceled")
            try:
                paths[role] = self.puller.pull(artifact_id, expect_kind=ROLE_KINDS.get(role))
            except ArtifactError as exc:
                retryable = type(exc).__name__ in RETRYABLE_FETCH_ERRORS
                raise StepFailed("fetch", f"{role} {artifact_id[:12]}: {exc}", retryable=retryable) from None
        return paths

    # check the table -------------------------------------------------------------------------------------------
    def check_table(self, deployment: Deployment, artifacts: Dict[str, Path]) -> Dict[str, Any]:
        raise StepFailed("check_table", "the calibration check (agent.calib.check) is not available in this build")

    # build -------------------------------------------------------------------------------------------------
    def build(self, deployment: Deployment, artifacts: Dict[str, Path], *, cold: bool, cancel: threading.Event, beat: Beat) -> EngineInfo:
        raise StepFailed("build", "the engine builder (agent.engine) is not available in this build")

    # validate ----------------------------------------------------------------------------------------------
    def validate(self, deployment: Deployment, artifacts: Dict[str, Path], engine: EngineInfo) -> Loaded:
        raise StepFailed("validate", "the accuracy gate is not available in this build")

    def load(self, deployment: Deployment, engine: EngineInfo) -> Loaded:
        runner = self._open(deployment, engine, "restore")
        return Loaded(runner, engine, warmup_ms=warm_up(runner))

    def _open(self, deployment: Deployment, engine: EngineInfo, step: str) -> Any:
        from agent.runtime.factory import open_runner

        if not engine.path or not Path(engine.path).is_file():
            raise StepFailed(step, f"engine file missing: {engine.path or '(none recorded)'}")
        dla_core = int(deployment.target.split(":")[1]) if deployment.target.startswith("dla:") else None
        try:
            runner = open_runner(engine.backend or "auto", engine.path, threads=self.config.engine.threads, dla_core=dla_core)
            runner.activate()
        except AgentError as exc:
            raise StepFailed(step, str(exc)) from None
        return runner

    # shutdown ------------------------------------------------------------------------------------------------
    def cancel_build(self) -> None:
        self._build_cancel.set()

    def cancel(self) -> None:
        self.puller.cancel()
        self._build_cancel.set()


def camera_pipeline_factory(config: AgentConfig, publish_result: Callable[[bytes], None]) -> Optional[Callable[[Deployment, Any], Any]]:
    """A factory for the camera pipeline (agent.vision), or None when it is not installed."""
    return None
