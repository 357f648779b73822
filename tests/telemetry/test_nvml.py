"""The NVML section: null with one log line where there is no NVIDIA GPU; real numbers where there is one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from agent.lazy import try_import
from agent.telemetry.nvml import NvmlCollector, _cuda_version, decode_throttle_reasons
from tests.helpers import REPO_ROOT


def _nvml_works() -> bool:
    pynvml = try_import("pynvml")
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def test_throttle_reasons_and_cuda_version_decode() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x1 | 0x40) == ["gpu_idle", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0x4000) == ["other_0x4000"]
    assert _cuda_version(12040) == "12.4" and _cuda_version(13000) == "13.0"


def test_without_a_gpu_the_section_is_null_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    if _nvml_works():
        pytest.skip("this machine has an NVIDIA GPU (a working NVML)")
    caplog.set_level(logging.INFO, logger="agent.telemetry")
    collector = NvmlCollector()
    assert [collector.collect() for _ in range(3)] == [None, None, None]
    assert len([r for r in caplog.records if "nvml unavailable" in r.getMessage()]) == 1
    assert "nvml" in collector.sources.failing
    collector.close()


def test_module_runs_standalone() -> None:
    done = subprocess.run([sys.executable, "-m", "agent.telemetry.nvml"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    section = json.loads(done.stdout)
    if section is None:
        assert done.returncode == 1 and "nvml unavailable" in done.stderr
    else:
        assert done.returncode == 0 and isinstance(section["devices"], list)


@pytest.mark.gpu
def test_real_gpu_reports_numbers() -> None:
    collector = NvmlCollector()
    section = collector.collect()
    collector.close()
    assert section is not None and section["devices"], "NVML found no device"
    device = section["devices"][0]
    assert device["name"] and device["memory_total_mb"] > 0
    assert device["temp_c"] is not None and device["power_mw"] is not None
    assert isinstance(device["throttle_reasons"], list)
    assert section["driver_version"]
