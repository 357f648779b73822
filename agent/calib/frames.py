"""Calibration frames from a folder of images, an image, or a video file, read with OpenCV, spread evenly over
the source so a long video is sampled end to end, not just its first seconds."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, List, Sequence, Union

import numpy as np

from agent.calib.table import CalibError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"})


def evenly(total: int, count: int) -> List[int]:
    """`count` indices spread over range(total), first and last included (all of them when count >= total)."""
    if total <= 0 or count <= 0:
        return []
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(k * (total - 1) / (count - 1)) for k in range(count)})


def iter_frames(source: Union[str, Path], count: int) -> Iterator[np.ndarray]:
    """Up to `count` BGR uint8 frames from an image folder, one image, or a video."""
    from agent.lazy import require

    cv2 = require("cv2", "reading calibration frames")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise CalibError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        unreadable = 0
        for k in evenly(len(files), count):
            image = cv2.imread(str(files[k]), cv2.IMREAD_COLOR)
            if image is None:
                unreadable += 1
                log.warning("skipping unreadable image %s", files[k])
                continue
            yield image
        if unreadable == min(count, len(files)):
            raise CalibError(f"{path}: none of the images could be decoded")
        return
    if not path.exists():
        raise CalibError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise CalibError(f"{path}: OpenCV cannot decode this image")
        yield image
        return
    yield from _video_frames(cv2, path, count)


def _video_frames(cv2: object, path: Path, count: int) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))  # type: ignore[attr-defined]
    if not capture.isOpened():
        raise CalibError(f"{path}: OpenCV cannot open this as a video (or it is not an image it knows)")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # type: ignore[attr-defined]
        wanted = set(evenly(total, count)) if total > 0 else set(range(count))
        last = max(wanted) if wanted else -1
        produced = 0
        position = 0
        while position <= last:
            if position in wanted:
                ok, frame = capture.read()
                if not ok:
                    break
                produced += 1
                yield frame
            elif not capture.grab():  # skip without decoding into a numpy array
                break
            position += 1
        if produced == 0:
            raise CalibError(f"{path}: no frame could be decoded")
    finally:
        capture.release()


def iter_sources(sources: Sequence[Union[str, Path]], count_each: int) -> Iterator[np.ndarray]:
    for source in sources:
        yield from iter_frames(source, count_each)
