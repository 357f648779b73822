"""The accuracy gate's view of the box decoders: `gate_decoder(config)` -> decode(outputs, score_threshold).

The gate (agent.gate.decoders) compares boxes in normalised model-input coordinates, frame by frame, with
outputs that have no batch axis. This adapter runs the same plugin the camera pipeline runs, through an
identity geometry that maps model-input pixels to 0..1.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from agent.vision.postprocess.base import Findings, PostprocessError, Postprocessor
from agent.vision.preprocess import FrameGeometry

GATE_KINDS = ("blazeface", "yolo")
GateDecoder = Callable[[Mapping[str, np.ndarray], float], Any]


def normalising_geometry(input_w: int, input_h: int) -> FrameGeometry:
    """A geometry whose 'frame' is the unit square: model-input pixels -> 0..1."""
    return FrameGeometry(1, 1, float(input_w), float(input_h), 0.0, 0.0, int(input_w), int(input_h))


def _input_size(kind: str, config: Mapping[str, Any], outputs: Mapping[str, np.ndarray]) -> Tuple[int, int]:
    if "input_size" in config:
        size = config["input_size"]
        if isinstance(size, (int, float)):
            return int(size), int(size)
        return int(size[1]), int(size[0])  # [height, width] like preprocess.size
    if kind == "blazeface":
        from agent.vision.postprocess.blazeface import VARIANTS, split_outputs, variant_for

        variant = str(config.get("variant", "auto"))
        if variant == "auto":
            reg, _ = split_outputs(dict(outputs), str(config.get("regressors", "")), str(config.get("scores", "")))
            variant = variant_for(len(reg))
        side = VARIANTS[variant][0]
        return side, side
    if config.get("normalized"):
        return 1, 1
    raise PostprocessError(f"gate decoder {kind}: give 'input_size' ([height, width] of the model input) to normalise boxes")


def gate_decoder(config: Mapping[str, Any]) -> Optional[GateDecoder]:
    """A decoder for the accuracy gate, or None when `config['kind']` is not a box decoder here."""
    from agent.vision.postprocess import create

    kind = str(config.get("kind") or config.get("type") or "")
    if kind not in GATE_KINDS:
        return None
    options: Dict[str, Any] = {k: v for k, v in config.items() if k not in ("kind", "type", "input_size")}
    made: Dict[float, Postprocessor] = {}

    def decode(outputs: Mapping[str, np.ndarray], score_threshold: float) -> Any:
        from agent.gate.metrics import Detections  # the gate's own type; imported only when the gate calls

        threshold = float(score_threshold)
        if threshold not in made:
            made[threshold] = create({"type": kind, **options, "score_threshold": threshold})
        width, height = _input_size(kind, config, outputs)
        found: Findings = made[threshold].frame({k: np.asarray(v) for k, v in outputs.items()}, normalising_geometry(width, height))
        if not found.detections:
            return Detections.empty()
        return Detections.of([d.box for d in found.detections], [d.score for d in found.detections])

    return decode
