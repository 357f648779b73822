"""The reconcile loop: make what serves match what is desired, one step at a time, never losing what works.

    desired (retained, device or group)  ->  fetch -> check_table -> build -> validate -> serve  ->  report

One thread owns every change to the serving engine: desired-state updates, `rebuild`, `rollback` and
`restart-pipeline` all arrive here as requests, so two builds never race. A failure at any step keeps the
previous engine serving and is reported with the step and the reason (Greengrass's ROLLBACK policy: the
failed deployment never replaces what works). A failure that retrying cannot fix (a bad table, a failed
build, a failed accuracy gate) blocks that deployment until the desired state changes or an operator sends
`rebuild`; one that time can fix (an artifact not yet published, the broker away) is retried with backoff.

Every step is recorded in state.json before it runs, so after a kill -9 mid-build or mid-download the next
start sees the deployment being applied and tries it again (three interrupted attempts block it, so a build
that kills the machine cannot loop forever).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.errors import AgentError
from agent.fleet.commands import RebuildArgs
from agent.fleet.deployment import (
    Deployment,
    DeploymentError,
    decode_desired,
    deployment_from_dict,
    resolve_desired,
)
from agent.store.state import StateStore

from .failpoints import Failpoints
from .serving import Serving
from .shared_plan import shared_plan_ids
from .steps import EngineInfo, Loaded, StepFailed, Steps

log = logging.getLogger(__name__)

MAX_INTERRUPTED_ATTEMPTS = 3
RETRY_MIN_S = 5.0
RETRY_MAX_S = 300.0
SETTLE_S = 0.3  # after desired state arrives, wait this long for the rest (device and group retained messages come together)

# callbacks into the daemon
EventFn = Callable[[str, Dict[str, Any]], None]
CompleteFn = Callable[[str, str, str, Optional[Dict[str, Any]]], None]  # job id, state, detail, result


@dataclass
class Request:
    action: str  # "rebuild" | "rollback" | "restart-pipeline"
    job_id: str
    args: Any = None  # the command's arguments Struct (agent.fleet.commands), None when none
    cancel: threading.Event = field(default_factory=threading.Event)


class Canceled(AgentError):
    """The operator canceled the job applying a deployment."""


class Reconciler:
    def __init__(
        self,
        *,
        store: StateStore,
        steps: Steps,
        serving: Serving,
        group_order: List[str],
        on_change: Callable[[], None],
        on_event: EventFn,
        on_job_done: CompleteFn,
        on_ready: Callable[[str], None],
        failpoints: Optional[Failpoints] = None,
    ) -> None:
        self.store = store
        self.steps = steps
        self.serving = serving
        self.group_order = list(group_order)
        self.on_change = on_change
        self.on_event = on_event
        self.on_job_done = on_job_done
        self.on_ready = on_ready
        self.failpoints = failpoints or Failpoints()
        self.last_beat = time.monotonic()
        self.busy_step = ""  # the step running now, for the watchdog and the status
        self.busy_since = 0.0
        self._inputs: queue.Queue[Tuple[str, bytes]] = queue.Queue()
        self._requests: queue.Queue[Request] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._current_cancel: Optional[threading.Event] = None
        self._lock = threading.Lock()
        self._sources: Dict[str, Optional[Deployment]] = {}
        self._invalid: Dict[str, str] = {}
        self._retry_at: Dict[str, float] = {}
        self._retry_delay: Dict[str, float] = {}
        self._thread: Optional[threading.Thread] = None
        self._persisted = _persisted_desired(store)
        self._settle_until = 0.0
        self.ready = threading.Event()

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abandon the step in progress (the build child is stopped by its step), stop serving."""
        self._stop.set()
        with self._lock:
            if self._current_cancel is not None:
                self._current_cancel.set()
        self.steps.cancel()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.serving.stop()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # inputs from other threads (cheap: enqueue and wake) ---------------------------------------------------
    def desired_message(self, source: str, payload: bytes) -> None:
        self._inputs.put((source, payload))
        self._wake.set()

    def request(self, action: str, job_id: str, args: Any = None) -> Request:
        request = Request(action, job_id, args)
        self._requests.put(request)
        self._wake.set()
        return request

    def cancel(self, request: Request) -> bool:
        """Ask for the request's abandonment; True if it was queued or running (it ends as CANCELED)."""
        request.cancel.set()
        with self._lock:
            if self._current_cancel is request.cancel:
                self.steps.cancel_build()
        self._wake.set()
        return True

    def desired_view(self) -> Dict[str, Any]:
        desired, source, hold = self._effective()
        with self._lock:
            invalid = dict(self._invalid)
        view: Dict[str, Any] = {"deployment_id": None, "digest": None, "source": None}
        if desired is not None:
            view.update(deployment_id=desired.id, digest=desired.digest(), source=source)
        if hold:
            view["hold"] = hold
        if invalid:
            view["invalid"] = invalid
        return view

    # the thread --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            summary = self._restore()
        except Exception as exc:  # restore must never keep the agent from starting
            log.exception("restoring the serving deployment failed")
            summary = f"degraded: restore failed ({exc})"
            try:
                self._record_error("restore", f"internal error: {type(exc).__name__}: {exc}", deployment_id=None, digest=None)
            except Exception:  # the state file itself may be the problem: start anyway
                log.exception("recording the failed restore failed")
        self.ready.set()
        self.on_ready(summary)
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            settle = self._settle_until - time.monotonic()
            self._wake.wait(min(1.0, settle) if settle > 0 else 1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._take_inputs()
                request = self._next_request()
                if request is not None:
                    self._handle_request(request)
                    self._wake.set()  # look again at once: more requests, or desired to catch up
                    continue
                self._reconcile()
            except Exception:  # a bug in one pass must not end the loop; the watchdog sees the beat go on
                log.exception("reconcile pass failed")
                time.sleep(1.0)

    def beat(self) -> None:
        """Called by long steps while they wait (a build), so the watchdog knows the loop is alive."""
        self.last_beat = time.monotonic()

    # desired state ---------------------------------------------------------------------------------------
    def _take_inputs(self) -> None:
        changed = False
        while True:
            try:
                source, payload = self._inputs.get_nowait()
            except queue.Empty:
                break
            try:
                deployment = decode_desired(payload)
            except DeploymentError as exc:
                reason = str(exc)
                with self._lock:
                    self._invalid[source] = reason
                log.warning("desired state from %s refused: %s", source, reason)
                self._record_error("desired", reason, deployment_id=None, digest=None)
                self.on_event("desired.invalid", {"source": source, "reason": reason})
                changed = True
                continue
            with self._lock:
                self._invalid.pop(source, None)
                self._sources[source] = deployment
            log.info("desired state from %s: %s", source, deployment.describe() if deployment else "none")
            changed = True
        if changed:
            self._settle_until = time.monotonic() + SETTLE_S
            self._persist_desired()
            self.on_change()

    def _persist_desired(self) -> None:
        desired, source, hold = self._effective()
        if hold:
            return
        record = {"deployment": desired.to_dict(), "digest": desired.digest(), "source": source} if desired else None
        state = self.store.snapshot()
        if (state.desired or {}).get("digest") != (record or {}).get("digest") or (state.desired is None) != (record is None):
            with self.store.mutate() as saved:
                saved.desired = record

    def _groups(self) -> Dict[str, Optional[Deployment]]:
        return {name[len("group:") :]: dep for name, dep in self._sources.items() if name.startswith("group:")}

    def _effective(self) -> Tuple[Optional[Deployment], str, str]:
        """(the winning desired deployment, its source, why we hold instead). Until the broker delivers any
        desired state, the one persisted at the last run stands (the broker may be down at boot)."""
        with self._lock:
            if not self._sources and not self._invalid:
                return self._persisted, "persisted", ""
            if "device" in self._invalid:
                return None, "", f"the device's desired state is invalid: {self._invalid['device']}"
            device = self._sources.get("device")
            winner = resolve_desired(device, self._groups(), self.group_order)
            if device is None:  # an invalid group ahead of the winning one holds: its operator meant something
                for name in self.group_order:
                    if winner is not None and winner.name == f"group:{name}":
                        break
                    if f"group:{name}" in self._invalid:
                        return None, "", f"group {name}'s desired state is invalid: {self._invalid['group:' + name]}"
            if winner is not None:
                return winner.deployment, winner.name, ""
        return None, "", ""

    def _reconcile(self) -> None:
        if time.monotonic() < self._settle_until:
            return
        desired, _source, _hold = self._effective()
        if desired is None:
            return
        digest = desired.digest()
        state = self.store.snapshot()
        if self.serving.digest == digest:
            if state.applying is not None:  # left by a run killed while applying what serves now
                self._clear_applying()
            return
        if digest in state.blocked:
            return
        if time.monotonic() < self._retry_at.get(digest, 0.0):
            return
        self._apply(desired, cold=False, request=None)

    # requests ----------------------------------------------------------------------------------------------
    def _next_request(self) -> Optional[Request]:
        try:
            return self._requests.get_nowait()
        except queue.Empty:
            return None

    def _handle_request(self, request: Request) -> None:
        if request.cancel.is_set():
            self.on_job_done(request.job_id, "CANCELED", "canceled before it started", None)
            return
        try:
            if request.action == "rebuild":
                result = self._rebuild(request)
            elif request.action == "rollback":
                result = self._rollback(request)
            elif request.action == "restart-pipeline":
                result = self.serving.restart_pipeline()
            else:
                raise AgentError(f"unknown request {request.action!r}")
        except Canceled as exc:
            self.on_job_done(request.job_id, "CANCELED", str(exc), None)
        except StepFailed as exc:
            self.on_job_done(request.job_id, "FAILED", f"{exc.step}: {exc.reason}", {"step": exc.step})
        except AgentError as exc:
            self.on_job_done(request.job_id, "FAILED", str(exc), None)
        except Exception as exc:  # a bug outside any step (an unexpected state record): answer the job, keep the loop
            log.exception("request %s (%s) failed unexpectedly", request.job_id, request.action)
            self.on_job_done(request.job_id, "FAILED", f"internal error: {type(exc).__name__}: {exc}", None)
        else:
            self.on_job_done(request.job_id, "SUCCEEDED", "", result)

    def _rebuild(self, request: Request) -> Dict[str, Any]:
        desired, _source, hold = self._effective()
        state = self.store.snapshot()
        target = desired or self.serving.deployment
        if target is None and state.serving:
            target = deployment_from_dict(state.serving["deployment"])
        if target is None:
            raise AgentError(f"nothing to rebuild: no desired deployment and nothing serving{' (' + hold + ')' if hold else ''}")
        digest = target.digest()
        with self.store.mutate() as saved:
            saved.blocked.pop(digest, None)
        self._retry_at.pop(digest, None)
        cold = isinstance(request.args, RebuildArgs) and request.args.cold
        engine = self._apply(target, cold=cold, request=request)
        return {"deployment_id": target.id, "digest": digest, "cold": cold, "cache_hit": engine.cache_hit if engine else None}

    def _rollback(self, request: Request) -> Dict[str, Any]:
        state = self.store.snapshot()
        if not state.previous:
            raise AgentError("nothing to roll back to: no previous deployment was served on this device")
        previous = deployment_from_dict(state.previous["deployment"])
        leaving = state.serving
        engine = EngineInfo.from_dict(state.previous.get("engine") or {})
        self._set_applying(previous, "serve", request_id=request.job_id)
        try:
            loaded = self._run_step("serve", previous, request, lambda: self.steps.load(previous, engine))
        except StepFailed as exc:
            log.info("rollback: the previous engine cannot be loaded (%s); applying the previous deployment again", exc.reason)
            self._clear_applying()
            built = self._apply(previous, cold=False, request=request, mark_previous=False)
            if built is None:
                raise AgentError("rollback failed: see last_error") from None
            loaded = None
        if loaded is not None:
            self._run_step("serve", previous, request, lambda: self.serving.swap(previous, loaded))
            self._commit(previous, loaded, mark_previous=False)
        with self.store.mutate() as saved:
            saved.previous = leaving
            if leaving:
                saved.blocked[str(leaving["digest"])] = {
                    "reason": f"rolled back by job {request.job_id}",
                    "step": "rollback",
                    "at": round(time.time(), 3),
                    "deployment_id": leaving["deployment"].get("id"),
                }
            self._update_keep(saved)
        self.on_event("deployment.rolled_back", {"to": previous.id, "from": leaving["deployment"].get("id") if leaving else None})
        self.on_change()
        return {"deployment_id": previous.id, "digest": previous.digest(), "rolled_back": leaving["deployment"].get("id") if leaving else None}

    # applying one deployment -------------------------------------------------------------------------------
    def _apply(self, deployment: Deployment, *, cold: bool, request: Optional[Request], mark_previous: bool = True) -> Optional[EngineInfo]:
        """Run the steps; on success swap and commit. On failure keep what serves, record why, raise StepFailed
        for a request (the job's answer) or return None for the automatic loop."""
        digest = deployment.digest()
        state = self.store.snapshot()
        attempts = 1
        if state.applying and state.applying.get("digest") == digest:
            attempts = int(state.applying.get("attempts", 0)) + 1
        if request is None and attempts > MAX_INTERRUPTED_ATTEMPTS:
            step = state.applying.get("step", "?") if state.applying else "?"
            self._fail(deployment, StepFailed(step, f"interrupted {attempts - 1} times while applying (the agent was killed or crashed at step {step}); send 'rebuild' to try again"), request)
            return None
        cancel = request.cancel if request is not None else threading.Event()
        with self._lock:
            self._current_cancel = cancel
        log.info("applying %s%s", deployment.describe(), " (cold build)" if cold else "")
        self.on_event("deployment.applying", {"deployment_id": deployment.id, "digest": digest, "attempt": attempts})
        try:
            self._set_applying(deployment, "fetch", attempts=attempts, request_id=request.job_id if request else "")
            artifacts = self._run_step("fetch", deployment, request, lambda: self.steps.fetch(deployment, cancel))
            check = self._run_step("check_table", deployment, request, lambda: self.steps.check_table(deployment, artifacts))
            engine = self._run_step("build", deployment, request, lambda: self.steps.build(deployment, artifacts, cold=cold, cancel=cancel, beat=self.beat))
            loaded = self._run_step("validate", deployment, request, lambda: self.steps.validate(deployment, artifacts, engine))
            loaded.table_check = check
            try:
                self._run_step("serve", deployment, request, lambda: self.serving.swap(deployment, loaded))
            except BaseException:
                loaded.close()
                raise
        except StepFailed as exc:
            self._fail(deployment, exc, request)
            if request is not None:
                raise
            return None
        except Canceled as exc:
            if self._stop.is_set():
                # a shutdown, not a verdict: leave `applying` in state.json so the next start resumes it,
                # and do not count this as an interrupted attempt
                with self.store.mutate() as saved:
                    if saved.applying is not None:
                        saved.applying["attempts"] = max(0, int(saved.applying.get("attempts", 1)) - 1)
                log.info("applying %s abandoned at step %s: the agent is stopping", deployment.id, self.busy_step)
                if request is not None:
                    raise
                return None
            self._fail(deployment, StepFailed(self.busy_step or "?", str(exc)), request, canceled=True)
            raise
        finally:
            self.busy_step = ""
            with self._lock:
                self._current_cancel = None
        self._commit(deployment, loaded, mark_previous=mark_previous)
        return engine

    def _run_step(self, step: str, deployment: Deployment, request: Optional[Request], action: Callable[[], Any]) -> Any:
        if (request is not None and request.cancel.is_set()) or self._stop.is_set():
            raise Canceled(f"canceled before step {step}" if not self._stop.is_set() else "the agent is stopping")
        self.busy_step, self.busy_since = step, time.monotonic()
        self._set_step(step)
        self.beat()
        started = time.monotonic()
        try:
            self.failpoints.hit(step, self._current_cancel)
            if request is not None and request.cancel.is_set():
                raise Canceled(f"canceled during step {step}")
            result = action()
        except Canceled:
            raise
        except AgentError as exc:
            if self._stop.is_set():
                raise Canceled("the agent is stopping") from None
            if request is not None and request.cancel.is_set():
                raise Canceled(f"canceled during step {step}") from None
            if isinstance(exc, StepFailed):
                raise
            raise StepFailed(step, str(exc)) from None
        except Exception as exc:  # a bug in a step is a failed step, not a dead loop
            log.exception("step %s of %s failed unexpectedly", step, deployment.id)
            raise StepFailed(step, f"internal error: {type(exc).__name__}: {exc}") from None
        log.info("step %s of %s done in %.2f s", step, deployment.id, time.monotonic() - started)
        if self._stop.is_set():
            raise Canceled("the agent is stopping")
        return result

    # bookkeeping -------------------------------------------------------------------------------------------
    def _set_applying(self, deployment: Deployment, step: str, *, attempts: int = 1, request_id: str = "") -> None:
        with self.store.mutate() as state:
            state.applying = {
                "deployment": deployment.to_dict(),
                "digest": deployment.digest(),
                "step": step,
                "started_at": round(time.time(), 3),
                "attempts": attempts,
                "job_id": request_id,
            }
            self._update_keep(state)
        self.on_change()

    def _set_step(self, step: str) -> None:
        with self.store.mutate() as state:
            if state.applying is not None:
                state.applying["step"] = step
                state.applying["step_started_at"] = round(time.time(), 3)
        self.on_change()

    def _clear_applying(self) -> None:
        with self.store.mutate() as state:
            state.applying = None
            self._update_keep(state)

    def _commit(self, deployment: Deployment, loaded: Loaded, *, mark_previous: bool) -> None:
        digest = deployment.digest()
        record = {
            "deployment": deployment.to_dict(),
            "digest": digest,
            "engine": loaded.engine.to_dict(),
            "gate": loaded.gate,
            "table_check": loaded.table_check,
            "warmup_ms": loaded.warmup_ms,
            "since": round(time.time(), 3),
        }
        with self.store.mutate() as state:
            old = state.serving
            if mark_previous and old and old.get("digest") != digest:
                state.previous = old
            state.serving = record
            state.applying = None
            state.last_error = None
            state.blocked.pop(digest, None)
            self._update_keep(state)
        self._retry_at.pop(digest, None)
        self._retry_delay.pop(digest, None)
        self.steps.committed(deployment, loaded.engine)
        log.info("serving %s (engine %s, cache %s)", deployment.describe(), loaded.engine.backend, "hit" if loaded.engine.cache_hit else "miss")
        self.on_event(
            "deployment.serving",
            {"deployment_id": deployment.id, "digest": digest, "cache_hit": loaded.engine.cache_hit, "gate": loaded.gate},
        )
        self.on_change()

    def _fail(self, deployment: Deployment, exc: StepFailed, request: Optional[Request], canceled: bool = False) -> None:
        digest = deployment.digest()
        reason = "canceled by the operator" if canceled else exc.reason
        with self.store.mutate() as state:
            state.applying = None
            if not exc.retryable or canceled:
                state.blocked[digest] = {"reason": reason, "step": exc.step, "at": round(time.time(), 3), "deployment_id": deployment.id}
            self._update_keep(state)
        if exc.retryable and not canceled:
            delay = min(RETRY_MAX_S, self._retry_delay.get(digest, RETRY_MIN_S / 2) * 2)
            self._retry_delay[digest] = delay
            self._retry_at[digest] = time.monotonic() + delay
            reason = f"{reason} (retrying in {delay:.0f} s)"
        self._record_error(exc.step, reason, deployment_id=deployment.id, digest=digest)
        serving = self.store.snapshot().serving
        log.warning("deployment %s failed at step %s: %s", deployment.id, exc.step, reason)
        self.on_event(
            "deployment.failed",
            {
                "deployment_id": deployment.id,
                "digest": digest,
                "step": exc.step,
                "reason": reason,
                "retryable": exc.retryable,
                "still_serving": serving["deployment"].get("id") if serving else None,
            },
        )

    def _record_error(self, step: str, reason: str, *, deployment_id: Optional[str], digest: Optional[str]) -> None:
        with self.store.mutate() as state:
            state.last_error = {"step": step, "reason": reason, "deployment_id": deployment_id, "digest": digest, "at": round(time.time(), 3)}
        self.on_change()

    @staticmethod
    def _update_keep(state: Any) -> None:
        keep: List[str] = []
        for record in (state.serving, state.previous, state.applying):
            if record and isinstance(record.get("deployment"), dict):
                for key in ("model", "table", "validation", "labels"):
                    value = record["deployment"].get(key)
                    if isinstance(value, str) and value not in keep:
                        keep.append(value)
                keep.extend(p for p in shared_plan_ids(record) if p not in keep)  # the plans these deployments use
        state.keep_artifacts = keep

    # start-up ----------------------------------------------------------------------------------------------
    def _restore(self) -> str:
        """Serve again what served before the restart, from disk alone (the broker may be away). If that
        fails (engine gone, or incompatible after a JetPack upgrade) the loop applies it again from the
        stored artifacts."""
        state = self.store.snapshot()
        if not state.serving:
            return "degraded: no deployment yet"
        try:
            deployment = deployment_from_dict(state.serving["deployment"])
            engine = EngineInfo.from_dict(state.serving.get("engine") or {})
        except (DeploymentError, KeyError, TypeError) as exc:
            self._record_error("restore", f"state.json's serving record is unreadable: {exc}", deployment_id=None, digest=None)
            return "degraded: the serving record in state.json is unreadable"
        if self._persisted is None:
            self._persisted = deployment
        self.busy_step, self.busy_since = "restore", time.monotonic()
        try:
            loaded = self.steps.load(deployment, engine)
            try:
                self.serving.swap(deployment, loaded)
            except BaseException:
                loaded.close()
                raise
        except AgentError as exc:
            reason = exc.reason if isinstance(exc, StepFailed) else str(exc)
            log.warning("cannot serve %s again after the restart: %s; applying it again", deployment.id, reason)
            self._record_error("restore", reason, deployment_id=deployment.id, digest=deployment.digest())
            return f"degraded: {reason}"
        except Exception as exc:  # a bug (an engine record of an unexpected shape): said, and the deployment applied again
            log.exception("serving %s again after the restart failed unexpectedly; applying it again", deployment.id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            self._record_error("restore", reason, deployment_id=deployment.id, digest=deployment.digest())
            return f"degraded: {reason}"
        finally:
            self.busy_step = ""
        self.on_change()
        return f"serving {deployment.id}"


def _persisted_desired(store: StateStore) -> Optional[Deployment]:
    record = store.snapshot().desired
    if not record:
        return None
    try:
        return deployment_from_dict(record.get("deployment"))
    except DeploymentError as exc:
        log.warning("ignoring the persisted desired state: %s", exc)
        return None
