"""The box decoder a detection validation set names: `resolve_decoder(config)` -> decode(outputs, score_threshold).

The gate compares boxes, not raw head tensors; a detection set records its decoder config (for example
`{"kind": "blazeface", "score_threshold": 0.5, ...}`) and the device decodes its own engine's outputs the same
way, frame by frame, with outputs that have no batch axis, into boxes (x, y, w, h) in normalised model-input
coordinates. The decoder runs the same postprocessing plugin the camera pipeline runs (agent.vision.postprocess),
through an identity geometry that maps model-input pixels to 0..1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Tuple

from agent.gate.metrics import Detections
from agent.gate.thresholds import GateError
from agent.lazy import deferred
from agent.vision.postprocess import create
from agent.vision.postprocess.base import Findings, PostprocessError, Postprocessor
from agent.vision.postprocess.blazeface import VARIANTS, split_outputs, variant_for
from agent.vision.preprocess import FrameGeometry

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

BOX_KINDS = ("blazeface", "yolo")
Decoder = Callable[[Mapping[str, "np.ndarray"], float], Detections]


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
        variant = str(config.get("variant", "auto"))
        if variant == "auto":
            reg, _ = split_outputs(dict(outputs), str(config.get("regressors", "")), str(config.get("scores", "")))
            variant = variant_for(len(reg))
        side = VARIANTS[variant][0]
        return side, side
    if config.get("normalized"):
        return 1, 1
    raise PostprocessError(f"gate decoder {kind}: give 'input_size' ([height, width] of the model input) to normalise boxes")


def resolve_decoder(config: Mapping[str, Any]) -> Decoder:
    """The decoder `config['kind']` names; GateError when it names none of BOX_KINDS."""
    kind = str(config.get("kind") or config.get("type") or "")
    if not kind:
        raise GateError(f"decoder config has no 'kind': {dict(config)}")
    if kind not in BOX_KINDS:
        raise GateError(f"no box decoder of kind {kind!r} on this agent: a detection gate needs one of {list(BOX_KINDS)}")
    options: Dict[str, Any] = {k: v for k, v in config.items() if k not in ("kind", "type", "input_size")}
    made: Dict[float, Postprocessor] = {}

    def decode(outputs: Mapping[str, np.ndarray], score_threshold: float) -> Detections:
        threshold = float(score_threshold)
        if threshold not in made:
            made[threshold] = create({"type": kind, **options, "score_threshold": threshold})
        width, height = _input_size(kind, config, outputs)
        found: Findings = made[threshold].frame({k: np.asarray(v) for k, v in outputs.items()}, normalising_geometry(width, height))
        if not found.detections:
            return Detections.empty()
        return Detections.of([d.box for d in found.detections], [d.score for d in found.detections])

    return decode
