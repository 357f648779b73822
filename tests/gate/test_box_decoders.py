"""The gate's box decoders: the postprocessing plugins, with boxes normalised to the model input."""

from __future__ import annotations

import numpy as np
import pytest

from agent.gate.box_decoders import resolve_decoder
from agent.gate.thresholds import GateError
from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.vision.preprocess import prepare, spec_from
from tests.helpers import testdata as shared_file

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


def test_blazeface_decoder_gives_normalised_boxes() -> None:
    decode = resolve_decoder({"kind": "blazeface", "score_threshold": 0.5})
    image = cv2.imread(str(shared_file("images", "astronaut.png")))
    tensor, _ = prepare(image, spec_from({"preset": "blazeface", "size": [192, 192]}))
    with OnnxRuntimeRunner(shared_file("models", "blazeface_full_range.onnx")) as runner:
        outputs = {k: v[0] for k, v in runner.infer({"input": tensor[None]}).items()}
    detections = decode(outputs, 0.5)
    assert len(detections) == 1
    np.testing.assert_allclose(detections.boxes[0], np.array([173, 68, 107, 107]) / 512, atol=0.01)


def test_a_kind_without_boxes_is_refused() -> None:
    with pytest.raises(GateError, match="no box decoder of kind 'classification'"):
        resolve_decoder({"kind": "classification"})
    with pytest.raises(GateError, match="has no 'kind'"):
        resolve_decoder({})
