"""What the agent does about a classified TensorRT (or onnxruntime) failure: ONE table, kind -> action.

    retry_smaller  retry the build once with half the workspace limit (the memory TensorRT may use for tactics);
                   a second failure refuses
    fp16_layers    build again with the named tensors left out of the calibration table, so their layers run in
                   FP16 (the INT8 builds of this agent set the FP16 flag too); with nothing named, the whole
                   network in FP16. Only when the deployment allows it (not `require_int8`), and only once
    rebuild        the engine file is the problem (another TensorRT, another GPU, corrupt): build it again here
    refuse         nothing the agent can change fixes it: fail the deployment with the problem's reason
    report         a warning: keep the engine, say it in the build report

Only the verdict of a log decides (agent.engine.diagnose.verdict: the first error a kind explains). The table is
documented in docs/engines.md ("When a build or load fails") and tested row by row in tests/engine/test_remedy.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from agent.engine.diagnose import Problem, verdict

ACTIONS = ("retry_smaller", "fp16_layers", "rebuild", "refuse", "report")
MIN_WORKSPACE_MB = 64


@dataclass(frozen=True)
class Remedy:
    kind: str
    sub_kind: Optional[str]  # None: every sub-kind of the kind without a row of its own
    action: str
    why: str


REMEDIES: Tuple[Remedy, ...] = (
    Remedy("version_mismatch", None, "rebuild", "the plan was built by another TensorRT: it is built again on this device"),
    Remedy("device_mismatch", None, "rebuild", "the plan was built for another GPU or device model: it is built again here"),
    Remedy("corrupt", None, "rebuild", "the plan file is not readable: it is built again"),
    Remedy("out_of_memory", None, "retry_smaller", "memory ran out: one retry with half the workspace limit, then refuse"),
    Remedy("unsupported_op", None, "refuse", "the model uses an operator, data type or attribute this runtime cannot import"),
    Remedy("plugin_missing", None, "refuse", "a plugin the model needs is not registered"),
    Remedy("calibration", "zero_tensor", "fp16_layers", "a tensor is zero for all calibration data: its layers run in FP16"),
    Remedy("calibration", "missing_ranges", "fp16_layers", "tensors without a scale: their layers run in FP16 (all of them when none has one)"),
    Remedy("calibration", "algorithm_mismatch", "refuse", "the table is not used by this route: publish it for the route the check names"),
    Remedy("calibration", "table_unreadable", "refuse", "the calibration table cannot be read"),
    Remedy("calibration", "calibrator_failed", "refuse", "the calibrator failed; this agent builds from a precomputed table"),
    Remedy("no_implementation", "workspace", "retry_smaller", "no kernel fit in the memory there was: one retry with half the workspace limit"),
    Remedy("no_implementation", "format", "fp16_layers", "no kernel for the requested precision: the network is built in FP16"),
    Remedy("dla", "fallback", "report", "layers fall back from DLA to the GPU (min_dla_layer_fraction judges it)"),
    Remedy("dla", "error", "refuse", "the DLA build or execution failed"),
    Remedy("batch_mismatch", None, "rebuild", "the engine was built for a smaller batch: built again for the batch asked"),
    Remedy("api_usage", None, "refuse", "TensorRT refused a call: a bug to report, not a condition of the device"),
    Remedy("unknown", None, "refuse", "no known cause: the line is quoted"),
)


def remedy_for(kind: str, sub_kind: Optional[str] = None) -> Remedy:
    for row in REMEDIES:
        if row.kind == kind and row.sub_kind == sub_kind:
            return row
    for row in REMEDIES:
        if row.kind == kind and row.sub_kind is None:
            return row
    return REMEDIES[-1]


@dataclass
class Decision:
    action: str
    reason: str
    problem: Optional[Problem] = None
    names: List[str] = field(default_factory=list)  # tensors (fp16_layers); unsupported operators and missing plugins (refuse)

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"action": self.action, "reason": self.reason, "names": list(self.names)}
        if self.problem is not None:
            data["kind"] = self.problem.kind
            if self.problem.sub_kind:
                data["sub_kind"] = self.problem.sub_kind
        return data


def decide(problems: List[Problem], *, retried: bool = False, allow_fp16: bool = True) -> Decision:
    """The action for a failed build or load whose log gave `problems`. `retried`: a remedy already ran once for
    this build; `allow_fp16`: the deployment accepts layers in FP16 (its policy does not require INT8)."""
    main = verdict(problems)
    if main is None:
        return Decision("refuse", "the log names no problem")
    if main.severity != "error":
        return Decision("report", describe(main), main)
    row = remedy_for(main.kind, main.sub_kind)
    reason = describe(main)
    if row.action == "refuse":
        return Decision("refuse", _refusal(main, problems), main, _blocking_names(main, problems))
    if row.action in ("retry_smaller", "fp16_layers") and retried:
        return Decision("refuse", f"{reason} (still failing after one retry: {row.why})", main)
    if row.action == "fp16_layers":
        if not allow_fp16:
            return Decision("refuse", f"{reason} (the deployment requires INT8, so no layer may fall back to FP16)", main)
        names = _tensors(main, problems)
        return Decision("fp16_layers", reason, main, names)
    return Decision(row.action, reason, main)


def describe(problem: Problem) -> str:
    """One line for a person: the kind, what the line states, and the fix."""
    head = problem.kind + (f"/{problem.sub_kind}" if problem.sub_kind else "")
    text = problem.detail or problem.line.strip()
    if problem.kind == "unknown":
        text = f"{text + ': ' if text else ''}{problem.line.strip()[:300]!r}"
    return f"{head}: {text}" + (f"; {problem.advice}" if problem.advice else "")


def _names_of(problem: Problem) -> str:
    fields = problem.fields
    if problem.kind == "plugin_missing":
        name = str(fields.get("plugin") or "?")
        return name + (f" version {fields['plugin_version']}" if fields.get("plugin_version") else "")
    what = str(fields.get("operator") or fields.get("data_type") or fields.get("attribute") or fields.get("node") or "?")
    where = [f"node {fields['node_number']}" if fields.get("node_number") is not None else "", str(fields.get("node") or "") if fields.get("node") != what else "",
             f"opset {fields['opset']}" if fields.get("opset") is not None else ""]
    where = [w for w in where if w]
    return what + (f" ({', '.join(where)})" if where else "")


def _blocking_names(main: Problem, problems: List[Problem]) -> List[str]:
    if main.kind not in ("unsupported_op", "plugin_missing"):
        return []
    names: List[str] = []
    for problem in problems:
        if problem.kind == main.kind:
            name = _names_of(problem)
            if name not in names:
                names.append(name)
    return names


def blocking_names(problems: List[Problem]) -> Tuple[List[str], List[str]]:
    """(unsupported operators, missing plugins) a log names, each with what the line says about it."""
    ops = [_names_of(p) for p in problems if p.kind == "unsupported_op"]
    plugins = [_names_of(p) for p in problems if p.kind == "plugin_missing"]
    return list(dict.fromkeys(ops)), list(dict.fromkeys(plugins))


def _refusal(main: Problem, problems: List[Problem]) -> str:
    names = _blocking_names(main, problems)
    if main.kind == "unsupported_op":
        return f"unsupported operator(s): {', '.join(names)}; {main.advice}"
    if main.kind == "plugin_missing":
        return f"missing plugin(s): {', '.join(names)}; {main.advice}"
    return describe(main)


def _tensors(main: Problem, problems: List[Problem]) -> List[str]:
    """The tensors to leave out of the table: those the calibration problems name (none: the whole network)."""
    if main.kind != "calibration" or main.fields.get("tensors") == "all":
        return []
    names: List[str] = []
    for problem in problems:
        if problem.kind == "calibration" and problem.sub_kind in ("zero_tensor", "missing_ranges"):
            tensor = problem.fields.get("tensor")
            if tensor and tensor not in names:
                names.append(str(tensor))
    return names


def smaller_workspace(workspace_mb: int, free_mb: Optional[int] = None) -> int:
    """Half the workspace limit (0 means TensorRT's default, the whole GPU memory: half the free memory then)."""
    base = workspace_mb if workspace_mb > 0 else (free_mb or 2 * 1024)
    return max(MIN_WORKSPACE_MB, base // 2)
