"""Results drawn on a frame, and JPEG encoding, for on-demand snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

from agent.errors import AgentError
from agent.lazy import deferred
from agent.vision.postprocess.base import Findings

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

PALETTE: Tuple[Tuple[int, int, int], ...] = ((0, 200, 0), (0, 128, 255), (255, 64, 64), (200, 0, 200), (0, 200, 200), (255, 200, 0))


def draw_findings(frame_bgr: np.ndarray, findings: Findings) -> np.ndarray:
    """A copy of the frame with boxes, labels, keypoints and the top classes drawn on it."""
    import cv2  # optional (cpu extra, or JetPack's OpenCV): imported where frames are handled

    image = frame_bgr.copy()
    height, width = image.shape[:2]
    thickness = max(1, round(min(width, height) / 300))
    scale = max(0.4, min(width, height) / 800)
    for detection in findings.detections:
        colour = PALETTE[detection.class_id % len(PALETTE)]
        x, y, w, h = (round(v) for v in detection.box)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        text = f"{detection.label} {detection.score:.2f}"
        cv2.putText(image, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
        for px, py in detection.keypoints:
            cv2.circle(image, (round(px), round(py)), thickness + 1, colour, -1)
    line = int(24 * scale) + 4
    for row, item in enumerate(findings.classes[:3]):
        text = f"{item.label} {item.score:.2f}"
        origin = (8, line * (row + 1))
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def encode_jpeg(image_bgr: np.ndarray, quality: int = 85) -> bytes:
    import cv2  # optional (cpu extra, or JetPack's OpenCV): imported where frames are handled

    ok, data = cv2.imencode(".jpg", image_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(max(1, min(100, quality)))])
    if not ok:
        raise AgentError(f"JPEG encoding failed for a frame of shape {image_bgr.shape}")
    return bytes(data.tobytes())
