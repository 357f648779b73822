"""state.json: atomic, bounded, and never a reason not to start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.store.state import STATE_FILE, StateStore, read_state


def test_state_survives_a_new_store(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.mutate() as state:
        state.serving = {"deployment": {"id": "a"}, "digest": "d1"}
        state.remember_command("c-1", "ping", "SUCCEEDED")
    again = StateStore(tmp_path).snapshot()
    assert again.serving == {"deployment": {"id": "a"}, "digest": "d1"}
    assert again.command_seen("c-1") == {**again.command_seen("c-1"), "state": "SUCCEEDED"}  # type: ignore[dict-item]
    assert read_state(tmp_path) is not None and oct((tmp_path / STATE_FILE).stat().st_mode & 0o777) == "0o600"


def test_recent_command_ids_are_bounded(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.mutate() as state:
        for n in range(300):
            state.remember_command(f"c-{n}", "ping", "SUCCEEDED", limit=256)
    snapshot = store.snapshot()
    assert len(snapshot.recent_commands) == 256 and snapshot.command_seen("c-299") and not snapshot.command_seen("c-0")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b"[" * 100000 + b"]" * 100000])
def test_a_corrupt_state_file_is_kept_aside_and_the_agent_starts_empty(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    store = StateStore(tmp_path)
    assert store.snapshot().serving is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f"{STATE_FILE}.corrupt-")]
    assert read_state(tmp_path) is None  # nothing there now: the corrupt file was moved aside
    store.save()
    assert read_state(tmp_path) is not None


def test_damaged_fields_are_coerced_not_fatal(tmp_path: Path) -> None:
    junk = {"serving": "x", "recent_commands": ["junk", {"id": "c-1", "state": "QUEUED"}], "blocked": [1], "open_jobs": {"j": 5},
            "keep_artifacts": [1, "a" * 64], "starts": "many", "unknown_key": 1}
    (tmp_path / STATE_FILE).write_text(json.dumps(junk))
    state = StateStore(tmp_path).snapshot()
    assert state.serving is None and state.blocked == {} and state.open_jobs == {} and state.starts == 0
    assert state.command_seen("c-1") is not None and state.keep_artifacts == ["a" * 64]
