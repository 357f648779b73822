"""One versioned telemetry document that joins device health and inference health.

    system   psutil + sysfs          (SystemCollector)
    jetson   tegrastats, nvpmodel,   (JetsonCollector; null off a Jetson)
             jetson_clocks
    gpu      NVML                    (NvmlCollector; null without a discrete GPU)
    pipeline, engine, agent          supplied by the daemon through provider callables

Every source is optional and fails soft: it gives null, its reason under `unavailable`, and one log line per
outage. The layout, units and compact keys live in the model, `agent.telemetry.schema.TelemetryDocument`;
docs/telemetry.md lists them and shows its JSON Schema.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from agent.config import TelemetryConfig
from agent.telemetry.jetson import JetsonCollector
from agent.telemetry.nvml import NvmlCollector
from agent.telemetry.schema import KIND, SECTIONS, TELEMETRY_SCHEMA, check, compact, expand
from agent.telemetry.soft import SoftSources
from agent.telemetry.system import SystemCollector

Provider = Callable[[], Optional[Dict[str, Any]]]
PROVIDER_SECTIONS = ("pipeline", "engine", "agent")


class TelemetryCollector:
    """Builds telemetry documents. Keep one for the agent's life: CPU and network rates are measured between
    consecutive `collect()` calls, and the tegrastats reader runs between `start()` and `close()`.

    `providers` maps a section name (pipeline, engine, agent, or a new one) to a callable that returns that
    section's dict, or None when there is nothing to report; a provider that raises gives null and one log line.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        state_dir: Union[str, Path],
        providers: Optional[Mapping[str, Provider]] = None,
        *,
        device_id: str = "",
        tegrastats_command: Optional[List[str]] = None,
        on_jetson: Optional[bool] = None,
    ) -> None:
        self.config = config
        self.device_id = device_id
        self.interval_s = config.interval_s  # reported in the document; the publisher sets its own
        self.sources = SoftSources()
        self.providers: Dict[str, Provider] = {}
        for name, provider in (providers or {}).items():
            self.register(name, provider)
        self.system = SystemCollector(Path(state_dir), sources=self.sources)
        self.jetson = JetsonCollector(
            config.interval_s,
            tegrastats=config.tegrastats,
            tegrastats_command=tegrastats_command,
            on_jetson=on_jetson,
            sources=self.sources,
        )
        self.nvml: Optional[NvmlCollector] = NvmlCollector(sources=self.sources) if config.nvml else None
        self._started = False

    def register(self, name: str, provider: Provider) -> None:
        """Add or replace the provider of one section."""
        reserved = set(SECTIONS) - set(PROVIDER_SECTIONS)
        if name in reserved:
            raise ValueError(f"'{name}' is collected by the agent itself; providers supply {', '.join(PROVIDER_SECTIONS)} or new sections")
        self.providers[name] = provider

    def start(self) -> TelemetryCollector:
        """Start the tegrastats reader (on a Jetson) and the CPU-percent windows."""
        if not self._started:
            self.jetson.start()
            self.system.prime()
            self._started = True
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the first tegrastats line, for a one-shot document."""
        self.jetson.wait_first(timeout)

    def collect(self, compact_form: Optional[bool] = None) -> Dict[str, Any]:
        """One document (the compact form if `compact_form`, default: the configuration's `compact`)."""
        if not self._started:
            self.start()
        began = time.perf_counter()
        doc: Dict[str, Any] = {
            "schema": TELEMETRY_SCHEMA,
            "kind": KIND,
            "ts": round(time.time(), 3),
            "device": self.device_id,
            "interval_s": self.interval_s,
            "collect_ms": None,
            "unavailable": {},
            # the section wrappers only catch bugs; each collector reports its own missing sources by name
            "system": self.sources.call("section.system", self.system.collect),
            "jetson": self.sources.call("section.jetson", self.jetson.collect),
            "gpu": self.sources.call("section.gpu", self.nvml.collect) if self.nvml is not None else None,
        }
        for name in PROVIDER_SECTIONS:
            doc[name] = None
        for name, provider in self.providers.items():
            doc[name] = self.sources.call(f"provider.{name}", functools.partial(_call_provider, name, provider))
        unavailable = dict(self.sources.failing)
        if self.nvml is None:
            unavailable["nvml"] = "disabled by telemetry.nvml = false"
        if not self.config.tegrastats and self.jetson.on_jetson:
            unavailable["tegrastats"] = "disabled by telemetry.tegrastats = false"
        doc["unavailable"] = unavailable
        doc["collect_ms"] = round((time.perf_counter() - began) * 1000.0, 2)
        use_compact = self.config.compact if compact_form is None else compact_form
        return to_compact(doc) if use_compact else doc

    def close(self) -> None:
        self.jetson.close()
        if self.nvml is not None:
            self.nvml.close()
        self._started = False

    def __enter__(self) -> TelemetryCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_provider(name: str, provider: Provider) -> Optional[Dict[str, Any]]:
    section = provider()
    if section is not None and not isinstance(section, dict):
        raise TypeError(f"the '{name}' provider returned {type(section).__name__}, expected a dict or None")
    return section


def to_compact(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The compact form for metered links: short keys, per-core and static detail dropped, `compact: true`."""
    out = compact(doc)
    out["compact"] = True
    return dict(out)


def from_compact(doc: Dict[str, Any]) -> Dict[str, Any]:
    """Long keys again (for a consumer); dropped fields stay absent. A full document passes through."""
    if doc.get("compact") is not True:
        return doc
    return dict(expand(doc))


def validate_document(doc: Any) -> List[str]:
    """Problems with a telemetry document, full or compact (empty list: valid)."""
    if not isinstance(doc, dict):
        return [f"$: expected object, got {type(doc).__name__}"]
    schema = doc.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > TELEMETRY_SCHEMA:
        return [f"$.schema: version {schema} is newer than this agent understands ({TELEMETRY_SCHEMA})"]
    return check(from_compact(doc))


def encode_document(doc: Dict[str, Any]) -> bytes:
    """The MQTT payload: compact JSON separators, no NaN."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")
