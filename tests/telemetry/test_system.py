"""The system section: psutil and sysfs, each part failing on its own."""

from __future__ import annotations

import logging
from pathlib import Path

import psutil
import pytest

from agent.telemetry.soft import SoftSources
from agent.telemetry.system import (
    SystemCollector,
    discover_thermal_zones,
    existing_ancestor,
    read_meminfo,
    read_thermal_zones,
)


def test_collects_every_part_with_units(tmp_path: Path) -> None:
    collector = SystemCollector(tmp_path / "state" / "not-yet")
    first = collector.collect()
    second = collector.collect()
    assert second["cpu"]["count"] == len(second["cpu"]["per_core_pct"]) == psutil.cpu_count()
    assert 0 <= second["cpu"]["total_pct"] <= 100
    assert second["memory"]["total_mb"] > second["memory"]["available_mb"] > 0
    assert second["disk"]["path"] == str(tmp_path)  # the nearest existing parent of the state folder
    assert second["disk"]["free_mb"] > 0
    assert first["net"]["sent_bps"] is None and second["net"]["sent_bps"] is not None
    assert second["process"]["rss_mb"] > 5 and second["process"]["pid"] > 0
    assert second["uptime_s"] > 0
    assert set(second["load"]) == {"1m", "5m", "15m"}


def test_memory_matches_psutil(tmp_path: Path) -> None:
    memory = SystemCollector(tmp_path).collect()["memory"]
    assert memory["total_mb"] == pytest.approx(psutil.virtual_memory().total / 1048576.0, rel=0.01)


def test_thermal_zones_from_sysfs(tmp_path: Path) -> None:
    for i, (kind, milli) in enumerate([("cpu-thermal", "45500"), ("gpu-thermal", "-256000"), ("cpu-thermal", "47000")]):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    broken = tmp_path / "thermal_zone9"
    broken.mkdir()
    (broken / "type").write_text("broken\n")
    zones = discover_thermal_zones(tmp_path)
    assert [name for name, _ in zones] == ["cpu-thermal", "gpu-thermal", "cpu-thermal#2"]
    assert read_thermal_zones(zones) == {"cpu-thermal": 45.5, "gpu-thermal": None, "cpu-thermal#2": 47.0}
    section = SystemCollector(tmp_path, thermal_root=tmp_path).collect()
    assert section["temps_c"]["cpu-thermal"] == 45.5


def test_a_failing_part_is_null_and_logged_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(**_kw: object) -> None:
        raise PermissionError("/proc/net/dev: permission denied")

    monkeypatch.setattr(psutil, "net_io_counters", broken)
    sources = SoftSources()
    collector = SystemCollector(tmp_path, sources=sources)
    caplog.set_level(logging.INFO, logger="agent.telemetry")
    sections = [collector.collect() for _ in range(4)]
    assert all(s["net"] is None and s["memory"] is not None for s in sections)
    assert len([r for r in caplog.records if "system.net unavailable" in r.getMessage()]) == 1
    assert "PermissionError" in sources.failing["system.net"]
    monkeypatch.undo()
    assert collector.collect()["net"] is not None
    assert "system.net" not in sources.failing
    assert any("system.net is available again" in r.getMessage() for r in caplog.records)


def test_helpers(tmp_path: Path) -> None:
    assert existing_ancestor(tmp_path / "a" / "b") == tmp_path
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:    250 kB\nHugePages_Total:       0\n")
    assert read_meminfo(meminfo) == {"MemTotal": 1024000, "MemAvailable": 256000, "HugePages_Total": 0}
    assert read_meminfo(tmp_path / "none") is None
