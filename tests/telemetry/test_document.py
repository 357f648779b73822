"""The telemetry document: sections, providers, the compact form and the validator."""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent.config import TelemetryConfig
from agent.telemetry.document import (
    TelemetryCollector,
    encode_document,
    from_compact,
    to_compact,
    validate_document,
)
from agent.telemetry.schema import fields, json_schema_text, key_clashes, markdown_table
from agent.telemetry.tegrastats import parse_line
from tests.helpers import REPO_ROOT
from tests.telemetry.conftest import printer_command

PIPELINE = {
    "fps": 29.7,
    "frames": 1800,
    "drops": 3,
    "camera_reconnects": 1,
    "latency_ms": {"infer": {"p50": 8.1, "p90": 9.0, "p99": 12.5, "max": 20.0}, "total": {"p50": 20.0, "p90": 24.0, "p99": 30.0}},
}
ENGINE = {"id": "ab12", "backend": "tensorrt", "precision": "int8", "target": "dla:0", "dla_layer_share": 0.85,
          "build_s": 412.0, "builds": 1, "cache_hits": 4, "cache_misses": 1}
AGENT = {"version": "0.1.0", "uptime_s": 12.5, "mqtt_connected": True, "mqtt_reconnects": 0, "outbox_depth": 0, "outbox_dropped": 0}


@pytest.fixture()
def collector(tmp_path: Path) -> Any:
    providers = {name: functools.partial(copy.deepcopy, value) for name, value in (("pipeline", PIPELINE), ("engine", ENGINE), ("agent", AGENT))}
    with TelemetryCollector(TelemetryConfig(interval_s=1.0), tmp_path, providers, device_id="cam-01", on_jetson=False) as c:
        yield c


def _with_jetson(doc: Dict[str, Any], line: str) -> Dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["jetson"] = {"tegrastats": parse_line(line).to_dict(), "nvpmodel": {"name": "MAXN", "id": 0},
                     "jetson_clocks": {"active": False, "source": "sysfs cpufreq"}}
    return doc


def test_document_has_every_section_and_validates(collector: TelemetryCollector) -> None:
    doc = collector.collect()
    assert doc["schema"] == 1 and doc["kind"] == "telemetry" and doc["device"] == "cam-01"
    assert doc["pipeline"] == PIPELINE and doc["engine"] == ENGINE and doc["agent"] == AGENT
    assert doc["system"]["memory"]["total_mb"] > 0
    assert doc["jetson"] is None  # not a Jetson here
    assert validate_document(doc) == []
    assert json.loads(encode_document(doc)) == doc


def test_every_real_tegrastats_sample_fits_the_schema(collector: TelemetryCollector, real_samples: List[str]) -> None:
    doc = collector.collect()
    for line in real_samples:
        full = _with_jetson(doc, line)
        assert validate_document(full) == [], line
        assert validate_document(to_compact(full)) == [], line


def test_compact_form_is_smaller_and_expands_back(collector: TelemetryCollector, real_samples: List[str]) -> None:
    full = _with_jetson(collector.collect(), real_samples[4])
    small = to_compact(full)
    assert small["compact"] is True and "sys" in small and "system" not in small
    assert "per_core_pct" not in json.dumps(small) and "cpus" not in small["jet"]["ts"]
    assert small["jet"]["ts"]["t"]["cpu"] == full["jetson"]["tegrastats"]["temps_c"]["cpu"]  # zone names kept
    assert len(encode_document(small)) < 0.75 * len(encode_document(full))
    back = from_compact(small)
    assert back["system"]["memory"] == full["system"]["memory"]
    assert back["jetson"]["tegrastats"]["power_mw"] == full["jetson"]["tegrastats"]["power_mw"]
    assert back["pipeline"] == full["pipeline"] and back["engine"] == full["engine"]
    assert "per_core_pct" not in back["system"]["cpu"]


def test_config_compact_selects_the_form(tmp_path: Path) -> None:
    with TelemetryCollector(TelemetryConfig(compact=True, nvml=False), tmp_path, on_jetson=False) as collector:
        doc = collector.collect()
        assert doc["compact"] is True and validate_document(doc) == []
        assert "nvml" in from_compact(doc)["unavailable"]
        assert "compact" not in collector.collect(compact_form=False)


def test_compact_keys_are_unambiguous() -> None:
    assert key_clashes() == []


def test_a_raising_provider_gives_null_and_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Dict[str, Any]:
        raise RuntimeError("pipeline metrics lock poisoned")

    def not_a_dict() -> Any:
        return ["not", "a", "dict"]

    caplog.set_level(logging.INFO, logger="agent.telemetry")
    providers = {"pipeline": broken, "engine": lambda: None, "agent": not_a_dict}
    collector = TelemetryCollector(TelemetryConfig(), tmp_path, providers, on_jetson=False)
    docs = [collector.collect() for _ in range(3)]
    collector.close()
    assert all(d["pipeline"] is None and d["engine"] is None and d["agent"] is None for d in docs)
    assert "pipeline metrics lock poisoned" in docs[-1]["unavailable"]["provider.pipeline"]
    assert "expected a dict" in docs[-1]["unavailable"]["provider.agent"]
    assert "provider.engine" not in docs[-1]["unavailable"]  # None means "nothing to report", not a failure
    assert len([r for r in caplog.records if "provider.pipeline unavailable" in r.getMessage()]) == 1
    assert validate_document(docs[-1]) == []


def test_providers_register_by_name_and_cannot_replace_collected_sections(tmp_path: Path) -> None:
    collector = TelemetryCollector(TelemetryConfig(), tmp_path, on_jetson=False)
    collector.register("storage", lambda: {"engines_cached": 3})
    assert collector.collect()["storage"] == {"engines_cached": 3}
    for reserved in ("system", "gpu", "jetson", "schema"):
        with pytest.raises(ValueError, match="collected by the agent"):
            collector.register(reserved, dict)
    collector.close()


def test_tegrastats_section_joins_the_document(tmp_path: Path, real_samples: List[str]) -> None:
    command = printer_command(tmp_path, real_samples[-1:], 0.05)
    with TelemetryCollector(TelemetryConfig(interval_s=0.05), tmp_path, tegrastats_command=command, on_jetson=False) as collector:
        collector.wait_ready(10)
        doc = collector.collect()
    assert doc["jetson"]["tegrastats"]["gpu"] == {"load_pct": 0, "freq_mhz": None}
    assert validate_document(doc) == []


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d.pop("ts"), "$.ts: required"),
        (lambda d: d.update(schema=True), "$.schema: expected int, got bool True"),
        (lambda d: d.update(kind="status"), "$.kind: one of telemetry, got 'status'"),
        (lambda d: d["system"]["memory"].update(total_mb="big"), "$.system.memory.total_mb: expected float | null, got str 'big'"),
        (lambda d: d["system"]["memory"].update(pct=float("nan")), "$.system.memory.pct: expected float >= 0"),
        (lambda d: d["system"]["memory"].update(pct=140), "$.system.memory.pct: expected float <= 100"),
        (lambda d: d["system"]["uptime_s"] and d["system"]["load"].update({"1m": float("inf")}), "$.system.load.1m: must be a finite number"),
        (lambda d: d["pipeline"].update(frames=-1), "$.pipeline.frames: expected int >= 0, got -1"),
        (lambda d: d["pipeline"].update(drops=2.5), "$.pipeline.drops: expected int | null, got float 2.5"),
        (lambda d: d["pipeline"]["latency_ms"].update(infer=[1, 2]), "$.pipeline.latency_ms[...]: expected object, got array"),
        (lambda d: d["engine"].update(dla_layer_share=1.5), "$.engine.dla_layer_share: expected float <= 1"),
        (lambda d: d["agent"].update(mqtt_connected="yes"), "$.agent.mqtt_connected: expected bool | null, got str 'yes'"),
        (lambda d: d.update(gpu={"devices": [{"index": 0, "throttle_reasons": "hot"}]}), "$.gpu.devices[0].throttle_reasons"),
        (lambda d: d.update(system=[]), "$.system: expected object | null, got array"),
    ],
)
def test_validator_names_each_problem(collector: TelemetryCollector, change: Any, problem: str) -> None:
    doc = collector.collect()
    change(doc)
    problems = validate_document(doc)
    assert any(problem in p for p in problems), problems


def test_validator_rejects_non_objects_and_newer_versions_but_allows_extra_fields(collector: TelemetryCollector) -> None:
    assert validate_document([]) == ["$: expected object, got list"]
    doc = collector.collect()
    doc["schema"] = 2
    assert "newer than this agent understands" in validate_document(doc)[0]
    doc = collector.collect()
    doc["pipeline"]["per_camera"] = {"front": {"fps": 30}}
    doc["future_section"] = {"x": 1}
    assert validate_document(doc) == []


def test_docs_describe_every_field() -> None:
    docs = (REPO_ROOT / "docs" / "telemetry.md").read_text()
    missing = [path for path, _doc in fields() if f"`{path}`" not in docs]
    assert missing == [], f"docs/telemetry.md does not list: {missing}"
    assert markdown_table().strip() in docs, "regenerate the table: python -m agent.telemetry.schema"
    assert "```json\n" + json_schema_text() + "```" in docs, "regenerate the JSON Schema: python -m agent.telemetry.schema --json"
