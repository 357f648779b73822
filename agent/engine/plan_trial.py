"""The trial load of a plan that came from elsewhere (a shared plan), in a child process, before it is trusted.

TensorRT: `agent.engine.trt_loader.trial_deserialize` (deserialization in a throwaway child, the log classified).
onnxruntime: `python -m agent.engine.plan_trial MODEL --batch N` loads the optimized model in a real onnxruntime
session in a child and runs it once on zeros (a model that crashes onnxruntime takes only the child down).
Either way the answer is a `TrialOutcome`; nothing here raises for a bad plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from agent.device.target import Backend
from agent.engine.spec import BuildSpec
from agent.engine.trt_loader import trial_deserialize
from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")


@dataclass
class TrialOutcome:
    ok: bool
    seconds: float = 0.0
    reason: str = ""
    problems: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def trial_load(path: Path, spec: BuildSpec, plugins: Sequence[Path] = (), timeout_s: float = 300.0) -> TrialOutcome:
    started = time.monotonic()
    if spec.backend == Backend.TENSORRT:
        trial = trial_deserialize(path, spec.dla_core, plugins, timeout_s=timeout_s)
        return TrialOutcome(trial.ok, round(time.monotonic() - started, 3), "" if trial.ok else "trial deserialization failed: " + trial.summary(),
                            trial.problems)
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = [sys.executable, "-m", "agent.engine.plan_trial", str(path), "--batch", str(spec.batch.opt)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return TrialOutcome(False, timeout_s, f"the trial load did not finish within {timeout_s:g} s")
    seconds = round(time.monotonic() - started, 3)
    answer: Dict[str, Any] = {}
    for line in reversed(done.stdout.decode("utf-8", "replace").strip().splitlines()):
        try:
            answer = json.loads(line)
            break
        except ValueError:
            continue
    if done.returncode < 0:
        return TrialOutcome(False, seconds, f"the trial load died with signal {-done.returncode}: a corrupt model or an onnxruntime crash")
    if not answer.get("ok"):
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no answer"]
        return TrialOutcome(False, seconds, "onnxruntime cannot load the plan: " + str(answer.get("error") or tail[0])[:400])
    return TrialOutcome(True, seconds)


def _load_and_run(path: str, batch: int) -> Dict[str, Any]:
    import onnxruntime as ort  # heavy and optional: only in this child

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    feed: Dict[str, Any] = {}
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}
    for tensor in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(tensor.shape)]
        feed[tensor.name] = np.zeros(shape, dtype=types.get(tensor.type, np.float32))
    outputs = session.run(None, feed)
    return {"ok": True, "outputs": [list(np.shape(o)) for o in outputs]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.engine.plan_trial")
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        answer = _load_and_run(args.model, args.batch)
    except Exception as exc:  # any onnxruntime failure is the answer, not a crash
        answer = {"ok": False, "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]}
    print(json.dumps(answer), flush=True)
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
