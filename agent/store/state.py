"""`state.json`: what the agent must remember across restarts, written atomically on every change.

- `desired`: the last desired deployment seen (and where from), acted on at boot while the broker is away;
- `serving`: the deployment actually serving and its engine (so a reboot with the broker away serves again);
- `previous`: the one before it (for `rollback`);
- `applying`: the deployment being applied and its step (so a kill -9 mid-build or mid-download retries);
- `last_error`: the last failed step and why;
- `blocked`: deployments (by digest) that failed for good or were rolled back, not retried on their own;
- `recent_commands`: ids of recent commands, so the same command id twice is answered once;
- `open_jobs`: jobs not finished when the agent stopped, reported FAILED at the next start;
- `keep_artifacts`: artifact ids in use (serving, previous, applying), which `edge-agent store gc` keeps.

Deployments and engines are kept as plain JSON objects: the store knows nothing of their schema. A corrupt
file is moved aside (never deleted) and the agent starts from an empty state with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from agent.store.atomic import atomic_move, atomic_write_json

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1
MAX_RECENT_COMMANDS = 256


@dataclass
class AgentState:
    version: int = STATE_VERSION
    desired: Optional[Dict[str, Any]] = None
    serving: Optional[Dict[str, Any]] = None
    previous: Optional[Dict[str, Any]] = None
    applying: Optional[Dict[str, Any]] = None
    last_error: Optional[Dict[str, Any]] = None
    blocked: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    recent_commands: List[Dict[str, Any]] = field(default_factory=list)
    open_jobs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    keep_artifacts: List[str] = field(default_factory=list)  # read by ArtifactStore.gc (agent/store/artifacts.py)
    starts: int = 0
    updated_at: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> AgentState:
        """From a parsed state.json. A hand-edited, damaged or older file is coerced field by field so the agent
        never trips over it: a container of the wrong type becomes empty, entries of the wrong type are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.blocked = {str(k): v for k, v in state.blocked.items() if isinstance(v, dict)} if isinstance(state.blocked, dict) else {}
        state.open_jobs = {str(k): v for k, v in state.open_jobs.items() if isinstance(v, dict)} if isinstance(state.open_jobs, dict) else {}
        state.recent_commands = [e for e in state.recent_commands if isinstance(e, dict)] if isinstance(state.recent_commands, list) else []
        state.keep_artifacts = [a for a in state.keep_artifacts if isinstance(a, str)] if isinstance(state.keep_artifacts, list) else []
        for key in ("desired", "serving", "previous", "applying", "last_error"):
            if not isinstance(getattr(state, key), (dict, type(None))):
                setattr(state, key, None)
        for key in ("version", "starts"):
            if not isinstance(getattr(state, key), int) or isinstance(getattr(state, key), bool):
                setattr(state, key, 0)
        if not isinstance(state.updated_at, (int, float)):
            state.updated_at = 0.0
        return state

    # recent command ids ---------------------------------------------------------------------------------
    def command_seen(self, command_id: str) -> Optional[Dict[str, Any]]:
        for entry in reversed(self.recent_commands):
            if entry.get("id") == command_id:
                return entry
        return None

    def remember_command(self, command_id: str, command_type: str, state: str, limit: int = MAX_RECENT_COMMANDS) -> None:
        for entry in self.recent_commands:
            if entry.get("id") == command_id:
                entry["state"] = state
                entry["at"] = round(time.time(), 3)
                return
        self.recent_commands.append({"id": command_id, "type": command_type, "state": state, "at": round(time.time(), 3)})
        del self.recent_commands[:-limit]


class StateStore:
    """The state file of one agent. `with store.mutate() as state:` changes it and saves atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self._lock = threading.RLock()
        self._state = self._load()

    def _load(self) -> AgentState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            log.warning("cannot read %s (%s); starting from an empty state", self.path, exc)
            return AgentState()
        try:
            return AgentState.from_dict(_parse(raw))
        except (ValueError, TypeError, RecursionError) as exc:
            aside = self.path.with_name(f"{STATE_FILE}.corrupt-{int(time.time())}")
            try:
                atomic_move(self.path, aside)
            except OSError:
                pass
            log.warning("%s is unreadable (%s): kept as %s, starting from an empty state", self.path, exc, aside.name)
            return AgentState()

    def snapshot(self) -> AgentState:
        """A deep copy, safe to read while other threads change the state."""
        with self._lock:
            return AgentState.from_dict(json.loads(json.dumps(self._state.to_dict())))

    @contextlib.contextmanager
    def mutate(self) -> Iterator[AgentState]:
        with self._lock:
            yield self._state
            self._state.updated_at = round(time.time(), 3)
            atomic_write_json(self.path, self._state.to_dict(), mode=0o600)

    def save(self) -> None:
        with self.mutate():
            pass


def _parse(raw: bytes) -> Dict[str, Any]:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def read_state(state_dir: Path) -> Optional[AgentState]:
    """Read-only view for `edge-agent status` and `doctor` (no corrupt-file handling side effects). None if
    absent or unreadable."""
    try:
        return AgentState.from_dict(_parse((Path(state_dir) / STATE_FILE).read_bytes()))
    except (OSError, ValueError, TypeError, RecursionError):
        return None
