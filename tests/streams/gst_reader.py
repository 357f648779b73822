"""Read a GStreamer pipeline through OpenCV's GStreamer backend, as JetPack's OpenCV does on a Jetson. Run by the
SYSTEM Python, whose Debian python3-opencv is built with GStreamer (pip's opencv-python-headless is not):

    /usr/bin/python3 tests/streams/gst_reader.py 'rtspsrc location=... ! decodebin ! ... ! appsink ...'

Prints one JSON line when opened ({"opened": bool, "gstreamer": bool}), then one per frame
({"frame": n, "width": w, "height": h, "read_s": s}), and {"failed": true, "read_s": s} when a read fails (then
exits). Imports nothing from the project.
"""

from __future__ import annotations

import json
import re
import sys
import time

import cv2


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    info = cv2.getBuildInformation()
    match = re.search(r"^\s*GStreamer:\s*(\w+)", info, re.MULTILINE)
    gstreamer = bool(match and match.group(1).upper() == "YES")
    capture = cv2.VideoCapture(sys.argv[1], cv2.CAP_GSTREAMER) if gstreamer else None
    opened = bool(capture is not None and capture.isOpened())
    say(opened=opened, gstreamer=gstreamer, opencv=cv2.__version__)
    if capture is None or not opened:
        return
    count = 0
    while True:
        started = time.monotonic()
        ok, frame = capture.read()
        took = round(time.monotonic() - started, 3)
        if not ok or frame is None:
            say(failed=True, read_s=took)
            return
        count += 1
        say(frame=count, width=int(frame.shape[1]), height=int(frame.shape[0]), read_s=took)


if __name__ == "__main__":
    main()
