"""Camera and video sources behind one interface, chosen by URI.

    v4l2:///dev/video0  v4l2://0      USB/V4L2 cameras (OpenCV's V4L2 backend; FOURCC, size, fps)
    csi://0                           Jetson CSI cameras (a GStreamer nvarguscamerasrc pipeline)
    rtsp://host/stream                GStreamer (rtspsrc latency=0) when OpenCV has it, else FFmpeg
    http(s)://...                     FFmpeg (MJPEG or HLS streams)
    file:///path/video.avi            loops by default; real-time pacing or as fast as possible
    images:///path/folder             a folder of stills, sorted by name

`plan_source()` is pure: it turns a URI and options into the list of things to try opening (pipeline string,
backend, index, properties), so the mapping is tested without cameras. `open_reader()` tries them in order
and, when none opens, raises a SourceError that lists every attempt and why it failed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union
from urllib.parse import unquote, urlparse

from agent.errors import AgentError
from agent.lazy import deferred, require
from agent.vision.options import SourceOptions

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BACKENDS = ("auto", "gstreamer", "ffmpeg", "v4l2", "any")
APPSINK = "appsink drop=true max-buffers=1 sync=false"

log = logging.getLogger(__name__)


class SourceError(AgentError):
    """A source URI or option is invalid, or a source could not be opened (the message lists what was tried)."""


@dataclass(frozen=True)
class OpenPlan:
    """One way to open a source: what OpenCV gets, and how to treat the stream."""

    kind: str  # v4l2 | csi | rtsp | http | file | images
    backend: str  # v4l2 | gstreamer | ffmpeg | any | images
    target: Union[str, int]  # device path, index, pipeline string, URL, file or folder
    properties: Tuple[Tuple[str, float], ...] = ()  # cv2.CAP_PROP_<name> set after opening, in order
    open_params: Tuple[Tuple[str, int], ...] = ()  # cv2.CAP_PROP_<name> given to VideoCapture() itself
    env: Tuple[Tuple[str, str], ...] = ()  # environment OpenCV reads when opening (FFmpeg options)
    loop: bool = False  # rewind at the end instead of reporting it
    pace_fps: float = 0.0  # > 0: deliver at this rate; < 0: at the file's own rate; 0: as fast as possible
    live: bool = True  # a camera or stream: keep the newest frame, drop the rest

    def describe(self) -> str:
        return f"{self.backend} {self.target}"


def opencv_has_gstreamer(build_information: Optional[str] = None) -> bool:
    """Whether OpenCV was built with GStreamer (from cv2.getBuildInformation(), or the text given)."""
    if build_information is None:
        try:
            import cv2  # optional (cpu extra, or JetPack's OpenCV): imported where frames are handled
        except ImportError:
            return False
        build_information = str(cv2.getBuildInformation())
    match = re.search(r"^\s*GStreamer:\s*(\w+)", build_information, re.MULTILINE)
    return bool(match and match.group(1).upper() == "YES")


def fourcc_code(text: str) -> int:
    """'MJPG' -> the integer OpenCV's CAP_PROP_FOURCC takes (cv2.VideoWriter_fourcc without cv2)."""
    if len(text) != 4:
        raise SourceError(f"FOURCC must be 4 characters, got {text!r}")
    return sum((ord(char) & 0xFF) << (8 * i) for i, char in enumerate(text))  # case matters: avc1 is not AVC1


def fps_fraction(fps: float) -> str:
    """29.97 -> '30000/1001', 30 -> '30/1' (GStreamer caps want a fraction)."""
    if float(fps).is_integer():
        return f"{int(fps)}/1"
    ntsc = round(fps * 1.001)  # 23.976, 29.97, 59.94: the x1000/1001 rates
    if abs(ntsc * 1000 / 1001 - fps) < 0.005:
        return f"{ntsc * 1000}/1001"
    fraction = Fraction(fps).limit_denominator(1000)
    return f"{fraction.numerator}/{fraction.denominator}"


def split_uri(uri: str) -> Tuple[str, str]:
    """(kind, rest): 'v4l2:///dev/video0' -> ('v4l2', '/dev/video0'); a bare path or index is guessed:
    digits -> v4l2 index, /dev/video* -> v4l2, a folder -> images, anything else -> file."""
    text = (uri or "").strip()
    if not text:
        raise SourceError("source URI is empty")
    if "://" not in text:
        if text.isdigit() or text.startswith("/dev/video"):
            return "v4l2", text
        if Path(text).is_dir():
            return "images", text
        return "file", text
    parsed = urlparse(text)
    kind = parsed.scheme.lower()
    if kind in ("rtsp", "rtsps", "rtmp"):
        return "rtsp", text
    if kind in ("http", "https"):
        return "http", text
    if kind not in ("v4l2", "csi", "file", "images"):
        raise SourceError(f"unknown source kind {kind!r} in {uri!r}; use v4l2://, csi://, rtsp://, http://, file:// or images://")
    rest = unquote((parsed.netloc or "") + (parsed.path or ""))
    if not rest:
        raise SourceError(f"source URI {uri!r} names no device, file or folder")
    return kind, rest


def plan_source(uri: str, options: Optional[SourceOptions] = None, *, have_gstreamer: bool) -> List[OpenPlan]:
    """The ordered list of ways to open `uri`. Pure: no camera, no file access beyond telling folders apart."""
    options = options or SourceOptions()
    kind, rest = split_uri(uri)
    if kind == "v4l2":
        return _plan_v4l2(rest, options)
    if kind == "csi":
        return [_plan_csi(rest, options, have_gstreamer)]
    if kind == "rtsp":
        return _plan_rtsp(rest, options, have_gstreamer)
    if kind == "http":
        return [_ffmpeg_stream_plan("http", rest, options)]
    if kind == "images":
        return [OpenPlan("images", "images", rest, loop=options.loop, pace_fps=_pace(options, own_rate=1.0), live=options.realtime)]
    backend = options.backend if options.backend != "auto" else "ffmpeg"
    plans = [OpenPlan("file", backend, rest, loop=options.loop, pace_fps=_pace(options, own_rate=-1.0), live=options.realtime)]
    if backend != "any":
        plans.append(OpenPlan("file", "any", rest, loop=options.loop, pace_fps=_pace(options, own_rate=-1.0), live=options.realtime))
    return plans


def _pace(options: SourceOptions, own_rate: float) -> float:
    if not options.realtime:
        return 0.0
    return options.fps if options.fps > 0 else own_rate


def _camera_properties(options: SourceOptions) -> Tuple[Tuple[str, float], ...]:
    props: List[Tuple[str, float]] = []
    if options.format:  # V4L2 wants the pixel format before the size
        props.append(("FOURCC", float(fourcc_code(options.format))))
    if options.width:
        props.append(("FRAME_WIDTH", float(options.width)))
    if options.height:
        props.append(("FRAME_HEIGHT", float(options.height)))
    if options.fps:
        props.append(("FPS", float(options.fps)))
    props.append(("BUFFERSIZE", 1.0))  # the driver's queue adds latency; we keep our own newest frame
    return tuple(props)


def _plan_v4l2(rest: str, options: SourceOptions) -> List[OpenPlan]:
    properties = _camera_properties(options)
    match = re.fullmatch(r"(?:/dev/video)?(\d+)", rest)
    if rest.isdigit():
        target: Union[str, int] = int(rest)
    elif rest.startswith("/"):
        target = rest
    else:
        raise SourceError(f"v4l2 source must be a device path (/dev/video0) or an index, got {rest!r}")
    backend = options.backend if options.backend not in ("auto", "ffmpeg", "gstreamer") else "v4l2"
    plans = [OpenPlan("v4l2", backend, target, properties=properties)]
    if match and backend != "any":  # some drivers open only by index through the default backend
        plans.append(OpenPlan("v4l2", "any", int(match.group(1)), properties=properties))
    return plans


def csi_pipeline(sensor_id: int, options: SourceOptions) -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera, ending in a BGR appsink that keeps one buffer."""
    source = f"nvarguscamerasrc sensor-id={sensor_id}"
    if options.sensor_mode >= 0:
        source += f" sensor-mode={options.sensor_mode}"
    caps = ["video/x-raw(memory:NVMM)"]
    if options.width and options.height:
        caps += [f"width=(int){options.width}", f"height=(int){options.height}"]
    if options.fps:
        caps.append(f"framerate=(fraction){fps_fraction(options.fps)}")
    caps.append("format=(string)NV12")
    return " ! ".join(
        [
            source,
            ", ".join(caps),
            f"nvvidconv flip-method={options.flip}",
            "video/x-raw, format=(string)BGRx",
            "videoconvert",
            "video/x-raw, format=(string)BGR",
            APPSINK,
        ]
    )


def _plan_csi(rest: str, options: SourceOptions, have_gstreamer: bool) -> OpenPlan:
    if not rest.isdigit():
        raise SourceError(f"csi source must be a sensor id such as csi://0, got {rest!r}")
    if not have_gstreamer:
        raise SourceError(
            "csi:// cameras need OpenCV built with GStreamer (JetPack's python3-opencv); this cv2 has no GStreamer. "
            "Do not install opencv-python from pip over JetPack's"
        )
    return OpenPlan("csi", "gstreamer", csi_pipeline(int(rest), options))


def rtsp_pipeline(url: str, options: SourceOptions) -> str:
    """rtspsrc with latency 0 (or the one asked), decoded to BGR, into an appsink that keeps one buffer."""
    source = f'rtspsrc location="{url}" latency={options.latency_ms} protocols={options.transport} drop-on-latency=true'
    if options.codec == "auto":
        decode = ["decodebin"]
    else:
        depay = f"rtp{options.codec}depay"
        parse = f"{options.codec}parse"
        if options.hw_decode:
            decode = [depay, parse, "nvv4l2decoder", "nvvidconv", "video/x-raw, format=(string)BGRx"]
        else:
            decode = [depay, parse, f"avdec_{options.codec}"]
    return " ! ".join([source, *decode, "videoconvert", "video/x-raw, format=(string)BGR", APPSINK])


def _ffmpeg_stream_plan(kind: str, url: str, options: SourceOptions) -> OpenPlan:
    # OpenCV serialises every FFmpeg open in the process behind one mutex unless told FFmpeg is thread-safe (it is
    # since FFmpeg 4.0): without this, one camera whose open waits out its timeout holds back every other
    # camera's open and reconnect (measured in tests/vision/test_streams.py). OpenCV builds without the switch
    # ignore it.
    env: Tuple[Tuple[str, str], ...] = (("OPENCV_FFMPEG_IS_THREAD_SAFE", "1"),)
    if kind == "rtsp":
        env += (("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{options.transport}"),)
    params = (
        ("OPEN_TIMEOUT_MSEC", int(options.open_timeout_s * 1000)),
        ("READ_TIMEOUT_MSEC", int(options.read_timeout_s * 1000)),
    )
    return OpenPlan(kind, "ffmpeg", url, open_params=params, env=env)


def _plan_rtsp(url: str, options: SourceOptions, have_gstreamer: bool) -> List[OpenPlan]:
    plans: List[OpenPlan] = []
    if options.backend == "gstreamer" and not have_gstreamer:
        raise SourceError("backend gstreamer asked for, but this OpenCV has no GStreamer support")
    if have_gstreamer and options.backend in ("auto", "gstreamer"):
        plans.append(OpenPlan("rtsp", "gstreamer", rtsp_pipeline(url, options)))
    if options.backend in ("auto", "ffmpeg"):
        plans.append(_ffmpeg_stream_plan("rtsp", url, options))
    if options.backend == "any":
        plans.append(OpenPlan("rtsp", "any", url))
    return plans


# Readers: an opened source --------------------------------------------------------------------------------


@dataclass
class SourceInfo:
    kind: str
    backend: str
    description: str
    width: int
    height: int
    fps: float  # what the source declares (0: unknown)
    frame_count: int = 0  # files: frames in the file (0: unknown)
    size_changes: int = 0  # times the delivered frame size changed while open (width/height follow it)


class FrameReader:
    """An opened source. read() gives the next BGR frame, or None when the stream ended or failed;
    `ended` tells a clean end of a file (loop off) from a failure."""

    info: SourceInfo
    ended: bool = False

    def read(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Pacer:
    """Sleeps so reads come at `fps` (a camera-like file); never sleeps when fps <= 0."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next = 0.0

    def wait(self) -> None:
        if self.period <= 0:
            return
        now = time.monotonic()
        if self._next <= 0 or now - self._next > 1.0:  # first frame, or we fell far behind: restart the clock
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period


def _cv2() -> Any:
    return require("cv2", "camera sources")


class OpenCvReader(FrameReader):
    """cv2.VideoCapture behind FrameReader. Opening reads the first frame, so a source that opens and
    delivers nothing counts as not opened."""

    def __init__(self, plan: OpenPlan) -> None:
        cv2 = _cv2()
        self.plan = plan
        for env_key, env_value in plan.env:
            os.environ.setdefault(env_key, env_value)  # OpenCV reads it at open; a user's own setting wins
        api = {"v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG}.get(plan.backend, cv2.CAP_ANY)
        params: List[int] = []
        for param_name, param_value in plan.open_params:
            param = getattr(cv2, f"CAP_PROP_{param_name}", None)
            if param is not None:
                params += [int(param), int(param_value)]
        try:
            try:
                capture = cv2.VideoCapture(plan.target, api, params) if params else cv2.VideoCapture(plan.target, api)
            except TypeError:  # OpenCV before 4.5.2 takes no open parameters: open without the timeouts
                capture = cv2.VideoCapture(plan.target, api)
        except cv2.error as exc:
            raise SourceError(f"OpenCV refused it ({' '.join(str(exc).split())[:200]})") from None
        if not capture.isOpened():
            capture.release()
            why = network_diagnosis(str(plan.target), min(2.0, plan_timeout_s(plan))) if plan.kind in ("rtsp", "http") else ""
            raise SourceError("OpenCV could not open it" + (f" ({why})" if why else ""))
        for name, value in plan.properties:
            prop = getattr(cv2, f"CAP_PROP_{name}", None)
            if prop is not None:
                capture.set(prop, value)  # a camera that ignores a setting keeps its own; info says what we got
        self._capture = capture
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise SourceError("it opened but delivered no frame")
        self._pending: Optional[np.ndarray] = first
        height, width = first.shape[:2]
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if plan.kind == "file" else 0
        backend = str(capture.getBackendName()) if hasattr(capture, "getBackendName") else plan.backend
        self.info = SourceInfo(plan.kind, backend, plan.describe(), int(width), int(height), fps if fps < 1000 else 0.0, max(0, count))
        rate = plan.pace_fps if plan.pace_fps > 0 else (self.info.fps or 25.0) if plan.pace_fps < 0 else 0.0
        self._pacer = _Pacer(rate)
        self.ended = False

    def read(self) -> Optional[np.ndarray]:
        self._pacer.wait()
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, frame = self._capture.read()
        if ok and frame is not None:
            self._check_size(frame)
            return frame
        if self.plan.kind == "file":
            if self.plan.loop:
                cv2 = _cv2()
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._capture.read()
                if ok and frame is not None:
                    return frame
            else:
                self.ended = True
        return None

    def _check_size(self, frame: np.ndarray) -> None:
        """Follow a camera that changed resolution mid-stream (GStreamer, V4L2 and MJPEG-over-HTTP deliver the new
        size). OpenCV's FFmpeg backend keeps the size it opened with and scales later frames to it, so an H.264
        RTSP stream shows its new size only after a reopen (tests/vision/test_streams.py measures both)."""
        height, width = frame.shape[:2]
        if (width, height) != (self.info.width, self.info.height):
            log.info("source %s changed size from %dx%d to %dx%d", self.info.description, self.info.width, self.info.height, width, height)
            self.info.width, self.info.height = int(width), int(height)
            self.info.size_changes += 1

    def close(self) -> None:
        self._capture.release()


class ImageFolderReader(FrameReader):
    """A folder of stills, in name order. A still that can no longer be read ends the stream as a failure."""

    def __init__(self, plan: OpenPlan) -> None:
        self.plan = plan
        folder = Path(str(plan.target))
        if not folder.is_dir():
            raise SourceError(f"folder {folder} does not exist")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise SourceError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self._next = 0
        first = self._load(self.paths[0])
        if first is None:
            raise SourceError(f"cannot read the image {self.paths[0]}")
        height, width = first.shape[:2]
        self.info = SourceInfo("images", "images", plan.describe(), int(width), int(height), plan.pace_fps if plan.pace_fps > 0 else 0.0, len(self.paths))
        self._pacer = _Pacer(plan.pace_fps)
        self.ended = False

    @staticmethod
    def _load(path: Path) -> Optional[np.ndarray]:
        cv2 = _cv2()
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return image if image is not None and image.size else None

    def read(self) -> Optional[np.ndarray]:
        if self._next >= len(self.paths):
            if not self.plan.loop:
                self.ended = True
                return None
            self._next = 0
        self._pacer.wait()
        path = self.paths[self._next]
        self._next += 1
        return self._load(path)

    def close(self) -> None:
        self.paths = []


def plan_timeout_s(plan: OpenPlan) -> float:
    """The open timeout a plan carries (seconds; 10 when it names none)."""
    for name, value in plan.open_params:
        if name == "OPEN_TIMEOUT_MSEC":
            return value / 1000.0
    return 10.0


def network_diagnosis(url: str, timeout: float) -> str:
    """Why a network stream may not have opened, from one TCP connection to its host and port: the name does not
    resolve, nothing listens (refused), no answer in time, or it accepts connections (then the path, the
    credentials or the codec is wrong, or the camera has no stream to give yet)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    default_port = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}.get(parsed.scheme.lower(), 0)
    try:
        port = parsed.port or default_port
    except ValueError:
        return f"the port in {url!r} is not a number"
    if not host or not port:
        return ""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=max(0.1, timeout)):
            pass
    except socket.gaierror:
        return f"the host name {host!r} does not resolve"
    except ConnectionRefusedError:
        return f"nothing listens on {where}: connection refused (camera off, rebooting, or the wrong port)"
    except socket.timeout:
        return f"{where} did not answer within {timeout:g} s (unreachable or filtered)"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"{where} accepts connections but no stream opened: check the path, the credentials and the codec"


def open_plan(plan: OpenPlan) -> FrameReader:
    return ImageFolderReader(plan) if plan.backend == "images" else OpenCvReader(plan)


@dataclass
class OpenAttempt:
    plan: OpenPlan
    error: str


@dataclass
class OpenFailure:
    uri: str
    attempts: List[OpenAttempt] = field(default_factory=list)

    def message(self) -> str:
        tried = "; ".join(f"[{i + 1}] {a.plan.describe()}: {a.error}" for i, a in enumerate(self.attempts))
        return f"cannot open source {self.uri}: tried {tried}"


def open_hint(plans: List[OpenPlan]) -> str:
    """What to check when nothing opened, by the kind of source."""
    if not plans:
        return ""
    plan = plans[0]
    if plan.kind in ("file", "images") and not Path(str(plan.target)).exists():
        return f"{plan.target} does not exist"
    if plan.kind == "v4l2":
        device = plan.target if isinstance(plan.target, str) else f"/dev/video{plan.target}"
        if not Path(device).exists():
            return f"{device} does not exist: is the camera plugged in? (ls /dev/video*)"
        return f"is {device} readable by this user (group 'video') and not in use by another program?"
    if plan.kind == "csi":
        return "is nvargus-daemon running and the sensor id right? (gst-launch-1.0 nvarguscamerasrc ! fakesink)"
    if plan.kind in ("rtsp", "http"):
        return "check the URL, the credentials and that the camera is reachable from this device"
    return ""


def open_reader(uri: str, plans: List[OpenPlan]) -> FrameReader:
    """Open the first plan that works; SourceError listing every attempt (and a hint) when none does."""
    failure = OpenFailure(uri)
    for plan in plans:
        try:
            return open_plan(plan)
        except SourceError as exc:
            failure.attempts.append(OpenAttempt(plan, str(exc)))
    hint = open_hint(plans)
    raise SourceError(failure.message() + (f". Hint: {hint}" if hint else ""))


def open_source(uri: str, options: Optional[SourceOptions] = None) -> FrameReader:
    """Plan and open `uri` now (for probes and tests); the pipeline uses Capture, which retries."""
    return open_reader(uri, plan_source(uri, options, have_gstreamer=opencv_has_gstreamer()))


@dataclass
class ProbeReport:
    uri: str
    kind: str
    backend: str
    description: str
    width: int
    height: int
    declared_fps: float
    frames: int
    measured_fps: float
    decode_ms_mean: float
    decode_ms_p50: float
    decode_ms_p95: float
    open_ms: float
    ended_early: bool


def probe_source(uri: str, frames: int = 30, options: Optional[SourceOptions] = None) -> ProbeReport:
    """Open `uri`, read `frames` frames as fast as they come, and report size, rates and decode time."""
    if frames < 1:
        raise SourceError("probe needs at least 1 frame")
    options = options or SourceOptions(loop=False)
    started = time.perf_counter()
    reader = open_source(uri, options)
    open_ms = (time.perf_counter() - started) * 1000.0
    decode: List[float] = []
    try:
        begin = time.perf_counter()
        while len(decode) < frames:
            tick = time.perf_counter()
            frame = reader.read()
            if frame is None:
                break
            decode.append((time.perf_counter() - tick) * 1000.0)
        elapsed = time.perf_counter() - begin
    finally:
        reader.close()
    info = reader.info
    values = np.asarray(decode or [0.0])
    return ProbeReport(
        uri=uri,
        kind=info.kind,
        backend=info.backend,
        description=info.description,
        width=info.width,
        height=info.height,
        declared_fps=round(info.fps, 3),
        frames=len(decode),
        measured_fps=round(len(decode) / elapsed, 2) if elapsed > 0 and decode else 0.0,
        decode_ms_mean=round(float(values.mean()), 3),
        decode_ms_p50=round(float(np.percentile(values, 50)), 3),
        decode_ms_p95=round(float(np.percentile(values, 95)), 3),
        open_ms=round(open_ms, 1),
        ended_early=len(decode) < frames,
    )
