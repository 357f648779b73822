"""A small HTTP MJPEG server for the camera tests, the way IP cameras serve MJPEG: GET /cam.mjpg answers
`multipart/x-mixed-replace` with one JPEG part per frame, paced at `--fps`, from a video file decoded by OpenCV.

    python tests/streams/mjpeg_server.py --port 8080 --video clip.avi --width 320 --height 240 --fps 30

Same line protocol on stdin/stdout as rtsp_server.py (stats, pause, resume, size W H; first line
{"ready": true, "port": PORT}); `connections` counts HTTP requests for the stream.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List

import cv2
import numpy as np

BOUNDARY = "frame"


class Feed:
    def __init__(self, frames: List[np.ndarray], fps: float, width: int, height: int) -> None:
        self.frames, self.period = frames, 1.0 / fps
        self.width, self.height = width, height
        self.lock = threading.Condition()
        self.paused = False
        self.sent = 0
        self.connections = 0
        self.clients = 0
        self.jpeg = b""
        self.index = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at + self.period, time.monotonic() - self.period)
            with self.lock:
                if self.paused:
                    continue
                size = (self.width, self.height)
            image = cv2.resize(self.frames[self.index % len(self.frames)], size, interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            with self.lock:
                self.index += 1
                self.jpeg = data.tobytes() if ok else self.jpeg
                self.sent += 1
                self.lock.notify_all()


def handler_for(feed: Feed) -> Any:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *_args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/cam.mjpg":
                self.send_error(404)
                return
            with feed.lock:
                feed.connections += 1
                feed.clients += 1
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                seen = -1
                while True:
                    with feed.lock:
                        while feed.sent == seen or not feed.jpeg:
                            feed.lock.wait(1.0)
                        seen, jpeg = feed.sent, feed.jpeg
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n"
                    )
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with feed.lock:
                    feed.clients -= 1

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--video", required=True)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=90)
    args = parser.parse_args()
    capture = cv2.VideoCapture(args.video)
    frames: List[np.ndarray] = []
    while len(frames) < args.frames:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise SystemExit(f"mjpeg_server: no frame decoded from {args.video}")
    feed = Feed(frames, args.fps, args.width, args.height)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(feed))
    server.daemon_threads = True
    threading.Thread(target=feed.run, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(json.dumps({"ready": True, "port": args.port}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        words = line.split()
        with feed.lock:
            if words and words[0] == "pause":
                feed.paused = True
            elif words and words[0] == "resume":
                feed.paused = False
            elif words and words[0] == "size" and len(words) == 3:
                feed.width, feed.height = int(words[1]), int(words[2])
            sys.stdout.write(json.dumps({"connections": feed.connections, "clients": feed.clients, "frames_sent": feed.sent,
                                         "width": feed.width, "height": feed.height, "paused": feed.paused}) + "\n")
            sys.stdout.flush()
    server.shutdown()


if __name__ == "__main__":
    main()
