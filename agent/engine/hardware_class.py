"""The hardware class: which devices may share one engine, as a stable key and the fields behind it.

A plan built on one device may serve another only when they agree on everything the plan depends on. The class
is those fields, taken from the device fingerprint and the build spec:

| field              | backend      | protects against |
|--------------------|--------------|------------------|
| tensorrt           | tensorrt     | "expecting library version A got B": a plan loads only on its TensorRT, to the build number |
| compute_capability | tensorrt     | "generated on an incompatible device, expecting compute X got Y": kernels for one GPU architecture |
| hardware           | both         | tactics timed on another module or GPU model (TensorRT warns; speed and memory differ) |
| soc                | both         | another SoC is another GPU and another DLA |
| l4t, jetpack       | both         | drivers and libraries under the engine changed with the BSP (the DeepStream copy-an-.engine failure) |
| cuda               | tensorrt     | kernels built against another CUDA (major.minor) |
| cpu_arch           | both         | another instruction set altogether |
| dla                | tensorrt/DLA | DLA loadables are compiled for one DLA hardware version (the SoC) and core count |
| plugins            | tensorrt     | a plan calls into its plugin libraries: the same names with the same sha256 |
| onnxruntime        | onnxruntime  | the optimized model is written by and for one onnxruntime version |
| cpu_features       | onnxruntime  | MLAS picks INT8 kernels by ISA (AVX2 without VNNI saturates u8*s8 sums; aarch64 dot/i8mm) |

The key is `<trt|ort>-<readable part>-<12 hex digits of sha256 over the canonical JSON of the fields>`: equal
fields, equal key, on any machine and any Python. `compare` names each differing field the way an operator
reads it ("tensorrt: TensorRT 10.3.0.30 here, plan 10.3.0.26"); `check_plan` adds the spec, the existing
compatibility verdicts (agent.engine.compat) and the builder's gate to decide whether a shared plan may even be
tried. Pure functions: nothing here imports TensorRT or reads a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from agent.device.fingerprint import DeviceFingerprint
from agent.device.target import Backend
from agent.engine import compat
from agent.engine.manifest import Manifest, ManifestError
from agent.engine.spec import BuildSpec, SpecError, key_differences

CLASS_SCHEMA = 1

LABELS = {
    "backend": "backend",
    "tensorrt": "TensorRT",
    "compute_capability": "compute capability",
    "hardware": "module",
    "soc": "SoC",
    "l4t": "L4T",
    "jetpack": "JetPack",
    "cuda": "CUDA",
    "cpu_arch": "CPU architecture",
    "dla": "DLA hardware",
    "plugins": "plugin libraries",
    "onnxruntime": "onnxruntime",
    "cpu_features": "CPU features",
}

WHY = {
    "backend": "a TensorRT plan and an onnxruntime model are different things",
    "tensorrt": "a plan loads only on the TensorRT that built it, to the build number",
    "compute_capability": "a plan holds kernels for one GPU architecture",
    "hardware": "TensorRT advises against using a plan across device models: tactics were timed on another one",
    "soc": "another SoC is another GPU and DLA",
    "l4t": "drivers and libraries changed with the L4T release",
    "jetpack": "another JetPack is another set of libraries",
    "cuda": "the plan's kernels were built against another CUDA",
    "cpu_arch": "another CPU architecture",
    "dla": "a DLA loadable is compiled for one DLA hardware version and core",
    "plugins": "the plan calls into its plugin libraries, which must be the very same files",
    "onnxruntime": "the optimized model is written for the onnxruntime version that made it",
    "cpu_features": "onnxruntime picks its INT8 kernels by CPU extension; results and speed differ",
}


@dataclass(frozen=True)
class HardwareClass:
    key: str
    fields: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "schema": CLASS_SCHEMA, "fields": dict(self.fields)}


@dataclass
class ClassMismatch:
    field: str
    plan: Any
    here: Any
    reason: str


def _cuda(value: Optional[str]) -> Optional[str]:
    return ".".join(str(value).split(".")[:2]) if value else None


def class_fields(fp: DeviceFingerprint, spec: BuildSpec) -> Dict[str, Any]:
    """The fields of the class for `spec` on the device `fp` (plain JSON values; None where unknown)."""
    backend = Backend.parse(spec.backend)
    fields: Dict[str, Any] = {"backend": backend.value}
    if backend == Backend.TENSORRT:
        fields["tensorrt"] = fp.tensorrt
        fields["compute_capability"] = fp.compute_capability
    else:
        fields["onnxruntime"] = fp.onnxruntime
    fields["hardware"] = fp.module or fp.gpu
    fields["soc"] = fp.soc
    fields["l4t"] = fp.l4t
    fields["jetpack"] = fp.jetpack
    fields["cpu_arch"] = fp.cpu_arch
    if backend == Backend.TENSORRT:
        fields["cuda"] = _cuda(fp.cuda)
        dla_core = spec.dla_core
        fields["dla"] = None if dla_core is None else {"soc": fp.soc, "cores": fp.dla_cores, "core": dla_core}
        fields["plugins"] = [f"{p.name}:{p.sha256}" for p in sorted(spec.plugins, key=lambda p: p.name)]
    else:
        fields["cpu_features"] = sorted(fp.cpu_features or [])
    return fields


def _slug(text: str, limit: int = 28) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")[:limit].strip("-")


def key_of(fields: Dict[str, Any]) -> str:
    """'trt-jetson-agx-orin-64gb-10.3.0.30-3f2a9c0b1d4e' / 'ort-x86-64-1.20.1-5a6b7c8d9e0f'."""
    canonical = json.dumps({"schema": CLASS_SCHEMA, "fields": fields}, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    backend = fields.get("backend")
    prefix = "trt" if backend == Backend.TENSORRT.value else "ort"
    machine = _slug(str(fields.get("hardware") or fields.get("cpu_arch") or "unknown"))
    version = _slug(str(fields.get("tensorrt" if backend == Backend.TENSORRT.value else "onnxruntime") or "unknown"), 16)
    return f"{prefix}-{machine}-{version}-{digest}"


def hardware_class(fp: DeviceFingerprint, spec: BuildSpec) -> HardwareClass:
    fields = class_fields(fp, spec)
    return HardwareClass(key_of(fields), fields)


def manifest_class(manifest: Manifest) -> HardwareClass:
    """The class an engine was built for: its manifest's device fingerprint and spec (`edge-agent engine inspect`)."""
    fp = DeviceFingerprint.from_dict(manifest.device)
    return hardware_class(fp, manifest.spec)


def is_class_key(text: str) -> bool:
    return bool(re.match(r"^(trt|ort)-[a-z0-9.-]{1,64}-[0-9a-f]{12}$", text or ""))


def device_classes(fp: DeviceFingerprint, targets: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """The classes of this device for its usable targets (`edge-agent device --json`): the CPU (onnxruntime)
    where onnxruntime is present, the GPU where TensorRT is, and each DLA core."""
    if targets is None:
        targets = []
        if fp.onnxruntime:
            targets.append("cpu")
        if fp.tensorrt:
            targets.append("gpu")
            targets.extend(f"dla:{i}" for i in range(min(int(fp.dla_cores or 0), 2)))
    out: Dict[str, Dict[str, Any]] = {}
    for target in targets:
        precision = "fp32" if target == "cpu" else "fp16"
        spec = BuildSpec(model_sha256="0" * 64, precision=precision, target=target)  # type: ignore[arg-type]
        out[target] = hardware_class(fp, spec).to_dict()
    return out


# --- field-by-field verdicts ---------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "unknown"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
    return str(value)


def compare(plan: Dict[str, Any], here: Dict[str, Any]) -> List[ClassMismatch]:
    """Every class field where the plan's class and this device's differ, with the message an operator reads:
    'tensorrt: TensorRT 10.3.0.30 here, plan 10.3.0.26 (a plan loads only on ...)'."""
    out: List[ClassMismatch] = []
    order = list(plan) + [name for name in here if name not in plan]
    for name in order:
        built, mine = plan.get(name), here.get(name)
        if built == mine:
            continue
        label = LABELS.get(name, name)
        why = WHY.get(name, "the plan depends on it")
        if isinstance(built, list) and isinstance(mine, list) and built and mine:  # name the elements that differ
            lacks, extra = [v for v in built if v not in mine], [v for v in mine if v not in built]
            parts = ([f"lacks {_show(lacks)}"] if lacks else []) + ([f"adds {_show(extra)}"] if extra else [])
            text = f"{name}: {label} here {' and '.join(parts)}, against the plan's machine ({why})"
        else:
            text = f"{name}: {label} {_show(mine)} here, plan {_show(built)} ({why})"
        out.append(ClassMismatch(name, built, mine, text))
    return out


@dataclass
class PlanVerdict:
    """May this shared plan be tried here? `field_name` is the first differing field ('tensorrt', 'spec.precision',
    'gate', 'class'...), `reasons` every reason in full."""

    usable: bool
    field_name: str = ""
    reasons: List[str] = field(default_factory=list)
    mismatches: List[Dict[str, Any]] = field(default_factory=list)
    plan_class: str = ""
    here_class: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""

    def refuse(self, name: str, reason: str) -> None:
        self.usable = False
        if not self.field_name:
            self.field_name = name
        if reason not in self.reasons:
            self.reasons.append(reason)


def check_plan(
    embedded: Dict[str, Any], fp: DeviceFingerprint, spec: BuildSpec, *, artifact_id: str = "", size: Optional[int] = None
) -> PlanVerdict:
    """The signed engine manifest embedded in a plan artifact (`agent.fleet.plans`) against this device and the
    spec it wants: the class field by field, the spec, the compatibility verdicts of agent.engine.compat, the
    builder's accuracy gate, and that the manifest describes these very bytes."""
    verdict = PlanVerdict(usable=True)
    try:
        wanted = spec.validate()
        here = hardware_class(fp, wanted)
    except SpecError as exc:
        verdict.refuse("spec", f"spec: {exc}")
        return verdict
    verdict.here_class = here.key
    if not isinstance(embedded, dict):
        verdict.refuse("manifest", "the plan carries no engine manifest")
        return verdict
    klass = _obj(embedded.get("class"))
    plan_fields = klass.get("fields") if isinstance(klass.get("fields"), dict) else None
    verdict.plan_class = str(klass.get("key") or "")
    if plan_fields is None:
        verdict.refuse("class", "the plan names no hardware class")
        return verdict
    if key_of(plan_fields) != verdict.plan_class:
        verdict.refuse("class", f"the plan's class key {verdict.plan_class!r} does not match its own fields")
    for mismatch in compare(plan_fields, here.fields):
        verdict.mismatches.append(asdict(mismatch))
        verdict.refuse(mismatch.field, mismatch.reason)
    try:
        manifest = Manifest.from_dict(_obj(embedded.get("engine")))
    except ManifestError as exc:
        verdict.refuse("manifest", f"the embedded engine manifest is unreadable: {exc}")
        return verdict
    plan_spec = manifest.spec.to_dict()
    mine = wanted.to_dict()
    for name in key_differences(plan_spec, mine):
        verdict.refuse(f"spec.{name}", f"spec.{name}: {_show(_dig(mine, name))} here, plan {_show(_dig(plan_spec, name))} (another build spec is another engine)")
    device_verdict = compat.check_manifest(manifest, fp)
    for device_mismatch in device_verdict.mismatches:
        verdict.refuse(device_mismatch.field, device_mismatch.reason)
    for reason in device_verdict.reasons:
        verdict.refuse("device", reason)
    if manifest.status != "ok" or manifest.policy_violations:
        verdict.refuse("policy", "the builder's policy refused this engine: " + "; ".join(manifest.policy_violations or [manifest.status]))
    gate = _obj(embedded.get("gate"))
    if not gate.get("passed") and not gate.get("skipped"):
        verdict.refuse("gate", "the builder's accuracy gate did not pass this plan (" + str(gate.get("summary") or gate.get("reason") or "no gate result") + ")")
    if artifact_id and manifest.engine_sha256 != artifact_id:
        verdict.refuse("engine_sha256", f"the embedded manifest describes engine {manifest.engine_sha256[:12]}, the artifact is {artifact_id[:12]}")
    if size is not None and manifest.engine_bytes != size:
        verdict.refuse("engine_bytes", f"the embedded manifest says {manifest.engine_bytes} bytes, the artifact has {size}")
    return verdict


def _obj(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dig(data: Dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
