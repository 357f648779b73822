"""Trial deserialization of a TensorRT plan in a child process, with TensorRT's log captured and classified.

TensorRT has no compatibility preflight API: `deserialize_cuda_engine` returns None and says why only through
its logger, and a corrupt plan can crash the process (docs/engines.md, 'Compatibility'). So a plan is first loaded in a
throwaway child (`python -m agent.engine.trt_loader PLAN [--dla-core N] [--plugin LIB]...`), which prints one
JSON line: {"ok": bool, "log": [lines], "io": [...]}. The parent classifies the log (agent.engine.diagnose).

Verified by type checks only (mypy against tensorrt-stubs 10.13): no machine of this project has TensorRT.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from agent.engine.diagnose import diagnose_log
from agent.lazy import require

if TYPE_CHECKING:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

SEVERITY_NAMES = {0: "INTERNAL_ERROR", 1: "ERROR", 2: "WARNING", 3: "INFO", 4: "VERBOSE"}


@dataclass
class TrialResult:
    ok: bool
    log: List[str] = field(default_factory=list)
    problems: List[Dict[str, Any]] = field(default_factory=list)
    io: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: Optional[int] = None
    error: str = ""

    def summary(self) -> str:
        if self.problems:
            first = self.problems[0]
            versions = f" (runtime {first['runtime']}, plan {first['plan']})" if first.get("runtime") or first.get("plan") else ""
            return f"{first['kind']}{versions}: {first.get('detail') or first['line']}"
        return self.error or "TensorRT returned no engine"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def trial_deserialize(path: Path, dla_core: Optional[int] = None, plugins: Sequence[Path] = (), timeout_s: float = 300.0) -> TrialResult:
    """Deserialize `path` in a child process; never raises for a bad plan."""
    command = [sys.executable, "-m", "agent.engine.trt_loader", str(path)]
    if dla_core is not None:
        command += ["--dla-core", str(dla_core)]
    for plugin in plugins:
        command += ["--plugin", str(plugin)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return TrialResult(False, error=f"deserialization did not finish within {timeout_s:g} s", seconds=timeout_s)
    seconds = time.monotonic() - started
    result = _parse_child_output(done.stdout.decode("utf-8", "replace"))
    result.exit_code = done.returncode
    result.seconds = round(seconds, 3)
    stderr = done.stderr.decode("utf-8", "replace").splitlines()
    if not result.log:
        result.log = stderr[-50:]
    if done.returncode < 0 and not result.ok:
        result.error = f"the process died with signal {-done.returncode} while deserializing: a corrupt plan or a TensorRT crash"
    elif not result.error and not result.ok and done.returncode != 0 and not result.log:
        result.error = f"the trial loader exited with code {done.returncode}"
    result.problems = [p.to_dict() for p in diagnose_log("\n".join(result.log))]
    if not result.ok and not result.problems and done.returncode < 0:
        result.problems = [{"kind": "corrupt", "runtime": None, "plan": None, "line": result.error, "detail": result.error, "severity": "error"}]
    return result


def _parse_child_output(text: str) -> TrialResult:
    for line in reversed(text.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "ok" in data:
            return TrialResult(
                ok=bool(data["ok"]),
                log=[str(x) for x in data.get("log", [])],
                io=[dict(x) for x in data.get("io", [])],
                error=str(data.get("error", "")),
            )
    return TrialResult(False)


# --- the child -------------------------------------------------------------------------------------------------


def _capture_logger(lines: List[str]) -> trt.ILogger:
    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    class CaptureLogger(trt.ILogger):
        """Appends WARNING and above to `lines` (an ILogger receives every message; only trt.Logger has
        min_severity)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            name = SEVERITY_NAMES.get(int(severity), str(severity))
            if int(severity) <= 2:
                lines.append(f"[{name}] {msg}")

    return CaptureLogger()


def load_plan(path: str, dla_core: Optional[int], plugins: Sequence[str]) -> Dict[str, Any]:
    """Deserialize the plan here (in the child) and describe its I/O tensors."""
    require("tensorrt", "checking TensorRT plans")

    import tensorrt as trt  # type: ignore[import-untyped]  # typed by the patched stubs, see docs/engines.md

    lines: List[str] = []
    logger = _capture_logger(lines)
    trt.init_libnvinfer_plugins(logger, "")
    for plugin in plugins:
        ctypes.CDLL(plugin)  # plugin libraries register their creators when loaded
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    data = Path(path).read_bytes()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        return {"ok": False, "log": lines, "io": []}
    io: List[Dict[str, Any]] = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        io.append(
            {
                "name": name,
                "mode": str(engine.get_tensor_mode(name)),
                "shape": [int(dims[i]) for dims in [engine.get_tensor_shape(name)] for i in range(len(dims))],
                "dtype": str(engine.get_tensor_dtype(name)),
            }
        )
    return {"ok": True, "log": lines, "io": io}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.engine.trt_loader")
    parser.add_argument("plan")
    parser.add_argument("--dla-core", type=int, default=None)
    parser.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        result = load_plan(args.plan, args.dla_core, args.plugin)
    except Exception as exc:  # report anything as a failed trial; the parent decides
        result = {"ok": False, "log": [], "io": [], "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
