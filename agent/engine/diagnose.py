"""TensorRT log lines -> verdicts a person (or the fleet) can act on, and a header sniff of plan bytes.

TensorRT reports an incompatible plan only through its logger (`deserialize_cuda_engine` returns None). The
classifier turns those lines into problems of one of these kinds:

    version_mismatch   plan built by another TensorRT ("expecting library version 8.2.3 got 8.2.1": runtime 8.2.3,
                       plan 8.2.1), or another serialization format ("Current Version: 205, Serialized Engine
                       Version: 213": the two tags)
    device_mismatch    plan built for another GPU ("expecting compute 7.2 got compute 8.7": runtime 7.2, plan 8.7),
                       or for another model of device (a warning)
    corrupt            not a plan this runtime can read at all: magic tag wrong (another file, a wrapped plan such as
                       Ultralytics' metadata header), or a header that reads as version 0.0.0 (truncated, text mode)
    dla                DLA build or execution problems, layer fallbacks to the GPU
    calibration        INT8 calibration cache rejected, missing scales
    no_implementation  the builder found no kernel (tactic) for a node
    unknown            an error line none of the above explains (a generic "deserialization failed" is folded into
                       the specific problem before it)

Wording is taken from ../shared/testdata/real/trt_error_messages.txt (TensorRT 5 to 11).
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

KINDS = ("version_mismatch", "device_mismatch", "corrupt", "dla", "calibration", "no_implementation", "unknown")

# Serialization tags ("Current Version: N" in version-tag errors) -> the TensorRT that writes them, as reported by
# users (NVIDIA/TensorRT#3073 and the sample file); a hint for people, never a verdict.
SERIALIZATION_TAGS: Dict[int, str] = {205: "8.2.1", 211: "8.0.1 (likely)", 213: "8.4.3", 232: "8.5.3", 239: "10.8 to 10.9", 240: "10.16", 243: "11.2"}

_VERSION = r"(\d+(?:\.\d+){1,3})"
_LIBRARY = re.compile(rf"expecting library version {_VERSION} got {_VERSION}", re.IGNORECASE)
_COMPUTE = re.compile(r"expecting compute (\d+\.\d+) got compute (\d+\.\d+)", re.IGNORECASE)
_TAGS = re.compile(r"Current Version:\s*(\d+),\s*Serialized Engine Version:\s*(\d+)", re.IGNORECASE)
_NODE = re.compile(r"Could not find any implementation for\s+node\s+(.+?)\.?\s*\)?\s*$", re.IGNORECASE)
_LAYER_QUOTED = re.compile(r"Layer '([^']+)'")
_LAYER_FALLBACK = re.compile(r"layer (.+?) is not supported on DLA", re.IGNORECASE)
# the start of a new log message: a '[...]' prefix, 'ERROR:', a glog 'E0915', an error code '6: ', a docker
# 'name  | ' prefix, 'Class::method', 'trt_infer: '
_MESSAGE_START = re.compile(r"^\s*(?:\[|[A-Z_]{4,}\b|[EWIF]\d{4}\s|\d+:\s|\S+\s+\|\s|[\w.]+::|\w+:\s)")
# error markers of TensorRT and the tools around it (case matters: prose saying "error" is not an error line)
_ERRORISH = re.compile(r"\[E\]|\bERROR\b|Error Code|\bError\[|INTERNAL_ERROR|INVALID_CONFIG|^\s*E\d{4}\s|\bassertion\b.*\bfailed\b|Assertion .* failed")
_GENERIC = re.compile(
    r"Engine deserialization failed|Got invalid engine|deserializeCudaEngine.*Error Code 4|engine->deserialize\(|"
    r"Assertion engine != nullptr failed|Engine could not be created|unable to load plan file|load failed for model",
    re.IGNORECASE,
)


@dataclass
class Problem:
    kind: str
    runtime: Optional[str]
    plan: Optional[str]
    line: str
    detail: str = ""
    severity: str = "error"  # "error" | "warning"
    layer: Optional[str] = None
    related: List[str] = field(default_factory=list)  # generic lines folded into this problem

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        if data["layer"] is None:
            del data["layer"]
        if not data["related"]:
            del data["related"]
        return data


def classify_line(line: str) -> Optional[Problem]:
    """One log line (wrapped lines joined) -> a Problem, or None when the line reports nothing wrong."""
    text = line.strip()
    if not text:
        return None
    match = _LIBRARY.search(text)
    if match:
        runtime, plan = match.group(1), match.group(2)
        if re.fullmatch(r"0(\.0)+", plan):
            return Problem("corrupt", runtime, plan, text, "the plan's header reads as version 0.0.0: the file is truncated, "
                           "corrupt, or was written in text mode; rebuild it")
        return Problem("version_mismatch", runtime, plan, text, f"plan built by TensorRT {plan}, this runtime is {runtime}: rebuild on this device")
    match = _COMPUTE.search(text)
    if match:
        return Problem("device_mismatch", match.group(1), match.group(2), text,
                       f"plan built for compute capability {match.group(2)}, this GPU is {match.group(1)}: rebuild on this device")
    if re.search(r"across different models of devices", text, re.IGNORECASE):
        return Problem("device_mismatch", None, None, text, "plan built on another model of device with the same GPU architecture: "
                       "it may load but run slower or fail; rebuild here", severity="warning")
    match = _TAGS.search(text)
    if match:
        runtime_tag, plan_tag = int(match.group(1)), int(match.group(2))
        hint = ", ".join(f"{tag} ~ TensorRT {SERIALIZATION_TAGS[tag]}" for tag in (runtime_tag, plan_tag) if tag in SERIALIZATION_TAGS)
        return Problem("version_mismatch", match.group(1), match.group(2), text,
                       "serialization format tags differ (runtime vs plan): the plan was built by another TensorRT"
                       + (f" (reported: {hint})" if hint else ""))
    if re.search(r"Version tag does not match|stdVersionRead\s*==|incompatible serialization version", text, re.IGNORECASE):
        return Problem("version_mismatch", None, None, text, "serialization format differs: the plan was built by another TensorRT "
                       "(or the safety runtime, another OS, or without version compatibility)")
    if re.search(r"Magic tag does not match|magicTag(?:Read)?\s*==|kPLAN_MAGIC_TAG", text, re.IGNORECASE):
        return Problem("corrupt", None, None, text, "not a TensorRT plan this runtime can read: another file, a plan wrapped with "
                       "metadata (Ultralytics), or a very different TensorRT; rebuild it here")
    calibration = _calibration(text)
    if calibration is not None:
        return calibration
    dla = _dla(text)
    if dla is not None:
        return dla
    match = _NODE.search(text)
    if match or re.search(r"Could not find any implementation", text, re.IGNORECASE):
        node = match.group(1).strip() if match else None
        return Problem("no_implementation", None, None, text,
                       "the builder found no kernel for this node: more workspace, another precision, or a model change is needed",
                       layer=node)
    if re.search(r"not compatible with this version of TensorRT", text, re.IGNORECASE):
        return Problem("version_mismatch", None, None, text, "plan built by another TensorRT")
    if re.search(r"truncated|unexpected end of file|Failed to read|size mismatch", text, re.IGNORECASE) and re.search(
        r"engine|plan|serializ", text, re.IGNORECASE
    ):
        return Problem("corrupt", None, None, text, "the plan file is truncated or unreadable")
    if _GENERIC.search(text):
        return Problem("unknown", None, None, text, "deserialization or build failed; the lines before it say why")
    if _ERRORISH.search(text):
        detail = "a CUDA runtime error (often a symptom of another problem, or of memory)" if "Cuda Runtime" in text else ""
        if "cannot be set if" in text:
            detail = "builder flags conflict (API usage error)"
        return Problem("unknown", None, None, text, detail)
    return None


def _calibration(text: str) -> Optional[Problem]:
    patterns = (
        (r"Calibration failure occurred with no scaling factors", "the calibration table was rejected and no calibration data was given"),
        (r"Missing scale and zero-point for tensor\s+(\S+)", "a tensor has no INT8 scale: its layer runs in higher precision"),
        (r"quantization data is missing", "INT8 scales missing: TensorRT used default quantization parameters"),
        (r"calibration (?:cache|table).*(?:incompatible|ignored|rejected|mismatch)", "the calibration cache was not used"),
        (r"(?:no|missing) (?:dynamic )?range for tensor\s+(\S+)", "a tensor has no dynamic range"),
    )
    for pattern, detail in patterns:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            layer = match.group(1).strip(",.'\"") if match.groups() else None
            severity = "error" if "failure" in pattern else "warning"
            return Problem("calibration", None, None, text, detail, severity=severity, layer=layer)
    return None


def _dla(text: str) -> Optional[Problem]:
    if not re.search(r"DLA|nvdla|NVMEDIA|forceToUseNvmIO|kDIRECT_IO", text, re.IGNORECASE):
        return None
    layer: Optional[str] = None
    for pattern in (_LAYER_QUOTED, _LAYER_FALLBACK):
        match = pattern.search(text)
        if match:
            layer = match.group(1)
            break
    if layer is None:
        match = re.search(r"(?:\]|^)\s*:?\s*([^\s:\[][^:\[]*?):\s+(?:\w+Layer|Concatenation|DLA cores|\w+ (?:on|for) DLA)", text)
        if match:
            layer = match.group(1).strip()
    fallback = bool(re.search(r"falling back to GPU|Switching (?:this layer's|.*) device type to GPU|Switching \.\.\. to GPU", text, re.IGNORECASE))
    if fallback:
        return Problem("dla", None, None, text, "layer falls back from DLA to the GPU", severity="warning", layer=layer)
    if re.search(r"not supported (?:for|on) DLA|Unsupported on DLA|do not support|requires at least", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "layer cannot run on DLA", severity="warning", layer=layer)
    if re.search(r"kDIRECT_IO|forceToUseNvmIO|isDLA", text):
        return Problem("dla", None, None, text, "strict DLA build impossible: some tensors need the GPU (allow GPU fallback, "
                       "or give DLA-native I/O formats)")
    if re.search(r"DLA Error in execute|registerTensorBuffer|NVMEDIA_DLA", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "DLA execution failed (tensor registration)")
    if re.search(r"no layer in the network can run on DLA", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "nothing in this network runs on DLA")
    if re.search(r"all dla layers are falling back|same min, max, and opt", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "DLA needs a fixed batch (min = opt = max): everything fell back to the GPU")
    if _ERRORISH.search(text) or re.search(r"\[W\]|WARNING", text):
        return Problem("dla", None, None, text, "", severity="error" if _ERRORISH.search(text) else "warning", layer=layer)
    return None


def join_wrapped(lines: List[str]) -> List[str]:
    """TensorRT messages printed over several lines (an opening '(' closed later, or a line that begins with '('
    or a lowercase continuation) become one line."""
    out: List[str] = []
    depth = 0
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            depth = 0
            continue
        wrapped = depth > 0 or line.lstrip().startswith("(") or re.match(r"^\s*node\s", line) is not None
        continues = bool(out) and wrapped and not _MESSAGE_START.match(line)
        if continues:
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
        depth = max(0, depth + line.count("(") - line.count(")"))
    return out


def diagnose_log(text: str) -> List[Problem]:
    """A whole TensorRT log -> the problems in it, in order. A generic failure line ("Engine deserialization
    failed") right after a specific problem is folded into it instead of standing alone."""
    problems: List[Problem] = []
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # comments in saved logs
    for line in join_wrapped(lines):
        problem = classify_line(line)
        if problem is None:
            continue
        previous = problems[-1] if problems else None
        if previous is not None and problem.kind == "unknown" and _GENERIC.search(problem.line) and previous.kind != "unknown":
            previous.related.append(problem.line.strip())
            continue
        if (
            previous is not None
            and previous.kind == problem.kind
            and problem.kind in ("version_mismatch", "device_mismatch", "corrupt")
            and previous.runtime is None
            and previous.plan is None
            and not previous.related
            and (problem.runtime is not None or problem.plan is not None)
            and not _MESSAGE_START.match(problem.line)
        ):  # the same message split over lines: keep the one with the versions
            problem.related = [previous.line.strip(), *previous.related, *problem.related]
            problems[-1] = problem
            continue
        problems.append(problem)
    return problems


# --- plan header sniff (a hint, never the verdict) -------------------------------------------------------------


@dataclass
class PlanHint:
    magic: Optional[str]  # "ptrt", "ftrt" or None
    hints: List[str] = field(default_factory=list)
    expected_bytes: List[int] = field(default_factory=list)  # file sizes the header's size fields suggest
    serialization_tag: Optional[int] = None
    looks_truncated: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def sniff_plan(head: bytes, file_size: Optional[int] = None) -> PlanHint:
    """Read the first bytes of a plan. Layouts seen (../shared/testdata/real/engine_headers_hex.txt; nothing is
    documented by NVIDIA): 'ptrt' + u32 0 + u32 tag + u32 0 + u64 (size - 24) at 16; 'ptrt' + u32 0x2b + ... +
    u64 (size - 24) at 16; 'ptrt' + u32 0x61 + u32 tag + u64 (size - 24) at 12; 'ftrt' + ... + u64 size at 16."""
    if len(head) < 4:
        return PlanHint(None, ["fewer than 4 bytes: empty or truncated file"], looks_truncated=True)
    magic = head[:4]
    if magic not in (b"ptrt", b"ftrt"):
        hint = "no 'ptrt'/'ftrt' magic: not a raw TensorRT plan"
        if len(head) >= 8:
            length = struct.unpack_from("<i", head, 0)[0]
            if 0 < length < 1 << 20 and head[4:5] == b"{":
                hint += " (looks like a plan wrapped with a JSON metadata header, as Ultralytics writes)"
        return PlanHint(None, [hint])
    out = PlanHint(magic.decode())
    candidates: List[int] = []

    def u64(offset: int) -> Optional[int]:
        return struct.unpack_from("<Q", head, offset)[0] if len(head) >= offset + 8 else None

    def u32(offset: int) -> Optional[int]:
        return struct.unpack_from("<I", head, offset)[0] if len(head) >= offset + 4 else None

    if magic == b"ftrt":
        size = u64(16)
        if size:
            candidates.append(size)
    else:
        second = u32(4)
        if second == 0:
            out.serialization_tag = u32(8)
        if second == 0x61:
            out.serialization_tag = u32(8)
            size = u64(12)
            if size:
                candidates.append(size + 24)
        size = u64(16)
        if size:
            candidates.append(size + 24)
    out.expected_bytes = [c for c in candidates if 0 < c < 1 << 40]
    if out.serialization_tag is not None and out.serialization_tag in SERIALIZATION_TAGS:
        out.hints.append(f"serialization tag {out.serialization_tag} (reported for TensorRT {SERIALIZATION_TAGS[out.serialization_tag]})")
    if file_size is not None and out.expected_bytes:
        if file_size in out.expected_bytes:
            out.hints.append("size fields match the file size")
        elif file_size < min(out.expected_bytes):
            out.looks_truncated = True
            out.hints.append(f"header suggests {min(out.expected_bytes)} bytes, the file has {file_size}: probably truncated")
    return out
