"""The camera pipeline: source -> preprocess -> runner.infer -> postprocess -> result callback.

Threads and why:
    capture (one per source, in Capture)   decodes at the camera's pace, keeps the newest frame(s); for a
                                           lossless source (a file as fast as possible) also preprocesses
    prepare                                takes up to `batch` frames, preprocesses them (live sources),
                                           stacks them into one tensor
    infer                                  runs the engine (onnxruntime and TensorRT release the GIL)
    finish                                 postprocesses, calls the result callback (publish), keeps the snapshot
Stages hand over through queues of one item, so at most one batch waits between stages: latency stays
bounded when the engine is slow, and frames are dropped (and counted) only at the capture end, where the
newest frame replaces an untaken one.

`swap_runner()` replaces the engine between two batches without stopping the cameras; batches prepared for
the old engine are discarded (counted). `metrics()` hands telemetry per-stage fps and latency percentiles,
drops and reconnects. `snapshot()` is the newest processed frame with its results drawn, as JPEG.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from agent.errors import AgentError
from agent.lazy import deferred
from agent.runtime.base import Runner, TensorSpec, batch_size_of
from agent.vision import postprocess as postprocess_plugins
from agent.vision.annotate import draw_findings, encode_jpeg
from agent.vision.capture import Capture, Frame
from agent.vision.metrics import PipelineMetrics
from agent.vision.options import PostprocessConfig
from agent.vision.postprocess.base import Findings, Postprocessor
from agent.vision.preprocess import FrameGeometry, PreprocessSpec, prepare, spec_from
from agent.vision.sources import SourceOptions

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

_END = object()  # end of all sources: flows through the stages so the last results are finished


class PipelineError(AgentError):
    """The pipeline's parts do not fit together (preprocessing vs the engine's input, batch, dtype)."""


@dataclass
class FrameResult:
    source: str
    frame_id: int
    captured: float  # epoch seconds when the frame was read
    latency_ms: float  # capture -> result ready, before publishing
    infer_ms: float  # inference of the batch this frame ran in
    batch: int  # frames in that batch
    width: int
    height: int
    engine: str
    findings: Findings

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "source": self.source,
            "frame": self.frame_id,
            "captured": round(self.captured, 3),
            "latency_ms": round(self.latency_ms, 2),
            "infer_ms": round(self.infer_ms, 2),
            "batch": self.batch,
            "size": [self.width, self.height],
            "engine": self.engine,
        }
        if self.findings.classes:
            data["classes"] = [c.to_dict() for c in self.findings.classes]
        data["detections"] = [d.to_dict() for d in self.findings.detections]
        return data


ResultCallback = Callable[[FrameResult], Any]


@dataclass
class _Prepared:
    generation: int
    frames: List[Frame]
    tensor: np.ndarray
    geometries: List[FrameGeometry]


@dataclass
class _Inferred:
    prepared: _Prepared
    outputs: Dict[str, np.ndarray]
    infer_ms: float
    post: Postprocessor
    engine: str


def engine_batch_limits(runner: Runner) -> Tuple[Optional[int], Optional[int]]:
    """(fixed batch or None, largest batch or None) of the runner's first input. `max_batch` is the runners'
    own attribute (a TensorRT profile's max); a fixed first dimension is both."""
    spec = runner.first_input()
    fixed = batch_size_of(spec)
    largest = getattr(runner, "max_batch", None)
    if fixed is not None:
        return fixed, fixed
    return None, int(largest) if isinstance(largest, int) and largest > 0 else None


def check_fit(spec: PreprocessSpec, input_spec: TensorSpec) -> None:
    """PipelineError unless tensors made by `spec` fit the engine's input (size, channels, layout, dtype)."""
    shape = input_spec.shape
    if len(shape) != 4:
        raise PipelineError(f"engine input '{input_spec.name}' has shape {shape}; the camera pipeline needs a 4-D image input")
    channels = 1 if spec.color == "gray" else 3
    want = (channels, spec.size[0], spec.size[1]) if spec.layout == "nchw" else (spec.size[0], spec.size[1], channels)
    for got, expected in zip(shape[1:], want):
        if isinstance(got, int) and got >= 0 and got != expected:
            raise PipelineError(
                f"preprocessing makes {spec.layout.upper()} tensors of {want}, the engine input '{input_spec.name}' is {shape}: "
                "fix the deployment's preprocess size/layout/color"
            )
    if spec.dtype != input_spec.dtype:
        raise PipelineError(f"preprocessing makes {spec.dtype}, the engine input '{input_spec.name}' takes {input_spec.dtype}")


class Pipeline:
    """`Pipeline(capture, runner, "efficientnet_lite", {"type": "classification"}, on_result).start()`."""

    def __init__(
        self,
        sources: Union[Capture, Sequence[Capture]],
        runner: Runner,
        preprocess: Union[str, Mapping[str, Any], PreprocessSpec, None],
        postprocess: Union[str, Mapping[str, Any], Postprocessor, PostprocessConfig],
        on_result: Optional[ResultCallback] = None,
        *,
        batch: int = 1,
        gather_ms: float = 0.0,
        name: str = "camera",
        own_sources: bool = True,
        snapshot_quality: int = 85,
    ) -> None:
        self.captures: List[Capture] = [sources] if isinstance(sources, Capture) else list(sources)
        if not self.captures:
            raise PipelineError("a pipeline needs at least one source")
        if batch < 1:
            raise PipelineError(f"batch must be at least 1, got {batch}")
        self.name = name
        self.on_result = on_result
        self.requested_batch = batch
        self.gather_ms = gather_ms
        self.own_sources = own_sources
        self.snapshot_quality = snapshot_quality
        self.metrics_data = PipelineMetrics()
        self._runner = runner
        self._spec = spec_from(preprocess)
        self._post = postprocess_plugins.create(postprocess)
        self._input_name = ""
        self._batch = batch
        self._fixed_batch: Optional[int] = None
        self._generation = 0
        self._config_lock = threading.Lock()  # runner, spec, postprocessor, generation change together
        self._runner_lock = threading.Lock()  # held while the runner infers, so a swap waits for the batch
        self._to_infer: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._to_finish: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._frame_ready = threading.Event()
        self._threads: List[threading.Thread] = []
        self._latest: Dict[str, Tuple[np.ndarray, Findings, FrameResult]] = {}  # per source, and "" for any
        self._latest_lock = threading.Lock()
        self._results = 0
        self._started_mono: Optional[float] = None
        self._last_error_log = 0.0

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        if self._threads:
            return self
        self._configure(self._runner, self._spec)
        for capture in self.captures:
            if capture.on_read is None:
                capture.on_read = self._record_read
            capture.listeners.append(self._frame_ready)
            if capture.lossless and capture.transform is None:
                capture.transform = self._prepare_early
            capture.start()
        self._started_mono = time.monotonic()
        for target, label in ((self._prepare_loop, "prepare"), (self._infer_loop, "infer"), (self._finish_loop, "finish")):
            thread = threading.Thread(target=target, name=f"{self.name}:{label}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the stages (and the sources, if the pipeline owns them). Never blocks past `timeout` per thread."""
        self._stop.set()
        self._frame_ready.set()
        if self.own_sources:
            for capture in self.captures:
                capture.stop(timeout)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def wait_finished(self, timeout: Optional[float] = None) -> bool:
        """True once every source has ended (stop_at_end) and its last frames were finished."""
        return self._finished.wait(timeout)

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    @property
    def runner(self) -> Runner:
        return self._runner

    @property
    def batch(self) -> int:
        return self._batch

    # engine changes -------------------------------------------------------------------------------------
    def _configure(self, runner: Runner, spec: PreprocessSpec) -> Tuple[str, int, Optional[int]]:
        """Activate, check the fit, and work out the input name and batch; raises before anything changes."""
        if not runner.is_active:
            runner.activate()
        input_spec = runner.first_input()
        check_fit(spec, input_spec)
        fixed, largest = engine_batch_limits(runner)
        batch = self.requested_batch
        if fixed is not None:
            batch = fixed  # a fixed-batch engine always gets full batches (padded)
        elif largest is not None and batch > largest:
            log.warning("batch %d is over the engine's maximum %d; using %d", batch, largest, largest)
            batch = largest
        if not self._threads:  # first configuration: apply directly
            self._input_name, self._batch, self._fixed_batch = input_spec.name, batch, fixed
        return input_spec.name, batch, fixed

    def swap_runner(
        self,
        new_runner: Runner,
        *,
        preprocess: Union[str, Mapping[str, Any], PreprocessSpec, None] = None,
        postprocess: Union[str, Mapping[str, Any], Postprocessor, PostprocessConfig, None] = None,
    ) -> Runner:
        """Put `new_runner` in service between two batches and return the old one (the caller deactivates it).
        The cameras keep running. If the new engine does not fit, PipelineError and nothing changes. Swapping in
        the runner already serving, with nothing else new, changes nothing."""
        if new_runner is self._runner and preprocess is None and postprocess is None:
            return new_runner
        spec = spec_from(preprocess) if preprocess is not None else self._spec
        post = postprocess_plugins.create(postprocess) if postprocess is not None else self._post
        input_name, batch, fixed = self._configure(new_runner, spec)
        with self._runner_lock, self._config_lock:
            old = self._runner
            self._runner, self._spec, self._post = new_runner, spec, post
            self._input_name, self._batch, self._fixed_batch = input_name, batch, fixed
            self._generation += 1  # batches prepared for the old engine are discarded, never fed to the new one
        log.info("pipeline %s: engine %s replaced by %s", self.name, old.name, new_runner.name)
        return old

    # outputs --------------------------------------------------------------------------------------------
    def metrics(self) -> Dict[str, Any]:
        """Everything telemetry reports about this pipeline, as plain data."""
        stats = [capture.stats() for capture in self.captures]
        summary = self.metrics_data.summary()
        elapsed = time.monotonic() - self._started_mono if self._started_mono else 0.0
        with self._config_lock:
            runner = self._runner
        return {
            "name": self.name,
            "running": self.running,
            "engine": runner.name,
            "backend": runner.backend,
            "batch": self._batch,
            "results": self._results,
            "fps": summary["stages"]["publish"]["fps"],
            "uptime_s": round(elapsed, 1),
            "drops": sum(s.drops for s in stats),
            "reconnects": sum(s.reconnects for s in stats),
            "open_failures": sum(s.open_failures for s in stats),
            **summary,
            "sources": [asdict(s) for s in stats],
        }

    def reset_metrics(self) -> None:
        self.metrics_data.reset()

    def latest(self, source: str = "") -> Optional[FrameResult]:
        """The newest result (of `source`, a capture's name, or of any source)."""
        with self._latest_lock:
            latest = self._latest.get(source)
        return latest[2] if latest else None

    def snapshot(self, quality: Optional[int] = None, source: str = "") -> Optional[bytes]:
        """The newest processed frame (of `source`, a capture's name, or of any source) with its results drawn,
        as JPEG bytes; None before the first result."""
        with self._latest_lock:
            latest = self._latest.get(source)
        if latest is None:
            return None
        image, findings, _result = latest
        return encode_jpeg(draw_findings(image, findings), quality or self.snapshot_quality)

    # stage threads --------------------------------------------------------------------------------------
    def _record_read(self, read_ms: float) -> None:
        self.metrics_data.stages["capture"].record(read_ms)

    def _prepare_early(self, image: np.ndarray) -> Tuple[int, np.ndarray, FrameGeometry]:
        """Preprocessing in the capture thread of a lossless source, tagged with the engine generation it is for."""
        with self._config_lock:
            generation, spec = self._generation, self._spec
        started = time.perf_counter()
        tensor, geometry = prepare(image, spec)
        self.metrics_data.stages["preprocess"].record((time.perf_counter() - started) * 1000.0)
        return generation, tensor, geometry

    def _put(self, target: queue.Queue[Any], item: Any) -> bool:
        """Blocking put that gives up when the pipeline stops."""
        while not self._stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _gather(self, batch: int) -> List[Frame]:
        """Up to `batch` frames from the sources (oldest kept first), waiting briefly for the first one."""
        frames: List[Frame] = []
        if len(self.captures) == 1:
            frames = self.captures[0].take(batch, timeout=0.1)
        else:
            self._frame_ready.wait(0.1)
            self._frame_ready.clear()
            for capture in self.captures:
                if len(frames) >= batch:
                    break
                frames += capture.take(batch - len(frames), timeout=0.0)
        if frames and self.gather_ms > 0 and len(frames) < batch:
            deadline = time.monotonic() + self.gather_ms / 1000.0
            while len(frames) < batch and time.monotonic() < deadline and not self._stop.is_set():
                for capture in self.captures:
                    frames += capture.take(batch - len(frames), timeout=0.0)
                if len(frames) < batch:
                    self._frame_ready.wait(max(0.0, min(0.005, deadline - time.monotonic())))
                    self._frame_ready.clear()
        return frames

    def _prepare_loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._config_lock:
                    generation, spec, batch, fixed = self._generation, self._spec, self._batch, self._fixed_batch
                frames = self._gather(batch)
                if not frames:
                    if all(capture.finished for capture in self.captures):
                        self._put(self._to_infer, _END)
                        return
                    continue
                tensors, geometries, kept = [], [], []
                for frame in frames:
                    early = frame.prepared
                    if early is not None and early[0] == generation:  # done in the capture thread
                        _generation, tensor, geometry = early
                    else:
                        try:
                            tick = time.perf_counter()
                            tensor, geometry = prepare(frame.image, spec)
                            self.metrics_data.stages["preprocess"].record((time.perf_counter() - tick) * 1000.0)
                        except AgentError as exc:
                            self._error(f"preprocessing frame {frame.frame_id} of {frame.source} failed: {exc}")
                            continue
                    tensors.append(tensor)
                    geometries.append(geometry)
                    kept.append(frame)
                if not kept:
                    continue
                rows = fixed if fixed is not None else len(tensors)
                while len(tensors) < rows:  # a fixed-batch engine gets full batches; padding rows are ignored
                    tensors.append(tensors[-1])
                started = time.perf_counter()
                stacked = np.stack(tensors)
                self.metrics_data.stages["batch"].record((time.perf_counter() - started) * 1000.0, len(kept))
                if not self._put(self._to_infer, _Prepared(generation, kept, stacked, geometries)):
                    return
        except Exception as exc:  # a bug here must be visible in metrics and logs, not a silent dead thread
            log.exception("pipeline %s: prepare stage failed", self.name)
            self._error(f"prepare stage stopped: {type(exc).__name__}: {exc}")

    def _infer_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._to_infer.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                self._put(self._to_finish, _END)
                return
            with self._runner_lock:
                with self._config_lock:
                    current, runner, post, input_name = self._generation, self._runner, self._post, self._input_name
                if item.generation != current:
                    self.metrics_data.discard(len(item.frames))
                    continue
                started = time.perf_counter()
                try:
                    outputs = runner.infer({input_name: item.tensor})
                except Exception as exc:  # RunnerError, or a backend failure: drop this batch, keep serving
                    self._error(f"inference on {runner.name} failed: {exc}")
                    continue
                infer_ms = (time.perf_counter() - started) * 1000.0
            self.metrics_data.stages["infer"].record(infer_ms, len(item.frames))
            if not self._put(self._to_finish, _Inferred(item, outputs, infer_ms, post, runner.name)):
                return

    def _finish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._to_finish.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                self._finished.set()
                return
            try:
                self._finish(item)
            except Exception as exc:
                log.exception("pipeline %s: finishing a batch failed", self.name)
                self._error(f"postprocessing failed: {type(exc).__name__}: {exc}")

    def _finish(self, item: _Inferred) -> None:
        prepared = item.prepared
        started = time.perf_counter()
        findings = item.post(item.outputs, prepared.geometries)
        self.metrics_data.stages["postprocess"].record((time.perf_counter() - started) * 1000.0, len(prepared.frames))
        stages = self.metrics_data
        newest: Dict[str, Tuple[np.ndarray, Findings, FrameResult]] = {}
        for frame, found in zip(prepared.frames, findings):
            height, width = frame.image.shape[:2]
            result = FrameResult(
                source=frame.source,
                frame_id=frame.frame_id,
                captured=frame.captured,
                latency_ms=(time.monotonic() - frame.t_mono) * 1000.0,
                infer_ms=item.infer_ms,
                batch=len(prepared.frames),
                width=int(width),
                height=int(height),
                engine=item.engine,
                findings=found,
            )
            publish_start = time.perf_counter()
            if self.on_result is not None:
                try:
                    self.on_result(result)
                except Exception as exc:  # a failing consumer must not stop the camera
                    self._error(f"result callback failed: {type(exc).__name__}: {exc}")
            done = time.monotonic()
            stages.stages["publish"].record((time.perf_counter() - publish_start) * 1000.0)
            end_to_end = (done - frame.t_mono) * 1000.0
            stages.end_to_end.record(end_to_end)
            stages.added.record(max(0.0, end_to_end - item.infer_ms))
            self._results += 1
            newest[frame.source] = newest[""] = (frame.image, found, result)
        if newest:
            with self._latest_lock:
                self._latest.update(newest)

    def _error(self, message: str) -> None:
        self.metrics_data.error(message)
        now = time.monotonic()
        if now - self._last_error_log > 5.0:  # a broken engine fails every batch; log it, not flood with it
            self._last_error_log = now
            log.warning("pipeline %s: %s", self.name, message)


def build_pipeline(
    uris: Sequence[str],
    runner: Runner,
    preprocess: Union[str, Mapping[str, Any], PreprocessSpec, None],
    postprocess: Union[str, Mapping[str, Any], Postprocessor, PostprocessConfig],
    on_result: Optional[ResultCallback] = None,
    *,
    batch: int = 1,
    source_options: Optional[SourceOptions] = None,
    name: str = "camera",
    capture_names: Optional[Sequence[str]] = None,
) -> Pipeline:
    """A pipeline over `uris` (one Capture each, the same options for all), not started. Source URIs and
    options are checked here, so a bad deployment fails before anything runs. `capture_names` name the
    sources in results and metrics (default: their URIs)."""
    options = source_options or SourceOptions()
    names = list(capture_names) if capture_names is not None else list(uris)
    captures = [Capture(uri, options, depth=capture_depth(len(uris), batch), name=names[i]) for i, uri in enumerate(uris)]
    return Pipeline(captures, runner, preprocess, postprocess, on_result, batch=batch, name=name)


def capture_depth(sources: int, batch: int) -> int:
    """How many frames each capture keeps: one camera fills a batch with its own consecutive frames; several
    cameras batch their newest frame each."""
    return max(1, batch) if sources == 1 else 1
