"""Staged rollouts, the plain part: waves, what each device's status says, abort criteria, the state machine.

No MQTT here (agent/operator/rollout_runner.py does the sending); every decision is a function of plain data,
so it is tested without a broker.

    waves "1,5%,25%,100%"   cumulative targets: 1 device, then up to 5% of the group, 25%, all of it
    --canary a,b            the first wave is exactly these devices
    per wave                set each device's own desired state (retained) to the new deployment; wait until
                            every device in the wave reports it serving or failed (or is offline, or the wave
                            times out); check the criteria; bake; check the criteria again (telemetry too)
    after the last wave     publish the group's desired state and clear the per-device ones
    abort                   stop sending; every changed device serving the new deployment gets `rollback`
                            (it still holds its previous engine), then its per-device desired state is
                            restored to what it was before the rollout (usually none: the group's, unchanged)

The per-device desired message is what makes offline devices converge: during the rollout the group's desired
state still names the old deployment, so a device not yet reached (or one that joins) gets the old one; a device
reached while offline finds the new one retained on its own topic; after an abort its topic holds the old value
again. Nobody gets "the newest published" by accident.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from typing import Any, Dict, List, Optional, Tuple

import msgspec

from agent.errors import AgentError
from agent.operator import figures

ACTIVE = ("running", "paused", "aborting")
TERMINAL = ("completed", "aborted")

# outcomes of one device in a rollout
PENDING = "pending"
SERVING = "serving"
GATE_FAILED = "gate_failed"
PULL_FAILED = "pull_failed"
BUILD_FAILED = "build_failed"
FAILED = "failed"  # another step (serve)
OFFLINE = "offline"  # went offline during its wave
ABSENT = "absent"  # offline when its wave started: it converges when it returns, nobody waits for it
TIMEOUT = "timeout"
FINAL = (SERVING, GATE_FAILED, PULL_FAILED, BUILD_FAILED, FAILED, TIMEOUT)
FAILURES = (GATE_FAILED, PULL_FAILED, BUILD_FAILED, FAILED, TIMEOUT)
STEP_OUTCOME = {"validate": GATE_FAILED, "fetch": PULL_FAILED, "check_table": BUILD_FAILED, "build": BUILD_FAILED, "serve": FAILED}

# abort criteria: metric -> (what it counts, does it take a plain number, does it take a percentage)
METRICS: Dict[str, Tuple[str, bool, bool]] = {
    "gate_failures": ("devices whose accuracy gate refused the deployment", True, True),
    "pull_failures": ("devices that could not fetch an artifact", True, True),
    "build_failures": ("devices whose table check or engine build failed", True, True),
    "failures": ("devices that failed at any step or timed out", True, True),
    "offline": ("devices that went offline during their wave", True, True),
    "fps_drop": ("drop of the mean fps against the same devices before the rollout, percent", False, True),
    "errors_rise": ("rise of dropped frames per frame handled, percentage points", True, True),
    "temp_rise": ("rise of the mean hottest temperature, degrees C", True, False),
}
DEFAULT_CRITERIA = ("gate_failures>10%", "build_failures>10%", "pull_failures>25%", "offline>25%")
DEFAULT_WAVES = "1,5%,25%,100%"
HISTORY_MAX = 40


class RolloutError(AgentError):
    """A rollout request is invalid or cannot be carried out now."""


class RolloutBusy(RolloutError):
    """Another rollout holds the group."""

    def __init__(self, message: str, rollout_id: str) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


# documents -------------------------------------------------------------------------------------------------
class Criterion(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """`gate_failures>10%`: abort when the metric, over every device reached so far, is over the threshold."""

    metric: str
    op: str  # ">" or ">="
    value: float
    percent: bool = False

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'%' if self.percent else ''}"


class Means(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Telemetry of a set of devices: sums and counts (so waves add up), as the criteria compare them."""

    fps_sum: float = 0.0
    fps_n: int = 0
    temp_sum: float = 0.0
    temp_n: int = 0
    err_sum: float = 0.0
    err_n: int = 0

    def add(self, other: Means) -> Means:
        return Means(fps_sum=self.fps_sum + other.fps_sum, fps_n=self.fps_n + other.fps_n, temp_sum=self.temp_sum + other.temp_sum,
                     temp_n=self.temp_n + other.temp_n, err_sum=self.err_sum + other.err_sum, err_n=self.err_n + other.err_n)

    @property
    def fps(self) -> Optional[float]:
        return self.fps_sum / self.fps_n if self.fps_n else None

    @property
    def temp_c(self) -> Optional[float]:
        return self.temp_sum / self.temp_n if self.temp_n else None

    @property
    def error_pct(self) -> Optional[float]:
        return self.err_sum / self.err_n if self.err_n else None


class Wave(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    devices: List[str]
    started_at: Optional[float] = None
    completed_at: Optional[float] = None
    baseline: Optional[Means] = None  # the same devices' telemetry when the wave started


class AbortReason(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    criterion: str
    metric: str
    observed: float
    threshold: float
    detail: str
    at: float
    by: str = "criterion"  # or "operator"


class RolloutState(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole rollout, retained on `<prefix>/fleet/rollout/<group>/state` (and in --state-file)."""

    kind: str = "rollout"
    schema: int = 1
    id: str
    group: str
    deployment: Dict[str, Any]
    digest: str
    status: str = "running"  # running | paused | aborting | completed | aborted
    phase: str = "wave"  # wave | bake | rollback | done
    wave: int = 0
    waves: List[Wave]
    criteria: List[Criterion]
    bake_s: float = 0.0
    wave_timeout_s: float = 1800.0
    rollback_timeout_s: float = 120.0
    pins: Dict[str, Dict[str, Any]] = {}  # device -> its own desired deployment before the rollout
    outcomes: Dict[str, str] = {}
    bake_until: Optional[float] = None
    abort: Optional[AbortReason] = None
    rollback: Dict[str, str] = {}  # device -> "command" | "restored"
    rollback_sent: Dict[str, float] = {}
    restored_at: Optional[float] = None
    control_ts: float = 0.0  # the last control message applied
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: Optional[float] = None
    owner: str = ""
    history: List[str] = []

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def devices_so_far(self) -> List[str]:
        """Devices of every wave started so far (whose desired state this rollout changed)."""
        return [d for w in self.waves if w.started_at is not None for d in w.devices]

    def note(self, text: str, now: Optional[float] = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(now if now is not None else time.time()))
        self.history.append(f"{stamp} {text}")
        del self.history[:-HISTORY_MAX]


def encode_state(state: RolloutState) -> bytes:
    return msgspec.json.encode(state)


def decode_state(payload: bytes) -> RolloutState:
    try:
        return msgspec.json.decode(payload, type=RolloutState)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RolloutError(f"rollout state: {exc}") from None


# parsing the command line ----------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_CRITERION = re.compile(r"^\s*([a-z_]+)\s*(>=|>)\s*([0-9]+(?:\.[0-9]+)?)\s*(%?)\s*$")


def parse_duration(text: str) -> float:
    """`90`, `30s`, `10m`, `1.5h`, `1d` -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise RolloutError(f"not a duration: {text!r} (examples: 30s, 10m, 1h)")
    scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * scale


def parse_criterion(text: str) -> Criterion:
    match = _CRITERION.match(text)
    if not match:
        raise RolloutError(f"--abort-if {text!r}: write METRIC>VALUE or METRIC>=VALUE, VALUE a number or a percentage "
                           f"(metrics: {', '.join(METRICS)})")
    metric, op, value, percent = match.group(1), match.group(2), float(match.group(3)), bool(match.group(4))
    if metric not in METRICS:
        raise RolloutError(f"--abort-if {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    _what, plain, pct = METRICS[metric]
    if percent and not pct:
        raise RolloutError(f"--abort-if {text!r}: {metric} is in degrees C, not a percentage")
    if not percent and not plain:
        raise RolloutError(f"--abort-if {text!r}: {metric} is a percentage (write {metric}>{value:g}%)")
    return Criterion(metric=metric, op=op, value=value, percent=percent or metric == "fps_drop")


def parse_criteria(texts: List[str]) -> List[Criterion]:
    return [parse_criterion(t) for t in (texts or list(DEFAULT_CRITERIA))]


def parse_waves(text: str) -> List[Tuple[float, bool]]:
    """`1,5%,25%,100%` -> [(1, False), (5, True), ...]: cumulative targets, a count or a percentage of the group."""
    out: List[Tuple[float, bool]] = []
    for raw in str(text).split(","):
        item = raw.strip()
        if not item:
            continue
        percent = item.endswith("%")
        try:
            value = float(item[:-1] if percent else item)
        except ValueError:
            raise RolloutError(f"--waves: {item!r} is neither a device count nor a percentage") from None
        if value <= 0 or (percent and value > 100) or (not percent and value != int(value)):
            raise RolloutError(f"--waves: {item!r} must be a whole count above 0 or a percentage from 0 to 100")
        out.append((value, percent))
    if not out:
        raise RolloutError("--waves: give at least one wave, for example 1,5%,25%,100%")
    return out


def plan_waves(devices: List[str], waves: List[Tuple[float, bool]], *, canary: Optional[List[str]] = None, salt: str = "") -> List[List[str]]:
    """Split the group into waves. The order is a stable shuffle (sha256 of salt and device id), so the first
    waves are a spread of the fleet rather than the alphabetically first; a canary list leads. Targets are
    cumulative, each wave adds at least one device, and a last wave takes whatever the targets left out."""
    members = sorted(set(devices))
    if not members:
        raise RolloutError("the group has no devices (a device lists its groups in device.groups and reports them in its status)")
    lead = [d for d in (canary or []) if d in members]
    missing = [d for d in (canary or []) if d not in members]
    if missing:
        raise RolloutError(f"--canary: not in the group: {', '.join(missing)}")
    rest = sorted((d for d in members if d not in lead), key=lambda d: hashlib.sha256(f"{salt}/{d}".encode()).hexdigest())
    order = lead + rest
    total = len(order)
    planned: List[List[str]] = []
    done = 0
    if lead:
        planned.append(lead)
        done = len(lead)
    for value, percent in waves:
        target = math.ceil(total * value / 100.0 - 1e-9) if percent else int(value)
        target = min(total, max(target, done + 1))
        if done >= total:
            break
        planned.append(order[done:target])
        done = target
    if done < total:
        planned.append(order[done:])
    return planned


# reading devices -------------------------------------------------------------------------------------------
def classify(status: Any, digest: str) -> str:
    """What a device's retained status says about the deployment with this digest."""
    if not isinstance(status, dict) or not status:
        return PENDING
    if status.get("online") is False:
        return OFFLINE
    if figures.section(status, "serving").get("digest") == digest:
        return SERVING
    blocked = status.get("blocked")
    for entry in blocked if isinstance(blocked, list) else []:
        if isinstance(entry, dict) and entry.get("digest") == digest:
            return STEP_OUTCOME.get(str(entry.get("step")), FAILED)
    error = figures.section(status, "last_error")
    if error.get("digest") == digest and str(error.get("step")) in STEP_OUTCOME:
        return STEP_OUTCOME[str(error.get("step"))]
    return PENDING


def means_of(devices: List[str], telemetry: Dict[str, Dict[str, Any]]) -> Means:
    out = Means()
    for device in devices:
        doc = telemetry.get(device)
        if not doc:
            continue
        fps, temp, err = figures.fps(doc), figures.hottest_c(doc), figures.error_pct(doc)
        if fps is not None:
            out.fps_sum, out.fps_n = out.fps_sum + fps, out.fps_n + 1
        if temp is not None:
            out.temp_sum, out.temp_n = out.temp_sum + temp, out.temp_n + 1
        if err is not None:
            out.err_sum, out.err_n = out.err_sum + err, out.err_n + 1
    return out


class View(msgspec.Struct, kw_only=True):
    """What the runner sees of the fleet right now: latest status and telemetry (full form) per device, and the
    final state of each rollback job it sent."""

    statuses: Dict[str, Dict[str, Any]] = {}
    telemetry: Dict[str, Dict[str, Any]] = {}
    rollback_replies: Dict[str, str] = {}

    def online(self, device: str) -> bool:
        status = self.statuses.get(device)
        return bool(status) and isinstance(status, dict) and status.get("online") is not False

    def serving_digest(self, device: str) -> Optional[str]:
        value = figures.section(self.statuses.get(device), "serving").get("digest")
        return value if isinstance(value, str) else None


# the criteria ----------------------------------------------------------------------------------------------
def _compare(op: str, observed: float, threshold: float) -> bool:
    return observed >= threshold if op == ">=" else observed > threshold


def evaluate(state: RolloutState, view: View, now: float, *, with_telemetry: bool) -> Optional[AbortReason]:
    """The first criterion that fires over every device reached so far, with its numbers; None if none does."""
    reached = state.devices_so_far()
    counted = [d for d in reached if state.outcomes.get(d, PENDING) != ABSENT]
    total = len(counted)
    by_outcome: Dict[str, List[str]] = {}
    for device in counted:
        by_outcome.setdefault(state.outcomes.get(device, PENDING), []).append(device)
    baseline = Means()
    for wave in state.waves:
        if wave.started_at is not None and wave.baseline is not None:
            baseline = baseline.add(wave.baseline)
    current = means_of(counted, view.telemetry)
    for criterion in state.criteria:
        metric = criterion.metric
        if metric in ("gate_failures", "pull_failures", "build_failures", "failures", "offline"):
            wanted = {"gate_failures": (GATE_FAILED,), "pull_failures": (PULL_FAILED,), "build_failures": (BUILD_FAILED,),
                      "failures": FAILURES, "offline": (OFFLINE,)}[metric]
            hit = sorted(d for o in wanted for d in by_outcome.get(o, []))
            count = len(hit)
            if not count or not total:
                continue
            observed = 100.0 * count / total if criterion.percent else float(count)
            if _compare(criterion.op, observed, criterion.value):
                names = ", ".join(hit[:8]) + (f" and {count - 8} more" if count > 8 else "")
                detail = f"{criterion.text}: {count} of {total} devices reached so far ({100.0 * count / total:.1f}%) - {METRICS[metric][0]}: {names}"
                return AbortReason(criterion=criterion.text, metric=metric, observed=round(observed, 3), threshold=criterion.value, detail=detail, at=now)
            continue
        if not with_telemetry:
            continue
        if metric == "fps_drop" and baseline.fps and current.fps is not None:
            before, after = baseline.fps, current.fps
            observed = 100.0 * (before - after) / before
            detail = f"{criterion.text}: mean fps {after:.1f} against {before:.1f} before the rollout ({observed:.1f}% lower; {current.fps_n} devices)"
        elif metric == "errors_rise" and baseline.error_pct is not None and current.error_pct is not None:
            before, after = baseline.error_pct, current.error_pct
            observed = after - before
            detail = f"{criterion.text}: dropped frames {after:.2f}% of frames against {before:.2f}% before the rollout (+{observed:.2f} points)"
        elif metric == "temp_rise" and baseline.temp_c is not None and current.temp_c is not None:
            before, after = baseline.temp_c, current.temp_c
            observed = after - before
            detail = f"{criterion.text}: mean hottest zone {after:.1f} C against {before:.1f} C before the rollout (+{observed:.1f} C)"
        else:
            continue
        if _compare(criterion.op, observed, criterion.value):
            return AbortReason(criterion=criterion.text, metric=metric, observed=round(observed, 3), threshold=criterion.value, detail=detail, at=now)
    return None


# the state machine -----------------------------------------------------------------------------------------
class Action(msgspec.Struct, frozen=True):
    """What the runner must do: `send` (per-device desired = the new deployment), `rollback` (the command),
    `restore` (per-device desired back to what it was), `complete` (group desired = new, clear per-device)."""

    kind: str
    devices: Tuple[str, ...] = ()


def new_state(
    *,
    rollout_id: str,
    group: str,
    deployment: Dict[str, Any],
    digest: str,
    waves: List[List[str]],
    criteria: List[Criterion],
    bake_s: float,
    wave_timeout_s: float,
    pins: Dict[str, Dict[str, Any]],
    owner: str,
    now: float,
    rollback_timeout_s: float = 120.0,
) -> RolloutState:
    state = RolloutState(id=rollout_id, group=group, deployment=deployment, digest=digest, waves=[Wave(devices=list(w)) for w in waves],
                         criteria=list(criteria), bake_s=bake_s, wave_timeout_s=wave_timeout_s, rollback_timeout_s=rollback_timeout_s,
                         pins=dict(pins), owner=owner, created_at=now, updated_at=now)
    sizes = "+".join(str(len(w)) for w in waves)
    state.note(f"rollout {rollout_id} of {deployment.get('id')} to group {group}: {len(waves)} waves ({sizes} devices)", now)
    return state


def control(state: RolloutState, action: str, now: float, *, by: str = "operator") -> bool:
    """Apply pause | resume | abort from the operator. True if the state changed."""
    if action == "pause" and state.status == "running":
        state.status = "paused"
        state.note(f"paused by {by}", now)
        return True
    if action == "resume" and state.status == "paused":
        state.status = "running"
        if state.phase == "bake" and state.bake_until is not None:
            state.bake_until = max(state.bake_until, now)
        state.note(f"resumed by {by}", now)
        return True
    if action == "abort" and state.status in ("running", "paused"):
        start_abort(state, AbortReason(criterion="operator", metric="operator", observed=0.0, threshold=0.0,
                                       detail=f"aborted by {by}", at=now, by="operator"), now)
        return True
    return False


def start_abort(state: RolloutState, reason: AbortReason, now: float) -> None:
    state.status = "aborting"
    state.phase = "rollback"
    state.abort = reason
    state.note(f"ABORT: {reason.detail}", now)


def step(state: RolloutState, view: View, now: float) -> List[Action]:
    """One tick: look at the fleet, move the state on, and say what to send. Idempotent where it matters: a
    runner killed after a step and before its actions went out repeats them on resume (the messages are
    retained values, sending one twice changes nothing)."""
    if state.status in TERMINAL or state.status == "paused":
        return []
    if state.status == "aborting":
        return _rollback_step(state, view, now)
    wave = state.waves[state.wave]
    _refresh_earlier(state, view)
    if wave.started_at is None:
        wave.started_at = now
        wave.baseline = means_of(wave.devices, view.telemetry)
        for device in wave.devices:
            state.outcomes[device] = PENDING if view.online(device) else ABSENT
        state.phase = "wave"
        absent = [d for d in wave.devices if state.outcomes[d] == ABSENT]
        state.note(f"wave {state.wave + 1}/{len(state.waves)}: {len(wave.devices)} devices" + (f" ({len(absent)} offline: they converge when back)" if absent else ""), now)
        return [Action("send", tuple(wave.devices))]
    if state.phase == "wave":
        for device in wave.devices:
            seen = classify(view.statuses.get(device), state.digest)
            previous = state.outcomes.get(device, PENDING)
            if previous == ABSENT:
                if seen in FINAL:  # came back and got there: it counts like the others
                    state.outcomes[device] = seen
                continue
            if previous in FINAL and seen in (PENDING, OFFLINE):
                if seen == OFFLINE:
                    state.outcomes[device] = OFFLINE
                continue
            state.outcomes[device] = seen
        waiting = [d for d in wave.devices if state.outcomes[d] == PENDING]
        if waiting and now - wave.started_at < state.wave_timeout_s:
            return []
        for device in waiting:
            state.outcomes[device] = TIMEOUT
        wave.completed_at = now
        counts = _counts(state.outcomes, wave.devices)
        state.note(f"wave {state.wave + 1} done in {now - wave.started_at:.1f} s: {counts}", now)
        reason = evaluate(state, view, now, with_telemetry=False)
        if reason is not None:
            start_abort(state, reason, now)
            return _rollback_step(state, view, now)
        state.phase = "bake"
        state.bake_until = now + state.bake_s
        if state.bake_s > 0:
            state.note(f"baking {state.bake_s:g} s", now)
    if state.phase == "bake":
        if state.bake_until is not None and now < state.bake_until:
            return []
        reason = evaluate(state, view, now, with_telemetry=True)
        if reason is not None:
            start_abort(state, reason, now)
            return _rollback_step(state, view, now)
        if state.wave + 1 < len(state.waves):
            state.wave += 1
            state.phase = "wave"
            state.bake_until = None
            return step(state, view, now)
        state.status = "completed"
        state.phase = "done"
        state.finished_at = now
        state.note(f"completed: {_counts(state.outcomes, state.devices_so_far())}; group {state.group} now desires {state.deployment.get('id')}", now)
        return [Action("complete", tuple(state.devices_so_far()))]
    return []


def _refresh_earlier(state: RolloutState, view: View) -> None:
    """Devices of finished waves stay watched: one that goes offline after serving counts as offline (the
    deployment may have taken it down), and counts as what it reports again once it is back."""
    for wave in state.waves:
        if wave.completed_at is None:
            continue
        for device in wave.devices:
            outcome = state.outcomes.get(device)
            if outcome == SERVING and not view.online(device):
                state.outcomes[device] = OFFLINE
            elif outcome == OFFLINE and view.online(device):
                seen = classify(view.statuses.get(device), state.digest)
                state.outcomes[device] = seen if seen in FINAL else OFFLINE


def _rollback_step(state: RolloutState, view: View, now: float) -> List[Action]:
    """Every changed device: `rollback` if it is online and serving the new deployment, then (once it no longer
    serves it, its job ended, or the wait ran out) its per-device desired state restored. Done when all are."""
    rollback: List[str] = []
    restore: List[str] = []
    for device in state.devices_so_far():
        mark = state.rollback.get(device)
        if mark == "restored":
            continue
        serving_new = view.serving_digest(device) == state.digest
        if mark is None:
            if serving_new and view.online(device):
                state.rollback[device] = "command"
                state.rollback_sent[device] = now
                rollback.append(device)
                continue
            state.rollback[device] = "restored"
            restore.append(device)
            continue
        # a rollback command is out
        reply = view.rollback_replies.get(device)
        waited = now - state.rollback_sent.get(device, now)
        if not serving_new or reply is not None or not view.online(device) or waited >= state.rollback_timeout_s:
            state.rollback[device] = "restored"
            state.rollback_sent.pop(device, None)
            restore.append(device)
    actions: List[Action] = []
    if rollback:
        actions.append(Action("rollback", tuple(rollback)))
    if restore:
        actions.append(Action("restore", tuple(restore)))
    if all(state.rollback.get(d) == "restored" for d in state.devices_so_far()):
        state.status = "aborted"
        state.phase = "done"
        state.finished_at = state.restored_at = now
        state.note(f"aborted: {len(state.devices_so_far())} changed devices handed back their previous deployment", now)
    return actions


def _counts(outcomes: Dict[str, str], devices: List[str]) -> str:
    tally: Dict[str, int] = {}
    for device in devices:
        key = outcomes.get(device, PENDING)
        tally[key] = tally.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


# showing it ------------------------------------------------------------------------------------------------
def converged(state: RolloutState, view: View) -> Dict[str, int]:
    """After an abort: how many changed devices no longer serve the new deployment (online ones), how many still
    do, and how many are offline (they converge when back)."""
    out = {"back": 0, "still_new": 0, "offline": 0}
    for device in state.devices_so_far():
        if not view.online(device):
            out["offline"] += 1
        elif view.serving_digest(device) == state.digest:
            out["still_new"] += 1
        else:
            out["back"] += 1
    return out


def summary(state: RolloutState) -> Dict[str, Any]:
    reached = state.devices_so_far()
    tally: Dict[str, int] = {}
    for device in reached:
        key = state.outcomes.get(device, PENDING)
        tally[key] = tally.get(key, 0) + 1
    return {
        "id": state.id,
        "group": state.group,
        "deployment": state.deployment.get("id"),
        "digest": state.digest,
        "status": state.status,
        "phase": state.phase,
        "wave": state.wave + 1,
        "waves": len(state.waves),
        "wave_sizes": [len(w.devices) for w in state.waves],
        "devices": sum(len(w.devices) for w in state.waves),
        "reached": len(reached),
        "outcomes": tally,
        "bake_until": state.bake_until,
        "abort": msgspec.to_builtins(state.abort) if state.abort else None,
        "rolled_back": sum(1 for v in state.rollback.values() if v == "restored"),
        "criteria": [c.text for c in state.criteria],
        "owner": state.owner,
        "created_at": state.created_at,
        "finished_at": state.finished_at,
    }


def one_line(state: RolloutState, now: Optional[float] = None) -> str:
    info = summary(state)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(info["outcomes"].items()))
    text = (f"rollout {state.id} [{state.group}] {info['deployment']}: {state.status}, wave {info['wave']}/{info['waves']} "
            f"({info['reached']}/{info['devices']} devices reached{': ' + outcomes if outcomes else ''})")
    if state.status in ("running", "paused") and state.phase == "bake" and state.bake_until:
        left = state.bake_until - (now if now is not None else time.time())
        if left > 0:
            text += f", baking {left:.0f} s more"
    if state.abort is not None:
        text += f"; aborted: {state.abort.detail}"
    return text
