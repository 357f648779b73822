"""Fleet commands as jobs: accepted on one thread, run on another, every state change replied.

paho's network thread only enqueues (`submit`). The dispatch thread decodes, drops duplicates (command ids
are remembered in state.json across restarts), rejects what cannot run, handles `cancel` at once, and
queues the rest; the worker thread runs them one at a time. A handler returns a result (SUCCEEDED), raises
an AgentError (FAILED, with its message), or returns a `Pending` for work done elsewhere (the reconcile loop
builds, rolls back, restarts the pipeline) which is completed later with `complete()`. Deadlines are checked
on both threads, on the monotonic clock (NTP may move the wall clock of a Jetson without an RTC by days):
a job still queued or pending after its `timeout_s` is TIMED_OUT.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from agent.errors import AgentError
from agent.fleet.commands import CommandRejected, Job, JobState, decode_command, reply_payload
from agent.fleet.topics import Topics
from agent.store.state import StateStore

log = logging.getLogger(__name__)

# (topic, payload, MQTT 5 publish properties or None)
PublishFn = Callable[[str, bytes, Any], None]


@dataclass
class Inbound:
    payload: bytes
    source: str  # "device" or "group:<name>"
    response_topic: Optional[str] = None  # MQTT 5 response topic
    response_properties: Any = None  # MQTT 5 publish properties carrying the correlation data
    received_at: float = 0.0  # wall clock, reported
    received_mono: float = 0.0  # monotonic, for the deadline


class Pending:
    """A job handed to another thread; `cancel` (if given) asks that thread to abandon it."""

    def __init__(self, cancel: Optional[Callable[[], bool]] = None, detail: str = "") -> None:
        self.cancel = cancel
        self.detail = detail


JobHandler = Callable[[Job], Union[Dict[str, Any], Pending]]


@dataclass
class _Route:
    topic: str
    properties: Any


class JobRunner:
    def __init__(
        self,
        *,
        device_id: str,
        topics: Topics,
        store: StateStore,
        publish: PublishFn,
        handlers: Mapping[str, JobHandler],
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.store = store
        self.publish = publish
        self.handlers = dict(handlers)
        self.duplicates = 0
        self.rejected = 0
        self.completed = 0
        self._inbox: queue.Queue[Optional[Inbound]] = queue.Queue()
        self._work: queue.Queue[Optional[Job]] = queue.Queue()
        self._lock = threading.Lock()
        self._jobs: Dict[str, Job] = {}  # open jobs (queued, running, pending)
        self._routes: Dict[str, _Route] = {}
        self._pending: Dict[str, Pending] = {}
        self._running: Optional[str] = None
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        self.last_beat = time.monotonic()

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.report_interrupted()
        for name, target in (("jobs-dispatch", self._dispatch_loop), ("jobs-worker", self._work_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads) and bool(self._threads)

    def open_jobs(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [
                {"id": job.id, "type": job.command.type, "state": job.state.value if job.state else None}
                for job in self._jobs.values()
            ]

    # paho thread: enqueue only ----------------------------------------------------------------------------
    def submit(self, payload: bytes, source: str = "device", response_topic: Optional[str] = None, response_properties: Any = None) -> None:
        self._inbox.put(Inbound(payload, source, response_topic, response_properties, time.time(), time.monotonic()))

    # dispatch thread --------------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            try:
                inbound = self._inbox.get(timeout=0.5)
            except queue.Empty:
                self._expire_pending()
                continue
            if inbound is None:
                break
            try:
                self._accept(inbound)
            except Exception:  # one bad command must not stop command handling
                log.exception("accepting a command failed")
            self._expire_pending()

    def _accept(self, inbound: Inbound) -> None:
        try:
            command = decode_command(
                inbound.payload, device_id=self.device_id, source=inbound.source, topic_prefix=self.topics.prefix
            )
        except CommandRejected as exc:
            self._reject(inbound, exc)
            return
        if inbound.response_topic and not self._reply_topic_allowed(inbound.response_topic):
            reason = f"unauthorised: the response topic must be under '{self.topics.prefix}/' without wildcards, got {inbound.response_topic!r}"
            self._reject(inbound, CommandRejected(reason, command.id, command.type))
            return
        route = self._route_for(inbound, command.reply_to)
        with self.store.mutate() as state:
            seen = state.command_seen(command.id)
            if seen is None:
                state.remember_command(command.id, command.type, JobState.QUEUED.value)
                state.open_jobs[command.id] = {"type": command.type, "reply_topic": route.topic, "received_at": inbound.received_at}
        if seen is not None:
            self.duplicates += 1
            log.info("command %s (%s) was already received (%s): not run again", command.id, command.type, seen.get("state"))
            return
        job = Job(command, received_at=inbound.received_at or time.time(), received_mono=inbound.received_mono or time.monotonic())
        with self._lock:
            self._jobs[job.id] = job
            self._routes[job.id] = route
        self._transition(job, JobState.QUEUED)
        if command.type == "cancel":
            self._run_cancel(job)
            return
        self._work.put(job)

    def _reply_topic_allowed(self, topic: str) -> bool:
        """Replies go only under the fleet's prefix: a command must not make the device publish elsewhere."""
        return topic.startswith(self.topics.prefix + "/") and not any(ch in topic for ch in "+#")

    def _route_for(self, inbound: Inbound, reply_to: str) -> _Route:
        if inbound.response_topic and self._reply_topic_allowed(inbound.response_topic):
            return _Route(inbound.response_topic, inbound.response_properties)
        if reply_to:
            return _Route(reply_to, None)
        return _Route(self.topics.reply, None)

    def _reject(self, inbound: Inbound, exc: CommandRejected) -> None:
        self.rejected += 1
        if exc.command_id:
            with self.store.mutate() as state:
                if state.command_seen(exc.command_id):
                    self.duplicates += 1
                    return
                state.remember_command(exc.command_id, exc.command_type, JobState.REJECTED.value)
        route = self._route_for(inbound, "")
        log.warning("command rejected: %s", exc.reason)
        payload = reply_payload(self.device_id, exc.command_id, exc.command_type, JobState.REJECTED, detail=exc.reason)
        self.publish(route.topic, payload, route.properties)

    def _run_cancel(self, job: Job) -> None:
        target_id = job.command.args.job_id  # CancelArgs
        self._transition(job, JobState.IN_PROGRESS)
        with self._lock:
            target = self._jobs.get(target_id)
            pending = self._pending.get(target_id)
            running = self._running == target_id
        if target is None:
            self._finish(job, JobState.FAILED, f"no open job {target_id!r} (finished, unknown, or never received)")
            return
        if target.state == JobState.QUEUED:
            self._finish(target, JobState.CANCELED, f"canceled by job {job.id}")
            self._finish(job, JobState.SUCCEEDED, result={"canceled": target_id})
            return
        if pending is not None and pending.cancel is not None and pending.cancel():
            self._finish(job, JobState.SUCCEEDED, result={"canceling": target_id})
            return
        why = "it is running and cannot be interrupted" if running or pending is not None else f"it is {target.state}"
        self._finish(job, JobState.FAILED, f"job {target_id} cannot be canceled: {why}")

    # worker thread ----------------------------------------------------------------------------------------
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            try:
                job = self._work.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                break
            if job.state != JobState.QUEUED:  # canceled or timed out while queued
                continue
            if job.overdue():
                self._finish(job, JobState.TIMED_OUT, f"waited longer than its {job.command.timeout_s:g} s timeout in the queue")
                continue
            self._execute(job)

    def _execute(self, job: Job) -> None:
        handler = self.handlers.get(job.command.type)
        self._transition(job, JobState.IN_PROGRESS)
        if handler is None:
            self._finish(job, JobState.FAILED, f"this agent has no handler for '{job.command.type}'")
            return
        with self._lock:
            self._running = job.id
        try:
            outcome = handler(job)
        except AgentError as exc:
            self._finish(job, JobState.FAILED, str(exc))
            return
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.command.type)
            self._finish(job, JobState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        finally:
            with self._lock:
                self._running = None
        if isinstance(outcome, Pending):
            with self._lock:
                if job.state == JobState.IN_PROGRESS:
                    self._pending[job.id] = outcome
            return
        if job.overdue():
            self._finish(job, JobState.TIMED_OUT, f"finished after its {job.command.timeout_s:g} s timeout", result=outcome)
            return
        self._finish(job, JobState.SUCCEEDED, result=outcome)

    # completion from elsewhere ------------------------------------------------------------------------------
    def complete(self, job_id: str, state: JobState, detail: str = "", result: Optional[Dict[str, Any]] = None) -> None:
        """Finish a pending job (called by the reconcile loop). Ignored if the job already ended."""
        with self._lock:
            job = self._jobs.get(job_id)
            self._pending.pop(job_id, None)
        if job is None or job.state is None or job.state.terminal:
            return
        self._finish(job, state, detail, result)

    def _expire_pending(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [(job, self._pending.get(job.id)) for job in self._jobs.values() if job.overdue(now) and job.id in self._pending]
        for job, pending in late:
            if pending is not None and pending.cancel is not None:
                pending.cancel()
            self._finish(job, JobState.TIMED_OUT, f"did not finish within its {job.command.timeout_s:g} s timeout")

    # replies and bookkeeping ----------------------------------------------------------------------------
    def _transition(self, job: Job, state: JobState, detail: str = "", result: Optional[Dict[str, Any]] = None) -> bool:
        with self._lock:
            if job.state is not None and job.state.terminal:
                return False
            job.advance(state, detail)
            if result:
                job.result = dict(result)
            route = self._routes.get(job.id, _Route(self.topics.reply, None))
        payload = reply_payload(self.device_id, job.id, job.command.type, state, detail=detail, result=result)
        self.publish(route.topic, payload, route.properties)
        return True

    def _finish(self, job: Job, state: JobState, detail: str = "", result: Optional[Dict[str, Any]] = None) -> None:
        if not self._transition(job, state, detail, result):
            return
        with self._lock:
            self._jobs.pop(job.id, None)
            self._routes.pop(job.id, None)
            self._pending.pop(job.id, None)
        self.completed += 1
        with self.store.mutate() as saved:
            saved.remember_command(job.id, job.command.type, state.value)
            saved.open_jobs.pop(job.id, None)
        log.info("job %s (%s): %s %s", job.id, job.command.type, state.value, detail)

    def report_interrupted(self) -> None:
        """Jobs open when the agent last stopped (a crash, a kill -9) end as FAILED, once."""
        with self.store.mutate() as state:
            leftovers: List[Tuple[str, Dict[str, Any]]] = list(state.open_jobs.items())
            for job_id, info in leftovers:
                state.remember_command(job_id, str(info.get("type", "")), JobState.FAILED.value)
            state.open_jobs.clear()
        for job_id, info in leftovers:
            topic = str(info.get("reply_topic") or self.topics.reply)
            payload = reply_payload(
                self.device_id, job_id, str(info.get("type", "")), JobState.FAILED, detail="the agent restarted before this job finished; send it again"
            )
            self.publish(topic, payload, None)

