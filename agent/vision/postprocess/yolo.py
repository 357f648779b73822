"""YOLO box decoding for the two common export layouts, then NMS.

v5 (also v7): [N, boxes, 5 + classes], rows (cx, cy, w, h, objectness, class scores...): score = obj * class.
v8 (also v9, v11): [N, 4 + classes, boxes], columns (cx, cy, w, h, class scores...), no objectness; some
exporters transpose it to [N, boxes, 4 + classes].
Boxes are in model-input pixels (or 0..1 with `normalized`) and come back in frame pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

from agent.lazy import deferred
from agent.vision.options import YoloConfig
from agent.vision.postprocess.base import (
    Detection,
    Findings,
    PostprocessError,
    Postprocessor,
    box_to_frame,
    label_of,
    load_labels,
    pick_output,
)
from agent.vision.postprocess.nms import nms
from agent.vision.preprocess import FrameGeometry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

KEY = "yolo"


def rows_of(output: np.ndarray, layout: str, classes: int) -> tuple:
    """One frame's output [A, B] -> (rows [boxes, C], layout 'v5' or 'v8'), rows one box each."""
    if output.ndim != 2:
        raise PostprocessError(f"yolo: expected one frame's output of 2 dims, got shape {tuple(output.shape)}")
    a, b = output.shape
    if layout == "v8":
        return (output.T if a < b else output), "v8"
    if layout == "v5":
        return (output if a >= b else output.T), "v5"
    if a < b:  # channels first: only v8 exports this way
        return output.T, "v8"
    if classes and b == classes + 4:
        return output, "v8"
    return output, "v5"


def decode(rows: np.ndarray, layout: str) -> tuple:
    """(boxes cx,cy,w,h [n,4], scores [n], class ids [n]) before any threshold."""
    if layout == "v5":
        if rows.shape[1] < 6:
            raise PostprocessError(f"yolo v5 rows need at least 6 values (box, objectness, a class), got {rows.shape[1]}")
        class_scores = rows[:, 5:] * rows[:, 4:5]
    else:
        if rows.shape[1] < 5:
            raise PostprocessError(f"yolo v8 rows need at least 5 values (box, a class), got {rows.shape[1]}")
        class_scores = rows[:, 4:]
    ids = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(len(rows)), ids]
    return rows[:, :4], scores, ids


class YoloPostprocessor(Postprocessor):
    KEY = KEY

    def __init__(self, config: YoloConfig) -> None:
        super().__init__(config)
        self.labels: List[str] = load_labels(config.labels, config.short_labels)
        self.classes = config.classes or len(self.labels)

    def frame(self, outputs: Dict[str, np.ndarray], geometry: FrameGeometry) -> Findings:
        config: YoloConfig = self.config
        output = pick_output(outputs, config.output, "yolo").astype(np.float32)
        if output.ndim == 3 and output.shape[0] == 1:
            output = output[0]
        rows, layout = rows_of(output, config.layout, self.classes)
        centres, scores, ids = decode(rows, layout)
        keep = np.nonzero(scores >= config.score_threshold)[0]
        if keep.size == 0:
            return Findings()
        scale_x = geometry.input_w if config.normalized else 1.0
        scale_y = geometry.input_h if config.normalized else 1.0
        boxes = []
        for i in keep:
            cx, cy, w, h = (float(v) for v in centres[i])
            boxes.append(box_to_frame(geometry, (cx - w / 2) * scale_x, (cy - h / 2) * scale_y, (cx + w / 2) * scale_x, (cy + h / 2) * scale_y))
        order = nms(
            np.asarray(boxes),
            scores[keep],
            config.nms_threshold,
            class_ids=None if config.class_agnostic else ids[keep],
            top_k=config.max_detections,
        )
        found = [Detection(boxes[int(i)], float(scores[keep[i]]), label_of(self.labels, int(ids[keep[i]])), int(ids[keep[i]])) for i in order]
        return Findings(detections=found)


PLUGIN = (KEY, YoloConfig, YoloPostprocessor)
