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
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        # a hand-edited or older file: coerce the containers so the agent never trips over them
        if not isinstance(state.blocked, dict):
            state.blocked = {}
        if not isinstance(state.recent_commands, list):
            state.recent_commands = []
        if not isinstance(state.open_jobs, dict):
            state.open_jobs = {}
        if not isinstance(state.keep_artifacts, list):
            state.keep_artifacts = []
        for key in ("desired", "serving", "previous", "applying", "last_error"):
            if not isinstance(getattr(state, key), (dict, type(None))):
                setattr(state, key, None)
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
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            log.warning("cannot read %s (%s); starting from an empty state", self.path, exc)
            return AgentState()
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return AgentState.from_dict(data)
        except (ValueError, TypeError) as exc:
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


def read_state(state_dir: Path) -> Optional[AgentState]:
    """Read-only view for `edge-agent status` (no corrupt-file handling side effects). None if absent or unreadable."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return AgentState.from_dict(data) if isinstance(data, dict) else None
