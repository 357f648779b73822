"""The child process that builds one engine: `python -m agent.engine.worker JOB.json`.

The parent (agent.engine.build) writes the job, watches this process's time and memory, and kills it when it
exceeds them; a TensorRT crash ends here, not in the daemon. Protocol:

- stdout carries only events, one JSON object a line: {"event": "progress", "phase": ..., "fraction": ..., "message": ...}
  (anything a library prints to stdout is sent to stderr instead);
- stderr is the build log (the parent saves it beside the engine);
- `<out_dir>/result.json` says how it ended: {"ok": true, "backend_version", "report", "int8", "notes"} or
  {"ok": false, "error", "error_kind", ["problems"]} (problems: the classified log, agent.engine.diagnose).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from agent.errors import AgentError

RESULT_NAME = "result.json"

Emit = Callable[[str, Optional[float], str], None]


@dataclass
class Job:
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
    def load(cls, path: str) -> Job:
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


def _event_writer() -> Emit:
    """Events go to the original stdout; fd 1 is pointed at stderr so nothing else can corrupt the stream."""
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()  # TensorRT's progress monitor may call from several threads

    def emit(phase: str, fraction: Optional[float], message: str) -> None:
        line = json.dumps({"event": "progress", "phase": phase, "fraction": fraction, "message": message})
        with lock:
            events.write(line + "\n")
            events.flush()

    return emit


def run(job: Job, emit: Emit) -> Dict[str, Any]:
    if job.backend == "onnxruntime":
        from agent.engine.ort_backend import build as build_onnxruntime

        return build_onnxruntime(job, emit)
    if job.backend == "tensorrt":
        from agent.engine.trt_builder import build as build_tensorrt

        return build_tensorrt(job, emit)
    raise WorkerError(f"unknown backend {job.backend!r}")


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m agent.engine.worker JOB.json\n")
        return 2
    job = Job.load(argv[0])
    result_path = Path(job.out_dir) / RESULT_NAME
    emit = _event_writer()
    try:
        result = run(job, emit)
        result["ok"] = True
    except AgentError as exc:
        # run as `python -m`, this module is __main__: the backends raise agent.engine.worker.WorkerError, another
        # class than __main__.WorkerError, so its kind and problems are read by name, not by an except clause
        result = {"ok": False, "error": str(exc), "error_kind": str(getattr(exc, "kind", "failed"))}
        problems = getattr(exc, "problems", None)
        if problems:
            result["problems"] = list(problems)
    except MemoryError:
        result = {"ok": False, "error": "the build ran out of memory", "error_kind": "memory"}
    except Exception as exc:  # the parent must get a result, whatever the backend raised
        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "error_kind": "failed"}
    from agent.store.atomic import atomic_write_json

    atomic_write_json(result_path, result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
