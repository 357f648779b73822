"""A small BlazeFace (full range) decoder for the detection tests, used only when the postprocessing package
offers none. MediaPipe's decoding: one anchor per cell of a 48x48 grid (stride 4
on a 192 input), box = (reg[0:2] / size + anchor, reg[2:4] / size), score = sigmoid(logit), then NMS."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from agent.gate.metrics import Detections, iou_matrix

SIZE = 192
GRID = 48


def _anchors() -> np.ndarray:
    centres = (np.arange(GRID, dtype=np.float32) + 0.5) / GRID
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


ANCHORS = _anchors()


def decode_blazeface(outputs: Mapping[str, np.ndarray], score_threshold: float, nms_iou: float = 0.3) -> Detections:
    """Outputs of one frame (batch axis kept) -> boxes (x, y, w, h) normalised to the 192x192 input."""
    by_width = {np.asarray(value).shape[-1]: np.asarray(value) for value in outputs.values()}
    regressors = by_width[16].reshape(-1, 16)  # the export names them reshaped_regressor/classifier_face_4
    logits = by_width[1].reshape(-1).astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
    keep = np.nonzero(scores >= score_threshold)[0]
    if len(keep) == 0:
        return Detections.empty()
    centre = regressors[keep, 0:2] / SIZE + ANCHORS[keep]
    size = regressors[keep, 2:4] / SIZE
    boxes = np.concatenate([centre - size / 2, size], axis=1)
    order = np.argsort(-scores[keep], kind="stable")
    chosen: list = []
    for index in order:
        if all(iou_matrix(boxes[index : index + 1], boxes[other : other + 1])[0, 0] <= nms_iou for other in chosen):
            chosen.append(index)
    return Detections.of(boxes[chosen], scores[keep][chosen])


def factory(config: Mapping[str, Any]) -> Any:
    nms = float(config.get("nms_iou", 0.3))
    return lambda outputs, threshold: decode_blazeface(outputs, threshold, nms)
