"""Network cameras for real: a GStreamer RTSP server and an HTTP MJPEG server on loopback (tests/streams), fed
from a video, opened by the agent's sources through OpenCV's FFmpeg backend as on a device. Servers are killed
(SIGKILL) and restarted, paused while clients stay connected, and switched to another resolution; the capture
threads, the pipeline, and the status/telemetry view of the cameras are checked against what really happened,
with the server's own count of connection attempts for the reconnect-storm check."""

from __future__ import annotations

import collections
import dataclasses
import io
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from agent.cli.status_cmd import write_text
from agent.config import TelemetryConfig
from agent.daemon.daemon import pipeline_telemetry
from agent.fleet.local_broker import free_port
from agent.runtime.base import Runner
from agent.telemetry.document import TelemetryCollector, from_compact, to_compact, validate_document
from agent.vision import capture as capture_module
from agent.vision.capture import Capture, ReconnectPolicy
from agent.vision.pipeline import FrameResult, Pipeline
from agent.vision.sources import SourceError, SourceOptions, open_source, plan_source, rtsp_pipeline
from tests.helpers import wait_until
from tests.streams import (
    CountingListener,
    GstReader,
    MjpegServer,
    RtspServer,
    SilentListener,
    opencv_gstreamer_missing,
    require_rtsp_server,
    stream_video,
)
from tests.vision.conftest import TINY_PREPROCESS

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

QUICK = ReconnectPolicy(initial_s=0.2, max_s=1.0, factor=2.0)
OPTIONS = SourceOptions(open_timeout_s=4.0, read_timeout_s=3.0)  # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stream_video(tmp_path_factory.mktemp("streams"))


@pytest.fixture()
def rtsp(video: Path) -> Iterator[RtspServer]:
    require_rtsp_server()
    server = RtspServer(video).start()
    yield server
    server.stop()


@pytest.fixture()
def mjpeg(video: Path) -> Iterator[MjpegServer]:
    server = MjpegServer(video).start()
    yield server
    server.stop()


class Results:
    """The pipeline's result callback: results per source, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_source: Dict[str, List[FrameResult]] = collections.defaultdict(list)

    def __call__(self, result: FrameResult) -> None:
        with self.lock:
            self.by_source[result.source].append(result)

    def count(self, source: str) -> int:
        with self.lock:
            return len(self.by_source[source])

    def last(self, source: str) -> FrameResult:
        with self.lock:
            return self.by_source[source][-1]


def classify(captures: List[Capture], runner: Runner, results: Results, batch: int = 1, gather_ms: float = 0.0) -> Pipeline:
    return Pipeline(captures, runner, TINY_PREPROCESS, {"type": "classification"}, results, batch=batch, gather_ms=gather_ms).start()


def source_stats(pipeline: Pipeline, name: str) -> Dict[str, Any]:
    return next(s for s in pipeline.metrics()["sources"] if s["name"] == name)


def telemetry_of(pipeline: Pipeline, state_dir: Path) -> Dict[str, Any]:
    """The `pipeline` section of a real telemetry document, made as the daemon makes it (validated, and the same
    after the compact form's round trip)."""
    providers = {"pipeline": lambda: pipeline_telemetry(pipeline.metrics())}
    with TelemetryCollector(TelemetryConfig(interval_s=1.0), state_dir, providers, device_id="cam-01", on_jetson=False) as collector:
        document = collector.collect()
    assert validate_document(document) == []
    assert from_compact(to_compact(document))["pipeline"] == document["pipeline"]
    return dict(document["pipeline"])


def status_text(pipeline: Pipeline) -> str:
    """What `edge-agent status` prints for a daemon serving this pipeline (its status file's live.pipeline)."""
    out = io.StringIO()
    write_text({"running": True, "status": {}, "live": {"pipeline": pipeline.metrics()}, "state": {}}, out)
    return out.getvalue()


def test_rtsp_and_http_mjpeg_open_through_opencv_ffmpeg_at_the_server_rate(rtsp: RtspServer, mjpeg: MjpegServer) -> None:
    for server, kind in ((rtsp, "rtsp"), (mjpeg, "http")):
        reader = open_source(server.url, OPTIONS)
        try:
            assert (reader.info.kind, reader.info.backend) == (kind, "FFMPEG")
            assert (reader.info.width, reader.info.height) == (320, 240)
            started = time.monotonic()
            frames = [reader.read() for _ in range(30)]
            elapsed = time.monotonic() - started
        finally:
            reader.close()
        assert all(f is not None and f.shape == (240, 320, 3) for f in frames)
        assert elapsed < 5.0, f"{kind}: 30 frames took {elapsed:.1f} s from a 30 fps server"
        assert server.stats()["connections"] == 1


def test_rtsp_server_killed_and_restarted_reconnects_with_backoff_no_storm(rtsp: RtspServer, tiny_runner: Runner, tmp_path: Path) -> None:
    results = Results()
    capture = Capture(rtsp.url, OPTIONS, name="door", policy=QUICK)
    pipeline = classify([capture], tiny_runner, results)
    try:
        wait_until(lambda: results.count("door") >= 10, 30, "results from the RTSP camera")
        rtsp.kill()
        wait_until(lambda: capture.stats().state in ("waiting", "opening") and capture.stats().disconnects >= 1, 15,
                   lambda: f"the capture to notice the server died: {capture.stats()}")
        # while the camera is down, its port answers and drops (booting): count every reconnection attempt
        failures_before = capture.stats().open_failures
        listener = CountingListener(rtsp.port)
        time.sleep(4.0)
        listener.close()
        down = capture.stats()
        tries = down.open_failures - failures_before
        assert down.state in ("waiting", "opening") and "accepts connections but no stream opened" in down.last_error
        # backoff 0.2, 0.4, 0.8, 1.0, 1.0 s: about five tries in four seconds; a storm would be hundreds. Each
        # failed open connects twice: OpenCV's attempt, then the one TCP connect that diagnoses the failure.
        assert 2 <= tries <= 7, f"{tries} open attempts in 4 s while the camera was down"
        assert listener.accepted <= 2 * tries + 2, f"{listener.accepted} connections for {tries} open attempts"
        telemetry = telemetry_of(pipeline, tmp_path)
        assert telemetry["cameras"]["door"]["state"] in ("waiting", "opening")
        text = status_text(pipeline)
        assert "camera:    door waiting" in text or "camera:    door opening" in text
        assert "1 reconnects" not in text and "accepts connections but no stream opened" in text
        assert telemetry["cameras"]["door"]["open_failures"] >= 2

        before = results.count("door")
        rtsp.start()
        wait_until(lambda: results.count("door") >= before + 10, 30, "results again after the server came back")
        stats = capture.stats()
        assert stats.state == "streaming" and stats.reconnects == 1 and stats.disconnects >= 1
        assert stats.open_failures >= failures_before + tries
        # once back, one connection serves: no pile of parallel or repeated sessions
        assert rtsp.stats()["connections"] == 1
        telemetry = telemetry_of(pipeline, tmp_path)
        camera = telemetry["cameras"]["door"]
        assert camera["state"] == "streaming" and camera["reconnects"] == 1 and camera["since_frame_s"] < 5
        assert telemetry["camera_reconnects"] == 1
        assert "camera:    door streaming 320x240" in status_text(pipeline) and "1 reconnects" in status_text(pipeline)
    finally:
        pipeline.stop()


def test_a_stream_that_stalls_is_reopened_after_the_read_timeout(rtsp: RtspServer) -> None:
    options = SourceOptions(open_timeout_s=2.0, read_timeout_s=1.0)
    capture = Capture(rtsp.url, options, name="stall", policy=QUICK).start()
    try:
        capture.wait_open(30)
        wait_until(lambda: capture.stats().frames >= 10, 15, "frames before the stall")
        rtsp.pause()  # connected, no frames: the camera's encoder hung
        wait_until(lambda: capture.stats().stalls >= 1, 15, lambda: f"a stall to be seen: {capture.stats()}")
        stalled = capture.stats()
        assert "no frame within 1 s" in stalled.last_error and stalled.disconnects >= 1
        time.sleep(3.0)  # reopening meanwhile: each attempt waits its open/read timeout, then backs off
        during = rtsp.stats()["connections"]
        assert during <= 5, f"{during} connections during a 3 s stall"
        rtsp.resume()
        wait_until(lambda: capture.stats().state == "streaming" and capture.stats().reconnects >= 1, 20,
                   lambda: f"streaming again: {capture.stats()}")
        frames = capture.stats().frames
        wait_until(lambda: capture.stats().frames >= frames + 10, 10, "frames after the stall")
    finally:
        capture.stop()


def test_a_read_that_blocks_past_its_limit_is_abandoned_by_the_watchdog(rtsp: RtspServer) -> None:
    # a plan without OpenCV's timeouts: FFmpeg would wait 30 s on a silent stream (a backend that has none,
    # like GStreamer's rtspsrc, waits forever); the watchdog abandons that read after 2 x 0.5 + 1 = 2 s
    options = SourceOptions(open_timeout_s=2.0, read_timeout_s=0.5)
    plan = dataclasses.replace(plan_source(rtsp.url, options, have_gstreamer=False)[0], open_params=())  # no timeouts
    capture = Capture(rtsp.url, options, name="hung", policy=QUICK, plans=[plan]).start()
    try:
        capture.wait_open(30)
        rtsp.pause()
        wait_until(lambda: capture.stats().stalls >= 1, 20, lambda: f"the watchdog to cut the read: {capture.stats()}")
        assert "reading blocked for more than 2.0 s" in capture.stats().last_error
        rtsp.resume()
        wait_until(lambda: capture.stats().state == "streaming" and capture.stats().reconnects >= 1, 30,
                   lambda: f"a fresh reader streaming: {capture.stats()}")
        frames = capture.stats().frames
        wait_until(lambda: capture.stats().frames >= frames + 10, 10, "frames from the fresh reader")
    finally:
        capture.stop()


def test_an_open_that_hangs_is_abandoned_and_stuck_threads_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera that accepts the connection and never answers, opened without OpenCV's timeouts (FFmpeg's own
    default is 30 s): the watchdog gives up on each open after 2 x (0.25 + 0.25) + 1 = 2 s, and once two reader
    threads are stuck it starts no third until one returns."""
    monkeypatch.setattr(capture_module, "MAX_ABANDONED", 2)
    port = free_port()
    silent = SilentListener(port)
    url = f"rtsp://127.0.0.1:{port}/cam"
    options = SourceOptions(open_timeout_s=0.25, read_timeout_s=0.25)
    plan = dataclasses.replace(plan_source(url, options, have_gstreamer=False)[0], open_params=())  # no timeouts
    capture = Capture(url, options, name="mute", policy=QUICK, plans=[plan]).start()
    try:
        wait_until(lambda: capture.stats().stalls >= 2, 20, lambda: f"two opens abandoned: {capture.stats()}")
        stats = capture.stats()
        assert stats.open_failures == 2 and stats.disconnects == 0 and stats.state == "waiting"
        assert "opening blocked for more than 2.0 s" in stats.last_error
        time.sleep(2.0)  # both stuck threads still wait in FFmpeg's open: no third connection meanwhile
        assert silent.accepted == 2 and capture.stats().stalls == 2
    finally:
        capture.stop()
        silent.close()  # the stuck opens see the connection close and return
        wait_until(lambda: not any(t.name.startswith("capture:mute:") for t in threading.enumerate()), 40,
                   "the abandoned reader threads to return")


def test_a_resolution_change_mid_stream_and_after_a_camera_reboot(rtsp: RtspServer, tiny_runner: Runner) -> None:
    results = Results()
    capture = Capture(rtsp.url, OPTIONS, name="cam", policy=QUICK)
    pipeline = classify([capture], tiny_runner, results)
    try:
        wait_until(lambda: results.count("cam") >= 5, 30, "first results")
        assert (results.last("cam").width, results.last("cam").height) == (320, 240)
        rtsp.resize(480, 360)  # same connection, new SPS: the stream goes on
        before = results.count("cam")
        wait_until(lambda: results.count("cam") >= before + 30, 20, "results after the size change")
        stats = capture.stats()
        assert stats.disconnects == 0 and stats.reconnects == 0 and stats.state == "streaming"
        last = results.last("cam")
        # OpenCV's FFmpeg backend scales later frames to the size it opened with (measured); a backend that
        # delivers the new size makes the source follow it. Either way info and results agree.
        assert (last.width, last.height) in ((320, 240), (480, 360))
        assert (stats.width, stats.height) == (last.width, last.height)

        # the camera reboots with another aspect ratio: after the reopen the new size is what flows
        rtsp.kill()
        rtsp.width, rtsp.height = 400, 224
        rtsp.start()
        wait_until(lambda: capture.stats().reconnects >= 1 and results.last("cam").width == 400, 30,
                   lambda: f"results at the new size: {capture.stats()}")
        assert (capture.stats().width, capture.stats().height) == (400, 224)
        assert results.last("cam").height == 224
        assert pipeline.metrics()["errors"] == 0  # preprocessing followed the size; nothing failed
    finally:
        pipeline.stop()


def test_a_stream_that_never_comes_up_says_why_and_the_other_camera_keeps_serving(
    rtsp: RtspServer, tiny_runner: Runner, tmp_path: Path
) -> None:
    dead_port, silent_port = free_port(), free_port()
    silent = SilentListener(silent_port)  # accepts, never answers: a hung camera
    results = Results()
    # the hung camera's open waits out a long timeout; it starts first so its open is in progress when the
    # others open: OpenCV would make them wait behind it (one FFmpeg open at a time) without the thread-safe switch
    hung = Capture(f"rtsp://127.0.0.1:{silent_port}/cam", SourceOptions(open_timeout_s=8.0, read_timeout_s=1.0), name="hung", policy=QUICK)
    good = Capture(rtsp.url, OPTIONS, name="good", policy=QUICK)
    dead = Capture(f"rtsp://127.0.0.1:{dead_port}/cam", SourceOptions(open_timeout_s=1.5, read_timeout_s=1.5), name="dead", policy=QUICK)
    pipeline = classify([hung, good, dead], tiny_runner, results, batch=2)
    try:
        wait_until(lambda: silent.accepted >= 1, 10, "the hung camera's open to start")
        started = time.monotonic()
        with pytest.raises(SourceError, match=rf"nothing listens on 127\.0\.0\.1:{dead_port}: connection refused"):
            dead.wait_open(3)
        wait_until(lambda: results.count("good") >= 10, 30, "the good camera's results")
        assert time.monotonic() - started < 6.0, "the good camera waited for the hung camera's open"
        assert hung.stats().open_failures == 0 and hung.stats().state == "opening"  # still waiting, 8 s timeout
        wait_until(lambda: hung.stats().open_failures >= 1, 20, lambda: f"the hung camera's open to time out: {hung.stats()}")
        assert f"127.0.0.1:{silent_port} accepts connections but no stream opened" in hung.stats().last_error
        assert results.count("dead") == 0 and results.count("hung") == 0
        telemetry = telemetry_of(pipeline, tmp_path)
        assert telemetry["cameras"]["good"]["state"] == "streaming"
        assert telemetry["cameras"]["dead"]["state"] in ("waiting", "opening")
        assert "connection refused" in telemetry["cameras"]["dead"]["error"]
    finally:
        pipeline.stop()
        silent.close()


def test_two_cameras_batched_into_one_engine_while_one_drops(
    rtsp: RtspServer, mjpeg: MjpegServer, tiny_runner: Runner
) -> None:
    results = Results()
    front = Capture(rtsp.url, OPTIONS, name="front", policy=QUICK)
    yard = Capture(mjpeg.url, OPTIONS, name="yard", policy=QUICK)
    pipeline = classify([front, yard], tiny_runner, results, batch=2, gather_ms=50)  # wait for the other camera's frame
    try:
        wait_until(lambda: results.count("front") >= 10 and results.count("yard") >= 10, 30, "both cameras' results")
        wait_until(lambda: any(r.batch == 2 for r in results.by_source["front"][-10:]), 10, "batches shared by both cameras")
        mjpeg.kill()
        wait_until(lambda: yard.stats().state in ("waiting", "opening"), 15, "the HTTP camera to go down")
        before = results.count("front")
        time.sleep(2.0)
        assert results.count("front") >= before + 20, "the RTSP camera stopped being served while the other was down"
        assert pipeline.metrics()["errors"] == 0
        mjpeg.start()
        yard_before = results.count("yard")
        wait_until(lambda: results.count("yard") >= yard_before + 10, 30, "the HTTP camera's results again")
        assert yard.stats().reconnects == 1 and front.stats().reconnects == 0
        assert mjpeg.stats()["connections"] == 1
    finally:
        pipeline.stop()


@pytest.mark.parametrize("codec", ["auto", "h264"])
def test_the_gstreamer_rtsp_pipeline_the_agent_plans_reads_the_server(rtsp: RtspServer, codec: str) -> None:
    """The path a Jetson takes (JetPack's OpenCV has GStreamer, so rtspsrc comes first): the agent's own pipeline
    string, read by OpenCV's GStreamer backend (Debian's python3-opencv under the system Python). It follows a
    size change mid-stream, and a stalled stream blocks its read with no timeout: why Capture has a watchdog."""
    missing = opencv_gstreamer_missing()
    if missing is not None:
        pytest.fail(f"{missing}; tests/run.sh installs python3-opencv")
    reader = GstReader(rtsp_pipeline(rtsp.url, SourceOptions(codec=codec)))
    try:
        opened = wait_until(lambda: reader.first("opened"), 30, "the reader to open")
        assert opened["opened"] and opened["gstreamer"], opened
        wait_until(lambda: len(reader.frames()) >= 15, 20, "frames through rtspsrc")
        assert reader.frames()[0]["width"] == 320 and reader.frames()[0]["height"] == 240
        rtsp.resize(480, 360)
        wait_until(lambda: reader.frames()[-1]["width"] == 480, 20, "frames at the new size on the same connection")
        assert reader.frames()[-1]["height"] == 360 and reader.first("failed") is None
        rtsp.pause()
        time.sleep(0.5)
        count = len(reader.frames())
        time.sleep(2.5)
        assert len(reader.frames()) == count and reader.first("failed") is None  # blocked in read(), not failed
        rtsp.resume()
        wait_until(lambda: len(reader.frames()) >= count + 10, 20, "frames after the stall")
        assert max(f["read_s"] for f in reader.frames()[count - 1 :]) >= 2.5  # that read waited out the stall
        assert rtsp.stats()["connections"] == 1
    finally:
        reader.close()
