"""nvpmodel and jetson_clocks readers, and the jetson section on and off a Jetson."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import pytest

from agent.telemetry.jetson import (
    JetsonCollector,
    is_jetson,
    jetson_clocks_from_sysfs,
    parse_jetson_clocks_show,
    parse_nvpmodel,
)
from tests import helpers
from tests.telemetry.conftest import printer_command


def _nvpmodel_blocks() -> List[str]:
    """The sample blocks in the `nvpmodel -q` part of device_identity_samples.txt."""
    text = helpers.testdata("real", "device_identity_samples.txt").read_text()
    part = text.split("nvpmodel -q ####", 1)[1].split("\n####", 1)[0]
    return [block for block in part.split("\n\n") if "NV Power Mode" in block]


def test_nvpmodel_real_outputs() -> None:
    blocks = _nvpmodel_blocks()
    assert blocks
    modes = [parse_nvpmodel(block) for block in blocks]
    assert all(m is not None for m in modes)
    assert {"name": "MAXN", "id": 0} in modes  # two queries in one block: the last wins
    assert {"name": "MAXN", "id": None} in modes  # published without the id line


def test_nvpmodel_without_a_mode_line() -> None:
    assert parse_nvpmodel("NVPM WARN: Reboot required for changing to this power mode: 0") is None
    assert parse_nvpmodel("NV Power Mode: 15W\n2\n") == {"name": "15W", "id": 2}


def test_jetson_clocks_show_inactive_and_active() -> None:
    inactive = "cpu0: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=1479000\n" \
               "GPU MinFreq=76800000 MaxFreq=921600000 CurrentFreq=153600000\n" \
               "EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0\n"
    active = "cpu0: Online=1 Governor=schedutil MinFreq=1479000 MaxFreq=1479000 CurrentFreq=1479000\n" \
             "cpu1: Online=0 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=1479000\n" \
             "GPU MinFreq=921600000 MaxFreq=921600000 CurrentFreq=921600000\n" \
             "EMC MinFreq=1600000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1\n"
    assert parse_jetson_clocks_show(inactive) == {"active": False, "source": "jetson_clocks --show"}
    assert parse_jetson_clocks_show(active) == {"active": True, "source": "jetson_clocks --show"}
    assert parse_jetson_clocks_show("NV Power Mode: MAXN") is None


def test_jetson_clocks_from_sysfs(tmp_path: Path) -> None:
    for cpu, (low, high) in enumerate([(1000, 2000), (2000, 2000)]):
        folder = tmp_path / f"cpu{cpu}" / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_min_freq").write_text(f"{low}\n")
        (folder / "scaling_max_freq").write_text(f"{high}\n")
    assert jetson_clocks_from_sysfs(tmp_path) == {"active": False, "source": "sysfs cpufreq"}
    (tmp_path / "cpu0" / "cpufreq" / "scaling_min_freq").write_text("2000\n")
    assert jetson_clocks_from_sysfs(tmp_path) == {"active": True, "source": "sysfs cpufreq"}
    assert jetson_clocks_from_sysfs(tmp_path / "missing") is None


def test_is_jetson_reads_the_release_file(tmp_path: Path) -> None:
    assert not is_jetson(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    assert is_jetson(tmp_path)


def test_off_a_jetson_the_section_is_null_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.telemetry")
    collector = JetsonCollector(1.0, on_jetson=False)
    collector.start()
    assert [collector.collect() for _ in range(3)] == [None, None, None]
    assert len([r for r in caplog.records if "jetson unavailable" in r.getMessage()]) == 1
    collector.close()


def test_tegrastats_section_from_a_running_reader(tmp_path: Path, real_samples: List[str]) -> None:
    collector = JetsonCollector(0.05, on_jetson=False, tegrastats_command=printer_command(tmp_path, real_samples[-1:], 0.05))
    collector.start()
    try:
        collector.wait_first(10)
        section = collector.collect()
    finally:
        collector.close()
    assert section is not None and section["tegrastats"]["ram"]["total_mb"] == 7620
    assert section["nvpmodel"] is None and section["jetson_clocks"] is None
