"""The build report (where layers run, in which precision, what fell back and why) and the policy that judges it.

TensorRT side: the engine inspector's JSON (`ProfilingVerbosity.DETAILED`) and the build log ("[DlaLayer]" /
"[GpuLayer]" lines, fallback warnings, missing-scale warnings). onnxruntime side: the optimized ONNX graph.
Both end in the same `BuildReport`, so `require_int8` and `min_dla_layer_fraction` mean the same everywhere.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

from agent.calib.routes import BuildPrecision, Int8Route
from agent.device.versions import Version, format_version
from agent.engine.diagnose import diagnose_log
from agent.engine.manifest import BuildReport
from agent.engine.remedy import blocking_names
from agent.engine.spec import BuildPolicy, BuildSpec, Precision

if TYPE_CHECKING:
    import onnx

_PRECISION_WORDS = (
    (re.compile(r"\bint8\b", re.IGNORECASE), "int8"),
    (re.compile(r"\b(fp16|half)\b", re.IGNORECASE), "fp16"),
    (re.compile(r"\bbf16\b", re.IGNORECASE), "bf16"),
    (re.compile(r"\bfp8\b", re.IGNORECASE), "fp8"),
    (re.compile(r"\b(fp32|float)\b", re.IGNORECASE), "fp32"),
    (re.compile(r"\bint32\b", re.IGNORECASE), "int32"),
)


def precision_of(text: str) -> Optional[str]:
    for pattern, name in _PRECISION_WORDS:
        if pattern.search(text):
            return name
    return None


def _layer_precision(layer: Dict[str, Any]) -> Optional[str]:
    for key in ("Outputs", "Inputs"):
        tensors = layer.get(key)
        if isinstance(tensors, list):
            for tensor in tensors:
                if isinstance(tensor, dict):
                    found = precision_of(str(tensor.get("Format/Datatype", "")))
                    if found:
                        return found
    for key in ("Precision", "Datatype", "Format/Datatype"):
        if key in layer:
            found = precision_of(str(layer[key]))
            if found:
                return found
    return None


def report_from_tensorrt(
    inspector_json: Optional[str],
    log_lines: Iterable[str],
    dla_target: bool,
    tensors_without_scale: Iterable[str] = (),
    build_seconds: float = 0.0,
) -> BuildReport:
    """Combine the inspector's layer list with the build log. On DLA targets a `{ForeignNode[...]}` layer is a DLA
    subgraph (a loadable); on the GPU it is a Myelin subgraph, so it counts as GPU there."""
    report = BuildReport(source="build log", build_seconds=round(build_seconds, 3))
    lines = list(log_lines)
    layers: List[Any] = []
    if inspector_json:
        try:
            info = json.loads(inspector_json)
        except ValueError:
            report.warnings.append("the engine inspector's output is not JSON")
            info = {}
        if isinstance(info, dict) and isinstance(info.get("Layers"), list):
            layers = info["Layers"]
            report.source = "inspector"
    for layer in layers:
        if isinstance(layer, str):
            name, precision, kind = layer, None, ""
        elif isinstance(layer, dict):
            name = str(layer.get("Name", "?"))
            precision = _layer_precision(layer)
            kind = str(layer.get("LayerType", ""))
        else:
            continue
        on_dla = dla_target and ("ForeignNode" in name or kind in ("ForeignNode", "DLA"))
        device = "dla" if on_dla else "gpu"
        report.layer_precisions.append({"name": name, "precision": precision or "unknown", "device": device})
        if precision:
            report.precisions[precision] = report.precisions.get(precision, 0) + 1
    dla_log = sum(1 for line in lines if "[DlaLayer]" in line)
    gpu_log = sum(1 for line in lines if "[GpuLayer]" in line)
    if report.layer_precisions:
        report.layers_dla = sum(1 for layer in report.layer_precisions if layer["device"] == "dla")
        report.layers_gpu = len(report.layer_precisions) - report.layers_dla
    if dla_log or gpu_log:  # the builder's own placement summary is the most direct count
        report.layers_dla, report.layers_gpu = dla_log, gpu_log
    report.layers = report.layers_dla + report.layers_gpu
    if dla_target and report.layers:
        report.dla_fraction = round(report.layers_dla / report.layers, 4)
    report.int8_layers = report.precisions.get("int8", 0)
    problems = diagnose_log("\n".join(lines))
    report.problems = [p.to_dict() for p in problems]
    report.unsupported_ops, report.missing_plugins = blocking_names(problems)
    for problem in problems:
        if problem.kind == "dla" and problem.layer and "falls back" in problem.detail:
            entry = {"layer": problem.layer, "reason": _fallback_reason(problem.layer, problems)}
            if entry not in report.fallbacks:
                report.fallbacks.append(entry)
    missing = list(tensors_without_scale)
    for problem in problems:
        if problem.kind == "calibration" and problem.layer and problem.layer not in missing:
            missing.append(problem.layer)
    report.tensors_without_scale = missing
    return report


def precision_route(trt: Version, build: BuildPrecision, route: Optional[Int8Route] = None) -> Dict[str, Any]:
    """What the build report says about the APIs a TensorRT build used for its precision: the network typing
    and builder flags (agent.calib.routes.builder_flags), the INT8 route (choose_int8_route), why, and every
    API used that is deprecated on this TensorRT (from the bindings' [DEPRECATED] markers:
    docs/hardware/trt-api-matrix.md)."""
    entry: Dict[str, Any] = {
        "tensorrt": format_version(trt),
        "typing": build.typing.value,
        "flags": list(build.flags),
        "reason": build.reason,
        "deprecated_apis": list(build.deprecated),
    }
    if route is not None:
        entry.update({"int8_route": route.method.value, "int8_reason": route.reason})
    return entry


def deprecation_warnings(entry: Dict[str, Any]) -> List[str]:
    """One line per deprecated API the build used, with what was chosen and why (empty when none)."""
    deprecated = entry.get("deprecated_apis") or []
    if not deprecated:
        return []
    why = str(entry.get("reason", ""))
    if entry.get("int8_reason") and any("implicit INT8" in d for d in deprecated):
        why = f"{entry['int8_reason']}; {why}"
    return [f"uses {', '.join(deprecated)} on TensorRT {entry.get('tensorrt')}: {why}"]


def _fallback_reason(layer: str, problems: List[Any]) -> str:
    """The 'cannot run on DLA' line about the same layer, if the log has one, else the fallback line itself."""
    for problem in problems:
        if problem.kind == "dla" and problem.layer == layer and "cannot run" in problem.detail:
            return str(problem.line.split("]")[-1].strip(": ").strip())
    for problem in problems:
        if problem.kind == "dla" and problem.layer == layer:
            return str(problem.line.split("]")[-1].strip(": ").strip())
    return "not supported on DLA"


QUANTIZED_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearWhere",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}
_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def report_from_onnx(model: onnx.ModelProto, tensors_without_scale: Iterable[str] = (), build_seconds: float = 0.0) -> BuildReport:
    """onnxruntime's optimized graph: a node runs INT8 only as a quantized kernel (QLinearConv, QGemm, ...). A float
    node that takes DequantizeLinear outputs (the TensorRT Q/DQ flavour on onnxruntime) computes in FP32 on
    dequantized values: 'fp32-qdq', not INT8."""
    report = BuildReport(source="onnx graph", build_seconds=round(build_seconds, 3))
    dq_outputs = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    for node in model.graph.node:
        if node.op_type in _QDQ:
            continue
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            precision = "int8"
        elif any(i in dq_outputs for i in node.input):
            precision = "fp32-qdq"
        else:
            precision = "fp32"
        report.layer_precisions.append({"name": node.name or node.op_type, "precision": precision, "device": "cpu", "op": node.op_type})
        report.precisions[precision] = report.precisions.get(precision, 0) + 1
    report.layers = report.layers_cpu = len(report.layer_precisions)
    report.int8_layers = report.precisions.get("int8", 0)
    report.tensors_without_scale = list(tensors_without_scale)
    return report


def precision_warnings(report: BuildReport, spec: BuildSpec) -> List[str]:
    """Silent downgrades said out loud, policy or not."""
    warnings: List[str] = []
    wanted = spec.effective_precision()
    if wanted == Precision.INT8 and report.layers and report.int8_layers == 0 and report.precisions:
        warnings.append(f"INT8 was asked but no layer runs in INT8 (precisions: {_counts(report.precisions)})")
    if wanted == Precision.INT8 and report.tensors_without_scale:
        shown = ", ".join(report.tensors_without_scale[:5])
        more = f" and {len(report.tensors_without_scale) - 5} more" if len(report.tensors_without_scale) > 5 else ""
        warnings.append(f"{len(report.tensors_without_scale)} tensor(s) had no calibration scale and run in higher precision: {shown}{more}")
    if spec.dla_core is not None and report.fallbacks:
        warnings.append(f"{len(report.fallbacks)} layer(s) fell back from DLA to the GPU")
    return warnings


def policy_violations(report: BuildReport, spec: BuildSpec, policy: BuildPolicy) -> List[str]:
    """Why this engine must not be used under `policy` (empty: accepted)."""
    violations: List[str] = []
    if policy.require_int8 and spec.effective_precision() == Precision.INT8:
        if not report.precisions:
            violations.append("require_int8: the report has no per-layer precisions, so INT8 cannot be confirmed")
        elif report.int8_layers == 0:
            violations.append(f"require_int8: INT8 was asked but no layer runs in INT8 ({_counts(report.precisions)})")
    if policy.require_int8 and spec.effective_precision() != Precision.INT8:
        violations.append(f"require_int8: the spec asks for {Precision(spec.precision).value}, not INT8 (is a calibration table missing?)")
    if policy.min_dla_layer_fraction > 0 and spec.dla_core is not None:
        if report.dla_fraction is None:
            violations.append("min_dla_layer_fraction: the report does not say how many layers run on DLA")
        elif report.dla_fraction < policy.min_dla_layer_fraction:
            violations.append(
                f"min_dla_layer_fraction: {report.layers_dla} of {report.layers} layers run on DLA "
                f"({report.dla_fraction:.0%}), the policy wants at least {policy.min_dla_layer_fraction:.0%}"
            )
    return violations


def _counts(counts: Dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda item: -item[1]))
