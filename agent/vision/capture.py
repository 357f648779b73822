"""Capture in its own thread: keep the newest frame(s), count what is dropped, reopen what dies.

Why a thread per source: a camera delivers at its own pace whatever inference does; reading it from the
inference loop makes frames queue up in the driver and latency grow without bound (the jetson-inference and
Frigate complaint). Here the thread always reads, keeps at most `depth` frames, and drops the oldest when the
consumer is slower (counted). A file read "as fast as possible" is the exception: it is lossless, the reader
waits for room instead of dropping, so every frame is processed once (benchmarks, offline checks).

A source that stops delivering (read fails, stream ends, file ends with loop off) is closed and reopened
with exponential backoff, counted in `reconnects`; one that never opens keeps being retried, and
`last_error` says what was tried. Nothing here blocks the caller: start() returns at once.

A camera or network stream that stalls (connected, no frames) is caught twice: OpenCV's FFmpeg backend gets
`read_timeout_s` as CAP_PROP_READ_TIMEOUT_MSEC, so its read returns empty after that long (measured against a
real RTSP and HTTP MJPEG server in tests/vision/test_streams.py) and the loop reopens; and a watchdog thread
catches an open or read that blocks past its limit anyway (a backend without timeouts, such as GStreamer's
rtspsrc): the blocked reader thread is abandoned (it closes its reader and exits if the call ever returns)
and a fresh one reopens the source. Both count in `stalls`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Tuple

from agent.lazy import deferred
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

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

WATCHED_KINDS = ("rtsp", "http", "v4l2", "csi")  # live sources whose reads must never block for long
MAX_ABANDONED = 4  # reader threads stuck in a call the watchdog gave up on, at most, per source


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    healthy_s: float = 10.0  # a stream that delivered this long resets the backoff

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
    stalls: int  # of those, times it went silent: no frame within read_timeout_s (or a read/open the watchdog cut off)
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
        self._stalls = 0
        self._worker = 0  # the current reader thread's number; a thread the watchdog abandoned has an older one
        self._busy_since: Optional[float] = None  # monotonic start of the open or read now in progress
        self._busy_what = ""
        # the watchdog's limits: only for cameras and network streams (a paced file sleeps inside read() on purpose)
        watched = any(p.kind in WATCHED_KINDS for p in self.plans)
        self.read_limit_s: Optional[float] = 2.0 * self.options.read_timeout_s + 1.0 if watched else None
        self.open_limit_s: Optional[float] = (
            2.0 * (self.options.open_timeout_s + self.options.read_timeout_s) * max(1, len(self.plans)) + 1.0 if watched else None
        )

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Capture:
        if self._thread is None:
            self._thread = self._spawn_worker(0)
            if self.read_limit_s is not None:
                threading.Thread(target=self._watch, name=f"capture-watchdog:{self.name}", daemon=True).start()
        return self

    def _spawn_worker(self, attempt: int) -> threading.Thread:
        with self._cond:
            self._worker += 1
            worker = self._worker
            self._busy_since = None
        thread = threading.Thread(target=self._run, args=(worker, attempt), name=f"capture:{self.name}:{worker}", daemon=True)
        thread.start()
        return thread

    def _current(self, worker: int) -> bool:
        return worker == self._worker and not self._stop.is_set()

    def _busy(self, worker: int, what: str) -> None:
        """The reader thread `worker` starts a call that may block (what: opening | reading); '' when done."""
        with self._cond:
            if worker == self._worker:
                self._busy_since = time.monotonic() if what else None
                self._busy_what = what

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

    def _watch(self) -> None:
        """Abandon a reader thread whose open or read blocks past its limit, and start a fresh one. The backoff
        grows while reader threads keep getting stuck, and at most MAX_ABANDONED stuck threads are left behind:
        beyond that the watchdog waits for one of them to return before starting another."""
        assert self.read_limit_s is not None and self.open_limit_s is not None
        tick = max(0.05, min(0.5, self.read_limit_s / 8))
        abandoned: List[threading.Thread] = []
        streak = 0  # abandonments since the last frame
        frames_then = -1
        waiting_for_room = False
        while not self._stop.wait(tick):
            abandoned = [thread for thread in abandoned if thread.is_alive()]
            if waiting_for_room:
                if len(abandoned) >= MAX_ABANDONED:
                    continue
                waiting_for_room = False
                self._thread = self._spawn_worker(streak)
                continue
            with self._cond:
                if self._frames_read != frames_then and frames_then >= 0:
                    streak = 0
                since, what = self._busy_since, self._busy_what
                limit = self.open_limit_s if what == "opening" else self.read_limit_s
                if since is None or time.monotonic() - since <= limit:
                    continue
                self._worker += 1  # the blocked thread is no longer current: it delivers nothing more
                self._busy_since = None
                self._stalls += 1
                if what == "opening":
                    self._open_failures += 1
                else:
                    self._disconnects += 1
                message = f"source {self.name}: {what} blocked for more than {limit:.1f} s; abandoned that reader, reopening"
                self._last_error = message
                if self._state not in ("stopped", "ended"):
                    self._state = "waiting"
                frames_then = self._frames_read
            streak += 1
            log.warning("%s", message)
            if self._thread is not None:
                abandoned.append(self._thread)
            if len(abandoned) >= MAX_ABANDONED:
                log.error("source %s: %d reader threads are stuck in OpenCV; waiting for one to return", self.name, len(abandoned))
                waiting_for_room = True
                continue
            self._thread = self._spawn_worker(streak)

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
                stalls=self._stalls,
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

    def _run(self, worker: int, attempt: int) -> None:
        opened_before = self._opened.is_set()
        if attempt:  # the watchdog abandoned the previous reader thread: back off before reopening
            self._stop.wait(self.policy.delay(attempt))
        while self._current(worker):
            self._set_state("opening")
            self._busy(worker, "opening")
            try:
                reader = open_reader(self.uri, self.plans)
            except Exception as exc:  # SourceError, or a backend bug: it must not kill the capture thread silently
                self._busy(worker, "")
                if not self._current(worker):
                    return
                attempt += 1
                with self._cond:
                    self._open_failures += 1
                delay = self.policy.delay(attempt)
                if isinstance(exc, SourceError):
                    self._set_state("waiting", str(exc))
                    log.warning("%s (retrying in %.1f s)", exc, delay)
                else:
                    self._set_state("waiting", f"opening {self.uri} failed: {type(exc).__name__}: {exc}")
                self._stop.wait(delay)
                continue
            self._busy(worker, "")
            if not self._current(worker):  # abandoned while opening: this reader is nobody's
                reader.close()
                return
            if opened_before:
                with self._cond:
                    self._reconnects += 1
                log.info("source %s reopened (reconnect %d)", self.name, self._reconnects)
            opened_before = True
            self.info = reader.info
            self._opened.set()
            self._set_state("streaming")
            streamed_from = time.monotonic()
            ended, stalled = self._stream(reader, worker)
            if time.monotonic() - streamed_from >= self.policy.healthy_s:
                attempt = 0  # it served for a while: the next failure starts the backoff again
            # else the backoff keeps growing: a camera that accepts and drops at once gets no reconnect storm
            if self._stop.is_set():
                break
            if not self._current(worker):
                return
            if ended and self.stop_at_end:
                with self._cond:
                    self._ended = True
                    self._state = "ended"
                    self._cond.notify_all()
                return
            attempt += 1
            with self._cond:
                self._disconnects += 1
                self._stalls += 1 if stalled else 0
            if ended:
                why = "reached the end of the file (loop off)"
            elif stalled:
                why = f"delivered no frame within {self.options.read_timeout_s:g} s (read timeout: stalled)"
            else:
                why = "stopped delivering frames (stream ended or connection lost)"
            delay = self.policy.delay(attempt)
            self._set_state("waiting", f"source {self.name} {why}; reopening")
            log.warning("source %s %s; reopening in %.1f s", self.name, why, delay)
            self._stop.wait(delay)
        if self._stop.is_set():
            self._set_state("stopped")

    def _stream(self, reader: FrameReader, worker: int) -> Tuple[bool, bool]:
        """Read until the source stops or we are stopped: (ended cleanly (end of a file), stalled (the failing
        read waited about read_timeout_s: connected but silent))."""
        try:
            while self._current(worker):
                tick = time.perf_counter()
                self._busy(worker, "reading")
                try:
                    image = reader.read()
                except Exception as exc:  # a decoder error ends this stream; the loop reopens it
                    self._busy(worker, "")
                    if self._current(worker):
                        self._set_state("waiting", f"read failed: {type(exc).__name__}: {exc}")
                    return False, False
                self._busy(worker, "")
                read_ms = (time.perf_counter() - tick) * 1000.0
                if image is None:
                    live = reader.info.kind in WATCHED_KINDS
                    return reader.ended, live and read_ms >= 900.0 * self.options.read_timeout_s
                if not self._current(worker):  # abandoned by the watchdog while this read blocked
                    break
                self._push(image, read_ms)
            return False, False
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
