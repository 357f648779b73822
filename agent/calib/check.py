"""Verdicts on a calibration table before it is deployed: its own scales, its fit to the ONNX model, and what the
target TensorRT (or the CPU) will do with it. Findings carry a severity; any error blocks deployment.

Why each verdict matters (calibtables/README.md, docs/engines.md):
- A zero scale means the tensor was all zeros during calibration (a dead branch, or frames that never exercise
  it): INT8 would flush everything there to zero. inf/nan mean a broken calibration. Either wrecks accuracy
  silently, so they block where they touch the model (or where no model is given to prove they do not).
- Table entries that match no tensor are normal for TensorRT's own names ("(Unnamed Layer* 12) [Shuffle]_output")
  and a sign of a renamed export otherwise; quantizable inputs without an entry fall back to FP16/FP32.
- The header decides whether TensorRT's cache path accepts the table (version and calibrator must match);
  per-tensor dynamic ranges ignore it; TensorRT 11 accepts only explicit Q/DQ; DLA takes the cache path with
  EntropyCalibration2 only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from agent.calib.graph import GraphIndex, index_graph, node_label, quantization_points
from agent.calib.routes import Int8Method, Int8Route, choose_int8_route
from agent.calib.table import (
    ENTROPY2,
    FORMAT_TENSORRT,
    KNOWN_ALGORITHMS,
    MINMAX,
    CalibError,
    CalibTable,
    is_usable_scale,
    printable,
    scale_kind,
    table_stats,
)
from agent.device.target import Target, TargetError
from agent.device.versions import (
    Version,
    VersionError,
    dla_support,
    encode_header_version,
    format_version,
    parse_version,
)

if TYPE_CHECKING:
    import onnx

SEVERITIES = ("error", "warning", "info")
FP16_MAX = 65504.0  # an amax above this overflows the FP16 fallback of a layer that does not run INT8
TINY_AMAX = 1e-6  # below this the tensor is effectively constant zero
TRT_INTERNAL_NAME = re.compile(r"^\(Unnamed Layer\* \d+\)|^ONNXTRT_|^\[trt", re.ASCII)
LIST_LIMIT = 50  # names listed per finding in messages (the `tensors` field lists them all)


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning | info
    code: str
    message: str
    tensors: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerVerdict:
    """What the table means for one quantizable layer."""

    node: str
    op_type: str
    int8: bool  # every activation input has a usable scale
    missing: List[str]  # activation inputs without an entry
    degenerate: List[str]  # activation inputs with a zero/inf/nan/negative scale


@dataclass
class Coverage:
    network_tensors: int
    with_scale: int
    without_scale: List[str]  # network tensors (float activations) the table does not cover
    unmatched_entries: List[str]  # table names that are no tensor of the model
    rename_hints: Dict[str, str]  # table name -> model tensor it probably is
    layers: List[LayerVerdict]

    @property
    def int8_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.int8)


@dataclass
class CheckReport:
    findings: List[Finding]
    route: Optional[Int8Route] = None
    trt_version: Optional[str] = None
    target: str = "gpu"
    coverage: Optional[Coverage] = None

    @property
    def blocking(self) -> bool:
        return any(f.severity == "error" for f in self.findings)

    def by_code(self, code: str) -> List[Finding]:
        return [f for f in self.findings if f.code == code]

    @property
    def codes(self) -> List[str]:
        return [f.code for f in self.findings]


def _names(names: List[str]) -> str:
    shown = ", ".join(printable(n) for n in names[:LIST_LIMIT])
    return shown + (f" (+{len(names) - LIST_LIMIT} more)" if len(names) > LIST_LIMIT else "")


def check_table(
    table: CalibTable,
    model: Optional[onnx.ModelProto] = None,
    trt_version: Optional[str] = None,
    target: Union[str, Target] = "gpu",
    portable: bool = False,
) -> CheckReport:
    """All verdicts on `table`. `model`: the ONNX it will be applied to (None: judge the table alone).
    `trt_version`: the target TensorRT ("10.3.0"; None: not judged). `target`: gpu, dla (dla:N) or cpu.
    `portable`: the table is declared portable (routes.choose_int8_route then prefers the cache calibrator)."""
    try:
        kind = Target(target).kind
    except TargetError:
        raise CalibError(f"unknown target {target!r}: use gpu, dla (or dla:N) or cpu") from None
    report = CheckReport(findings=[], target=str(target))
    findings = report.findings
    index = index_graph(model) if model is not None else None
    in_model = set(index.network_tensors) | set(index.initializers) if index is not None else None
    _check_scales(table, in_model, findings)
    if index is not None:
        report.coverage = _check_model(table, index, findings)
    _check_target(table, trt_version, kind, portable, report)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return report


def _check_scales(table: CalibTable, in_model: Optional[set], findings: List[Finding]) -> None:
    stats = table_stats(table)
    if not table.entries:
        findings.append(Finding("error", "empty", "the table has no entries: nothing would be quantized"))
        return
    if stats.duplicates:
        findings.append(
            Finding("warning", "duplicate_names", f"{len(stats.duplicates)} tensor name(s) appear twice; the last value is used: {_names(stats.duplicates)}", stats.duplicates)
        )
    remedies = {
        "zero": "the tensor was all zeros during calibration: prune the dead branch, or recalibrate with frames that exercise it",
        "inf": "broken calibration (the tensor held inf, e.g. an attention mask of -inf): exclude it from INT8 or recalibrate",
        "nan": "broken calibration (the tensor held nan): fix the export or the frames and recalibrate",
        "negative": "a scale must be positive: the table is corrupt",
        "denormal": "a subnormal scale: the tensor is effectively zero, quantization steps underflow",
    }
    for kind in ("zero", "inf", "nan", "negative", "denormal"):
        names = stats.degenerate[kind]
        if not names:
            continue
        if kind == "denormal":
            relevant, severity = names, "warning"
        elif in_model is None:
            relevant, severity = names, "error"  # no model to prove they do not matter
        else:
            relevant = [n for n in names if n in in_model]
            severity = "error" if relevant else "warning"
        where = "" if in_model is None or relevant == names else f" ({len(relevant)} of them in the model)"
        label = {"zero": "0", "inf": "inf", "nan": "nan", "negative": "< 0", "denormal": "subnormal"}[kind]
        findings.append(Finding(severity, f"{kind}_scale", f"{len(names)} tensor(s) with scale {label}{where}: {remedies[kind]}: {_names(names)}", names))
    extreme_high = [n for n, s in table.entries.items() if is_usable_scale(s) and s * 127.0 > FP16_MAX]
    extreme_low = [n for n, s in table.entries.items() if is_usable_scale(s) and scale_kind(s) is None and s * 127.0 < TINY_AMAX]
    if extreme_high:
        findings.append(
            Finding("warning", "extreme_scale", f"{len(extreme_high)} tensor(s) with amax above FP16's 65504: their layers overflow where they fall back to FP16: {_names(extreme_high)}", extreme_high)
        )
    if extreme_low:
        findings.append(
            Finding("warning", "tiny_scale", f"{len(extreme_low)} tensor(s) with amax below {TINY_AMAX:g}: effectively constant zero during calibration: {_names(extreme_low)}", extreme_low)
        )
    colons = [n for n in table.entries if ":" in n]
    if colons:
        findings.append(
            Finding("info", "colon_in_names", f"{len(colons)} name(s) contain ':': onnxruntime's TensorRT EP splits native tables at the first ':' and misreads them (TensorRT and this agent split at the last)", colons)
        )


def _rename_key(name: str) -> str:
    """A name with the usual export decorations removed: TF ':0' suffixes, DeepStream-Yolo's '/0' prefix."""
    name = re.sub(r":0$", "", name)
    name = re.sub(r"^/?\d+/", "", name)
    return name.lstrip("/")


def _check_model(table: CalibTable, index: GraphIndex, findings: List[Finding]) -> Coverage:
    network = index.network_tensors
    known = set(network) | set(index.initializers)
    entries = table.entries
    with_scale = [t for t in network if t in entries]
    without = [t for t in network if t not in entries]
    unmatched = [n for n in entries if n not in known]
    internal = [n for n in unmatched if TRT_INTERNAL_NAME.search(n)]
    foreign = [n for n in unmatched if not TRT_INTERNAL_NAME.search(n)]
    by_key: Dict[str, List[str]] = {}
    for tensor in without:
        by_key.setdefault(_rename_key(tensor), []).append(tensor)
    hints = {n: by_key[_rename_key(n)][0] for n in foreign if len(by_key.get(_rename_key(n), [])) == 1}
    layers = []
    for node, tensors in quantization_points(index):
        missing = [t for t in tensors if t not in entries]
        degenerate = [t for t in tensors if t in entries and not is_usable_scale(entries[t])]
        layers.append(LayerVerdict(node_label(node), node.op_type, not missing and not degenerate, missing, degenerate))
    coverage = Coverage(len(network), len(with_scale), without, unmatched, hints, layers)
    if not with_scale:
        findings.append(
            Finding("error", "no_match", f"none of the table's {len(entries)} entries names a tensor of this model: wrong model, or a renamed export", foreign[:LIST_LIMIT])
        )
        return coverage
    float_layers = [layer for layer in layers if not layer.int8]
    missing_inputs = list(dict.fromkeys(t for layer in float_layers for t in layer.missing))
    if missing_inputs:
        names = [layer.node for layer in float_layers if layer.missing]
        findings.append(
            Finding(
                "warning",
                "missing_scales",
                f"{len(missing_inputs)} quantizable input(s) have no scale, so {len(names)} layer(s) run in FP16/FP32 instead of INT8 ({_names(names)}): {_names(missing_inputs)}",
                missing_inputs,
            )
        )
    missing_set = set(missing_inputs)
    other_missing = [t for t in without if t not in missing_set]
    if other_missing:
        findings.append(
            Finding(
                "info",
                "unscaled_tensors",
                f"{len(other_missing)} other network tensor(s) have no scale (implicit INT8 needs one on a layer's output too; TensorRT warns 'missing scale' and keeps those in higher precision): {_names(other_missing)}",
                other_missing,
            )
        )
    if foreign:
        hint_text = "; probably renamed: " + ", ".join(f"{printable(a)} -> {printable(b)}" for a, b in list(hints.items())[:10]) if hints else ""
        findings.append(
            Finding("warning", "unmatched_entries", f"{len(foreign)} table entries match no tensor of the model (renamed export?){hint_text}: {_names(foreign)}", foreign)
        )
    if internal:
        findings.append(
            Finding("info", "trt_internal_names", f"{len(internal)} entries name TensorRT-internal tensors (constants, reshapes the parser adds); they are not in the ONNX and need no match", internal)
        )
    findings.append(
        Finding("info", "coverage", f"{len(with_scale)} of {len(network)} network tensors have an entry; {coverage.int8_layers} of {len(layers)} quantizable layers get INT8")
    )
    return coverage


def _check_target(table: CalibTable, trt_version: Optional[str], kind: str, portable: bool, report: CheckReport) -> None:
    findings = report.findings
    header_version = table.version
    if table.format == FORMAT_TENSORRT and header_version is not None and not 5 <= header_version[0] <= 30:
        findings.append(Finding("warning", "odd_header_version", f"header code {table.version_code} does not decode to a TensorRT release ({format_version(header_version)})"))
    if table.algorithm and table.format == FORMAT_TENSORRT and table.algorithm not in KNOWN_ALGORITHMS:
        findings.append(Finding("warning", "unknown_algorithm", f"header algorithm {table.algorithm!r} is not a TensorRT calibrator ({', '.join(KNOWN_ALGORITHMS)})"))
    trt: Optional[Version] = None
    if trt_version is not None:
        try:
            trt = parse_version(trt_version)
        except VersionError as exc:
            raise CalibError(str(exc)) from None
        report.trt_version = format_version(trt)
    elif kind != "cpu":
        return  # nothing to judge a route by
    if kind == "dla":
        support = dla_support(trt, None)
        if not support.available:
            findings.append(Finding("error", "dla_unavailable", support.reason))
            return
    route = choose_int8_route(trt, kind, table_portable=portable)
    report.route = route
    findings.append(Finding("info", "route", f"{route.method.value}: {route.reason}"))
    if route.deprecated:
        findings.append(Finding("info", "implicit_int8_deprecated", "implicit INT8 is deprecated since TensorRT 10.1 and removed in 11.0: plan the Q/DQ route (calib to-qdq --flavor tensorrt)"))
    if route.method in (Int8Method.QDQ_TENSORRT, Int8Method.QDQ_ONNXRUNTIME):
        flavor = "tensorrt" if route.method == Int8Method.QDQ_TENSORRT else "onnxruntime"
        findings.append(Finding("info", "needs_qdq", f"the table is applied as explicit Q/DQ: calib to-qdq --flavor {flavor}; the header is not consulted"))
        return
    if route.method == Int8Method.DYNAMIC_RANGE:
        findings.append(Finding("info", "header_not_consulted", "per-tensor dynamic ranges: the header's version and algorithm do not matter on this route"))
        return
    _check_cache_route(table, trt, kind, findings)


def _check_cache_route(table: CalibTable, trt: Optional[Version], kind: str, findings: List[Finding]) -> None:
    """The cache-only calibrator: TensorRT reads the header and skips a cache whose version or calibrator differs
    (then asks for calibration data, has none, and the build fails)."""
    if trt is None:  # choose_int8_route never picks the cache route without a TensorRT version
        return
    code = f"TRT-{encode_header_version(trt)}-{table.algorithm or ENTROPY2}"
    if table.format != FORMAT_TENSORRT:
        findings.append(Finding("warning", "no_header", f"a {table.format} table has no TensorRT header: it must be rewritten as '{code}' before TensorRT reads it (with_header_version)"))
    elif table.version != trt:
        findings.append(
            Finding(
                "warning",
                "header_version_mismatch",
                f"header says TensorRT {table.trt_version}, the device runs {format_version(trt)}: TensorRT skips such a cache (and the build then fails for lack of data); rewrite the header to {code} (with_header_version). Portability of scales across versions is common practice but not documented by NVIDIA",
            )
        )
    else:
        findings.append(Finding("info", "header_version_match", f"header matches TensorRT {format_version(trt)}"))
    algorithm = table.algorithm if table.format == FORMAT_TENSORRT else None
    if kind == "dla" and algorithm is not None and algorithm != ENTROPY2:
        findings.append(
            Finding(
                "error",
                "dla_needs_entropy2",
                f"DLA takes scales only through IInt8EntropyCalibrator2, and this table says {algorithm}: TensorRT would skip it. Recalibrate with 'calib make --method entropy', or rewrite the header deliberately (with_header_version(..., algorithm='{ENTROPY2}'))",
            )
        )
    elif algorithm in (None, ENTROPY2, MINMAX):
        findings.append(Finding("info", "algorithm_ok", f"calibrator {algorithm or ENTROPY2}: the cache calibrator must be of this class"))
    else:
        findings.append(Finding("warning", "algorithm_unverified", f"calibrator {algorithm}: its cache layout is not verified (legacy caches also carry regression cutoff and quantile values)"))
