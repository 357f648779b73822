"""TegrastatsReader against a real subprocess that prints real tegrastats lines."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List

import pytest

from agent.telemetry.tegrastats import TegrastatsReader
from tests.telemetry.conftest import printer_command


def test_reader_keeps_the_latest_parsed_sample(tmp_path: Path, real_samples: List[str]) -> None:
    reader = TegrastatsReader(0.05, printer_command(tmp_path, real_samples[-2:], 0.05))
    assert reader.start()
    try:
        first = reader.wait_first(10)
        assert first is not None and first.ram is not None
        deadline = time.monotonic() + 10
        while reader.lines < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reader.lines >= 3
        latest = reader.latest()
        assert latest is not None and latest.cpus
    finally:
        reader.stop()
    assert not reader.running


def test_without_tegrastats_start_fails_soft(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    reader = TegrastatsReader(1.0)
    if reader.resolve_command() is not None:
        pytest.skip("this machine is a Jetson (tegrastats in a system folder)")
    assert reader.start() is False
    assert "tegrastats not found" in reader.last_error
    assert reader.latest() is None


def test_a_dying_tegrastats_is_restarted_and_logged_once(tmp_path: Path, real_samples: List[str], caplog: pytest.LogCaptureFixture) -> None:
    command = printer_command(tmp_path, real_samples[:1], 0.0, repeat=1, exit_code=3)
    reader = TegrastatsReader(0.01, command, max_backoff_s=0.05)
    caplog.set_level(logging.WARNING, logger="agent.telemetry.tegrastats")
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while reader.restarts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop()
    assert reader.restarts >= 3
    assert "exit code 3" in reader.last_error
    # every run printed a line before dying, so each death is a new outage: one line per death, no more
    assert 1 <= len([r for r in caplog.records if "tegrastats stopped" in r.getMessage()]) <= reader.restarts + 1


def test_a_tegrastats_that_never_prints_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys; sys.stderr.write('needs root'); sys.exit(1)\n")
    import sys

    reader = TegrastatsReader(0.01, [sys.executable, str(script)], max_backoff_s=0.02)
    caplog.set_level(logging.WARNING, logger="agent.telemetry.tegrastats")
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while reader.restarts < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop()
    assert reader.restarts >= 3 and "needs root" in reader.last_error
    assert len([r for r in caplog.records if "tegrastats stopped" in r.getMessage()]) == 1


def test_a_stale_sample_is_not_reported(tmp_path: Path, real_samples: List[str]) -> None:
    # prints one line, then stays silent (alive) for a minute
    reader = TegrastatsReader(0.01, printer_command(tmp_path, real_samples[:1], 60.0, repeat=1), stale_after=1.0)
    reader.start()
    try:
        assert reader.wait_first(10) is not None
        time.sleep(1.2)  # older than stale_after * interval + 1 s
        assert reader.latest() is None
    finally:
        reader.stop()
