"""Capture in its own thread: keep the newest frame(s), count what is dropped, reopen what dies.

Why a thread per source: a camera delivers at its own pace whatever inference does; reading it from the
inference loop makes frames queue up in the driver and latency grow without bound (the jetson-inference and
Frigate complaint). Here the thread always reads, keeps at most `depth` frames, and drops the oldest when the
consumer is slower (counted). A file read "as fast as possible" is the exception: it is lossless, the reader
waits for room instead of dropping, so every frame is processed once (benchmarks, offline checks).

A source that stops delivering (read fails, stream ends, file ends with loop off) is closed and reopened
with exponential backoff, counted in `reconnects`; one that never opens keeps being retried, and
`last_error` says what was tried. Nothing here blocks the caller: start() returns at once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, Optional

import numpy as np

from agent.vision.sources import (
    FrameReader,
    OpenPlan,
    SourceError,
    SourceInfo,
    SourceOptions,
    open_reader,
    opencv_has_gstreamer,
    plan_source,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (1 = the first retry)."""
        if attempt <= 0:
            return 0.0
        return float(min(self.max_s, self.initial_s * (self.factor ** (attempt - 1))))


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8
    frame_id: int  # per source, increasing across reconnects
    source: str
    captured: float  # wall clock (epoch seconds) when the read finished
    t_mono: float  # time.monotonic() at the same moment, for latencies
    read_ms: float  # how long the read (wait + decode) took
    prepared: Any = None  # what `Capture.transform` made of the image in the capture thread, if set


@dataclass
class CaptureStats:
    name: str
    uri: str
    state: str  # starting | opening | streaming | waiting | ended | stopped
    frames: int
    drops: int
    reconnects: int  # successful reopenings after the first open
    open_failures: int
    disconnects: int  # times a stream stopped delivering
    last_error: str
    width: int
    height: int
    declared_fps: float
    backend: str
    seconds_since_frame: Optional[float]


class Capture:
    """`Capture(uri, options).start()`; `take()` the newest frames; `stats()`; `stop()`."""

    def __init__(
        self,
        uri: str,
        options: Optional[SourceOptions] = None,
        *,
        name: str = "",
        policy: Optional[ReconnectPolicy] = None,
        depth: int = 1,
        lossless: Optional[bool] = None,
        stop_at_end: bool = False,
        plans: Optional[List[OpenPlan]] = None,
        on_read: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.uri = uri
        self.options = options or SourceOptions()
        self.name = name or uri
        self.policy = policy or ReconnectPolicy()
        self.depth = max(1, depth)
        self.plans = plans if plans is not None else plan_source(uri, self.options, have_gstreamer=opencv_has_gstreamer())
        # lossless unless it is a live source (camera, stream, or a paced file)
        self.lossless = (not any(p.live for p in self.plans)) if lossless is None else lossless
        self.stop_at_end = stop_at_end
        self.on_read = on_read
        self.listeners: List[threading.Event] = []  # set after every new frame (a pipeline serving several sources)
        # applied to every frame in the capture thread (lossless sources only: a live source would spend it on
        # frames that are then dropped); the pipeline preprocesses here so decode and preprocessing share a thread
        self.transform: Optional[Callable[[np.ndarray], Any]] = None
        self.info: Optional[SourceInfo] = None
        self._frames: Deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._state = "starting"
        self._next_id = 0
        self._frames_read = 0
        self._drops = 0
        self._reconnects = 0
        self._open_failures = 0
        self._disconnects = 0
        self._last_error = ""
        self._last_frame_mono: Optional[float] = None
        self._ended = False

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Capture:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"capture:{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        with self._cond:
            if self._state != "ended":
                self._state = "stopped"
            self._cond.notify_all()
        for listener in self.listeners:
            listener.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_open(self, timeout: float) -> SourceInfo:
        """Block until the source has opened once; SourceError with what was tried if it does not in time."""
        if not self._opened.wait(timeout):
            error = self._last_error or "no frame yet"
            raise SourceError(f"source {self.name} did not open within {timeout:.1f} s: {error}")
        if self.info is None:  # _opened is set only after info; kept for the type checker
            raise SourceError(f"source {self.name} opened without source information")
        return self.info

    @property
    def ended(self) -> bool:
        """The source reached its end and stop_at_end holds (frames may still be waiting in take())."""
        return self._ended

    @property
    def finished(self) -> bool:
        """Ended (or stopped) and every frame taken."""
        with self._cond:
            return (self._ended or self._stop.is_set()) and not self._frames

    # consumer side --------------------------------------------------------------------------------------
    def take(self, max_frames: int = 1, timeout: float = 0.5) -> List[Frame]:
        """Up to `max_frames` kept frames, oldest first, waiting up to `timeout` for at least one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._frames:
                if self._ended or self._stop.is_set():
                    return []
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            taken: List[Frame] = []
            while self._frames and len(taken) < max_frames:
                taken.append(self._frames.popleft())
            self._cond.notify_all()  # a lossless reader may be waiting for room
            return taken

    def stats(self) -> CaptureStats:
        with self._cond:
            info = self.info
            since = None if self._last_frame_mono is None else round(time.monotonic() - self._last_frame_mono, 3)
            return CaptureStats(
                name=self.name,
                uri=self.uri,
                state=self._state,
                frames=self._frames_read,
                drops=self._drops,
                reconnects=self._reconnects,
                open_failures=self._open_failures,
                disconnects=self._disconnects,
                last_error=self._last_error,
                width=info.width if info else 0,
                height=info.height if info else 0,
                declared_fps=info.fps if info else 0.0,
                backend=info.backend if info else "",
                seconds_since_frame=since,
            )

    # the capture thread ---------------------------------------------------------------------------------
    def _set_state(self, state: str, error: Optional[str] = None) -> None:
        with self._cond:
            if self._state not in ("stopped", "ended"):
                self._state = state
            if error is not None:
                self._last_error = error

    def _run(self) -> None:
        attempt = 0
        opened_before = False
        while not self._stop.is_set():
            self._set_state("opening")
            try:
                reader = open_reader(self.uri, self.plans)
            except SourceError as exc:
                attempt += 1
                with self._cond:
                    self._open_failures += 1
                self._set_state("waiting", str(exc))
                delay = self.policy.delay(attempt)
                log.warning("%s (retrying in %.1f s)", exc, delay)
                self._stop.wait(delay)
                continue
            except Exception as exc:  # a backend bug must not kill the capture thread silently
                attempt += 1
                with self._cond:
                    self._open_failures += 1
                self._set_state("waiting", f"opening {self.uri} failed: {type(exc).__name__}: {exc}")
                self._stop.wait(self.policy.delay(attempt))
                continue
            if opened_before:
                with self._cond:
                    self._reconnects += 1
                log.info("source %s reopened (reconnect %d)", self.name, self._reconnects)
            opened_before = True
            attempt = 0
            self.info = reader.info
            self._opened.set()
            self._set_state("streaming")
            ended = self._stream(reader)
            if self._stop.is_set():
                break
            if ended and self.stop_at_end:
                with self._cond:
                    self._ended = True
                    self._state = "ended"
                    self._cond.notify_all()
                return
            attempt += 1
            with self._cond:
                self._disconnects += 1
            why = "reached the end of the file (loop off)" if ended else "stopped delivering frames"
            delay = self.policy.delay(attempt)
            self._set_state("waiting", f"source {self.name} {why}; reopening")
            log.warning("source %s %s; reopening in %.1f s", self.name, why, delay)
            self._stop.wait(delay)
        self._set_state("stopped")

    def _stream(self, reader: FrameReader) -> bool:
        """Read until the source stops or we are stopped; True if it ended cleanly (end of a file)."""
        try:
            while not self._stop.is_set():
                tick = time.perf_counter()
                try:
                    image = reader.read()
                except Exception as exc:  # a decoder error ends this stream; the loop reopens it
                    self._set_state("waiting", f"read failed: {type(exc).__name__}: {exc}")
                    return False
                read_ms = (time.perf_counter() - tick) * 1000.0
                if image is None:
                    return reader.ended
                self._push(image, read_ms)
            return False
        finally:
            try:
                reader.close()
            except Exception:
                log.debug("closing %s failed", self.name, exc_info=True)

    def _push(self, image: np.ndarray, read_ms: float) -> None:
        if self.on_read is not None:
            self.on_read(read_ms)
        prepared = None
        if self.transform is not None and self.lossless:
            try:
                prepared = self.transform(image)
            except Exception:  # the consumer prepares it again and reports the error
                log.debug("capture transform failed on %s", self.name, exc_info=True)
        with self._cond:
            if self.lossless:  # wait for room first, so the frame's clock starts when it can be taken
                while len(self._frames) >= self.depth and not self._stop.is_set():
                    self._cond.wait(0.1)
            elif len(self._frames) >= self.depth:
                self._frames.popleft()
                self._drops += 1
            now_mono = time.monotonic()
            frame = Frame(image, self._next_id, self.name, time.time(), now_mono, read_ms, prepared)
            self._next_id += 1
            self._frames_read += 1
            self._last_frame_mono = now_mono
            self._frames.append(frame)
            self._cond.notify_all()
        for listener in self.listeners:
            listener.set()
