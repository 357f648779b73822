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
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.device.target import Backend, TargetError
from agent.engine.build_job import RESULT_NAME, BuildJob, Emit, WorkerError
from agent.engine.ort_backend import build as build_onnxruntime
from agent.engine.trt_builder import build as build_tensorrt
from agent.errors import AgentError
from agent.store.atomic import atomic_write_json


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


def run(job: BuildJob, emit: Emit) -> Dict[str, Any]:
    try:
        backend = Backend.parse(job.backend)
    except TargetError as exc:
        raise WorkerError(str(exc)) from None
    if backend == Backend.ONNXRUNTIME:
        return build_onnxruntime(job, emit)
    return build_tensorrt(job, emit)


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m agent.engine.worker JOB.json\n")
        return 2
    job = BuildJob.load(argv[0])
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

    atomic_write_json(result_path, result)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
