"""Fixtures of the telemetry tests: the real tegrastats samples, and a stand-in `tegrastats` command (a real
subprocess that prints real sample lines at an interval) for the reader."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

from tests.helpers import testdata


def sample_lines() -> List[str]:
    """The data lines of ../shared/testdata/real/tegrastats_samples.txt (skips when the file is absent)."""
    path = testdata("real", "tegrastats_samples.txt")
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture()
def real_samples() -> List[str]:
    return sample_lines()


def printer_command(tmp_path: Path, lines: List[str], interval_s: float, repeat: int = 1000, exit_code: int = 0) -> List[str]:
    """A command that prints `lines` round-robin every `interval_s` seconds, `repeat` lines in all, then exits."""
    data = tmp_path / "lines.txt"
    data.write_text("\n".join(lines) + "\n")
    script = tmp_path / "fake_tegrastats.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            lines = open({str(data)!r}).read().splitlines()
            for i in range({repeat}):
                print(lines[i % len(lines)], flush=True)
                time.sleep({interval_s})
            sys.exit({exit_code})
            """
        )
    )
    return [sys.executable, str(script)]
