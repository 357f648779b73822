"""The validation set artifact: a few frames, the FP32 reference outputs for them, and what made them.

One `.npz` file (zip, deflated, no pickles):
- `meta`: UTF-8 JSON as a uint8 array (format, version, task, model sha256, preprocessing, inputs, outputs,
  decoder, frame names, created);
- `input.<name>`: the frames as the model sees them *before normalisation*: uint8 [N, H, W, C] after colour
  conversion, resize and crop, plus the preprocessing spec in `meta`. This is half the bytes of float16 and
  lossless: `normalise()` is the same affine float32 step the camera pipeline runs, so the device rebuilds
  exactly the float32 tensors the reference saw. (Sets made from raw tensors store float16 or float32.)
- `ref.<output>`: the FP32 reference outputs [N, ...] (float32, float16 when over RAW_BUDGET; a detection set
  may leave them out, since its metric works on boxes);
- `det.boxes` [M, 4] (x, y, w, h in normalised model-input coordinates), `det.scores` [M], `det.frame` [M]:
  the reference detections of a detection set;
- `labels` [N] int64 (optional, -1 unknown): ground truth, used only to say when a candidate is *better*.

Size: 64 frames at 224x224 are about 6 MB compressed, 16 about 1.5 MB.
"""

from __future__ import annotations

import datetime
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import msgspec

from agent.gate.box_decoders import Decoder, resolve_decoder
from agent.gate.metrics import NEAR_TIE_MARGIN, Detections, to_probabilities
from agent.gate.onnx_reference import ReferenceSession
from agent.gate.thresholds import TASKS, GateError
from agent.lazy import deferred
from agent.runtime.onnxruntime_runner import numpy_dtype_of
from agent.store.atomic import atomic_write_bytes
from agent.store.hashing import sha256_bytes, sha256_file
from agent.vision.preprocess import PreprocessSpec, normalise, prepare, spec_from

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

FORMAT = "edge-agent-validation"
VERSION = 1
RAW_BUDGET = 4 << 20  # bytes of raw reference outputs kept as float32; above, float16; detection: dropped

# decode(outputs of one frame, with the batch axis, score_threshold) -> detections in normalised input coords


class ValidationFileError(GateError):
    """A validation set file is unreadable, of another format, or inconsistent."""


@dataclass
class ValidationSet:
    meta: Dict[str, Any]
    arrays: Dict[str, np.ndarray]  # exactly the stored npz members except `meta`
    sha256: str = ""  # of the file it was read from (or written to)
    _inputs: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)

    # what it holds ----------------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def model_sha256(self) -> str:
        return str(self.meta["model"]["sha256"])

    @property
    def input_names(self) -> List[str]:
        return [str(spec["name"]) for spec in self.meta["inputs"]]

    @property
    def output_names(self) -> List[str]:
        return [str(spec["name"]) for spec in self.meta["outputs"]]

    @property
    def primary_output(self) -> str:
        return str(self.meta.get("primary_output") or self.output_names[0])

    @property
    def preprocess(self) -> Optional[PreprocessSpec]:
        data = self.meta.get("preprocess")
        return spec_from(data) if data else None

    @property
    def decoder_config(self) -> Optional[Dict[str, Any]]:
        data = self.meta.get("decoder")
        return dict(data) if data else None

    @property
    def frame_names(self) -> List[str]:
        names = self.meta.get("frames") or []
        return [str(n) for n in names] if len(names) == self.count else [f"frame {i}" for i in range(self.count)]

    @property
    def inputs(self) -> Dict[str, np.ndarray]:
        """Model-ready input tensors with the batch axis, rebuilt from what is stored."""
        if self._inputs is None:
            decoded: Dict[str, np.ndarray] = {}
            for spec in self.meta["inputs"]:
                stored = self.arrays[f"input.{spec['name']}"]
                if spec["encoding"] == "uint8_image":
                    decoded[spec["name"]] = np.stack([model_tensor(image, self.preprocess or PreprocessSpec()) for image in stored])
                else:
                    decoded[spec["name"]] = stored.astype(np.dtype(spec.get("dtype", "float32")), copy=False)
            self._inputs = decoded
        return self._inputs

    @property
    def references(self) -> Dict[str, np.ndarray]:
        """The stored FP32 reference outputs (as float32), by output name; may lack outputs of a detection set."""
        return {name: self.arrays[f"ref.{name}"].astype(np.float32, copy=False) for name in self.output_names if f"ref.{name}" in self.arrays}

    @property
    def detections(self) -> Optional[List[Detections]]:
        if "det.boxes" not in self.arrays:
            return None
        frames = self.arrays["det.frame"]
        return [Detections.of(self.arrays["det.boxes"][frames == i], self.arrays["det.scores"][frames == i]) for i in range(self.count)]

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.arrays.get("labels")

    # files ------------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        members = dict(self.arrays)
        members["meta"] = np.frombuffer(json.dumps(self.meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        np.savez_compressed(buffer, **members)  # type: ignore[arg-type]  # numpy's stub types the kwargs as bool
        return buffer.getvalue()

    def save(self, path: Union[str, Path]) -> str:
        """Write atomically; returns (and remembers) the file's sha256."""
        data = self.to_bytes()
        atomic_write_bytes(path, data)
        self.sha256 = sha256_bytes(data)
        return self.sha256

    def near_tie_frames(self) -> List[str]:
        """Classification: frames whose reference top-1 and top-2 are within NEAR_TIE_MARGIN (any precision
        change may flip them; a set full of them measures noise, so pick frames the model is sure about)."""
        scores = self.references.get(self.primary_output)
        if self.task != "classification" or scores is None or scores.ndim != 2 or scores.shape[1] < 2:
            return []
        top2 = np.sort(to_probabilities(scores), axis=1)[:, -2:]
        names = self.frame_names
        return [names[i] for i in np.nonzero(top2[:, 1] - top2[:, 0] < NEAR_TIE_MARGIN)[0]]

    def summary(self) -> Dict[str, Any]:
        boxes = self.arrays.get("det.boxes")
        return {
            "task": self.task,
            "frames": self.count,
            "model_sha256": self.model_sha256,
            "inputs": self.meta["inputs"],
            "outputs": [o["name"] for o in self.meta["outputs"]],
            "reference_outputs": sorted(self.references),
            "reference_boxes": None if boxes is None else len(boxes),
            "labels": self.labels is not None,
            "near_tie_frames": self.near_tie_frames(),
            "preprocess": self.meta.get("preprocess"),
            "decoder": self.decoder_config,
            "created": self.meta.get("created"),
            "sha256": self.sha256,
        }


def model_tensor(image_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """A stored uint8 image (after resize) -> the model input tensor without the batch axis, as `prepare` does."""
    tensor = normalise(image_hwc, spec)
    if spec.layout == "nchw":
        tensor = np.ascontiguousarray(tensor.transpose(2, 0, 1))
    return tensor


def resized_image(frame_bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The uint8 [H, W, C] image `prepare` builds before it normalises (colour, resize, crop, letterbox)."""
    image, _ = prepare(frame_bgr, msgspec.structs.replace(spec, dtype="uint8", layout="nhwc"))
    return np.asarray(image, dtype=np.uint8)


def load_validation(source: Union[str, Path, bytes]) -> ValidationSet:
    """Read a validation set from a path or bytes, checking its format and consistency."""
    where = "validation set" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise ValidationFileError(f"cannot read validation set {where}: {exc.strerror or exc}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValidationFileError(f"{where} is not a validation set (.npz): {exc}") from None
    if "meta" not in arrays:
        raise ValidationFileError(f"{where} has no 'meta' member: not made by `edge-agent fleet make-validation`")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFileError(f"{where}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValidationFileError(f"{where}: format is {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise ValidationFileError(f"{where}: version {meta.get('version')} is newer than this agent reads ({VERSION}); upgrade the agent")
    validation = ValidationSet(meta, arrays, sha256_bytes(data))
    _check_consistent(validation, where)
    return validation


def _check_consistent(validation: ValidationSet, where: str) -> None:
    meta = validation.meta
    for key in ("task", "count", "model", "inputs", "outputs"):
        if key not in meta:
            raise ValidationFileError(f"{where}: metadata lacks '{key}'")
    if meta["task"] not in TASKS:
        raise ValidationFileError(f"{where}: task {meta['task']!r} is not one of {TASKS}")
    count = validation.count
    for spec in meta["inputs"]:
        member = f"input.{spec.get('name')}"
        if member not in validation.arrays:
            raise ValidationFileError(f"{where}: input '{spec.get('name')}' is missing")
        if len(validation.arrays[member]) != count:
            raise ValidationFileError(f"{where}: input '{spec.get('name')}' has {len(validation.arrays[member])} frames, metadata says {count}")
    for name, array in validation.arrays.items():
        if name.startswith("ref.") and len(array) != count:
            raise ValidationFileError(f"{where}: reference '{name[4:]}' has {len(array)} frames, metadata says {count}")
    if meta["task"] == "detection":
        if "det.boxes" not in validation.arrays or not meta.get("decoder"):
            raise ValidationFileError(f"{where}: a detection set needs reference boxes and a decoder config")
        boxes, scores, frames = (validation.arrays[k] for k in ("det.boxes", "det.scores", "det.frame"))
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(scores) != len(boxes) or len(frames) != len(boxes):
            raise ValidationFileError(f"{where}: reference boxes are malformed")
    elif not validation.references:
        raise ValidationFileError(f"{where}: no reference outputs")
    labels = validation.labels
    if labels is not None and len(labels) != count:
        raise ValidationFileError(f"{where}: {len(labels)} labels for {count} frames")


def read_validation_file(path: Union[str, Path]) -> ValidationSet:
    return load_validation(Path(path))


# making one -------------------------------------------------------------------------------------------------


def _guess_task(output_shapes: Sequence[Sequence[Any]]) -> str:
    if len(output_shapes) == 1 and len(output_shapes[0]) == 2:
        classes = output_shapes[0][1]
        if not isinstance(classes, int) or classes >= 2:
            return "classification"
    return "generic"


def _check_input_fits(shape: Sequence[Any], spec: PreprocessSpec, name: str) -> None:
    if len(shape) != 4:
        raise GateError(f"input '{name}' has shape {list(shape)}: frames fit only a 4-D image input; give tensors instead")
    dims = shape[2:4] if spec.layout == "nchw" else shape[1:3]
    channels = shape[1] if spec.layout == "nchw" else shape[3]
    want_channels = 1 if spec.color == "gray" else 3
    fixed = [d for d in dims if isinstance(d, int) and d > 0]
    if len(fixed) == 2 and tuple(fixed) != tuple(spec.size):
        raise GateError(f"input '{name}' takes {list(shape)} but the preprocessing makes {list(spec.size)} ({spec.layout}); fix --preprocess")
    if isinstance(channels, int) and channels > 0 and channels != want_channels:
        raise GateError(f"input '{name}' takes {channels} channels in {spec.layout} layout but the preprocessing makes {want_channels}")


def _meta(
    model_path: Union[str, Path],
    task: str,
    count: int,
    references: Mapping[str, np.ndarray],  # in the model's output order: the first is the primary output
    inputs: List[Dict[str, Any]],
    preprocess: Optional[Dict[str, Any]] = None,
    frames: Optional[List[str]] = None,
    decoder: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "task": task,
        "count": count,
        "model": {"sha256": sha256_file(model_path), "name": Path(model_path).name},
        "preprocess": preprocess,
        "inputs": inputs,
        "outputs": [{"name": name, "shape": list(ref.shape)} for name, ref in references.items()],
        "primary_output": next(iter(references)),
        "reference_dtype": "float32",
        "frames": frames,
        "decoder": decoder,
    }


def make_validation(
    model_path: Union[str, Path],
    frames: Iterable[np.ndarray],
    n: int = 64,
    preprocess: Any = None,
    task: Optional[str] = None,
    decoder: Optional[Decoder] = None,
    decoder_config: Optional[Mapping[str, Any]] = None,
    labels: Optional[Sequence[int]] = None,
    frame_names: Optional[Sequence[str]] = None,
    threads: int = 0,
) -> ValidationSet:
    """Preprocess up to `n` BGR frames, run the FP32 model on onnxruntime, and keep inputs + reference outputs.

    `preprocess`: a PreprocessSpec, preset name or dict. `task`: classification | detection | generic (None:
    classification when the model has one [N, C] output, else generic). A detection set needs `decoder_config`
    (stored, with its `score_threshold`, so the device decodes the same way) and a `decoder` (else it is
    resolved from the config)."""
    if n <= 0:
        raise GateError(f"need at least one frame, asked for {n}")
    spec = spec_from(preprocess)
    session = ReferenceSession(model_path, threads=threads)
    if len(session.input_names) != 1:
        raise GateError(f"model has {len(session.input_names)} inputs ({session.input_names}); frames fit a single image input")
    input_name = session.input_names[0]
    _check_input_fits(session.input_shapes[0], spec, input_name)
    input_dtype = numpy_dtype_of(session.input_types[0])
    if task is None:
        task = "detection" if decoder_config is not None else _guess_task(session.output_shapes)
    if task not in TASKS:
        raise GateError(f"task: one of {TASKS}, got {task!r}")
    threshold = 0.5
    if task == "detection":
        if decoder_config is None:
            raise GateError("a detection validation set needs a decoder config (for example {'kind': 'blazeface', 'score_threshold': 0.5})")
        decoder_config = dict(decoder_config)
        threshold = float(decoder_config.setdefault("score_threshold", 0.5))
        decoder = decoder or resolve_decoder(decoder_config)

    images: List[np.ndarray] = []
    outputs: Dict[str, List[np.ndarray]] = {name: [] for name in session.output_names}
    for frame in frames:
        if len(images) >= n:
            break
        image = resized_image(frame, spec)
        tensor = model_tensor(image, spec).astype(input_dtype, copy=False)
        result = session.run({input_name: tensor[None]})
        for name in session.output_names:
            outputs[name].append(result[name][0])
        images.append(image)
    if not images:
        raise GateError("no frames: the source gave none")
    count = len(images)
    references = {name: np.stack(values).astype(np.float32) for name, values in outputs.items()}

    arrays: Dict[str, np.ndarray] = {f"input.{input_name}": np.stack(images)}
    meta = _meta(
        model_path,
        task,
        count,
        references,
        inputs=[{"name": input_name, "encoding": "uint8_image", "dtype": input_dtype, "shape": [count, *model_tensor(images[0], spec).shape]}],
        preprocess=spec.to_dict(),
        frames=[str(name) for name in frame_names[:count]] if frame_names is not None and len(frame_names) >= count else None,
        decoder=dict(decoder_config) if task == "detection" and decoder_config is not None else None,
    )
    raw_bytes = sum(ref.size for ref in references.values()) * 4
    keep_raw = True
    if raw_bytes > RAW_BUDGET:
        meta["reference_dtype"] = "float16"
        keep_raw = task != "detection" or raw_bytes // 2 <= RAW_BUDGET
    if keep_raw:
        for name, ref in references.items():
            arrays[f"ref.{name}"] = ref.astype(np.float16) if meta["reference_dtype"] == "float16" else ref
    else:
        meta["reference_dtype"] = None  # detection only: the boxes are the reference
    if task == "detection":
        assert decoder is not None
        boxes, scores, frame_index = [], [], []
        for i in range(count):
            found = decoder({name: references[name][i : i + 1] for name in references}, threshold)
            boxes.append(found.boxes.reshape(-1, 4))
            scores.append(found.scores.reshape(-1))
            frame_index.append(np.full(len(found), i, np.int32))
        arrays["det.boxes"] = np.concatenate(boxes).astype(np.float32)
        arrays["det.scores"] = np.concatenate(scores).astype(np.float32)
        arrays["det.frame"] = np.concatenate(frame_index)
        if len(arrays["det.boxes"]) == 0:
            raise GateError(
                f"the reference model finds nothing in these {count} frames at score threshold {threshold}: "
                "a detection set needs frames with objects in them"
            )
    if labels is not None:
        label_array = np.asarray(list(labels)[:count], dtype=np.int64)
        if len(label_array) != count:
            raise GateError(f"{len(label_array)} labels for {count} frames")
        arrays["labels"] = label_array
    validation = ValidationSet(meta, arrays)
    validation.sha256 = sha256_bytes(validation.to_bytes())
    return validation


def make_validation_from_tensors(
    model_path: Union[str, Path], inputs: Mapping[str, np.ndarray], task: str = "generic", labels: Optional[Sequence[int]] = None, store_dtype: str = "float16", threads: int = 0
) -> ValidationSet:
    """For models that do not take camera frames: inputs given as tensors [N, ...] per input name."""
    if task == "detection":
        raise GateError("a detection set is made from frames (make_validation), so the boxes have a decoder config")
    if task not in TASKS:
        raise GateError(f"task: one of {TASKS}, got {task!r}")
    if store_dtype not in ("float16", "float32"):
        raise GateError(f"store_dtype: float16 or float32, got {store_dtype!r}")
    session = ReferenceSession(model_path, threads=threads)
    missing = sorted(set(session.input_names) - set(inputs))
    if missing:
        raise GateError(f"inputs missing for {missing}")
    counts = {len(inputs[name]) for name in session.input_names}
    if len(counts) != 1:
        raise GateError(f"every input needs the same number of samples, got {sorted(counts)}")
    count = counts.pop()
    stored = {name: np.asarray(inputs[name]).astype(store_dtype) if np.asarray(inputs[name]).dtype.kind == "f" else np.asarray(inputs[name]) for name in session.input_names}
    outputs: Dict[str, List[np.ndarray]] = {name: [] for name in session.output_names}
    for i in range(count):
        feed = {name: stored[name][i : i + 1].astype(np.asarray(inputs[name]).dtype) for name in session.input_names}
        result = session.run(feed)
        for name in session.output_names:
            outputs[name].append(result[name][0])
    arrays: Dict[str, np.ndarray] = {f"input.{name}": stored[name] for name in session.input_names}
    references = {name: np.stack(values).astype(np.float32) for name, values in outputs.items()}
    arrays.update({f"ref.{name}": ref for name, ref in references.items()})
    if labels is not None:
        arrays["labels"] = np.asarray(list(labels), dtype=np.int64)
    meta = _meta(
        model_path,
        task,
        count,
        references,
        inputs=[{"name": name, "encoding": "raw", "dtype": str(np.asarray(inputs[name]).dtype), "shape": list(stored[name].shape)} for name in session.input_names],
    )
    validation = ValidationSet(meta, arrays)
    validation.sha256 = sha256_bytes(validation.to_bytes())
    return validation
