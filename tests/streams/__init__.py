"""Real streaming servers on loopback for the camera tests and `bench/camera_stream.py`.

`RtspServer` runs `rtsp_server.py` (GStreamer's RTSP server) under the system Python as its own process, so a
test can kill it for real and start it again on the same port; `MjpegServer` runs `mjpeg_server.py` (an HTTP
multipart/x-mixed-replace server, the way IP cameras serve MJPEG) under this Python; `GstReader` runs
`gst_reader.py`, OpenCV's GStreamer backend (Debian's python3-opencv, as JetPack's) reading a pipeline string. Both are fed from a video
file: `stream_video()` gives ../shared/testdata/video/vtest.avi when present, else a clip drawn with OpenCV.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional

import pytest

from agent.fleet.local_broker import free_port
from tests.helpers import shared_dir

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = os.environ.get("EDGE_AGENT_SYSTEM_PYTHON", "/usr/bin/python3")
DEBIAN_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly gstreamer1.0-libav python3-opencv"
)


def rtsp_server_missing() -> Optional[str]:
    """Why the GStreamer RTSP server cannot run here (None: it can). tests/run.sh installs what it needs."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"no system Python at {SYSTEM_PYTHON}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('x264enc', 'rtph264pay', 'appsrc', 'videoscale', 'decodebin') if not Gst.ElementFactory.find(e)];"
        "print(' '.join(missing))"
    )
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"system Python failed: {exc}"
    if done.returncode != 0:
        return f"GStreamer's RTSP server is not installed for {SYSTEM_PYTHON} (Debian: {DEBIAN_PACKAGES})"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()} (Debian: {DEBIAN_PACKAGES})"
    return None


def require_rtsp_server() -> None:
    """Fail (not skip) when the server cannot run: tests/run.sh installs it, so its absence is a setup bug.
    EDGE_AGENT_ALLOW_NO_RTSP=1 turns that into a skip for a developer machine without root."""
    missing = rtsp_server_missing()
    if missing is None:
        return
    if os.environ.get("EDGE_AGENT_ALLOW_NO_RTSP") == "1":
        pytest.skip(f"needs root to install GStreamer's RTSP server: {missing}")
    pytest.fail(missing)


def stream_video(workdir: Path, frames: int = 90, width: int = 320, height: int = 240) -> Path:
    """The shared test video (vtest.avi) when present, else a clip drawn with OpenCV and written to `workdir`."""
    base = shared_dir()
    if base is not None:
        shared = base / "testdata" / "video" / "vtest.avi"
        if shared.is_file():
            return shared
    import cv2  # heavy: only the tests and the bench need it

    from agent.vision.sources import fourcc_code
    from tests.helpers import drawn_frames

    path = workdir / f"drawn_{width}x{height}.avi"
    if not path.exists():
        writer = cv2.VideoWriter(str(path), fourcc_code("MJPG"), 30.0, (width, height))
        for frame in drawn_frames(frames, width, height):
            writer.write(frame)
        writer.release()
    return path


class _ServerProcess:
    """A server subprocess speaking the line protocol of rtsp_server.py / mjpeg_server.py."""

    script = ""
    scheme = ""

    def __init__(self, video: Path, *, port: int = 0, width: int = 320, height: int = 240, fps: float = 30.0,
                 frames: int = 90) -> None:
        self.video, self.width, self.height, self.fps, self.frames = video, width, height, fps, frames
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen[str]] = None
        self._lines: queue.Queue[str] = queue.Queue()
        self.starts = 0
        self.stderr_tail: Deque[str] = collections.deque(maxlen=20)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> List[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> Any:
        if self.process is not None and self.process.poll() is None:
            return self
        self._lines = queue.Queue()
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        self.starts += 1
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        threading.Thread(target=self._pump_err, args=(self.process,), daemon=True).start()
        ready = self._answer(timeout)
        if not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"{self.script} did not start: {ready} {' '.join(list(self.stderr_tail)[-5:])}")
        return self

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _pump_err(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.stderr_tail.append(line.rstrip())

    def _answer(self, timeout: float) -> Dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return {"error": f"no answer within {timeout} s"}
        if not line:
            return {"error": "the server exited"}
        return dict(json.loads(line))

    def send(self, command: str, timeout: float = 10.0) -> Dict[str, Any]:
        if self.process is None or self.process.stdin is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.script} is not running")
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer(timeout)

    def stats(self) -> Dict[str, Any]:
        return self.send("stats")

    def pause(self) -> Dict[str, Any]:
        return self.send("pause")

    def resume(self) -> Dict[str, Any]:
        return self.send("resume")

    def resize(self, width: int, height: int) -> Dict[str, Any]:
        return self.send(f"size {width} {height}")

    def kill(self) -> None:
        """SIGKILL, as a camera that loses power: no RTSP TEARDOWN, no TCP goodbye from the application."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            if self.process.stdin is not None:
                try:
                    self.process.stdin.close()
                except OSError:
                    pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()


class RtspServer(_ServerProcess):
    script = "rtsp_server.py"

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def command(self) -> List[str]:
        return [SYSTEM_PYTHON, str(HERE / self.script), "--port", str(self.port), "--video", str(self.video),
                "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps),
                "--frames", str(self.frames)]


class MjpegServer(_ServerProcess):
    script = "mjpeg_server.py"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cam.mjpg"

    def command(self) -> List[str]:
        return [sys.executable, str(HERE / self.script), "--port", str(self.port), "--video", str(self.video),
                "--width", str(self.width), "--height", str(self.height), "--fps", str(self.fps),
                "--frames", str(self.frames)]


def opencv_gstreamer_missing() -> Optional[str]:
    """Why the system Python's OpenCV cannot read through GStreamer (None: it can)."""
    probe = "import cv2, re; print(re.search(r'GStreamer:\\s*(\\w+)', cv2.getBuildInformation()).group(1))"
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"system Python failed: {exc}"
    if done.returncode != 0:
        return f"no OpenCV for {SYSTEM_PYTHON} (Debian: python3-opencv)"
    if done.stdout.strip().upper() != "YES":
        return f"the OpenCV of {SYSTEM_PYTHON} has no GStreamer"
    return None


class GstReader:
    """`gst_reader.py` under the system Python: OpenCV's GStreamer backend reading `pipeline`, one JSON line
    per event, collected in `events` as they come."""

    def __init__(self, pipeline: str) -> None:
        self.events: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(HERE / "gst_reader.py"), pipeline], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.events.append(dict(json.loads(line)))

    def frames(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if "frame" in e]

    def first(self, key: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            return next((e for e in self.events if key in e), None)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class CountingListener:
    """A TCP port that accepts and at once closes every connection, counting them: a camera that is booting
    (its port answers, its stream is not up), to count how often a client tries while the real server is down."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


class SilentListener(CountingListener):
    """A TCP port that accepts and never answers (a hung camera): an open must time out, not hang."""

    def __init__(self, port: int) -> None:
        self.held: List[socket.socket] = []
        super().__init__(port)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.held.append(connection)
        for connection in self.held:
            connection.close()
