"""One way to get a runner for an engine artifact: `open_runner(backend, path)`.

The runner comes back not yet activated (Polygraphy's lazy style): nothing heavy loads until `activate()`,
so a daemon can build it, hand it to the pipeline's `swap_runner`, or throw it away cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

from agent.runtime.base import Runner, RunnerError
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.runtime.tensorrt_runner import TensorRTRunner

BACKEND_ALIASES: Dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "ort": "onnxruntime",
    "cpu": "onnxruntime",
    "tensorrt": "tensorrt",
    "trt": "tensorrt",
}
TENSORRT_SUFFIXES = (".plan", ".engine", ".trt")


def backend_for(backend: str, artifact_path: Union[str, Path]) -> str:
    """The canonical backend name; 'auto' decides by the file's suffix (.onnx -> onnxruntime, .plan/.engine/.trt
    -> tensorrt)."""
    key = (backend or "auto").strip().lower()
    if key == "auto":
        suffix = Path(artifact_path).suffix.lower()
        if suffix == ".onnx":
            return "onnxruntime"
        if suffix in TENSORRT_SUFFIXES:
            return "tensorrt"
        raise RunnerError(f"cannot tell the backend of {Path(artifact_path).name} from its suffix; name one: onnxruntime or tensorrt")
    if key not in BACKEND_ALIASES:
        raise RunnerError(f"unknown backend {backend!r}; known: onnxruntime, tensorrt (or auto)")
    return BACKEND_ALIASES[key]


def open_runner(
    backend: str,
    artifact_path: Union[str, Path],
    *,
    threads: int = 0,
    dla_core: Optional[int] = None,
    name: str = "",
    spin: bool = False,
) -> Runner:
    """A runner for `artifact_path` on `backend` (onnxruntime | tensorrt | auto), not activated yet.

    threads: onnxruntime intra-op threads (0: library default); dla_core: TensorRT DLA core, None for the GPU.
    """
    path = Path(artifact_path)
    if not path.is_file():
        raise RunnerError(f"engine artifact not found: {path}")
    chosen = backend_for(backend, path)
    if chosen == "onnxruntime":
        if dla_core is not None:
            raise RunnerError("dla_core applies to TensorRT engines only; the onnxruntime backend runs on the CPU")

        return OnnxRuntimeRunner(path, threads=threads, name=name, spin=spin)

    return TensorRTRunner(path, dla_core=dla_core, name=name)
