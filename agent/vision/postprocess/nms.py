"""Non-maximum suppression with OpenCV (cv2.dnn.NMSBoxes), class-aware when asked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from agent.lazy import deferred

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")


def nms(
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    score_threshold: float = 0.0,
    class_ids: Optional[np.ndarray] = None,
    top_k: int = 0,
) -> np.ndarray:
    """Indices of the boxes kept, best score first. `class_ids` makes it per class (a box suppresses only
    boxes of its own class): cv2.dnn.NMSBoxesBatched where OpenCV has it (4.7+), else the offset trick."""
    import cv2  # optional (cpu extra, or JetPack's OpenCV): imported where frames are handled

    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    box_list = boxes.tolist()
    score_list = values.tolist()
    if class_ids is None:
        kept = cv2.dnn.NMSBoxes(box_list, score_list, float(score_threshold), float(iou_threshold))
    else:
        ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        batched = getattr(cv2.dnn, "NMSBoxesBatched", None)
        if batched is not None:
            kept = batched(box_list, score_list, ids.tolist(), float(score_threshold), float(iou_threshold))
        else:  # shift each class far apart so boxes of different classes never overlap
            span = float(np.max(boxes[:, :2] + boxes[:, 2:])) + 1.0
            shifted = boxes.copy()
            shifted[:, :2] += ids[:, None] * span
            kept = cv2.dnn.NMSBoxes(shifted.tolist(), score_list, float(score_threshold), float(iou_threshold))
    order = np.asarray(kept, dtype=np.int64).reshape(-1)  # OpenCV 4.5 returns [[i], ...], later [i, ...]
    order = order[np.argsort(-values[order], kind="stable")]
    return order[:top_k] if top_k > 0 else order
