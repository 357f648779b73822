"""Fixtures of the gate tests: validation sets made once per session, the real EfficientNet-Lite0 INT8 builds
(converted at most twice a session: the good table and a corrupted one), and a BlazeFace decoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

from agent.calib import qdq as qdq_module
from agent.calib import table as table_module
from agent.gate.box_decoders import resolve_decoder
from agent.gate.validation import ValidationSet, make_validation
from tests.helpers import EFFNET_TABLE, drawn_frames, testdata, tiny_classifier_onnx

VALIDATION_FRAMES = 16
ZEROED = ("conv_11", "relu6_17", "conv_14")  # set to 0 in the corrupted table (besides dividing all by 100)


def blazeface_decoder() -> Any:
    """The agent's BlazeFace box decoder for the gate (the postprocessing plugin, normalised)."""
    return resolve_decoder({"kind": "blazeface", "score_threshold": 0.5})


# tiny model -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_classifier_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx", num_classes=6, size=16)


@pytest.fixture(scope="session")
def tiny_frames() -> List[np.ndarray]:
    return drawn_frames(12, 64, 48)


@pytest.fixture(scope="session")
def tiny_spec() -> Dict[str, Any]:
    return {"size": [16, 16], "resize": "stretch", "color": "rgb", "scale": 1 / 127.5, "offset": -1.0}


@pytest.fixture(scope="session")
def tiny_validation(tiny_model_path: Path, tiny_frames: List[np.ndarray], tiny_spec: Dict[str, Any]) -> ValidationSet:
    names = [f"drawn_{i}.png" for i in range(len(tiny_frames))]
    return make_validation(tiny_model_path, iter(tiny_frames), n=len(tiny_frames), preprocess=tiny_spec, frame_names=names)


def perturbed_copy(model_path: Path, out: Path, initializer: str, noise: float, seed: int = 1) -> Path:
    """A real ONNX model with one weight tensor disturbed: a degraded 'engine' run by the real runner."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    for index, init in enumerate(model.graph.initializer):
        if init.name == initializer:
            weights = numpy_helper.to_array(init).astype(np.float32)
            rng = np.random.default_rng(seed)
            changed = weights + rng.normal(0, noise * (float(np.abs(weights).max()) or 1.0), weights.shape).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(changed, initializer))
            break
    else:
        raise KeyError(initializer)
    onnx.save(model, str(out))
    return out


# EfficientNet-Lite0 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def effnet_path() -> Path:
    return testdata("models", "efficientnet_lite0.onnx")


@pytest.fixture(scope="session")
def effnet_validation(effnet_path: Path) -> ValidationSet:
    from agent.vision.framesets import collect_frames

    frames = collect_frames([testdata("images")], VALIDATION_FRAMES)
    return make_validation(
        effnet_path, (f for _, f in frames), n=VALIDATION_FRAMES, preprocess="efficientnet_lite", frame_names=[n for n, _ in frames]
    )


@pytest.fixture(scope="session")
def effnet_table() -> Any:
    """The table the project ships for EfficientNet-Lite0 (calibtables/), calibrated on frames outside the photos."""
    return table_module.read_table(EFFNET_TABLE)


@pytest.fixture(scope="session")
def corrupted_table(effnet_table: Any) -> Any:
    """Every scale divided by 100, and a few set to 0."""
    entries = {name: scale / 100.0 for name, scale in effnet_table.entries.items()}
    for name in ZEROED:
        assert name in entries
        entries[name] = 0.0
    return dataclasses.replace(effnet_table, entries=entries)


def _qdq(model_path: Path, table: Any, out: Path) -> Path:
    import onnx

    result = qdq_module.to_qdq(onnx.load(str(model_path)), table, "tensorrt")
    onnx.save(result.model, str(out))
    return out


@pytest.fixture(scope="session")
def effnet_int8_good(effnet_path: Path, effnet_table: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _qdq(effnet_path, effnet_table, tmp_path_factory.mktemp("int8") / "effnet_int8_good.onnx")


@pytest.fixture(scope="session")
def effnet_int8_corrupted(effnet_path: Path, corrupted_table: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _qdq(effnet_path, corrupted_table, tmp_path_factory.mktemp("int8") / "effnet_int8_corrupted.onnx")


@pytest.fixture(scope="session")
def corrupted_gate(effnet_int8_corrupted: Path, effnet_validation: ValidationSet, corrupted_table: Any, effnet_path: Path) -> Any:
    """The gate on the corrupted INT8 build, culprit search included (run once, asserted by several tests)."""
    from agent.gate.gate import run_gate
    from agent.gate.thresholds import GateThresholds
    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return run_gate(
        OnnxRuntimeRunner(effnet_int8_corrupted),
        effnet_validation,
        GateThresholds(fallback="fp16_layers"),
        corrupted_table,
        reference_model=effnet_path,
        candidate_model=effnet_int8_corrupted,
        diagnose_frames=2,
    )


# BlazeFace --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def blazeface_path() -> Path:
    return testdata("models", "blazeface_full_range.onnx")


BLAZEFACE_PREPROCESS = {"preset": "blazeface", "size": [192, 192]}
BLAZEFACE_DECODER = {"kind": "blazeface", "score_threshold": 0.5, "nms_threshold": 0.3}


@pytest.fixture(scope="session")
def blazeface_frames() -> List[Tuple[str, np.ndarray]]:
    from agent.vision.framesets import collect_frames

    photos = collect_frames([testdata("images", "astronaut.png"), testdata("images", "camera.png")], 2)
    return photos + collect_frames([testdata("video", "faces.avi")], VALIDATION_FRAMES - len(photos))


@pytest.fixture(scope="session")
def blazeface_validation(blazeface_path: Path, blazeface_frames: List[Tuple[str, np.ndarray]]) -> ValidationSet:
    return make_validation(
        blazeface_path,
        (f for _, f in blazeface_frames),
        n=VALIDATION_FRAMES,
        preprocess=BLAZEFACE_PREPROCESS,
        decoder=blazeface_decoder(),
        decoder_config=BLAZEFACE_DECODER,
        frame_names=[n for n, _ in blazeface_frames],
    )
