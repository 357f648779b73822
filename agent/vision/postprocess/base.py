"""What every postprocessing plugin returns and the small base class they share.

A plugin module (Frigate's detector-plugin shape) has a `KEY`, its own config dataclass and a Postprocessor
subclass; `agent.vision.postprocess.create()` finds it by key. Plugins are pure functions of the model's
outputs and the frame geometry: they are tested with real models or with tensors built in the test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple

from agent.lazy import deferred
from agent.vision.options import PostprocessError
from agent.vision.preprocess import FrameGeometry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")


@dataclass
class Classification:
    label: str
    index: int
    score: float

    def to_dict(self) -> Dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": round(float(self.score), 4)}


@dataclass
class Detection:
    box: Tuple[float, float, float, float]  # x, y, width, height in frame pixels
    score: float
    label: str
    class_id: int = 0
    keypoints: List[Tuple[float, float]] = field(default_factory=list)  # frame pixels

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "label": self.label,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 1) for v in self.box],
        }
        if self.keypoints:
            data["keypoints"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.keypoints]
        return data


@dataclass
class Findings:
    """Everything found in one frame."""

    classes: List[Classification] = field(default_factory=list)
    detections: List[Detection] = field(default_factory=list)

    def signature(self) -> Tuple[Any, ...]:
        """What counts as 'changed' for on-change publishing: the top class, and the detected labels with counts."""
        top = self.classes[0].label if self.classes else None
        labels: Dict[str, int] = {}
        for detection in self.detections:
            labels[detection.label] = labels.get(detection.label, 0) + 1
        return (top, tuple(sorted(labels.items())))


def load_labels(path: str, short: bool = True) -> List[str]:
    """One label a line; `short` keeps the text before the first comma ('tabby, tabby cat' -> 'tabby')."""
    if not path:
        return []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PostprocessError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    return [label.split(",")[0].strip() if short else label for label in labels]


def label_of(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) and labels[index] else str(index)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -80.0, 80.0)))


def frame_outputs(outputs: Mapping[str, np.ndarray], index: int, frames: int) -> Dict[str, np.ndarray]:
    """One frame's slice of batched outputs. A fixed-batch engine may return more rows than frames (padding);
    an output without a batch axis (batch-1 models that squeeze it) is passed whole."""
    sliced: Dict[str, np.ndarray] = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim >= 1 and array.shape[0] >= frames and (array.shape[0] > 1 or frames == 1):
            sliced[name] = array[index]
        else:
            sliced[name] = array
    return sliced


def pick_output(outputs: Mapping[str, np.ndarray], name: str, what: str) -> np.ndarray:
    """The named output, or the first one when the name is empty."""
    if name:
        if name not in outputs:
            raise PostprocessError(f"{what}: the model has no output '{name}' (outputs: {sorted(outputs)})")
        return outputs[name]
    if not outputs:
        raise PostprocessError(f"{what}: the model returned no outputs")
    return next(iter(outputs.values()))


def box_to_frame(geometry: FrameGeometry, x0: float, y0: float, x1: float, y1: float) -> Tuple[float, float, float, float]:
    """A box in model-input pixels (corners) -> (x, y, w, h) in frame pixels, clipped to the frame."""
    fx0, fy0 = geometry.to_frame(float(x0), float(y0))
    fx1, fy1 = geometry.to_frame(float(x1), float(y1))
    fx0, fx1 = max(0.0, min(float(fx0), geometry.frame_w)), max(0.0, min(float(fx1), geometry.frame_w))
    fy0, fy1 = max(0.0, min(float(fy0), geometry.frame_h)), max(0.0, min(float(fy1), geometry.frame_h))
    return (fx0, fy0, max(0.0, fx1 - fx0), max(0.0, fy1 - fy0))


class Postprocessor:
    """Model outputs for a batch -> one Findings per frame. Subclasses implement `frame()`."""

    KEY = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(self, outputs: Mapping[str, np.ndarray], geometries: Sequence[FrameGeometry]) -> List[Findings]:
        count = len(geometries)
        return [self.frame(frame_outputs(outputs, i, count), geometries[i]) for i in range(count)]

    def frame(self, outputs: Dict[str, np.ndarray], geometry: FrameGeometry) -> Findings:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        fields = getattr(self.config, "__struct_fields__", ())
        return {"type": self.KEY, **{name: getattr(self.config, name) for name in fields}}

