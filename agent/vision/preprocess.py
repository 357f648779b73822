"""Preprocessing from the model's declared needs, described in the deployment rather than hard-coded.

EfficientNet-Lite0: {"size": [224, 224], "resize": "shorter_crop", "short_side": 256, "interpolation": "cubic",
                     "color": "rgb", "scale": 0.0078125, "offset": -0.9921875}   # (x - 127) / 128
BlazeFace:          {"size": [128, 128], "resize": "letterbox", "color": "rgb", "scale": 0.00784313725, "offset": -1.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from agent.lazy import deferred
from agent.vision.options import (
    BLAZEFACE,
    EFFICIENTNET_LITE,
    PRESETS,
    PreprocessError,
    PreprocessSpec,
    spec_from,
)

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

__all__ = [
    "BLAZEFACE",
    "EFFICIENTNET_LITE",
    "PRESETS",
    "FrameGeometry",
    "PreprocessError",
    "PreprocessSpec",
    "normalise",
    "prepare",
    "prepare_batch",
    "spec_from",
]


@dataclass
class FrameGeometry:
    """How a frame was mapped into the model input, to map boxes back (normalised model coords -> pixels)."""

    frame_w: int
    frame_h: int
    scale_x: float  # model pixels per frame pixel
    scale_y: float
    pad_x: float  # model pixels of padding (letterbox) or negative crop offset (shorter_crop)
    pad_y: float
    input_w: int
    input_h: int

    def to_frame(self, x: float, y: float) -> Tuple[float, float]:
        """Model-input pixel coordinates -> frame pixel coordinates."""
        return (x - self.pad_x) / self.scale_x, (y - self.pad_y) / self.scale_y


_CV_INTERP: Dict[str, str] = {"nearest": "INTER_NEAREST", "linear": "INTER_LINEAR", "cubic": "INTER_CUBIC", "area": "INTER_AREA"}


def _resize(cv2: Any, image: np.ndarray, width: int, height: int, interpolation: str) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=getattr(cv2, _CV_INTERP[interpolation]))


def prepare(frame_bgr: np.ndarray, spec: PreprocessSpec) -> Tuple[np.ndarray, FrameGeometry]:
    """One BGR uint8 frame -> one model input tensor without the batch axis ([C,H,W] or [H,W,C]) and its geometry."""
    import cv2  # optional (cpu extra, or JetPack's OpenCV): imported where frames are handled

    if frame_bgr is None or frame_bgr.ndim not in (2, 3) or frame_bgr.size == 0:
        raise PreprocessError(f"frame is empty or not an image (shape {getattr(frame_bgr, 'shape', None)})")
    if frame_bgr.ndim == 2:
        frame_bgr = cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    frame_h, frame_w = frame_bgr.shape[:2]
    out_h, out_w = spec.size
    if spec.color == "rgb":
        image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    elif spec.color == "gray":
        image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    else:
        image = frame_bgr
    if spec.resize == "stretch":
        resized = _resize(cv2, image, out_w, out_h, spec.interpolation)
        geometry = FrameGeometry(frame_w, frame_h, out_w / frame_w, out_h / frame_h, 0.0, 0.0, out_w, out_h)
    elif spec.resize == "letterbox":
        scale = min(out_w / frame_w, out_h / frame_h)
        new_w, new_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
        resized_inner = _resize(cv2, image, new_w, new_h, spec.interpolation)
        pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
        channels = image.shape[2] if image.ndim == 3 else 1
        resized = np.full((out_h, out_w, channels), spec.pad_value, dtype=image.dtype)
        resized[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized_inner.reshape(new_h, new_w, channels)
        geometry = FrameGeometry(frame_w, frame_h, scale, scale, float(pad_x), float(pad_y), out_w, out_h)
    else:  # shorter_crop
        short = spec.short_side or max(out_h, out_w)
        scale = short / min(frame_w, frame_h)
        new_w, new_h = max(out_w, round(frame_w * scale)), max(out_h, round(frame_h * scale))
        big = _resize(cv2, image, new_w, new_h, spec.interpolation)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        resized = big[top : top + out_h, left : left + out_w]
        geometry = FrameGeometry(frame_w, frame_h, new_w / frame_w, new_h / frame_h, float(-left), float(-top), out_w, out_h)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    tensor = normalise(resized, spec)
    if spec.layout == "nchw":
        tensor = np.ascontiguousarray(tensor.transpose(2, 0, 1))
    return tensor, geometry


def normalise(image_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.dtype == "uint8":
        return image_hwc.astype(np.uint8, copy=False)
    values: np.ndarray = image_hwc.astype(np.float32)
    if spec.mean:
        values = (values - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    else:
        values = values * np.float32(spec.scale) + np.float32(spec.offset)
    return values.astype(np.float16 if spec.dtype == "float16" else np.float32, copy=False)


def prepare_batch(frames: List[np.ndarray], spec: PreprocessSpec) -> Tuple[np.ndarray, List[FrameGeometry]]:
    """Several frames -> one batch tensor [N, ...] and their geometries."""
    tensors, geometries = [], []
    for frame in frames:
        tensor, geometry = prepare(frame, spec)
        tensors.append(tensor)
        geometries.append(geometry)
    return np.stack(tensors), geometries
