"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server (Debian's gir1.2-gst-rtsp-server-1.0),
run by the SYSTEM Python (/usr/bin/python3, which has python3-gi) as its own process.

    /usr/bin/python3 tests/streams/rtsp_server.py --port 8554 --video clip.avi --width 320 --height 240 --fps 30

It decodes `--video` once (GStreamer's decodebin, looped by the sender), and serves it at rtsp://127.0.0.1:PORT/cam
as H.264 (x264enc, zerolatency) at `--fps`, paced by a sender thread through an appsrc, so the tests can steer
the stream while clients stay connected. Commands, one per line on stdin; each answers one JSON line on stdout:

    stats                 {"connections": N, "clients": N, "frames_sent": N, "width": W, "height": H, "paused": bool}
    pause / resume        stop sending frames while keeping every connection open (a stalled camera), and go on
    size W H              from the next frame on, send W x H (a camera that changed resolution after a reboot)

The first line on stdout is {"ready": true, "port": PORT} once the server listens. `connections` counts every
RTSP connection a client opened (the server's "client-connected" signal): the tests' reconnect-storm check.
This file imports nothing from the project: the system Python has no project dependencies.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, List, Optional, Tuple

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def decode_frames(video: str, limit: int) -> Tuple[List[bytes], int, int]:
    """Up to `limit` frames of `video` as raw I420 at its own size (and that size), decoded by GStreamer."""
    pipeline = Gst.parse_launch(
        f'filesrc location="{video}" ! decodebin ! videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false'
    )
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: List[bytes] = []
    caps: Optional[Gst.Caps] = None
    while len(frames) < limit:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        caps = sample.get_caps()
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    pipeline.set_state(Gst.State.NULL)
    if not frames or caps is None:
        raise SystemExit(f"rtsp_server: no frame decoded from {video}")
    structure = caps.get_structure(0)
    return frames, int(structure.get_value("width")), int(structure.get_value("height"))


class Feed:
    """Sends the decoded frames, looped, at `fps` to every prepared media's appsrc."""

    def __init__(self, decoded: Tuple[List[bytes], int, int], fps: float, width: int, height: int) -> None:
        self.frames, self.source_width, self.source_height = decoded
        self.period = 1.0 / fps
        self.width, self.height = width, height
        self.lock = threading.Lock()
        self.sources: List[Any] = []
        self.paused = False
        self.sent = 0
        self.connections = 0
        self.clients = 0

    def caps(self) -> Gst.Caps:
        return Gst.Caps.from_string(
            f"video/x-raw,format=I420,width={self.source_width},height={self.source_height},framerate={round(1 / self.period)}/1"
        )

    def scale_caps(self) -> Gst.Caps:
        return Gst.Caps.from_string(f"video/x-raw,width={self.width},height={self.height}")

    def on_media_configure(self, _factory: Any, media: Any) -> None:
        element = media.get_element()
        source = element.get_by_name("src")
        source.set_property("caps", self.caps())
        element.get_by_name("size").set_property("caps", self.scale_caps())
        with self.lock:
            self.sources.append(element)
        media.connect("unprepared", self.on_unprepared, element)

    def on_unprepared(self, _media: Any, element: Any) -> None:
        with self.lock:
            if element in self.sources:
                self.sources.remove(element)

    def resize(self, width: int, height: int) -> None:
        with self.lock:
            self.width, self.height = width, height
            for element in self.sources:
                element.get_by_name("size").set_property("caps", self.scale_caps())

    def run(self) -> None:
        index = 0
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at + self.period, time.monotonic() - self.period)
            with self.lock:
                if self.paused or not self.sources:
                    continue
                data = self.frames[index % len(self.frames)]
                index += 1
                for element in list(self.sources):
                    element.get_by_name("src").emit("push-buffer", Gst.Buffer.new_wrapped(data))
                self.sent += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=90, help="frames of the video to decode and loop")
    parser.add_argument("--keyframe-interval", type=int, default=15)
    args = parser.parse_args()
    Gst.init(None)
    feed = Feed(decode_frames(args.video, args.frames), args.fps, args.width, args.height)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src is-live=true format=time do-timestamp=true block=false max-bytes=2000000 "
        "! videoconvert ! videoscale ! capsfilter name=size "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.keyframe_interval} bitrate=1000 "
        "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    factory.set_eos_shutdown(False)
    factory.connect("media-configure", feed.on_media_configure)
    server.get_mount_points().add_factory("/cam", factory)

    def on_client(_server: Any, client: Any) -> None:
        with feed.lock:
            feed.connections += 1
            feed.clients += 1

        def on_closed(_client: Any) -> None:
            with feed.lock:
                feed.clients -= 1

        client.connect("closed", on_closed)

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")
    threading.Thread(target=feed.run, daemon=True).start()
    loop = GLib.MainLoop()

    def commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "pause":
                feed.paused = True
            elif words[0] == "resume":
                feed.paused = False
            elif words[0] == "size" and len(words) == 3:
                feed.resize(int(words[1]), int(words[2]))
            with feed.lock:
                say(connections=feed.connections, clients=feed.clients, frames_sent=feed.sent,
                    width=feed.width, height=feed.height, paused=feed.paused)
        loop.quit()  # stdin closed: the test that started us is gone

    threading.Thread(target=commands, daemon=True).start()
    say(ready=True, port=args.port)
    loop.run()


if __name__ == "__main__":
    main()
