"""The steps of applying a deployment, each a small call into the package that owns it:

    fetch        agent.fleet.transfer.ArtifactPuller     artifacts by id, hash + signature verified
    check_table  agent.calib.check.check_table           the table against the model and this TensorRT
    build        agent.engine                            build or reuse the engine (cache key, child process)
    validate     agent.runtime + agent.gate              load, accuracy gate on the golden set, warm up
    serve        agent.daemon.serving.Serving            swap the runner into the camera pipeline

A step raises StepFailed(step, reason, retryable). `retryable` is for what time can fix (an artifact not
published yet, a stalled transfer, a full disk after gc); everything else waits for a new desired state
or an operator's `rebuild`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from agent.errors import AgentError
from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

# artifact kinds as the artifact publisher names them (agent/fleet/artifact_protocol.py KINDS); None accepts any
ROLE_KINDS: Dict[str, Optional[str]] = {"model": "model", "table": "calib", "validation": "validation", "labels": None}
WARMUP_RUNS = 3


class StepFailed(AgentError):
    def __init__(self, step: str, reason: str, retryable: bool = False) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.retryable = retryable


@dataclass
class EngineInfo:
    """What the build step produced: enough to load it again after a restart and to report it."""

    path: str = ""
    backend: str = ""
    cache_hit: bool = False
    key: str = ""
    build_s: float = 0.0
    manifest: Dict[str, Any] = field(default_factory=dict)
    plan: Dict[str, Any] = field(default_factory=dict)  # the shared plan: used, or why built locally (agent.daemon.shared_plan)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> EngineInfo:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Loaded:
    """An activated, warmed runner and how it got there."""

    runner: Any
    engine: EngineInfo
    warmup_ms: float = 0.0
    gate: Dict[str, Any] = field(default_factory=dict)
    table_check: Dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        try:
            self.runner.deactivate()
        except Exception:  # freeing an engine must never take the agent down
            log.exception("deactivating runner %s failed", getattr(self.runner, "name", "?"))


Beat = Callable[[], None]


class Steps:
    """The interface the reconcile loop drives; `agent.daemon.pipeline_steps.PackageSteps` implements it over
    the real packages."""

    def fetch(self, deployment: Any, cancel: threading.Event) -> Dict[str, Path]:
        raise NotImplementedError

    def check_table(self, deployment: Any, artifacts: Dict[str, Path]) -> Dict[str, Any]:
        raise NotImplementedError

    def build(self, deployment: Any, artifacts: Dict[str, Path], *, cold: bool, cancel: threading.Event, beat: Beat) -> EngineInfo:
        raise NotImplementedError

    def validate(self, deployment: Any, artifacts: Dict[str, Path], engine: EngineInfo) -> Loaded:
        raise NotImplementedError

    def load(self, deployment: Any, engine: EngineInfo) -> Loaded:
        raise NotImplementedError

    def committed(self, deployment: Any, engine: EngineInfo) -> None:
        """The engine now serves (pin it in the engine cache)."""

    def cancel_build(self) -> None:
        """Abandon the build in progress (the operator canceled its job)."""

    def cancel(self) -> None:
        """The agent is stopping: abandon downloads and builds, leave partial work for next time."""


def warm_up(runner: Any, runs: int = WARMUP_RUNS) -> float:
    """Run the runner a few times on zeros shaped like its inputs; returns the last run's milliseconds.
    The first inferences of an engine are slow (lazy allocations, kernel selection): serve after them."""
    feed: Dict[str, Any] = {}
    for spec in runner.inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    elapsed = 0.0
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        runner.infer(feed)
        elapsed = (time.perf_counter() - started) * 1000.0
    return round(elapsed, 3)
