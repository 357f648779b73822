"""The tegrastats parser: every real sample, each JetPack generation's quirks, and lines it has never seen."""

from __future__ import annotations

import json
import re
from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry.tegrastats import TegrastatsSample, parse_line, parse_lines

TEMP_TOKEN = re.compile(r"(?:^|\s)[A-Za-z][\w-]*@-?\d+(?:\.\d+)?C")
CPU_LIST = re.compile(r"\b[Cc][Pp][Uu] \[([^\]]*)\]")


def test_every_real_sample_has_ram_cpu_and_temperatures_where_the_line_has_them(real_samples: List[str]) -> None:
    assert len(real_samples) >= 8
    for line in real_samples:
        sample = parse_line(line)
        if "RAM " in line:
            assert sample.ram is not None, line
            assert 0 < sample.ram["used_mb"] <= sample.ram["total_mb"], line
        cpu_list = CPU_LIST.search(line)
        if cpu_list:
            assert sample.cpus is not None and len(sample.cpus) == len(cpu_list.group(1).split(",")), line
            assert all(c is None or c.load_pct is not None for c in sample.cpus), line
        temps = TEMP_TOKEN.findall(line)
        assert len(sample.temps_c) == len(temps), line
        assert sample.other == {}, f"a real field went to 'other': {sample.other} in {line}"
        json.dumps(sample.to_dict(), allow_nan=False)


def test_real_samples_fill_rails_gpu_and_engines(real_samples: List[str]) -> None:
    for line in real_samples:
        sample = parse_line(line)
        assert sample.power_mw, line
        assert all(isinstance(r.now, int) and isinstance(r.avg, int) for r in sample.power_mw.values())
        if "GR3D" in line:
            assert sample.gpu is not None and sample.gpu.load_pct is not None, line


def test_nano_line_with_iram_pom_rails_and_shared_units() -> None:
    s = parse_line(
        "RAM 717/3964MB (lfb 140x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [18%@102,2%@102,0%@102,0%@102] "
        "EMC_FREQ 2%@204 GR3D_FREQ 0%@76 APE 25 PLL@26C CPU@29.5C PMIC@100C POM_5V_IN 1057/1057 POM_5V_GPU 0/0"
    )
    assert s.ram == {"used_mb": 717, "total_mb": 3964, "lfb": {"blocks": 140, "block_mb": 4}}
    assert s.swap == {"used_mb": 0, "total_mb": 1982, "cached_mb": 0}
    assert s.iram == {"used_kb": 0, "total_kb": 252, "lfb_kb": 252}
    assert s.emc is not None and (s.emc.load_pct, s.emc.freq_mhz) == (2, 204)
    assert s.gpu is not None and (s.gpu.load_pct, s.gpu.freq_mhz) == (0, 76)
    assert s.engines["APE"] is not None and s.engines["APE"].freq_mhz == 25
    assert s.temps_c == {"PLL": 26.0, "CPU": 29.5, "PMIC": 100.0}
    assert s.power_mw["POM_5V_IN"].now == 1057 and s.power_mw["POM_5V_IN"].max is None


def test_off_cores_are_none_and_gr3d_without_clock_has_no_frequency() -> None:
    s = parse_line("CPU [99%@1189,100%@1188,off,off] EMC_FREQ 0% GR3D_FREQ 22% VDD_IN 5542mW/5542mW")
    assert s.cpus is not None and s.cpus[2:] == [None, None]
    assert s.cpus[0] is not None and (s.cpus[0].load_pct, s.cpus[0].freq_mhz) == (99, 1189)
    assert s.gpu is not None and (s.gpu.load_pct, s.gpu.freq_mhz) == (22, None)
    assert s.emc is not None and s.emc.freq_mhz is None
    assert s.power_mw["VDD_IN"].now == 5542


def test_orin_per_gpc_array_and_engines_off() -> None:
    s = parse_line("GR3D_FREQ 43%@[305,0] NVENC off NVDLA0 off NVDLA1 1395 PVA0_FREQ off NVDEC 40%@115")
    assert s.gpu is not None and (s.gpu.load_pct, s.gpu.freq_mhz) == (43, 305)
    assert s.gpc_freq_mhz == [305, 0]
    assert s.engines["NVENC"] is None and s.engines["NVDLA0"] is None and s.engines["PVA0"] is None
    assert s.engines["NVDLA1"] is not None and s.engines["NVDLA1"].freq_mhz == 1395
    nvdec = s.engines["NVDEC"]
    assert nvdec is not None and (nvdec.load_pct, nvdec.freq_mhz) == (40, 115)
    assert s.to_dict()["gpu"] == {"load_pct": 43, "freq_mhz": 305, "gpc_freq_mhz": [305, 0]}


def test_tx1_era_line_with_shared_cpu_clock_and_short_names() -> None:
    s = parse_line("RAM 3468/3983MB (lfb 48x4MB) SWAP 873/8192MB (cached 295MB) cpu [17%,13%,29%,off]@408 EMC 1%@408 APE 25 GR3D 3%@76")
    assert s.cpus is not None and [c.freq_mhz if c else None for c in s.cpus] == [408, 408, 408, None]
    assert s.emc is not None and s.emc.load_pct == 1
    assert s.gpu is not None and s.gpu.freq_mhz == 76


def test_jetpack7_thor_line_without_gr3d_with_cur_max_temps_and_three_value_rails() -> None:
    # shaped after JetPack 7 reports (no GR3D_FREQ on Thor, `zone@cur/max`, rails with a third value)
    s = parse_line(
        "01-10-2026 10:00:00 RAM 9000/125772MB (lfb 3x4MB) CPU [1%@972,off] EMC_FREQ 0%@2133 NVENC0 off NVDEC0 off "
        "cpu@45.5C/45.9C gpu@44C/101C tj@46.1C VDD_GPU 1200mW/1100mW/3000mW VDD_CPU_SOC_MSS 4000/3900/4500"
    )
    assert s.gpu is None
    assert s.temps_c == {"cpu": 45.5, "gpu": 44.0, "tj": 46.1}
    assert s.temps_max_c == {"cpu": 45.9, "gpu": 101.0}
    assert s.power_mw["VDD_GPU"].max == 3000 and s.power_mw["VDD_CPU_SOC_MSS"].avg == 3900
    assert s.to_dict()["power_mw"]["VDD_GPU"] == {"now": 1200, "avg": 1100, "max": 3000}
    assert s.to_dict()["gpu"] is None and s.other == {}


def test_future_jetpack_line_keeps_unknown_fields_and_parses_the_known_ones() -> None:
    line = (
        "03-01-2029 12:00:00 RAM 1000/32000MB (lfb 2x4MB) SWAP 0/16000MB (cached 0MB) CPU [5%@2000,7%@2000] "
        "GR3D_FREQ @[1500,1500,1500] NPU_FREQ 12%@900 FAN 45% QUANTUM{a=1} NEW_RAIL 1mW/2mW/3mW/4mW "
        "skin@33.5C/80C/90C VDD_IN 9000mW/9100mW"
    )
    s = parse_line(line)
    assert s.ram is not None and s.ram["total_mb"] == 32000
    assert s.cpus is not None and len(s.cpus) == 2
    assert s.gpu is not None and (s.gpu.load_pct, s.gpu.freq_mhz) == (None, 1500)
    assert s.power_mw["VDD_IN"].now == 9000
    assert s.other["NPU_FREQ"] == "12%@900"
    assert s.other["FAN"] == "45%"
    assert "QUANTUM{a=1}" in s.other
    assert any("NEW_RAIL" in key or "1mW/2mW/3mW/4mW" in key for key in s.other), s.other
    assert any("skin" in key for key in s.other), s.other
    json.dumps(s.to_dict())


def test_absent_sensor_reads_none_and_units_in_kb_convert() -> None:
    s = parse_line("RAM 512/1024MB (lfb 8x512kB) GPU@-256C CPU@40C")
    assert s.temps_c == {"GPU": None, "CPU": 40.0}
    assert s.ram is not None and s.ram["lfb"] == {"blocks": 8, "block_mb": 0.5}


def test_a_malformed_known_field_degrades_to_other_without_losing_the_rest() -> None:
    s = parse_line("RAM 12/abcMB SWAP 0/100MB (cached 0MB) CPU [1%@100] cpu@40C")
    assert s.ram is None
    assert s.swap is not None and s.cpus is not None and s.temps_c == {"cpu": 40.0}
    assert "RAM" in s.other and "12/abcMB" in s.other


def test_parse_lines_skips_comments_and_blank_lines() -> None:
    samples = parse_lines(["# device: x", "", "   ", "RAM 1/2MB", "  # indented comment", "RAM 3/4MB"])
    assert [s.ram["used_mb"] for s in samples if s.ram] == [1, 3]


def test_empty_line_gives_an_empty_sample() -> None:
    assert parse_line("").to_dict() == TegrastatsSample().to_dict()


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("RAMSWPCUGD3F_@%/[],0123456789 .CmWkBoff()lfbx-")), max_size=120))
def test_never_raises_on_arbitrary_text(text: str) -> None:
    json.dumps(parse_line(text).to_dict(), allow_nan=False)
