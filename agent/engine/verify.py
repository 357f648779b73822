"""May this engine load here? The verdict on an engine file or a cache folder, with its manifest or without
(a foreign plan is judged by its header and a trial deserialization; a foreign ONNX by onnxruntime loading it).
`edge-agent engine check` prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from agent.device.fingerprint import DeviceFingerprint
from agent.device.target import Backend
from agent.engine import compat
from agent.engine.diagnose import sniff_plan
from agent.engine.manifest import ManifestError, read_manifest
from agent.engine.trt_loader import trial_deserialize
from agent.errors import AgentError
from agent.lazy import try_import


class EngineFileError(AgentError):
    """The path is no engine to judge: missing, or a folder without a manifest."""


def verify_engine_file(path: Path, fp: DeviceFingerprint, trial: bool = True) -> Dict[str, Any]:
    """The verdict on an engine file or cache folder, as plain data (`loadable`, `reasons`, `hints`, ...)."""
    if not path.exists():
        raise EngineFileError(f"not found: {path}")
    manifest = None
    manifest_error = ""
    try:
        manifest = read_manifest(path)
    except ManifestError as exc:
        manifest_error = str(exc)
    engine_path = path
    if manifest is not None:
        engine_path = (path if path.is_dir() else path.parent) / manifest.engine_file
        verdict = compat.merge(compat.check_manifest(manifest, fp), compat.check_artifact(engine_path, manifest))
        if verdict.loadable and manifest.backend == Backend.TENSORRT and trial:
            verdict = compat.merge(verdict, _trial(engine_path, manifest.spec.dla_core))
    else:
        if path.is_dir():
            raise EngineFileError(f"{path}: a folder without a readable manifest ({manifest_error})")
        verdict = compat.Verdict(loadable=False)
        verdict.hints.append(f"no manifest beside it ({manifest_error}): a foreign engine, judged by loading it")
        if path.suffix.lower() == ".onnx":
            verdict = compat.merge(verdict, _try_onnxruntime(path))
            verdict.loadable = not verdict.reasons
        else:
            with open(path, "rb") as handle:
                head = handle.read(64)
            sniff = sniff_plan(head, path.stat().st_size)
            verdict.hints.extend(f"header: {hint}" for hint in sniff.hints)
            if trial and fp.tensorrt:
                trial_verdict = _trial(path, None)
                verdict = compat.merge(verdict, trial_verdict)
                verdict.loadable = trial_verdict.loadable
            else:
                verdict.add("no manifest and no TensorRT here to try it: cannot show that it loads")
    return {
        "path": str(engine_path),
        "loadable": verdict.loadable,
        "reasons": verdict.reasons,
        "mismatches": compat.mismatch_dicts(verdict),
        "hints": verdict.hints,
        "problems": verdict.problems,
        "key": manifest.key if manifest else None,
        "manifest": manifest.to_dict() if manifest else None,
        "device": {k: getattr(fp, k) for k in ("module", "soc", "l4t", "jetpack", "tensorrt", "cuda", "compute_capability", "dla_cores", "onnxruntime")},
    }


def _trial(path: Path, dla_core: Optional[int]) -> compat.Verdict:
    trial = trial_deserialize(path, dla_core)
    verdict = compat.Verdict(loadable=trial.ok, problems=trial.problems)
    if not trial.ok:
        verdict.reasons.append("trial deserialization failed: " + trial.summary())
    return verdict


def _try_onnxruntime(path: Path) -> compat.Verdict:
    verdict = compat.Verdict(loadable=True)
    ort = try_import("onnxruntime")
    if ort is None:
        verdict.add("onnxruntime is not installed here")
        return verdict
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        verdict.add(f"onnxruntime cannot load it: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}")
    return verdict
