"""Finding the box decoder a detection validation set names, without depending on one implementation.

The gate compares boxes, not raw head tensors; a detection set records its decoder config (for example
`{"kind": "blazeface", "score_threshold": 0.5, ...}`) and the device decodes its own engine's outputs the same
way. A decoder is `decode(outputs_of_one_frame, score_threshold) -> Detections` with boxes (x, y, w, h) in
normalised model-input coordinates.

Lookup order: decoders registered here (`register_decoder`), then the postprocessing package
(`agent.vision.postprocess`), which owns the real decoders.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np

from agent.gate.metrics import Detections
from agent.gate.thresholds import GateError
from agent.gate.validation import Decoder

DecoderFactory = Callable[[Mapping[str, Any]], Decoder]
_REGISTRY: Dict[str, DecoderFactory] = {}


def register_decoder(kind: str, factory: DecoderFactory) -> None:
    """Make `kind` resolvable: factory(config) -> decoder."""
    _REGISTRY[kind] = factory


def _from_postprocess(kind: str, config: Mapping[str, Any]) -> Optional[Decoder]:
    """The postprocessing package's decoder for `kind`, adapted to the gate's signature, if it has one."""
    try:
        module = importlib.import_module("agent.vision.postprocess")
    except ImportError:
        return None
    factory = getattr(module, "gate_decoder", None)
    if callable(factory):
        decoder = factory(dict(config))
        return decoder if callable(decoder) else None
    return None


def resolve_decoder(config: Mapping[str, Any]) -> Decoder:
    kind = str(config.get("kind") or config.get("type") or "")
    if not kind:
        raise GateError(f"decoder config has no 'kind': {dict(config)}")
    if kind in _REGISTRY:
        return _REGISTRY[kind](config)
    decoder = _from_postprocess(kind, config)
    if decoder is not None:
        return decoder
    raise GateError(
        f"no box decoder of kind {kind!r} on this agent: a detection gate needs one "
        f"(registered: {sorted(_REGISTRY) or 'none'}; agent.vision.postprocess offers none for it)"
    )


def detections_from_arrays(boxes: Any, scores: Any) -> Detections:
    """Plain arrays -> Detections (for decoders written against numpy only)."""
    return Detections.of(np.asarray(boxes, np.float32), np.asarray(scores, np.float32))
