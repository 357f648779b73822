"""One way to get a runner for an engine artifact: `open_runner(backend, path)`, or `open_engine(path)` for a
file or a cached engine folder given by a person (`engine validate`).

The runner comes back not yet activated (Polygraphy's lazy style): nothing heavy loads until `activate()`,
so a daemon can build it, hand it to the pipeline's `swap_runner`, or throw it away cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

from agent.device.target import Backend
from agent.engine.manifest import Manifest, read_manifest
from agent.runtime.base import Runner, RunnerError
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.runtime.tensorrt_runner import TensorRTRunner


def open_runner(
    backend: str,
    artifact_path: Union[str, Path],
    *,
    threads: int = 0,
    dla_core: Optional[int] = None,
    name: str = "",
    spin: bool = False,
) -> Runner:
    """A runner for `artifact_path` on `backend` (onnxruntime | tensorrt | auto: by the file's suffix), not
    activated yet.

    threads: onnxruntime intra-op threads (0: library default); dla_core: TensorRT DLA core, None for the GPU.
    """
    path = Path(artifact_path)
    if not path.is_file():
        raise RunnerError(f"engine artifact not found: {path}")
    chosen = Backend.for_file(backend, path)
    if chosen == Backend.ONNXRUNTIME:
        if dla_core is not None:
            raise RunnerError("dla_core applies to TensorRT engines only; the onnxruntime backend runs on the CPU")

        return OnnxRuntimeRunner(path, threads=threads, name=name, spin=spin)

    return TensorRTRunner(path, dla_core=dla_core, name=name)


ENGINE_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")


def open_engine(engine: Union[str, Path]) -> Tuple[Runner, Optional[Manifest]]:
    """(runner not yet activated, its manifest or None) for an engine file or a cached engine folder (manifest.json
    beside the engine: its backend and DLA core are used)."""
    path = Path(engine)
    if path.is_dir():
        manifest = read_manifest(path)
        return open_runner(manifest.backend, path / manifest.engine_file, dla_core=manifest.spec.dla_core), manifest
    if not path.is_file():
        raise RunnerError(f"engine not found: {path}")
    if path.suffix.lower() not in ENGINE_SUFFIXES:
        raise RunnerError(f"{path}: give an engine file ({', '.join(ENGINE_SUFFIXES)}) or a cached engine folder (with manifest.json)")
    return open_runner("auto", path), None
