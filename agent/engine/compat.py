"""May this engine load here? The manifest against the device fingerprint, field by field, with the exact
reason for each mismatch; then the artifact against its manifest (missing, truncated, corrupted).

TensorRT plans load only on the TensorRT that built them (to the build number) and the compute capability they
were built for (TensorRT's developer guide, 'Version Compatibility'); TensorRT also warns against using a plan across device models. The
onnxruntime backend follows the same rules (module, SoC, L4T, CPU architecture, and its own version), so the
whole flow runs in CI.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.device.fingerprint import DeviceFingerprint
from agent.device.target import Backend, TargetError
from agent.device.versions import reported_dla_support
from agent.engine.diagnose import sniff_plan
from agent.engine.manifest import Manifest
from agent.engine.spec import device_fields
from agent.store.hashing import sha256_file


@dataclass
class Mismatch:
    field: str
    built: Any
    here: Any
    reason: str


@dataclass
class Verdict:
    loadable: bool
    reasons: List[str] = field(default_factory=list)
    mismatches: List[Mismatch] = field(default_factory=list)
    hints: List[str] = field(default_factory=list)
    problems: List[Dict[str, Any]] = field(default_factory=list)  # classified TensorRT log lines of a trial load

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def add(self, reason: str) -> None:
        self.loadable = False
        if reason not in self.reasons:
            self.reasons.append(reason)


_WHY = {
    "tensorrt": "a TensorRT plan loads only on the exact TensorRT version that built it, to the build number",
    "compute_capability": "a plan holds kernels for one GPU architecture",
    "cuda": "the plan's kernels were built against another CUDA",
    "module": "TensorRT advises against using a plan across device models (tactics were timed on another module)",
    "soc": "another SoC is another GPU",
    "l4t": "another L4T (JetPack) release: drivers and libraries changed under the engine",
    "cpu_arch": "another CPU architecture",
    "onnxruntime": "onnxruntime's optimized model is written for the onnxruntime version that made it",
}


def _describe(value: Any) -> str:
    return "unknown" if value is None or value == "" else str(value)


def _same_version(built: str, here: str) -> Optional[bool]:
    """Compare dotted versions; None when `here` is less precise than `built` and agrees on what it has."""
    a, b = built.split("."), here.split(".")
    if a == b:
        return True
    common = min(len(a), len(b))
    if a[:common] != b[:common]:
        return False
    return None if len(b) < len(a) else False


def check_manifest(manifest: Manifest, fp: DeviceFingerprint) -> Verdict:
    """Every field the backend depends on, built vs here. A field unknown on both sides matches."""
    verdict = Verdict(loadable=True)
    try:
        backend = Backend.parse(manifest.backend)
    except TargetError:
        verdict.add(f"unknown backend {manifest.backend!r} in the manifest")
        return verdict
    here_backend = fp.tensorrt if backend == Backend.TENSORRT else fp.onnxruntime
    if not here_backend:
        verdict.add(f"this device has no {'TensorRT' if backend == Backend.TENSORRT else 'onnxruntime'}: the engine needs it")
    for name in device_fields(backend):
        built = manifest.device.get(name)
        here = getattr(fp, name)
        if name == "cuda" and built and here:
            built, here = ".".join(str(built).split(".")[:2]), ".".join(str(here).split(".")[:2])
        if built == here:
            continue
        if name in ("tensorrt", "onnxruntime") and built and here:
            same = _same_version(str(built), str(here))
            if same is None:
                verdict.hints.append(f"{name}: this device reports {here} only; cannot confirm the build number of {built}")
                continue
            if same:
                continue
        if name in ("tensorrt", "onnxruntime") and not here:
            continue  # already reported: no backend here
        reason = f"{name}: built with {_describe(built)}, this device has {_describe(here)} ({_WHY[name]})"
        verdict.mismatches.append(Mismatch(name, built, here, reason))
        verdict.add(reason)
    dla_core = manifest.spec.dla_core
    if backend == Backend.TENSORRT and dla_core is not None:
        support = reported_dla_support(fp.tensorrt, fp.dla_cores, fp.module)
        if not support.available:
            verdict.add(f"dla: the engine runs on DLA core {dla_core}, but {support.reason}")
        elif fp.dla_cores is not None and dla_core >= fp.dla_cores:
            verdict.add(f"dla: the engine runs on DLA core {dla_core}, this device has {fp.dla_cores} DLA core(s)")
    return verdict


def check_artifact(path: Path, manifest: Manifest, full_hash: bool = True) -> Verdict:
    """The engine file against its manifest: present, the recorded size, the recorded sha256."""
    verdict = Verdict(loadable=True)
    try:
        size = os.path.getsize(path)
    except OSError:
        verdict.add(f"engine file missing: {path}")
        return verdict
    if manifest.backend == Backend.TENSORRT:
        try:
            with open(path, "rb") as handle:
                head = handle.read(64)
        except OSError as exc:
            verdict.add(f"engine file unreadable: {exc.strerror or exc}")
            return verdict
        sniff = sniff_plan(head, size)
        verdict.hints.extend(f"header: {hint}" for hint in sniff.hints)
    if size < manifest.engine_bytes:
        verdict.add(f"truncated: the engine file has {size} bytes, the manifest says {manifest.engine_bytes}")
        return verdict
    if size != manifest.engine_bytes:
        verdict.add(f"corrupt: the engine file has {size} bytes, the manifest says {manifest.engine_bytes}")
        return verdict
    if full_hash:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            verdict.add(f"engine file unreadable: {exc.strerror or exc}")
            return verdict
        if digest != manifest.engine_sha256:
            verdict.add(f"corrupt: the engine file's sha256 is {digest[:16]}..., the manifest says {manifest.engine_sha256[:16]}...")
    return verdict


def merge(*verdicts: Verdict) -> Verdict:
    out = Verdict(loadable=all(v.loadable for v in verdicts))
    for verdict in verdicts:
        out.reasons.extend(r for r in verdict.reasons if r not in out.reasons)
        out.mismatches.extend(verdict.mismatches)
        out.hints.extend(h for h in verdict.hints if h not in out.hints)
        out.problems.extend(verdict.problems)
    return out


def mismatch_dicts(verdict: Verdict) -> List[Dict[str, Any]]:
    return [asdict(m) for m in verdict.mismatches]
