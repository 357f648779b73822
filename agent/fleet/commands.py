"""Fleet commands as jobs (after AWS IoT Jobs): each command has an id and moves through
QUEUED -> IN_PROGRESS -> SUCCEEDED | FAILED | TIMED_OUT | CANCELED; a command that cannot be accepted at
all (malformed, unknown type, bad arguments, not addressed to this device, not allowed from where it came)
goes straight to REJECTED with the reason.

This module is plain data and rules: decoding a command strictly (the envelope is a Struct,
`CommandEnvelope`; the arguments are one Struct per type), where it may come from, the
legal state transitions, and the reply message. The daemon runs the jobs (agent/daemon/jobs.py); the
operator uses the same schema to build and coerce commands (agent/operator/client.py).
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type

import msgspec

from agent.fleet.messages import Envelope, MessageError, decode, encode
from agent.models import Annotated, FrozenModel, Meta, dump, parse

COMMAND_KIND = "cmd"
REPLY_KIND = "reply"
COMMAND_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_TIMEOUT_S = 24 * 3600.0


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.REJECTED, JobState.CANCELED})

# None is "just received": a command either is queued or rejected.
TRANSITIONS: Dict[Optional[JobState], frozenset] = {
    None: frozenset({JobState.QUEUED, JobState.REJECTED}),
    JobState.QUEUED: frozenset({JobState.IN_PROGRESS, JobState.CANCELED, JobState.TIMED_OUT, JobState.FAILED}),
    JobState.IN_PROGRESS: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELED}),
}


class CommandRejected(MessageError):
    """A command that cannot be accepted; `command_id` is set when the payload had a readable id."""

    def __init__(self, reason: str, command_id: str = "", command_type: str = "", reply_to: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id
        self.command_type = command_type
        self.reply_to = reply_to


class JobTransitionError(MessageError):
    """A job was asked to move to a state it cannot reach from where it is (a bug, not user input)."""


# the arguments of each command: one Struct per type -----------------------------------------------------
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ArgText = Annotated[str, Meta(max_length=256)]


class NoArgs(FrozenModel, frozen=True, kw_only=True):
    """A command that takes no arguments."""


class RebuildArgs(FrozenModel, frozen=True, kw_only=True):
    cold: bool = False  # ignore the engine cache and build from scratch


class SnapshotArgs(FrozenModel, frozen=True, kw_only=True):
    camera: Annotated[int, Meta(ge=0, le=15)] = 0  # camera index


class SetLogLevelArgs(FrozenModel, frozen=True, kw_only=True):
    level: ArgText  # DEBUG, INFO, WARNING or ERROR, in any case
    logger: ArgText = ""  # a logger name (default: the whole agent)

    def __post_init__(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"level: must be one of {', '.join(LOG_LEVELS)}, got {self.level!r}")


class CancelArgs(FrozenModel, frozen=True, kw_only=True):
    job_id: ArgText  # the id of the job to cancel


@dataclass(frozen=True)
class CommandSpec:
    name: str
    help: str
    args: Type[FrozenModel] = NoArgs  # the Struct its `args` object is parsed into
    timeout_s: float = 30.0  # default; a command may set its own `timeout_s`
    from_group: bool = True  # may a group-wide command (group/<name>/cmd) ask for this?


COMMANDS: Dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("ping", "answer at once (liveness, round-trip time)"),
        CommandSpec("status", "the reported state now"),
        CommandSpec("rebuild", "build the desired deployment again (also one that failed or was rolled back)", RebuildArgs, timeout_s=3600.0),
        CommandSpec("rollback", "serve the previous deployment again", timeout_s=600.0, from_group=False),
        CommandSpec("snapshot", "publish one camera frame (JPEG) with its latest result on <device>/snapshot", SnapshotArgs),
        CommandSpec("telemetry", "publish a telemetry document now"),
        CommandSpec("diagnostics", "the doctor report", timeout_s=120.0),
        CommandSpec("set-log-level", "change the agent's log level until restart", SetLogLevelArgs),
        CommandSpec("restart-pipeline", "stop and start the camera pipeline with the serving engine", timeout_s=120.0, from_group=False),
        CommandSpec("cancel", "cancel a queued or running job", CancelArgs, from_group=False),
    )
}


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    args: Any  # the command's arguments Struct (COMMANDS[type].args)
    timeout_s: float
    issued_at: float  # the sender's clock (informational)
    reply_to: str = ""  # a reply topic from the payload (MQTT 3.1.1); MQTT 5 uses the response topic
    source: str = "device"  # "device" or "group:<name>"


class CommandEnvelope(Envelope, frozen=True, kw_only=True):
    """A command as it travels on `<device>/cmd` or `group/<name>/cmd`. Its `args` are parsed into the
    command type's own Struct once the type is known (`check_args`)."""

    id: Annotated[str, Meta(pattern=COMMAND_ID_PATTERN.pattern)]  # 1 to 128 of letters, digits and ._:-
    type: Annotated[str, Meta(max_length=256)]  # a key of COMMANDS (an unknown one is refused naming them)
    args: Optional[Dict[str, Any]] = None  # null is no arguments
    timeout_s: Optional[Annotated[float, Meta(gt=0, le=MAX_TIMEOUT_S)]] = None  # default: the type's own
    reply_to: Optional[Annotated[str, Meta(max_length=256)]] = None  # MQTT 3.1.1; MQTT 5 uses the response topic
    device: Optional[Annotated[str, Meta(max_length=256)]] = None  # the device it is addressed to


def _readable(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) and len(value) <= 256 else ""


def decode_command(payload: bytes, *, device_id: str, source: str = "device", topic_prefix: str = "") -> Command:
    """Strictly decode a command payload; raises CommandRejected naming the problem (with the id when readable)."""
    try:
        data = decode(payload, expected_kind=COMMAND_KIND)
    except MessageError as exc:  # absurd nesting included: decode turns RecursionError into MessageError
        raise CommandRejected(f"malformed command: {exc}") from None
    command_id = _readable(data, "id")
    command_type = _readable(data, "type")
    reply_to = _readable(data, "reply_to")

    def reject(reason: str) -> CommandRejected:
        return CommandRejected(reason, command_id if COMMAND_ID_PATTERN.match(command_id) else "", command_type, reply_to)

    try:
        envelope = parse(CommandEnvelope, data, error=MessageError)
    except MessageError as exc:
        raise reject(f"malformed command: {exc}") from None
    spec = COMMANDS.get(envelope.type)
    if spec is None:
        raise reject(f"unknown command type {envelope.type!r} (known: {', '.join(COMMANDS)})")
    if envelope.device is not None and envelope.device != device_id:
        raise reject(f"unauthorised: the command is addressed to device {envelope.device!r}, this is {device_id!r}")
    if source != "device" and not spec.from_group:
        raise reject(f"unauthorised: '{envelope.type}' is accepted on the device's own command topic only, not from {source}")
    reply_to = envelope.reply_to or ""
    if reply_to and (any(ch in reply_to for ch in "+#") or (topic_prefix and not reply_to.startswith(topic_prefix + "/"))):
        raise reject(f"unauthorised: reply_to must be a topic under '{topic_prefix}/' without wildcards, got {reply_to!r}")
    try:
        args = check_args(spec, envelope.args or {})
    except MessageError as exc:
        raise reject(f"bad arguments for '{envelope.type}': {exc}") from None
    timeout = spec.timeout_s if envelope.timeout_s is None else envelope.timeout_s
    return Command(envelope.id, envelope.type, args, float(timeout), envelope.ts, reply_to, source)


def check_args(spec: CommandSpec, raw: Mapping[str, Any], *, strict: bool = True) -> Any:
    """A command's `args` object -> its arguments Struct; MessageError names the argument and the problem."""
    return parse(spec.args, dict(raw), error=MessageError, root="args", strict=strict)


def coerce_cli_args(command_type: str, pairs: List[str]) -> Dict[str, Any]:
    """`["cold=true", "camera=1"]` -> the typed `args` object for `command_type` (only the keys given), checked
    against its Struct."""
    spec = COMMANDS.get(command_type)
    if spec is None:
        raise MessageError(f"unknown command type {command_type!r} (known: {', '.join(COMMANDS)})")
    raw: Dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise MessageError(f"--arg takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        raw[key.strip()] = value.strip()
    checked = dump(check_args(spec, raw, strict=False))
    return {key: checked[key] for key in raw}


def encode_command(
    command_id: str,
    command_type: str,
    args: Optional[Mapping[str, Any]] = None,
    *,
    device: Optional[str] = None,
    timeout_s: Optional[float] = None,
    reply_to: str = "",
) -> bytes:
    body: Dict[str, Any] = {"id": command_id, "type": command_type, "args": dict(args or {})}
    if device is not None:
        body["device"] = device
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if reply_to:
        body["reply_to"] = reply_to
    return encode(COMMAND_KIND, body)


# the job ---------------------------------------------------------------------------------------------
@dataclass
class Transition:
    state: JobState
    at: float
    detail: str = ""


@dataclass
class Job:
    """One command's life on the device."""

    command: Command
    received_at: float = field(default_factory=time.time)  # wall clock, for reports
    received_mono: float = field(default_factory=time.monotonic)  # for the deadline: NTP may move the wall clock
    history: List[Transition] = field(default_factory=list)
    result: Dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def id(self) -> str:
        return self.command.id

    @property
    def state(self) -> Optional[JobState]:
        return self.history[-1].state if self.history else None

    @property
    def deadline(self) -> float:
        """time.monotonic() after which the job is TIMED_OUT."""
        return self.received_mono + self.command.timeout_s

    def overdue(self, now_mono: Optional[float] = None) -> bool:
        return (time.monotonic() if now_mono is None else now_mono) > self.deadline

    def advance(self, state: JobState, detail: str = "", *, at: Optional[float] = None) -> Transition:
        allowed = TRANSITIONS.get(self.state, frozenset())
        if state not in allowed:
            raise JobTransitionError(f"job {self.id}: cannot go from {self.state} to {state.value}")
        transition = Transition(state, time.time() if at is None else at, detail)
        self.history.append(transition)
        if state in (JobState.FAILED, JobState.TIMED_OUT, JobState.REJECTED, JobState.CANCELED) and detail:
            self.error = detail
        return transition


def reply_payload(
    device_id: str,
    job_id: str,
    command_type: str,
    state: JobState,
    *,
    detail: str = "",
    result: Optional[Mapping[str, Any]] = None,
) -> bytes:
    """One state transition of a job, as published on the reply topic."""
    body: Dict[str, Any] = {"device": device_id, "job_id": job_id, "type": command_type, "state": state.value}
    if detail:
        body["detail"] = detail
    if result:
        body["result"] = dict(result)
    return encode(REPLY_KIND, body)


class Reply(Envelope, frozen=True, kw_only=True):
    """One state transition of a job, as read from the reply topic (`reply_payload` writes it)."""

    state: JobState
    device: str = ""
    job_id: str = ""
    type: str = ""
    detail: str = ""
    result: Dict[str, Any] = msgspec.field(default_factory=dict)


def decode_reply(payload: bytes) -> Reply:
    """A reply payload -> Reply; MessageError names the key and the problem (for `state`, the states)."""
    return parse(Reply, decode(payload, expected_kind=REPLY_KIND), error=MessageError, root="reply")
