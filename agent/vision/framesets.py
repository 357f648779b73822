"""Frames for offline work on the operator's machine (calibration tables, validation sets): image folders,
single images and video files, sampled evenly so `-n 64` over a 795-frame video and a folder of stills covers
all of them, not just the first seconds. Unreadable frames are errors, not silent gaps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np

from agent.errors import AgentError
from agent.lazy import require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")

Source = Union[str, Path]


class FrameSetError(AgentError):
    """A frames source is missing, empty, or cannot be decoded."""


@dataclass(frozen=True)
class FrameRef:
    path: Path
    index: int  # frame number in a video; 0 for an image
    video: bool

    @property
    def name(self) -> str:
        return f"{self.path.name}#{self.index}" if self.video else self.path.name


def evenly(total: int, count: int) -> List[int]:
    """`count` indices spread over range(total), first and last included (all of them when count >= total)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(k * (total - 1) / (count - 1)) for k in range(count)})


def _video_length(cv2: Any, path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise FrameSetError(f"cannot open {path} as a video (and it is not an image: {', '.join(IMAGE_SUFFIXES)})")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:  # some containers do not say: count by reading
            count = 0
            while capture.grab():
                count += 1
        return count
    finally:
        capture.release()


def list_frames(sources: Sequence[Source]) -> List[FrameRef]:
    """Every frame the sources offer, in order: folders (their images, sorted by name), images, videos."""
    cv2 = require("cv2", "reading frames")
    refs: List[FrameRef] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                raise FrameSetError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
            refs += [FrameRef(p, 0, False) for p in images]
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            refs.append(FrameRef(path, 0, False))
        elif path.is_file():
            refs += [FrameRef(path, i, True) for i in range(_video_length(cv2, path))]
        else:
            raise FrameSetError(f"frames source not found: {path}")
    return refs


def pick_evenly(refs: Sequence[FrameRef], n: int) -> List[FrameRef]:
    return [refs[i] for i in evenly(len(refs), n)]


def read_frames(refs: Sequence[FrameRef]) -> List[Tuple[str, np.ndarray]]:
    """(name, BGR uint8 frame) for each reference. Videos are read once, front to back, decoding only the
    frames wanted (grab skips the rest)."""
    cv2 = require("cv2", "reading frames")
    by_video: Dict[Path, List[int]] = {}
    for ref in refs:
        if ref.video:
            by_video.setdefault(ref.path, []).append(ref.index)
    video_frames: Dict[Tuple[Path, int], np.ndarray] = {}
    for path, indices in by_video.items():
        wanted = set(indices)
        capture = cv2.VideoCapture(str(path))
        try:
            index = 0
            while wanted and index <= max(indices):
                if not capture.grab():
                    break
                if index in wanted:
                    ok, frame = capture.retrieve()
                    if ok:
                        video_frames[(path, index)] = frame
                    wanted.discard(index)
                index += 1
        finally:
            capture.release()
    out: List[Tuple[str, np.ndarray]] = []
    for ref in refs:
        if ref.video:
            frame = video_frames.get((ref.path, ref.index))
            if frame is None:
                raise FrameSetError(f"cannot decode frame {ref.index} of {ref.path}")
        else:
            frame = cv2.imread(str(ref.path), cv2.IMREAD_COLOR)
            if frame is None:
                raise FrameSetError(f"cannot decode image {ref.path}")
        out.append((ref.name, frame))
    return out


def collect_frames(sources: Sequence[Source], n: int) -> List[Tuple[str, np.ndarray]]:
    """Up to `n` named frames spread evenly over all the sources together."""
    if n <= 0:
        raise FrameSetError(f"the number of frames must be positive, got {n}")
    return read_frames(pick_evenly(list_frames(sources), n))


def iter_sources(sources: Sequence[Source], count_each: int) -> Iterator[np.ndarray]:
    """Up to `count_each` frames from each source in turn, spread over that source; one source in memory at a time."""
    for source in sources:
        for _name, frame in collect_frames([source], count_each):
            yield frame
