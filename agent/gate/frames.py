"""Frames for a validation set, on the operator's machine: image folders, single images and video files,
sampled evenly so `-n 64` over a 795-frame video and a folder of stills covers all of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np

from agent.gate.thresholds import GateError
from agent.lazy import require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


@dataclass(frozen=True)
class FrameRef:
    path: Path
    index: int  # frame number in a video; 0 for an image
    video: bool

    @property
    def name(self) -> str:
        return f"{self.path.name}#{self.index}" if self.video else self.path.name


def _video_length(cv2: Any, path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise GateError(f"cannot open {path} as a video (and it is not an image: {', '.join(IMAGE_SUFFIXES)})")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:  # some containers do not say: count by reading
            count = 0
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


def list_frames(sources: Sequence[Union[str, Path]]) -> List[FrameRef]:
    """Every frame the sources offer, in order: folders (their images, sorted by name), images, videos."""
    cv2 = require("cv2", "reading frames")
    refs: List[FrameRef] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise GateError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
            refs += [FrameRef(p, 0, False) for p in images]
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            refs.append(FrameRef(path, 0, False))
        elif path.is_file():
            refs += [FrameRef(path, i, True) for i in range(_video_length(cv2, path))]
        else:
            raise GateError(f"frames source not found: {path}")
    return refs


def pick_evenly(refs: Sequence[FrameRef], n: int) -> List[FrameRef]:
    if n >= len(refs):
        return list(refs)
    positions = np.linspace(0, len(refs) - 1, n).round().astype(int)
    return [refs[int(i)] for i in positions]


def read_frames(refs: Sequence[FrameRef]) -> List[Tuple[str, np.ndarray]]:
    """(name, BGR uint8 frame) for each reference; unreadable ones are errors, not silent gaps."""
    cv2 = require("cv2", "reading frames")
    out: List[Tuple[str, np.ndarray]] = []
    by_video: dict = {}
    for ref in refs:
        if ref.video:
            by_video.setdefault(ref.path, []).append(ref.index)
    video_frames = {}
    for path, indices in by_video.items():
        wanted = set(indices)
        capture = cv2.VideoCapture(str(path))
        try:
            index = 0
            while wanted and index <= max(indices):
                ok = capture.grab()
                if not ok:
                    break
                if index in wanted:
                    ok, frame = capture.retrieve()
                    if ok:
                        video_frames[(path, index)] = frame
                    wanted.discard(index)
                index += 1
        finally:
            capture.release()
    for ref in refs:
        if ref.video:
            frame = video_frames.get((ref.path, ref.index))
            if frame is None:
                raise GateError(f"cannot decode frame {ref.index} of {ref.path}")
        else:
            frame = cv2.imread(str(ref.path), cv2.IMREAD_COLOR)
            if frame is None:
                raise GateError(f"cannot decode image {ref.path}")
        out.append((ref.name, frame))
    return out


def collect_frames(sources: Sequence[Union[str, Path]], n: int) -> List[Tuple[str, np.ndarray]]:
    """Up to `n` frames spread evenly over all sources."""
    if n <= 0:
        raise GateError(f"-n must be positive, got {n}")
    return read_frames(pick_evenly(list_frames(sources), n))
