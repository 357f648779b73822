"""What the engine build child process (agent.engine.worker) is asked to do, and how a backend reports back:
the job file's fields, the progress callback, and the error a backend raises when it understood the failure."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.errors import AgentError

RESULT_NAME = "result.json"

Emit = Callable[[str, Optional[float], str], None]


@dataclass
class BuildJob:
    backend: str
    spec: Dict[str, Any]
    model: str
    out_dir: str
    engine_file: str
    calib: Optional[str] = None
    timing_cache: Optional[str] = None
    plugins: List[str] = field(default_factory=list)
    fingerprint: Dict[str, Any] = field(default_factory=dict)
    threads: int = 1

    @classmethod
    def load(cls, path: str) -> BuildJob:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def engine_path(self) -> Path:
        return Path(self.out_dir) / self.engine_file


class WorkerError(AgentError):
    """A build failed for a reason the worker understood (bad model, unsupported request, parser errors)."""

    def __init__(self, message: str, kind: str = "failed", problems: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.problems = list(problems or [])  # the backend's log, classified (Problem.to_dict())
