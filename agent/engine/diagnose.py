"""TensorRT log lines -> verdicts a person (or the fleet) can act on, and a header sniff of plan bytes.

TensorRT reports most failures only through its logger (`deserialize_cuda_engine` returns None, the builder
returns no plan). The classifier reads a log as a whole and turns it into problems of these kinds:

    version_mismatch   plan built by another TensorRT ("expecting library version 8.2.3 got 8.2.1": runtime 8.2.3,
                       plan 8.2.1), or another serialization format ("Current Version: 205, Serialized Engine
                       Version: 213": the two tags)
    device_mismatch    plan built for another GPU ("expecting compute 7.2 got compute 8.7": runtime 7.2, plan 8.7),
                       or for another model of device (a warning)
    corrupt            not a plan this runtime can read at all: magic tag wrong (another file, a wrapped plan such as
                       Ultralytics' metadata header), or a header that reads as version 0.0.0 (truncated, text mode)
    out_of_memory      GPU or host memory ran out (build tactics, workspace, deserialization); fields
                       requested_bytes, available_bytes, tactic, phase, memory ("gpu" | "host")
    unsupported_op     the ONNX parser cannot import a node: operator, node name and number, opset, data type or
                       attribute (sub_kind operator | data_type | attribute | node)
    plugin_missing     a plugin the model or plan needs is not registered: plugin, plugin_version, node, and
                       whether a plugin library was configured (when the caller says)
    calibration        INT8 calibration: sub_kind zero_tensor (a tensor is uniformly zero: a dead branch),
                       missing_ranges (tensors without a scale or dynamic range; all of them when "no scaling
                       factors"), algorithm_mismatch (the table or calibrator is not used: header algorithm or
                       version refused, or the model is already explicitly quantized), table_unreadable,
                       calibrator_failed (the calibrator itself failed while collecting ranges)
    no_implementation  the builder found no kernel (tactic) for a node; cause "workspace" (the log says memory or
                       workspace was short) or "format" (nothing says so: no kernel for the requested precision or
                       format)
    dla                DLA build or execution problems, layer fallbacks to the GPU (sub_kind fallback | error)
    batch_mismatch     an engine asked for a batch larger than it was built for (TF-TRT's engine cache)
    api_usage          TensorRT refused a call ("API Usage Error", parameter check failed): the caller's mistake
    unknown            an error line none of the above explains, quoted as it is, never guessed

A follow-up line that only says that something failed ("Engine deserialization failed", "Deserialize the cuda
engine failed", "INVALID_STATE: std::exception", "Assertion engine != nullptr failed", "Failed to parse onnx
file", ...) joins the problem before it (`related`), so the verdict names the cause; with nothing before it, it
stays `unknown`. The wording covers TensorRT 5 to 11: the `[TensorRT] ERROR:` prefix, `[TRT] [E]`, `Error Code
N:`, trtexec `[E]`, DeepStream's `ERROR: [TRT]:`, onnxruntime's TensorRT provider, TF-TRT's `DefaultLogger`.
Wording is taken from real logs: the shared real-data samples (real/trt_error_messages.txt, read by the tests when
present) and tests/engine/data/trt_logs_public.txt.
What each kind makes the daemon do: agent/engine/remedy.py.
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

KINDS = (
    "version_mismatch",
    "device_mismatch",
    "corrupt",
    "out_of_memory",
    "unsupported_op",
    "plugin_missing",
    "calibration",
    "no_implementation",
    "dla",
    "batch_mismatch",
    "api_usage",
    "unknown",
)
SUB_KINDS: Dict[str, Tuple[str, ...]] = {
    "calibration": ("zero_tensor", "algorithm_mismatch", "missing_ranges", "table_unreadable", "calibrator_failed"),
    "unsupported_op": ("operator", "data_type", "attribute", "node"),
    "no_implementation": ("workspace", "format"),
    "dla": ("fallback", "error"),
}

# Serialization tags ("Current Version: N" in version-tag errors) -> the TensorRT that writes them, as reported by
# users (NVIDIA/TensorRT#3073 and the sample file); a hint for people, never a verdict.
SERIALIZATION_TAGS: Dict[int, str] = {205: "8.2.1", 211: "8.0.1 (likely)", 213: "8.4.3", 232: "8.5.3", 239: "10.8 to 10.9", 240: "10.16", 243: "11.2"}
MIB = 1 << 20

_VERSION = r"(\d+(?:\.\d+){1,3})"
_LIBRARY = re.compile(rf"expecting library version {_VERSION} got {_VERSION}", re.IGNORECASE)
_COMPUTE = re.compile(r"expecting compute (\d+\.\d+) got compute (\d+\.\d+)", re.IGNORECASE)
_TAGS = re.compile(r"Current Version:\s*(\d+),\s*Serialized Engine Version:\s*(\d+)", re.IGNORECASE)
_NODE_TEXT = re.compile(r"could not find any implementation for\s+node\s+", re.IGNORECASE)
_LAYER_QUOTED = re.compile(r"Layer '([^']+)'")
_LAYER_FALLBACK = re.compile(r"layer (.+?) is not supported on DLA", re.IGNORECASE)
# the start of a new log message: a '[...]' prefix, 'ERROR:', a glog 'E0915', an error code '6: ', a docker
# 'name  | ' prefix, 'Class::method', 'trt_infer: '
_MESSAGE_START = re.compile(r"^\s*(?:\[|[A-Z_]{4,}\b|[EWIF]\d{4}\s|\d+:\s|\S+\s+\|\s|[\w.]+::|\w+:\s)")
# error markers of TensorRT and the tools around it (case matters: prose saying "error" is not an error line)
_ERRORISH = re.compile(
    r"\[E\]|\bE\]|\bERROR\b|Error Code|\bError\[|INTERNAL_ERROR|INVALID_CONFIG|\[E:onnxruntime|^\s*E\d{4}\s|\bassertion\b.*\bfailed\b|Assertion .* failed|"
    r"\b[A-Z]\w* Error in [\w:~]+"  # TensorRT 2 to 7 (GIE included): '<Category> Error in <function>: <code>'"
)
_WARNISH = re.compile(r"\[W\]|\bWARNING\b|\[W:onnxruntime|^\s*W\d{4}\s|^\S+ \S+: W \S+\]")
# a line that only repeats that something failed: it joins the problem before it
_FOLLOW_UP = re.compile(
    r"Engine deserialization failed|Got invalid engine|deserializeCudaEngine.*Error Code 4|engine->deserialize\(|"
    r"Deserialize the cuda engine failed|Deserialize engine failed|INVALID_STATE: (?:std::exception|Unknown exception)|"
    r"FAILED_(?:ALLOCATION|EXECUTION): Unknown exception|Assertion (?:engine|enginePtr) != nullptr failed|"
    r"Engine could not be created|Engine creation failed|Engine set up failed|Failed to parse (?:the )?onnx file|"
    r"Parsing model failed|could not parse input engine|^\s*Fail parsing\b|&&&& FAILED|unable to load plan file|"
    r"load failed for model|Failed to get engine batch|TensorRT EP failed to create engine|Assertion `\*engine' failed|"
    r"engine init null|Invalid Engine\. Please ensure|Failed to build engine|failed to build CUDA engine|Skipping this backend strategy",
    re.IGNORECASE,
)
# CUDA errors that are symptoms of the problem before them (a failed allocation, a calibrator that crashed)
_CUDA_SYMPTOM = re.compile(r"Cuda Error in|Cuda Runtime|CUDNN_STATUS|Get cuda error during", re.IGNORECASE)
# lines that say nothing wrong although they may carry ERROR (the parser's node dump, location-only lines)
_NOT_A_PROBLEM = re.compile(r"--- (?:Begin|End) node ---|In function \w+:\s*$|Attempting to import as plugin|Searching for plugin:", re.IGNORECASE)

# ONNX parser
_WHILE_PARSING = re.compile(r"While parsing node number\s+(\d+)(?:\s*\[([^\]\s]+)[^\]]*\])?", re.IGNORECASE)
_OPSET = re.compile(r"Opset version:\s*(\d+)", re.IGNORECASE)
_NO_IMPORTER = re.compile(r"No importer registered for op:\s*([\w.:-]+)", re.IGNORECASE)
_INVALID_NODE = re.compile(r"Invalid Node\s*-\s*(\S+)", re.IGNORECASE)
_ONNX_DTYPE = re.compile(r"Unsupported ONNX data ?type:\s*(\w+)(?:\s*\((\d+)\))?", re.IGNORECASE)
_INIT_DTYPE = re.compile(r"Found unsupported datatype \((\d+)\) when importing initializer:\s*(\S+)", re.IGNORECASE)
_IN_NODE = re.compile(r"In node (-?\d+) with name:\s*(.+?) and operator:\s*([\w.:-]+)", re.IGNORECASE)
_PARSER_ASSERT = re.compile(r"In function (\w+):\s*\[(\d+)\]\s*(.+)$")
_ATTRIBUTE = re.compile(r"Attribute not found:\s*(\w+)", re.IGNORECASE)
# onnxruntime (the cpu target, and the TensorRT provider's fallback): an operator no kernel or schema is registered for
_ORT_NOT_REGISTERED = re.compile(r"Fatal error: (?:([\w.]+):)?([\w.]+)\((-?\d+)\) is not a registered function/op")
_ORT_NO_OP = re.compile(r'In Node, \("([^"]*)", ([\w.]+), "([^"]*)", -?\d+\).*?No Op registered for ([\w.]+) with domain_version of (\d+)')
_ORT_NO_KERNEL = re.compile(r"Could not find an implementation for ([\w.]+)\((\d+)\) node with name '([^']*)'")
# plugins
_PLUGIN_CREATOR = re.compile(r"getPluginCreator could not find plugin:?\s*([\w.:-]+?)\s+version:?\s*([\w.]+)", re.IGNORECASE)
_PLUGIN_CREATOR_FAILED = re.compile(r"Failed to get (\S+) plugin creator", re.IGNORECASE)
_PLUGIN_REGISTRY = re.compile(r"IPluginCreator not found in Plugin Registry|Plugin not found, are the plugin name|Plugin creator not found", re.IGNORECASE)
# memory
_TACTIC_REQUEST = re.compile(r"Tactic Device request:\s*(\d+)\s*MB\s+Available:\s*(\d+)\s*MB", re.IGNORECASE)
_TACTIC_SKIP = re.compile(r"Skipping tactic\s+(\S+)\s+due to (?:insuff?icient memory|oom error) on requested size of\s+(\d+)(?:\s+detected for tactic\s+(\w+))?", re.IGNORECASE)
_TACTIC_EXCEPTION = re.compile(r"Skipping tactic\s+(\w+)\s+due to exception", re.IGNORECASE)
_GPU_REQUEST = re.compile(r"Requested amount of GPU memory \((\d+) bytes\) could not be allocated", re.IGNORECASE)
_REQUEST_SIZE = re.compile(r"Requested size was (\d+) bytes", re.IGNORECASE)
_ALLOC_BYTES = re.compile(r"allocating (\d+)-byte buffer", re.IGNORECASE)
_OOM = re.compile(r"\bout of memory\b|OutOfMemory|std::bad_alloc|Device memory is insufficient|insuff?icient memory on requested size|oom error on requested", re.IGNORECASE)


@dataclass
class Problem:
    kind: str
    runtime: Optional[str]
    plan: Optional[str]
    line: str
    detail: str = ""
    severity: str = "error"  # "error" | "warning"
    layer: Optional[str] = None  # the layer, node or tensor the line names
    related: List[str] = field(default_factory=list)  # follow-up and continuation lines folded into this problem
    sub_kind: Optional[str] = None
    fields: Dict[str, Any] = field(default_factory=dict)  # what the line states (bytes, operator, plugin, tensor...)
    advice: str = ""  # the fix that fits

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> Problem:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("kind", "unknown")
        values.setdefault("runtime", None)
        values.setdefault("plan", None)
        values.setdefault("line", "")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for key, empty in (("layer", None), ("related", []), ("sub_kind", None), ("fields", {}), ("advice", "")):
            if data[key] == empty:
                del data[key]
        return data


@dataclass
class LogContext:
    """What the caller knows and the log does not: whether plugin libraries were loaded, the model's opset, and
    (on Jetson, where the GPU shares RAM with the CPU) the free RAM and the processes holding the most of it,
    from telemetry. Each is optional; what is given is added to the problems it concerns."""

    plugins_configured: Optional[bool] = None
    opset: Optional[int] = None
    free_ram_mb: Optional[int] = None
    processes: List[Tuple[str, int]] = field(default_factory=list)  # (name, resident MB), largest first


# --- one line ----------------------------------------------------------------------------------------------------


def classify_line(line: str) -> Optional[Problem]:
    """One log line (wrapped lines joined) -> a Problem, or None when the line reports nothing wrong."""
    text = line.strip()
    if not text or _NOT_A_PROBLEM.search(text):
        return None
    for classify in (_version_or_device, _plugin, _parser, _calibration, _dla, _no_implementation, _memory, _other):
        problem = classify(text)
        if problem is not None:
            return problem
    return None


def _version_or_device(text: str) -> Optional[Problem]:
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
    if re.search(r"not compatible with this version of TensorRT", text, re.IGNORECASE):
        return Problem("version_mismatch", None, None, text, "plan built by another TensorRT")
    if re.search(r"truncated|unexpected end of file|Failed to read|size mismatch", text, re.IGNORECASE) and re.search(
        r"engine|plan|serializ", text, re.IGNORECASE
    ) and not re.search(r"calibrat", text, re.IGNORECASE):
        return Problem("corrupt", None, None, text, "the plan file is truncated or unreadable")
    return None


def _plugin(text: str) -> Optional[Problem]:
    fields: Dict[str, Any] = {}
    match = _PLUGIN_CREATOR.search(text)
    if match:
        fields.update(plugin=match.group(1), plugin_version=match.group(2))
    else:
        match = _PLUGIN_CREATOR_FAILED.search(text)
        if match:
            fields["plugin"] = match.group(1)
        elif not _PLUGIN_REGISTRY.search(text):
            return None
    node = _IN_NODE.search(text)
    if node:
        fields.update(node_number=int(node.group(1)), node=node.group(2).strip(), plugin=fields.get("plugin") or node.group(3))
    name = fields.get("plugin")
    detail = (f"plugin {name}" + (f" version {fields['plugin_version']}" if fields.get("plugin_version") else "") if name else "a plugin") + (
        " is not registered: load the plugin library that provides it (engine.plugin_dir and the deployment's plugins), "
        "or export the model without it"
    )
    return Problem("plugin_missing", None, None, text, detail, layer=fields.get("node"), fields=fields)


def _parser(text: str) -> Optional[Problem]:
    ort = _onnxruntime_op(text)
    if ort is not None:
        return ort
    match = _NO_IMPORTER.search(text)
    if match:
        return Problem("unsupported_op", None, None, text, f"this TensorRT's ONNX parser has no importer for operator {match.group(1)}",
                       sub_kind="operator", fields={"operator": match.group(1)})
    match = _INIT_DTYPE.search(text)
    if match:
        return Problem("unsupported_op", None, None, text, f"initializer {match.group(2)} has ONNX data type {match.group(1)}, which TensorRT cannot import",
                       sub_kind="data_type", layer=match.group(2), fields={"data_type": match.group(1), "initializer": match.group(2)})
    match = _ONNX_DTYPE.search(text)
    if match:
        fields: Dict[str, Any] = {"data_type": match.group(1)}
        if match.group(2):
            fields["data_type_code"] = int(match.group(2))
        return Problem("unsupported_op", None, None, text, f"the model uses ONNX data type {match.group(1)}, which this TensorRT cannot import",
                       sub_kind="data_type", fields=fields)
    node = _IN_NODE.search(text)
    invalid = _INVALID_NODE.search(text)
    assertion = _PARSER_ASSERT.search(text)
    if not (node or invalid or assertion):
        return None
    fields = {}
    if node:
        fields.update(node_number=int(node.group(1)), node=node.group(2).strip(), operator=node.group(3))
    if invalid:
        fields["node"] = invalid.group(1)
    if assertion:
        fields["reason"] = assertion.group(3).strip()
    what = fields.get("node") or "a node"
    return Problem("unsupported_op", None, None, text, f"the ONNX parser could not import {what}" + (f": {fields['reason']}" if fields.get("reason") else ""),
                   sub_kind="node", layer=fields.get("node"), fields=fields)


def _onnxruntime_op(text: str) -> Optional[Problem]:
    fields: Dict[str, Any] = {}
    match = _ORT_NOT_REGISTERED.search(text)
    if match:
        fields["operator"] = match.group(2)
        if match.group(1):
            fields["domain"] = match.group(1)
    match = _ORT_NO_OP.search(text)
    if match:
        fields.update(node=match.group(1), operator=match.group(2), opset=int(match.group(5)))
        if match.group(3):
            fields["domain"] = match.group(3)
    match = _ORT_NO_KERNEL.search(text)
    if match:
        fields.update(operator=match.group(1), opset=int(match.group(2)), node=match.group(3))
    if not fields:
        return None
    return Problem("unsupported_op", None, None, text, f"onnxruntime has no kernel or schema for operator {fields['operator']}",
                   sub_kind="operator", layer=fields.get("node") or None, fields=fields,
                   advice="export the model with standard ONNX operators of its opset (onnxruntime has no custom-op library here)")


def _calibration(text: str) -> Optional[Problem]:
    match = re.search(r"Tensor\s+(.+?)\s+is uniformly zero", text, re.IGNORECASE)
    if match:
        tensor = match.group(1)
        failed = bool(re.search(r"calibration failed", text, re.IGNORECASE))
        return Problem("calibration", None, None, text, f"tensor {tensor} is zero for every calibration input: its branch is dead for this data",
                       severity="error" if failed else "warning", layer=tensor, sub_kind="zero_tensor", fields={"tensor": tensor},
                       advice="the branch that produces it is dead: prune it from the model, or recalibrate with data that exercises it")
    for pattern in (r"Missing (?:scale and zero-point|dynamic range) for tensor\s+(.+?),\s*expect", r"Missing scale and zero-point for tensor\s+([^\s,]+)",
                    r"Missing dynamic range for tensor\s+([^\s,]+)",
                    r"Could not find scales for tensor\s+(.+?)\.?\)?$", r"(?:no|missing) (?:dynamic )?range for tensor\s+([^\s,]+)"):
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            tensor = match.group(1).strip(",.'\"")
            severity = "error" if re.search(r"Could not find scales", text, re.IGNORECASE) else "warning"
            return Problem("calibration", None, None, text, "a tensor has no INT8 scale: the layers around it run in higher precision",
                           severity=severity, layer=tensor, sub_kind="missing_ranges", fields={"tensor": tensor},
                           advice="recalibrate with a table that covers this tensor, or accept FP16 for its layers")
    if re.search(r"Calibration failure occurr?ed with no scaling factors", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "no tensor has a scale: no calibrator ran and no table (or per-tensor ranges) was read",
                       sub_kind="missing_ranges", fields={"tensors": "all"},
                       advice="give the build a calibration table TensorRT reads on this version (or per-tensor dynamic ranges)")
    if re.search(r"Int8 mode specified but no calibrator specified", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "INT8 asked with no calibrator: every tensor needs a scale given by hand",
                       severity="warning", sub_kind="missing_ranges", fields={"tensors": "all"})
    if re.search(r"quantization data is missing", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "INT8 scales missing: TensorRT used default quantization parameters",
                       severity="warning", sub_kind="missing_ranges")
    if re.search(r"Calibrator won't be used in explicit precision mode", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "the model already has Q/DQ nodes (explicit quantization): the calibrator and its table are ignored",
                       severity="warning", sub_kind="algorithm_mismatch", fields={"route": "explicit Q/DQ"},
                       advice="build the Q/DQ model as it is, without a table (explicit quantization)")
    if re.search(r"not a TensorRT calibration (?:cache|table)|(?:could not|cannot|failed to|unable to) (?:read|open|parse|load) (?:the )?(?:int8 )?calibration (?:cache|table)|"
                 r"calibration (?:cache|table)\S* (?:is )?(?:unreadable|corrupt|malformed|truncated)", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "the calibration table cannot be read", sub_kind="table_unreadable",
                       advice="publish the table again (TensorRT's text format: a 'TRT-<version>-<algorithm>' header, then 'tensor: hex' lines)")
    if re.search(r"calibration (?:cache|table).*(?:incompatible|ignored|rejected|mismatch|does not match)|calibrator algorithm", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "the calibration table's header (algorithm or TensorRT version) was refused: it is not used",
                       severity="warning", sub_kind="algorithm_mismatch",
                       advice="apply the scales as per-tensor dynamic ranges (no header check), or rewrite the header for this TensorRT")
    if re.search(r"cuCalibrator|calibrator\.cu|Calibrat\w* .*Cuda Error", text, re.IGNORECASE):
        return Problem("calibration", None, None, text, "the calibrator failed while collecting ranges (a CUDA error inside it)",
                       sub_kind="calibrator_failed", advice="the calibration batch or bindings do not fit the network; "
                       "this agent takes a precomputed table instead of calibrating on the device")
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
    if re.search(r"all dla layers are falling back|same min, max, and opt", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "DLA needs a fixed batch (min = opt = max): every layer fell back to the GPU",
                       severity="warning", sub_kind="fallback")
    fallback = bool(re.search(r"falling back to GPU|Switching (?:this layer's|.*) device type to GPU|Switching \.\.\. to GPU", text, re.IGNORECASE))
    if fallback:
        return Problem("dla", None, None, text, "layer falls back from DLA to the GPU", severity="warning", layer=layer, sub_kind="fallback")
    if re.search(r"not supported (?:for|on) DLA|Unsupported on DLA|do not support|requires at least", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "layer cannot run on DLA", severity="warning", layer=layer, sub_kind="fallback")
    if re.search(r"kDIRECT_IO|forceToUseNvmIO|isDLA", text):
        return Problem("dla", None, None, text, "strict DLA build impossible: some tensors need the GPU (allow GPU fallback, "
                       "or give DLA-native I/O formats)", sub_kind="error")
    if re.search(r"DLA Error in execute|registerTensorBuffer|NVMEDIA_DLA", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "DLA execution failed (tensor registration)", sub_kind="error")
    if re.search(r"no layer in the network can run on DLA", text, re.IGNORECASE):
        return Problem("dla", None, None, text, "nothing in this network runs on DLA", sub_kind="error")
    if _ERRORISH.search(text) or _WARNISH.search(text):
        error = bool(_ERRORISH.search(text))
        return Problem("dla", None, None, text, "", severity="error" if error else "warning", layer=layer, sub_kind="error" if error else "fallback")
    return None


def _node_after(text: str) -> Optional[str]:
    """The node named after 'could not find any implementation for node', without the wrapper's ')' and '.'."""
    match = _NODE_TEXT.search(text)
    if not match:
        return None
    node = re.split(r"\s+due to\s+|,\s*try increasing|\.\s+(?:See|Skipping|Try)\b", text[match.end():], maxsplit=1, flags=re.IGNORECASE)[0].strip()
    while True:
        before = node
        node = node.rstrip(". ")
        if node.endswith(")") and node.count(")") > node.count("("):
            node = node[:-1]
        if node == before:
            return node or None


def _no_implementation(text: str) -> Optional[Problem]:
    match = re.search(r"No implementation of layer (.+?) obeys the requested constraints", text, re.IGNORECASE)
    if match:
        problem = Problem("no_implementation", None, None, text, "", layer=match.group(1), fields={"node": match.group(1)})
        _set_cause(problem, "format")
        return problem
    if re.search(r"\"no supported formats\"", text):  # TensorRT 4: the format-requirements assertion of the tactic optimizer
        problem = Problem("no_implementation", None, None, text, "")
        _set_cause(problem, "format")
        return problem
    if not re.search(r"could not find any implementation", text, re.IGNORECASE):
        return None
    node = _node_after(text)
    workspace = bool(re.search(r"insufficient workspace|increas\w* the workspace|setMaxWorkspaceSize", text, re.IGNORECASE))
    problem = Problem("no_implementation", None, None, text, "", layer=node, fields={"node": node} if node else {})
    _set_cause(problem, "workspace" if workspace else "format")
    return problem


def _set_cause(problem: Problem, cause: str) -> None:
    problem.sub_kind = cause
    problem.fields["cause"] = cause
    if cause == "workspace":
        problem.detail = "the builder found no kernel for this node within the memory it had (workspace or free GPU memory)"
        problem.advice = ("free GPU memory (on Jetson: RAM) held by other processes, or lower the batch; raise the workspace "
                          "limit only when the memory is there")
    else:
        problem.detail = "the builder found no kernel for this node in the requested precision or format (no memory shortage was logged)"
        problem.advice = "build this node in FP16 (or FP32) instead of INT8, or change the model around it"


def _requested_bytes(value: int) -> int:
    """'on requested size of N': TensorRT 8.x prints MB there (the 'Tactic Device request: N MB' line before it
    has the same N), 8.2 and 10.x print bytes. Below 1 MiB a number of bytes is implausible for a tactic."""
    return value * MIB if value < MIB else value


def _memory(text: str) -> Optional[Problem]:
    if not _OOM.search(text) and not _GPU_REQUEST.search(text):
        return None
    fields: Dict[str, Any] = {}
    severity = "error"
    match = _TACTIC_REQUEST.search(text)
    if match:
        fields.update(requested_bytes=int(match.group(1)) * MIB, available_bytes=int(match.group(2)) * MIB)
        severity = "warning"
    match = _TACTIC_SKIP.search(text)
    if match:
        fields.update(requested_bytes=_requested_bytes(int(match.group(2))), tactic=match.group(3) or match.group(1))
        severity = "warning"
    match = _TACTIC_EXCEPTION.search(text)
    if match:
        fields["tactic"] = match.group(1)
        severity = "warning"
    for pattern in (_GPU_REQUEST, _REQUEST_SIZE, _ALLOC_BYTES):
        match = pattern.search(text)
        if match:
            fields["requested_bytes"] = int(match.group(1))
    if _GPU_REQUEST.search(text):
        severity = "warning"
    fields["memory"] = "host" if re.search(r"std::bad_alloc", text) else "gpu"
    if re.search(r"deserializ|safeDeserialize", text, re.IGNORECASE):
        fields["phase"] = "deserialize"
    elif re.search(r"tactic|computeCosts|buildSerializedNetwork|autotuning|resizePhysical", text, re.IGNORECASE):
        fields["phase"] = "build"
    if severity == "warning":
        detail = "a tactic needed more GPU memory than was free: TensorRT skipped it and tries others (slower kernels, or none)"
    elif fields["memory"] == "host":
        detail = "the process ran out of host memory (std::bad_alloc)"
    else:
        detail = "TensorRT ran out of GPU memory"
    return Problem("out_of_memory", None, None, text, detail, severity=severity, fields=fields)


def _other(text: str) -> Optional[Problem]:
    match = re.search(r"Engine buffer is full.*?requested batch=(\d+)", text, re.IGNORECASE)
    if match:
        return Problem("batch_mismatch", None, None, text, f"no cached engine serves batch {match.group(1)}: the engine was built for a smaller batch",
                       severity="warning", fields={"requested_batch": int(match.group(1))}, advice="build the engine for the batch the pipeline sends")
    if re.search(r"API Usage Error|Parameter check failed", text, re.IGNORECASE):
        fields: Dict[str, Any] = {}
        match = re.search(r"Tensor\s+[\"“']([^\"”']+)[\"”']\s+is bound to nullptr", text)
        if match:
            fields["tensor"] = match.group(1)
        detail = "builder flags conflict (API usage error)" if "cannot be set if" in text else "TensorRT refused a call (API usage error)"
        return Problem("api_usage", None, None, text, detail, layer=fields.get("tensor"), fields=fields)
    if _FOLLOW_UP.search(text):
        return Problem("unknown", None, None, text, "deserialization, parsing or build failed; the lines before it say why")
    if _ERRORISH.search(text):
        return Problem("unknown", None, None, text, "a CUDA runtime error (often a symptom of another problem, or of memory)" if _CUDA_SYMPTOM.search(text) else "")
    return None


# --- a whole log -------------------------------------------------------------------------------------------------


def join_wrapped(lines: List[str]) -> List[str]:
    """TensorRT messages printed over several lines become one line: an opening '(' or '[' closed later, a line
    that begins with '(' or 'node ', a parser location ('In function X:') followed by its '[N] ...' message, an
    error code with nothing after it ('3: '), and known continuations ('Error message:', 'Try decreasing ...')."""
    out: List[str] = []
    depth = 0
    square = 0
    force = False
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            depth = square = 0
            force = False
            continue
        stripped = line.strip()
        wrapped = depth > 0 or stripped.startswith("(") or re.match(r"^node\s", stripped) is not None
        known = re.match(r"^(?:Error message:|Skipping this backend strategy|Try (?:decreasing|increasing) the workspace)", stripped) is not None
        continues = bool(out) and (force or known or (wrapped and not _MESSAGE_START.match(line)) or (square > 0 and not stripped.startswith("[")))
        if force and not re.match(r"^\[\d+\]", stripped) and re.search(r"In function \w+:\s*$", out[-1] if out else ""):
            continues = False  # a location line not followed by its message (a node dump in between)
        if continues:
            out[-1] = out[-1].rstrip() + " " + stripped
        else:
            out.append(line)
            depth = square = 0
        depth = max(0, depth + line.count("(") - line.count(")"))
        square = max(0, square + line.count("[") - line.count("]"))
        force = bool(re.search(r"In function \w+:\s*$|(?:^|\s)\d+:\s*$", line))
    return out


_MERGE_KINDS = ("out_of_memory", "plugin_missing", "unsupported_op", "calibration", "no_implementation")


def _compatible(previous: Problem, problem: Problem) -> bool:
    """May `problem` be the same failure told again (or told on, with more detail) as `previous`?"""
    if previous.kind != problem.kind or previous.kind not in _MERGE_KINDS:
        return False
    if previous.kind == "unsupported_op":  # a parser assertion that names no node is the consequence of the last one
        return not any(k in problem.fields for k in ("node", "node_number", "operator", "data_type"))
    if previous.sub_kind and problem.sub_kind and previous.sub_kind != problem.sub_kind and previous.kind != "no_implementation":
        return False
    for key in set(previous.fields) & set(problem.fields):
        a, b = previous.fields[key], problem.fields[key]
        if key.endswith("_bytes"):
            if int(a) // MIB != int(b) // MIB:
                return False
        elif key == "memory" or key == "phase" or key == "cause":
            continue
        elif a != b:
            return False
    return previous.layer is None or problem.layer is None or previous.layer == problem.layer


def _merge(previous: Problem, problem: Problem) -> None:
    previous.related.append(problem.line.strip())
    previous.related.extend(problem.related)
    for key, value in problem.fields.items():
        if key not in previous.fields or (key.endswith("_bytes") and int(value) % MIB and not int(previous.fields[key]) % MIB):
            previous.fields[key] = value  # the exact byte count beats a rounded MB figure
    if previous.layer is None and problem.layer is not None:
        previous.layer = problem.layer
    if problem.severity == "error":
        previous.severity = "error"
    if previous.kind == "plugin_missing" and problem.fields.get("plugin") and not previous.detail.startswith("plugin "):
        previous.detail = problem.detail


def diagnose_log(text: str, context: Optional[LogContext] = None) -> List[Problem]:
    """A whole TensorRT log -> the problems in it, in order. Follow-up lines join the problem before them, the
    same failure told over several lines becomes one problem, and the parser's 'While parsing node number N
    [Op]' names the node of the problem after it."""
    problems: List[Problem] = []
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # comments in saved logs
    attached = False  # the last line belonged to problems[-1] (a continuation may follow)
    pending: Dict[str, Any] = {}  # node number and operator announced for the next parser problem
    opset = context.opset if context is not None else None
    seen_memory_problem = False
    for line in join_wrapped(lines):
        match = _OPSET.search(line)
        if match:
            opset = int(match.group(1))
        match = _WHILE_PARSING.search(line)
        if match:
            pending = {"node_number": int(match.group(1))}
            if match.group(2):
                pending["operator"] = match.group(2)
        problem = classify_line(line)
        previous = problems[-1] if problems else None
        if problem is None:
            symptom = re.search(r"Get cuda error during \w+(?::\s*(.+))?$", line)
            if symptom and previous is not None and previous.kind == "out_of_memory":  # TensorRT 7: the tactic it was timing
                previous.related.append(line.strip())
                if symptom.group(1) and previous.layer is None:
                    previous.layer = symptom.group(1).strip()
                attached = True
            elif attached and previous is not None and _is_continuation(line):
                previous.related.append(line.strip())
                _continuation_fields(previous, line.strip())
            else:
                attached = False
            continue
        if problem.kind in ("unsupported_op", "plugin_missing") and pending:
            for key, value in pending.items():
                problem.fields.setdefault(key, value)
            pending = {}
        if problem.kind == "no_implementation" and seen_memory_problem and problem.sub_kind == "format":
            _set_cause(problem, "workspace")
            problem.detail += " (memory ran short for tactics earlier in this log)"
        if problem.kind == "out_of_memory":
            seen_memory_problem = True
        if previous is not None and _folds_into(previous, problem, attached):
            previous.related.append(problem.line.strip())
            if previous.kind == "out_of_memory" and previous.severity == "warning" and _FOLLOW_UP.search(problem.line):
                previous.severity = "error"  # tactics skipped for memory, then the build failed: the memory is why
            attached = True
            match = re.search(r"Get cuda error during \w+: (.+)$", problem.line)
            if match and previous.layer is None:
                previous.layer = match.group(1).strip()
            continue
        if previous is not None and _compatible(previous, problem) and (attached or _same_text(previous, problem)):
            _merge(previous, problem)
            attached = True
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
            attached = True
            continue
        problems.append(problem)
        attached = True
    for problem in problems:
        _finish(problem, context, opset)
    return problems


def _same_text(previous: Problem, problem: Problem) -> bool:
    """The same message printed twice (timestamps aside)."""
    def bare(text: str) -> str:
        return re.sub(r"^\s*(?:\S+\s+\|\s+)?(?:\[[\d/ :.-]+\]\s*)?", "", text).strip()

    return bare(previous.line) == bare(problem.line) or any(bare(r) == bare(problem.line) for r in previous.related)


def _folds_into(previous: Problem, problem: Problem, attached: bool) -> bool:
    if previous.kind == "no_implementation" and problem.kind == "out_of_memory" and attached and "computeCosts" in problem.line:
        return True  # TensorRT 5: 'OutOfMemory Error in computeCosts' repeats the no-tactic error before it
    if problem.kind != "unknown" and not (problem.kind == "api_usage" and previous.kind == "unsupported_op" and attached):
        return False
    if previous.kind == "unknown":  # a follow-up joins an unexplained error only right after it
        return attached and bool(_FOLLOW_UP.search(problem.line)) and not _FOLLOW_UP.search(previous.line)
    if _FOLLOW_UP.search(problem.line):
        return True
    return attached and (bool(_CUDA_SYMPTOM.search(problem.line)) or problem.kind == "api_usage")


def _is_continuation(line: str) -> bool:
    """A line with no logger prefix or severity that explains the message before it."""
    text = line.strip()
    if re.search(r"\[[IV]\]|\bINFO\b|\bVERBOSE\b|^\[HAMI|^\d{4}-\d\d-\d\d|^\[\d\d/", text) or _WHILE_PARSING.search(text) or _OPSET.search(text):
        return False
    if re.match(r"^(?:input|output|op_type|name|domain|attribute|[a-z_]+):\s*(?:\"|\{|$)", text):  # the parser's node dump
        return False
    return not _ERRORISH.search(text) and not _WARNISH.search(text)


def _continuation_fields(problem: Problem, line: str) -> None:
    match = _ATTRIBUTE.search(line)
    if problem.kind == "unsupported_op" and match:
        problem.fields["attribute"] = match.group(1)
        problem.sub_kind = "attribute"
    if problem.kind == "unsupported_op" and "explanation" not in problem.fields:
        problem.fields["explanation"] = line


def _finish(problem: Problem, context: Optional[LogContext], opset: Optional[int]) -> None:
    """Fields and advice that need the whole log or the caller's context."""
    if problem.kind == "unsupported_op":
        if opset is not None:
            problem.fields.setdefault("opset", opset)
        name = problem.fields.get("operator")
        node = problem.fields.get("node")
        number = problem.fields.get("node_number")
        where = ", ".join(x for x in (f"node {number}" if number is not None else "", f"'{node}'" if node else "", f"operator {name}" if name else "") if x)
        if where and where not in problem.detail:
            problem.detail += f" [{where}]"
        problem.advice = problem.advice or ("export the model with operators this TensorRT imports (another opset, constant folding with "
                                            "Polygraphy, or a plugin for the operator), or deploy it on the cpu target")
    if problem.kind == "plugin_missing":
        if context is not None and context.plugins_configured is not None:
            problem.fields["plugin_library_configured"] = context.plugins_configured
            problem.advice = ("a plugin library was loaded but does not register this plugin: check its name, version and namespace"
                              if context.plugins_configured else "no plugin library was configured: add the library to engine.plugin_dir and name it in the build spec")
        else:
            problem.advice = "load the plugin library that registers it before the build or load"
    if problem.kind == "out_of_memory":
        problem.advice = _memory_advice(problem, context)


def _memory_advice(problem: Problem, context: Optional[LogContext]) -> str:
    requested = problem.fields.get("requested_bytes")
    available = problem.fields.get("available_bytes")
    parts = []
    if requested is not None and available is not None:
        parts.append(f"{requested // MIB} MiB asked, {available // MIB} MiB free")
    elif requested is not None:
        parts.append(f"{requested // MIB} MiB asked")
    if problem.fields.get("memory") == "host":
        parts.append("free RAM (stop other processes) or build on a device with more memory")
    elif problem.fields.get("phase") == "deserialize":
        parts.append("the engine does not fit in the free GPU memory: free memory held by other processes")
    else:
        parts.append("lower the workspace limit (engine.workspace_mb) or the batch, and free memory held by other processes")
    parts.append("on Jetson the GPU shares RAM with the CPU")
    if context is not None and context.free_ram_mb is not None:
        parts.append(f"free RAM now {context.free_ram_mb} MiB")
    if context is not None and context.processes:
        parts.append("largest processes: " + ", ".join(f"{name} ({mb} MiB)" for name, mb in context.processes[:5]))
    return "; ".join(parts)


def verdict(problems: List[Problem]) -> Optional[Problem]:
    """The problem that decides what happens: the first error a kind explains, else the first error, else the
    first problem (warnings only)."""
    errors = [p for p in problems if p.severity == "error"]
    for problem in errors:
        if problem.kind != "unknown":
            return problem
    if errors:
        return errors[0]
    return problems[0] if problems else None


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
    """Read the first bytes of a plan. Layouts seen (the shared real-data file real/engine_headers_hex.txt; nothing is
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
