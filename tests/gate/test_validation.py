"""The validation set artifact: made from frames, stored small, read back exactly."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent.gate.thresholds import GateError
from agent.gate.validation import (
    ValidationFileError,
    load_validation,
    make_validation,
    make_validation_from_tensors,
)
from agent.store.hashing import sha256_file
from agent.vision.preprocess import prepare, spec_from


def test_set_holds_inputs_references_and_metadata(tiny_validation, tiny_model_path):
    meta = tiny_validation.meta
    assert tiny_validation.task == "classification"  # one [N, C] output
    assert tiny_validation.count == 12
    assert meta["model"]["sha256"] == sha256_file(tiny_model_path)
    assert meta["preprocess"]["size"] == [16, 16]
    assert tiny_validation.output_names == ["logits"]
    assert tiny_validation.inputs["input"].shape == (12, 3, 16, 16)
    assert tiny_validation.references["logits"].shape == (12, 6)
    assert meta["created"].endswith("+00:00")
    assert tiny_validation.frame_names[0] == "drawn_0.png"


def test_stored_frames_rebuild_exactly_the_tensors_prepare_makes(tiny_validation, tiny_frames, tiny_spec):
    spec = spec_from(tiny_spec)
    expected = np.stack([prepare(frame, spec)[0] for frame in tiny_frames])
    assert tiny_validation.arrays["input.input"].dtype == np.uint8  # stored before normalisation
    assert np.array_equal(tiny_validation.inputs["input"], expected)


def test_file_round_trip_is_exact(tiny_validation, tmp_path):
    path = tmp_path / "v.npz"
    digest = tiny_validation.save(path)
    loaded = load_validation(path)
    assert loaded.sha256 == digest == sha256_file(path)
    assert loaded.meta == tiny_validation.meta
    assert np.array_equal(loaded.inputs["input"], tiny_validation.inputs["input"])
    assert np.array_equal(loaded.references["logits"], tiny_validation.references["logits"])


def test_references_are_the_fp32_outputs(tiny_validation, tiny_model_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": tiny_validation.inputs["input"]})
    assert np.allclose(tiny_validation.references["logits"], logits, atol=1e-5)


def test_n_limits_the_frames(tiny_model_path, tiny_frames, tiny_spec):
    validation = make_validation(tiny_model_path, iter(tiny_frames), n=3, preprocess=tiny_spec, labels=[0, 1, -1])
    assert validation.count == 3
    assert validation.labels.tolist() == [0, 1, -1]


def test_real_photos_at_224_cost_about_a_hundred_kilobytes_a_frame(effnet_validation):
    # uint8 before normalisation, deflated: 16 photos ~1.8 MB, so -n 64 ~7 MB and -n 32 ~3.5 MB
    size = len(effnet_validation.to_bytes())
    assert size < 2_500_000
    assert effnet_validation.arrays["input.input"].dtype == np.uint8


def test_preprocessing_that_does_not_fit_the_model_is_refused(tiny_model_path, tiny_frames):
    with pytest.raises(GateError, match="preprocessing makes"):
        make_validation(tiny_model_path, iter(tiny_frames), n=2, preprocess={"size": [32, 32]})


def test_detection_without_decoder_config_is_refused(tiny_model_path, tiny_frames, tiny_spec):
    with pytest.raises(GateError, match="decoder config"):
        make_validation(tiny_model_path, iter(tiny_frames), n=2, preprocess=tiny_spec, task="detection")


def test_no_frames_is_an_error(tiny_model_path, tiny_spec):
    with pytest.raises(GateError, match="no frames"):
        make_validation(tiny_model_path, iter([]), n=2, preprocess=tiny_spec)


def test_sets_from_tensors_for_models_without_frames(tiny_model_path):
    inputs = {"input": np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)}
    validation = make_validation_from_tensors(tiny_model_path, inputs)
    loaded = load_validation(validation.to_bytes())
    assert loaded.task == "generic"
    assert loaded.inputs["input"].dtype == np.float32
    assert np.allclose(loaded.inputs["input"], inputs["input"], atol=2e-3)  # stored as float16


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "not a validation set"),
        (lambda data: b"hello", "not a validation set"),
    ],
)
def test_damaged_files_give_a_clear_error(tiny_validation, tmp_path, damage, message):
    path = tmp_path / "bad.npz"
    path.write_bytes(damage(tiny_validation.to_bytes()))
    with pytest.raises(ValidationFileError, match=message):
        load_validation(path)


def _rewrite_meta(data: bytes, change) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_other_formats_and_newer_versions_are_refused(tiny_validation):
    data = tiny_validation.to_bytes()
    with pytest.raises(ValidationFileError, match="format"):
        load_validation(_rewrite_meta(data, lambda m: m.update(format="something-else")))
    with pytest.raises(ValidationFileError, match="upgrade the agent"):
        load_validation(_rewrite_meta(data, lambda m: m.update(version=99)))
    with pytest.raises(ValidationFileError, match="frames"):
        load_validation(_rewrite_meta(data, lambda m: m.update(count=5)))


def test_missing_file_and_plain_zip_are_refused(tmp_path):
    with pytest.raises(ValidationFileError, match="cannot read"):
        load_validation(tmp_path / "absent.npz")
    plain = tmp_path / "plain.npz"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("x.txt", "hi")
    with pytest.raises(ValidationFileError):
        load_validation(Path(plain))


def test_near_tie_frames_are_listed(effnet_validation):
    ties = effnet_validation.near_tie_frames()
    assert "grass.png" in ties  # daisy 0.06, baseball 0.06: no class stands out
    assert "coffee.png" not in ties  # espresso 0.95
    assert effnet_validation.summary()["near_tie_frames"] == ties
