"""BlazeFace (MediaPipe face detection) decoding: anchors, boxes, keypoints, sigmoid scores, NMS.

Anchors are cell centres: short range (128x128 input) has stride 8 with 2 anchors per cell (16x16) then
stride 16 with 6 per cell (8x8), 896 in all; full range (192x192) has stride 4 with 1 per cell (48x48), 2304.
Regressor row: [dx, dy, w, h, 6 keypoints (x, y)] in input pixels, offsets from the anchor centre.
Boxes come out in frame pixels through the letterbox geometry of preprocessing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Dict, List, Tuple

from agent.lazy import deferred
from agent.vision.options import BlazeFaceConfig
from agent.vision.postprocess.base import (
    Detection,
    Findings,
    PostprocessError,
    Postprocessor,
    box_to_frame,
    sigmoid,
)
from agent.vision.postprocess.nms import nms
from agent.vision.preprocess import FrameGeometry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

KEY = "blazeface"

# variant -> (input size, ((stride, anchors per cell), ...))
VARIANTS: Dict[str, Tuple[int, Tuple[Tuple[int, int], ...]]] = {
    "short": (128, ((8, 2), (16, 6))),
    "full": (192, ((4, 1),)),
}


@functools.lru_cache(maxsize=4)
def anchors(variant: str) -> np.ndarray:
    """Anchor centres [N, 2] (x, y) in 0..1 of the input, in the model's output order."""
    size, layers = VARIANTS[variant]
    centres: List[np.ndarray] = []
    for stride, per_cell in layers:
        cells = size // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        grid = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    result = np.concatenate(centres).astype(np.float32)
    result.setflags(write=False)
    return result


def variant_for(anchor_count: int) -> str:
    for name in VARIANTS:
        if len(anchors(name)) == anchor_count:
            return name
    raise PostprocessError(f"blazeface: {anchor_count} anchors fit no known variant (short: 896, full: 2304)")


def split_outputs(outputs: Dict[str, np.ndarray], regressors: str, scores: str) -> Tuple[np.ndarray, np.ndarray]:
    """The regressors [N, 16] and score logits [N] of one frame, by name or by shape."""
    if regressors and scores:
        missing = [n for n in (regressors, scores) if n not in outputs]
        if missing:
            raise PostprocessError(f"blazeface: outputs {missing} not found (outputs: {sorted(outputs)})")
        reg, logit = outputs[regressors], outputs[scores]
    else:
        reg_candidates = [v for v in outputs.values() if v.ndim >= 2 and v.shape[-1] == 16]
        score_candidates = [v for v in outputs.values() if v.shape[-1:] == (1,) or v.ndim == 1]
        if len(reg_candidates) != 1 or len(score_candidates) != 1:
            shapes = {k: tuple(v.shape) for k, v in outputs.items()}
            raise PostprocessError(f"blazeface: cannot tell regressors from scores by shape {shapes}; name them in the config")
        reg, logit = reg_candidates[0], score_candidates[0]
    return reg.reshape(-1, 16).astype(np.float32), logit.reshape(-1).astype(np.float32)


class BlazeFacePostprocessor(Postprocessor):
    KEY = KEY

    def frame(self, outputs: Dict[str, np.ndarray], geometry: FrameGeometry) -> Findings:
        config: BlazeFaceConfig = self.config
        reg, logits = split_outputs(outputs, config.regressors, config.scores)
        variant = config.variant if config.variant != "auto" else variant_for(len(reg))
        centres = anchors(variant)
        if len(centres) != len(reg) or len(logits) != len(reg):
            raise PostprocessError(f"blazeface {variant}: expected {len(centres)} anchors, the model gave {len(reg)} boxes and {len(logits)} scores")
        size = float(VARIANTS[variant][0])
        scores = sigmoid(logits)
        keep = np.nonzero(scores >= config.score_threshold)[0]
        if keep.size == 0:
            return Findings()
        # input pixels: the model's size may differ from the variant's only through a wrong spec; scale to it
        scale_x, scale_y = geometry.input_w / size, geometry.input_h / size
        centre = reg[keep, 0:2] + centres[keep] * size
        half = reg[keep, 2:4] / 2.0
        boxes = [
            box_to_frame(
                geometry,
                (centre[i, 0] - half[i, 0]) * scale_x,
                (centre[i, 1] - half[i, 1]) * scale_y,
                (centre[i, 0] + half[i, 0]) * scale_x,
                (centre[i, 1] + half[i, 1]) * scale_y,
            )
            for i in range(len(keep))
        ]
        order = nms(np.asarray(boxes), scores[keep], config.nms_threshold, top_k=config.max_detections)
        found = []
        for i in order:
            points: List[Tuple[float, float]] = []
            if config.keypoints:
                raw = reg[keep[i], 4:16].reshape(6, 2) + centres[keep[i]] * size
                points = [geometry.to_frame(float(x) * scale_x, float(y) * scale_y) for x, y in raw]
            found.append(Detection(boxes[int(i)], float(scores[keep[i]]), config.label, 0, points))
        return Findings(detections=found)


PLUGIN = (KEY, BlazeFaceConfig, BlazeFacePostprocessor)
