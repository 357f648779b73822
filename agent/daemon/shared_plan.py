"""Use a shared plan instead of building: the device side of "build once per hardware class".

Before the build step builds, `SharedPlans.prepare` looks for a plan for this device's class and this spec: the
one the deployment names for the class (`plans`), else the builder's retained index
(`<prefix>/artifacts/plans/<class>/<spec digest>`). Then, in this order, and never on trust:

1. the artifact manifest: signed by a configured key, and that key trusted for `engine` (agent.fleet.artifact_trust);
2. the embedded engine manifest against this device and spec, field by field (agent.engine.hardware_class
   check_plan: class, spec, the compat verdicts, the builder's gate): checked *before* a block is fetched, so a
   refused plan leaves nothing stored;
3. the pull itself (resumable, bounded in memory, the whole-file sha256 against the artifact id);
4. the trial load in a child process (TensorRT deserialization; onnxruntime a real session and one run);
5. installed into the engine cache under this device's own cache key, after which the normal build step finds it
   as a cache hit (the file's sha256 against the manifest again) and the validate step runs this device's own
   accuracy gate (unless the deployment sets `skip_plan_gate`).

Any refusal names the field ("tensorrt: TensorRT 10.3.0.30 here, plan 10.3.0.26 (...)"), is reported as
`engine.plan_refused` and in the status (`serving.engine.plan.refused`), and the device builds locally as before.
A device named in no plan (another class) tries the deployment's nearest plan only to say which field differs.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.device.target import Backend
from agent.engine.build import fingerprint_for_backend
from agent.engine.cache import EngineCache
from agent.engine.hardware_class import check_plan, hardware_class
from agent.engine.manifest import Manifest, write_manifest
from agent.engine.plan_trial import trial_load
from agent.engine.plugins import resolve_plugins
from agent.engine.spec import cache_key
from agent.errors import AgentError
from agent.fleet.artifact_trust import KindTrust
from agent.fleet.plans import PLAN_KIND, PlanRefusedError, decode_index, embedded_of, index_topic, spec_digest

log = logging.getLogger(__name__)

SHARED_NOTE = "shared plan "  # the note an installed plan's manifest carries: "shared plan <artifact id> built by <builder>"
INDEX_WAIT_S = 0.5  # a retained index message arrives right after subscribing; paid only when no engine is cached


@dataclass
class PlanOutcome:
    """What became of the shared plan for one deployment on this device."""

    source: str = "local"  # shared | local | cache (an engine was already cached)
    class_key: str = ""
    artifact_id: str = ""
    builder: str = ""
    reason: str = ""  # why the device built locally
    refused: Optional[Dict[str, Any]] = None  # {"artifact_id", "field", "reason", "reasons"}: plan_refused
    pull_s: float = 0.0
    trial_s: float = 0.0
    builder_gate: Dict[str, Any] = field(default_factory=dict)
    build_s_saved: float = 0.0  # the builder's build time this device did not spend
    installed_now: bool = False  # pulled, trial-loaded and installed by this call (the build step need not trial-load it again)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v not in (None, "", {}, 0.0) or k == "source"}


class SharedPlans:
    def __init__(self, link: Any, topics: Any, puller: Any, state_dir: Path, config: Any, emit: Callable[..., None]) -> None:
        self.link = link
        self.topics = topics
        self.puller = puller
        self.state_dir = Path(state_dir)
        self.config = config
        self.emit = emit

    # the one entry point ---------------------------------------------------------------------------------
    def prepare(self, deployment: Any, spec: Any, fingerprint: Any, *, cold: bool, cancel: Optional[threading.Event] = None) -> PlanOutcome:
        """Install a verified shared plan into the engine cache when one fits; never raises for a plan problem."""
        spec = spec.validate()
        fp = fingerprint_for_backend(fingerprint, spec.backend)
        klass = hardware_class(fp, spec)
        outcome = PlanOutcome(class_key=klass.key)
        cache = EngineCache.for_state(self.state_dir)
        key = cache_key(spec, fp)
        if cold:
            outcome.reason = "cold rebuild asked: built locally"
            return outcome
        entry = cache.lookup(key)
        if entry is not None and entry.status == "ok":
            installed = _installed_plan(entry.manifest)
            if installed:  # a shared plan installed earlier (a restart, a rebuild): still the builder's plan
                outcome.source, outcome.artifact_id, outcome.builder = "shared", installed[0], installed[1]
                outcome.reason = "the shared plan installed earlier is cached here"
                return outcome
            outcome.source = "cache"
            outcome.reason = "an engine for this class and spec is already cached here"
            return outcome
        if not getattr(deployment, "plans", None) and not KindTrust.parse(self.config.artifacts.key_kinds).trusts_any_key_for(PLAN_KIND):
            # no key may sign plans here, so none could be accepted: skip the wait for the class's index
            outcome.reason = "no key is trusted for engine plans here (artifacts.key_kinds): built locally"
            return outcome
        candidate, manifest, named = self._candidate(deployment, klass.key, spec)
        if candidate is None:
            outcome.reason = named or f"no shared plan for class {klass.key} and this spec: built locally"
            return outcome
        try:
            return self._use(candidate, manifest, spec, fp, klass.key, key, cache, outcome, cancel)
        except AgentError as exc:
            return self._refused(outcome, candidate, getattr(exc, "field", "") or getattr(exc, "code", "error"), str(exc),
                                 list(getattr(exc, "reasons", []) or [str(exc)]))
        except Exception as exc:  # a disk error installing it, a bug: the device still builds, as it would without plans
            log.exception("using shared plan %s failed", candidate[:12])
            return self._refused(outcome, candidate, "error", f"{type(exc).__name__}: {exc}", [])

    # which plan --------------------------------------------------------------------------------------------
    def _candidate(self, deployment: Any, class_key: str, spec: Any) -> Tuple[Optional[str], Any, str]:
        """(artifact id to try, its manifest from the class's index or None, why none). The deployment's plan for
        our class first, then the builder's index for our class and spec; failing both, a plan the deployment names
        for another class of the same backend, tried only so that the refusal names the field that differs."""
        digest = spec_digest(spec.to_dict())
        plans: Dict[str, str] = dict(getattr(deployment, "plans", None) or {})

        def indexed(klass: str) -> Any:
            found = self._retained(index_topic(self.topics.prefix, klass, digest))
            return decode_index(found) if found else None

        if class_key in plans:
            manifest = indexed(class_key)
            return plans[class_key], manifest if manifest is not None and manifest.artifact_id == plans[class_key] else None, ""
        manifest = indexed(class_key)
        if manifest is not None:
            return manifest.artifact_id, manifest, ""
        same_backend = sorted(k for k in plans if k.split("-", 1)[0] == class_key.split("-", 1)[0])
        if same_backend:
            other = indexed(same_backend[0])
            return plans[same_backend[0]], other if other is not None and other.artifact_id == plans[same_backend[0]] else None, ""
        if plans:
            return None, None, f"the deployment names plans for {', '.join(sorted(plans))}; this device is {class_key}: built locally"
        return None, None, ""

    def _retained(self, topic: str) -> Optional[bytes]:
        if self.link is None or not self.link.connected.is_set():
            return None
        arrived: queue.Queue[bytes] = queue.Queue()
        self.link.subscribe(topic, lambda msg: arrived.put(bytes(msg.payload)), qos=1)
        try:
            return arrived.get(timeout=INDEX_WAIT_S)
        except queue.Empty:
            return None
        finally:
            self.link.unsubscribe(topic)

    # using it ----------------------------------------------------------------------------------------------
    def _use(self, artifact_id: str, given: Any, spec: Any, fp: Any, class_key: str, key: str, cache: Any, outcome: PlanOutcome,
             cancel: Optional[threading.Event]) -> PlanOutcome:
        seen: Dict[str, Any] = {}

        def precheck(fields: Dict[str, Any]) -> None:
            embedded = embedded_of(fields)
            size = fields.get("size")
            verdict = check_plan(embedded, fp, spec, artifact_id=artifact_id, size=size if isinstance(size, int) else None)
            if not verdict.usable:
                raise PlanRefusedError(f"plan {artifact_id[:12]} refused: {verdict.reason}", verdict.field_name, verdict.reasons)
            engine = embedded.get("engine") or {}
            if engine.get("key") != key:
                raise PlanRefusedError(f"plan {artifact_id[:12]} refused: it is engine {engine.get('key')}, this device needs {key}", "key")
            seen.update(embedded)

        started = time.monotonic()
        path = self.puller.pull(artifact_id, expect_kind=PLAN_KIND, precheck=precheck, manifest=given)
        outcome.pull_s = round(time.monotonic() - started, 3)
        if cancel is not None and cancel.is_set():
            raise AgentError("canceled")
        outcome.artifact_id = artifact_id
        outcome.builder = str(seen.get("builder") or "")
        outcome.builder_gate = dict(seen.get("gate") or {})
        manifest = Manifest.from_dict(seen["engine"])
        plugins = resolve_plugins(spec.plugins, self.config.engine.plugin_dir) if spec.backend == Backend.TENSORRT else []
        trial = trial_load(Path(path), spec, plugins, timeout_s=min(600.0, float(self.config.engine.build_timeout_s)))
        outcome.trial_s = trial.seconds
        if not trial.ok:  # the stored artifact stays as it is (gc drops it once no deployment names it)
            raise PlanRefusedError(f"plan {artifact_id[:12]} refused: {trial.reason}", "trial_load")
        self._install(cache, key, Path(path), manifest, artifact_id, outcome.builder)
        outcome.source = "shared"
        outcome.installed_now = True
        outcome.build_s_saved = round(float(manifest.build_seconds or 0.0), 3)
        self.emit("engine.plan_used", key=key, artifact_id=artifact_id, class_key=class_key, builder=outcome.builder,
                  pull_s=outcome.pull_s, trial_s=outcome.trial_s)
        log.info("shared plan %s (class %s, built by %s) installed as %s", artifact_id[:12], class_key, outcome.builder, key)
        return outcome

    def _install(self, cache: Any, key: str, plan: Path, manifest: Any, artifact_id: str, builder: str) -> None:
        cache.check_writable()
        with cache.lock(600.0):
            folder = cache.new_build_dir(key)
            try:
                target = folder / manifest.engine_file
                try:
                    os.link(plan, target)  # the artifact store's copy and the engine share the disk space
                except OSError:
                    shutil.copyfile(plan, target)
                note = f"{SHARED_NOTE}{artifact_id} built by {builder or 'the class builder'}"
                write_manifest(folder, replace(manifest, notes=[*manifest.notes, note]))
                cache.install(key, folder)
            finally:
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)

    def _refused(self, outcome: PlanOutcome, artifact_id: str, field_name: str, reason: str, reasons: List[str]) -> PlanOutcome:
        outcome.source = "local"
        outcome.refused = {"artifact_id": artifact_id, "field": field_name, "reason": reason, "reasons": reasons[:8]}
        outcome.reason = f"plan_refused: {reason}; built locally"
        self.emit("engine.plan_refused", artifact_id=artifact_id, class_key=outcome.class_key, field=field_name, reason=reason)
        log.warning("shared plan %s refused (%s): %s; building locally", artifact_id[:12], field_name, reason)
        return outcome


def shared_plan_ids(record: Dict[str, Any]) -> List[str]:
    """The plan artifacts a serving/previous/applying record uses, for the artifact store's gc keep list: the plan
    that was installed, and the plans the deployment names."""
    out: List[str] = []
    engine = _obj(record.get("engine"))
    plan = _obj(engine.get("plan"))
    if plan.get("source") == "shared" and isinstance(plan.get("artifact_id"), str):
        out.append(plan["artifact_id"])
    plans = _obj(_obj(record.get("deployment")).get("plans"))
    out.extend(v for v in plans.values() if isinstance(v, str) and v not in out)
    return out


def _obj(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _installed_plan(manifest: Any) -> Optional[Tuple[str, str]]:
    """(artifact id, builder) when the cached engine is a shared plan this device installed, else None."""
    for note in getattr(manifest, "notes", None) or []:
        if isinstance(note, str) and note.startswith(SHARED_NOTE):
            parts = note[len(SHARED_NOTE):].split(" built by ", 1)
            if len(parts) == 2 and len(parts[0]) == 64:
                return parts[0], parts[1]
    return None
