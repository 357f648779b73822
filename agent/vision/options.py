"""What a deployment says about its cameras, preprocessing and postprocessing, as models (agent.models):
`SourceOptions`, `PreprocessSpec` (with its presets and `spec_from`), and each postprocessing plugin's config,
tagged on `type` (`PostprocessConfig`, read with `parse_config`).

They live here, apart from the code that uses them (agent.vision.sources, .preprocess, .postprocess.*), so that
a deployment is parsed without numpy or OpenCV: the idle agent reads its desired state and stays small. A new
postprocessing plugin adds its config Struct here, to `PostprocessConfig`, and its module to
agent.vision.postprocess.PLUGIN_MODULES.
"""

from __future__ import annotations

from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Type, Union

from msgspec.structs import astuple

from agent.errors import AgentError
from agent.models import Annotated, FrozenModel, Meta, parse


# sources --------------------------------------------------------------------------------------------------
class SourceOptions(FrozenModel, frozen=True, kw_only=True, omit_defaults=True):
    """What a deployment may say about a source; every field has a default that works. Parse a document with
    `agent.models.parse(SourceOptions, data, error=SourceError, root="camera_options")`."""

    width: Annotated[int, Meta(ge=0)] = 0  # 0: the source's own
    height: Annotated[int, Meta(ge=0)] = 0
    fps: Annotated[float, Meta(ge=0)] = 0.0  # cameras: requested rate; file/images with realtime: pacing rate (0: the file's own)
    format: str = ""  # v4l2 FOURCC such as MJPG, YUYV, H264
    loop: bool = True  # file/images: start again at the end
    realtime: bool = False  # file/images: pace like a camera (and drop frames); else as fast as possible
    sensor_mode: int = -1  # csi: nvarguscamerasrc sensor-mode (-1: automatic)
    flip: Annotated[int, Meta(ge=0, le=7)] = 0  # csi: nvvidconv flip-method (0..7)
    transport: Literal["tcp", "udp"] = "tcp"  # rtsp
    latency_ms: int = 0  # rtsp: jitter buffer; 0 keeps latency low
    codec: Literal["auto", "h264", "h265"] = "auto"  # rtsp with GStreamer: auto (decodebin)
    hw_decode: bool = False  # rtsp with GStreamer and a codec: Jetson's nvv4l2decoder
    backend: Literal["auto", "gstreamer", "ffmpeg", "v4l2", "any"] = "auto"  # force one OpenCV backend
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.format and len(self.format) != 4:
            raise ValueError(f"format: a 4-character FOURCC such as MJPG or YUYV, got {self.format!r}")


# preprocessing --------------------------------------------------------------------------------------------
class ResultsConfig(FrozenModel, frozen=True, kw_only=True, omit_defaults=True):
    """The deployment's `results` block: how often camera results are published."""

    min_interval_s: Annotated[float, Meta(ge=0)] = 0.0  # at most one result per source per interval (0: every frame)
    on_change: bool = False  # publish only when the top class or the set of detected labels changes
    heartbeat_s: Annotated[float, Meta(ge=0)] = 0.0  # with on_change: publish at least this often even without a change (0: never)
    max_detections: Annotated[int, Meta(ge=0)] = 50  # cap the message size
    max_classes: Annotated[int, Meta(ge=0)] = 5


class PreprocessError(AgentError):
    """The preprocessing spec is invalid or a frame cannot be prepared."""


class PreprocessSpec(FrozenModel, frozen=True, kw_only=True, omit_defaults=True):
    """The deployment's `preprocess` object (or a preset's). Build one from a document with `spec_from()`."""

    size: Tuple[int, int] = (224, 224)  # (height, width) the model takes; a single number in a document is square
    resize: Literal["stretch", "letterbox", "shorter_crop"] = "stretch"
    short_side: int = 0  # for shorter_crop: resize the shorter side to this, then centre-crop `size` (0: max(size))
    interpolation: Literal["nearest", "linear", "cubic", "area"] = "linear"
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    mean: Tuple[float, ...] = ()  # per channel on 0..255 values: (x - mean) / std; when empty, scale/offset apply
    std: Tuple[float, ...] = ()
    scale: float = 1.0 / 255.0  # used when mean/std are empty: x * scale + offset
    offset: float = 0.0
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    pad_value: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """Every field, defaults included (a preset's full description)."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in zip(self.__struct_fields__, astuple(self))}

    def __post_init__(self) -> None:
        if min(self.size) <= 0 or max(self.size) > 8192:
            raise ValueError(f"size: positive and at most 8192, got {list(self.size)}")
        channels = 1 if self.color == "gray" else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values and len(values) not in (1, channels):
                raise ValueError(f"{key}: 1 or {channels} values, got {len(values)}")
        if bool(self.mean) != bool(self.std):
            raise ValueError("mean: give preprocess.mean and preprocess.std both or neither")
        if self.std and any(s == 0 for s in self.std):
            raise ValueError("std: must not contain 0")


EFFICIENTNET_LITE = PreprocessSpec(
    size=(224, 224), resize="shorter_crop", short_side=256, interpolation="cubic", color="rgb", scale=1.0 / 128.0, offset=-127.0 / 128.0
)
BLAZEFACE = PreprocessSpec(size=(128, 128), resize="letterbox", color="rgb", scale=1.0 / 127.5, offset=-1.0)
PRESETS: Dict[str, PreprocessSpec] = {"efficientnet_lite": EFFICIENTNET_LITE, "blazeface": BLAZEFACE}


def spec_from(value: Optional[Any]) -> PreprocessSpec:
    """A spec from a preset name, a document (`{"preset": "blazeface", "size": 192}`: a preset with changes, or
    the fields themselves), or None (the default spec). Raises PreprocessError naming the key."""
    if value is None:
        return PreprocessSpec()
    if isinstance(value, PreprocessSpec):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise PreprocessError(f"preprocess: preset {value!r} unknown (known: {', '.join(sorted(PRESETS))})")
        return PRESETS[value]
    if not isinstance(value, Mapping):
        raise PreprocessError(f"preprocess: a preset name or an object, got {type(value).__name__}")
    data: Dict[str, Any] = dict(value)
    preset = data.pop("preset", None)
    if preset is not None:
        data = {**spec_from(str(preset)).to_dict(), **data}
    if isinstance(data.get("size"), int) and not isinstance(data["size"], bool):
        data["size"] = [data["size"], data["size"]]  # one number: a square input
    return parse(PreprocessSpec, data, error=PreprocessError, root="preprocess")


# postprocessing: one config per plugin, tagged on "type" -------------------------------------------------
class PostprocessError(AgentError):
    """A postprocessing config is invalid or the model's outputs do not fit the plugin."""


class ClassificationConfig(FrozenModel, frozen=True, kw_only=True, omit_defaults=True, tag_field="type", tag="classification"):
    top_k: Annotated[int, Meta(ge=1)] = 5
    labels: str = ""  # labels file, one a line ("" -> class indices as labels)
    short_labels: bool = True  # 'tabby, tabby cat' -> 'tabby'
    output: str = ""  # output tensor ("" -> the first)
    softmax: Literal["auto", "yes", "no"] = "auto"  # auto: unless the output already is a distribution
    min_score: float = 0.0
    label_offset: int = 0  # 1 for models with a background class at index 0 (1001 outputs)


class BlazeFaceConfig(FrozenModel, frozen=True, kw_only=True, omit_defaults=True, tag_field="type", tag="blazeface"):
    variant: Literal["auto", "short", "full"] = "auto"  # auto: by anchor count; else a key of postprocess.blazeface.VARIANTS
    score_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    nms_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.3
    max_detections: int = 50
    label: str = "face"
    regressors: str = ""  # output names; "" finds them by shape ([.., 16] and [.., 1])
    scores: str = ""
    keypoints: bool = False  # report the 6 keypoints (eyes, nose, mouth, ears)


class YoloConfig(FrozenModel, frozen=True, kw_only=True, omit_defaults=True, tag_field="type", tag="yolo"):
    layout: Literal["auto", "v5", "v8"] = "auto"
    score_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.25
    nms_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.45
    max_detections: int = 100
    labels: str = ""
    short_labels: bool = True
    output: str = ""  # "" -> the first output
    classes: int = 0  # number of classes, to tell layouts apart (0: from the labels file, else guessed)
    class_agnostic: bool = False  # one NMS over all classes instead of one per class
    normalized: bool = False  # boxes in 0..1 of the input instead of input pixels


# The type of a deployment's `postprocess`: every plugin's config.
PostprocessConfig = Union[ClassificationConfig, BlazeFaceConfig, YoloConfig]


def parse_config(data: Union[str, Mapping[str, Any]], *, error: Type[AgentError] = PostprocessError, root: str = "postprocess") -> Any:
    """A plugin key or a `{"type": KEY, ...options}` document -> that plugin's config Struct; `error` names the key."""
    document = {"type": data} if isinstance(data, str) else data
    return parse(PostprocessConfig, document, error=error, root=root)  # type: ignore[arg-type]
