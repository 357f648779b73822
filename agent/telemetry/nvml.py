"""The `gpu` section from NVML (nvidia-ml-py's `pynvml`) on discrete GPUs: utilisation, memory, temperature,
power, clocks and throttle reasons per device.

Imported lazily: without pynvml, the NVML library or a driver, the section is null with one log line, and
initialisation is retried only every few minutes. A field a GPU does not support (fan speed on SXM boards,
most fields on a Jetson iGPU) is null, silently. Run `python -m agent.telemetry.nvml` to print the section.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from agent.lazy import try_import
from agent.telemetry.soft import SoftSources

RETRY_INIT_S = 300.0

# NVML clock-event ("throttle") reason bits; stable across NVML versions, named here so old pynvml works too.
THROTTLE_REASONS: Dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# reasons that mean "slower than it could be because of power or heat" (idle and app clocks are not)
SLOWDOWN_BITS = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def decode_throttle_reasons(mask: int) -> List[str]:
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(f"other_0x{unknown:x}")
    return names


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlCollector:
    """`collect()` gives {'driver_version', 'cuda_driver_version', 'devices': [...]} or None."""

    def __init__(self, *, sources: Optional[SoftSources] = None) -> None:
        self.sources = sources or SoftSources()
        self._nvml: Optional[ModuleType] = None
        self._handles: List[Any] = []
        self._static: Dict[str, Any] = {}
        self._next_try = 0.0

    def _init(self) -> Optional[ModuleType]:
        if self._nvml is not None:
            return self._nvml
        if time.monotonic() < self._next_try:
            return None
        self._next_try = time.monotonic() + RETRY_INIT_S
        pynvml = try_import("pynvml")
        if pynvml is None:
            self.sources.fail("nvml", "the Python module 'pynvml' is not installed (pip install 'edge-agent[nvml]')", level=20)
            return None
        try:
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVIDIA GPU here
            self.sources.fail("nvml", f"{type(exc).__name__}: {exc}", level=20)
            return None
        self._nvml = pynvml
        self.sources.ok("nvml")
        self._static = {
            "driver_version": self._field(lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": self._field(lambda: _cuda_version(int(pynvml.nvmlSystemGetCudaDriverVersion()))),
        }
        return pynvml

    def _field(self, read: Callable[[], Any]) -> Any:
        """One NVML query; None when unsupported or failing (a field never fails the section)."""
        try:
            return read()
        except Exception:
            return None

    def collect(self) -> Optional[Dict[str, Any]]:
        nvml = self._init()
        if nvml is None:
            return None
        devices = [self._device(nvml, index, handle) for index, handle in enumerate(self._handles)]
        return {**self._static, "devices": devices}

    def _device(self, nvml: ModuleType, index: int, handle: Any) -> Dict[str, Any]:
        f = self._field
        util = f(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = f(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        reasons_mask = f(lambda: int(_clock_event_reasons(nvml, handle)))
        energy_mj = f(lambda: int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))
        return {
            "index": index,
            "name": f(lambda: _text(nvml.nvmlDeviceGetName(handle))),
            "uuid": f(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
            "util_pct": None if util is None else int(util.gpu),
            "mem_util_pct": None if util is None else int(util.memory),
            "memory_used_mb": None if memory is None else round(memory.used / 1048576.0, 1),
            "memory_total_mb": None if memory is None else round(memory.total / 1048576.0, 1),
            "temp_c": f(lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
            "power_mw": f(lambda: int(nvml.nvmlDeviceGetPowerUsage(handle))),
            "power_limit_mw": f(lambda: int(nvml.nvmlDeviceGetEnforcedPowerLimit(handle))),
            "energy_j": None if energy_mj is None else round(energy_mj / 1000.0, 1),
            "clocks_mhz": {
                "graphics": f(lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS))),
                "sm": f(lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
                "mem": f(lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM))),
            },
            "max_clocks_mhz": {
                "graphics": f(lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_GRAPHICS))),
                "sm": f(lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM))),
                "mem": f(lambda: int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM))),
            },
            "fan_pct": f(lambda: int(nvml.nvmlDeviceGetFanSpeed(handle))),
            "pstate": f(lambda: int(nvml.nvmlDeviceGetPerformanceState(handle))),
            "throttle_reasons": None if reasons_mask is None else decode_throttle_reasons(reasons_mask),
            "throttled": None if reasons_mask is None else bool(reasons_mask & SLOWDOWN_BITS),
        }

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


def _clock_event_reasons(nvml: ModuleType, handle: Any) -> int:
    # NVML 12.x renamed "throttle reasons" to "clocks event reasons"; older bindings only have the old name
    reader = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(reader(handle))


def _cuda_version(encoded: int) -> str:
    """NVML encodes the CUDA driver version as 1000*major + 10*minor (12040 -> '12.4')."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def main() -> int:
    """Print the NVML section as JSON (null and the reason on stderr when NVML is not usable here)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    collector = NvmlCollector()
    section = collector.collect()
    collector.close()
    sys.stdout.write(json.dumps(section, indent=2) + "\n")
    return 0 if section is not None else 1


if __name__ == "__main__":
    sys.exit(main())
