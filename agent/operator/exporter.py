"""`edge-agent fleet exporter`: the whole fleet as one Prometheus scrape target.

It subscribes to every device's retained status and telemetry (and the rollout states) and keeps the latest of
each; a custom prometheus_client Collector turns them into metric families at scrape time, so a scrape costs
one pass over the devices and nothing happens between scrapes but storing messages.

Labels: `device`, `group` (the device's first group; "" for none), `module` (the Jetson module from the
fingerprint). Cardinality is bounded: at most `max_devices` devices (others are counted, not exported), label
values cut to 64 characters, at most 8 pipeline stages and 8 gate metrics a device. A device silent for
`stale_after_s` is marked (`edge_device_stale` 1, `edge_device_up` 0); after `drop_after_s` it is dropped.
docs/rollouts.md has the table of metrics.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from prometheus_client import generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from agent.config import BrokerConfig
from agent.fleet.link import MqttLink, unique_client_id
from agent.fleet.messages import MessageError, decode
from agent.fleet.topics import all_devices, device_of
from agent.operator import figures
from agent.operator.rollout import FAILURES, summary
from agent.operator.rollout_runner import RolloutDocs

LABEL_MAX = 64
STAGES_MAX = 8
GATE_METRICS_MAX = 8
STATES = ("serving", "applying", "degraded", "offline")
QUANTILES = {"p50": "0.5", "p90": "0.9", "p99": "0.99", "max": "1"}


def _label(value: Any) -> str:
    text = "" if value is None else str(value)
    return text[:LABEL_MAX]


class DeviceRecord:
    __slots__ = ("seen", "status", "status_seen", "telemetry", "telemetry_seen")

    def __init__(self) -> None:
        self.status: Dict[str, Any] = {}
        self.telemetry: Dict[str, Any] = {}
        self.seen = 0.0  # wall clock of the last message, status or telemetry
        self.status_seen = 0.0
        self.telemetry_seen = 0.0


class FleetStore:
    """The latest status and telemetry of every device, bounded. Thread-safe; callbacks only store."""

    def __init__(self, prefix: str, *, max_devices: int = 10000, stale_after_s: float = 60.0, drop_after_s: float = 3600.0) -> None:
        self.prefix = prefix
        self.max_devices = max_devices
        self.stale_after_s = stale_after_s
        self.drop_after_s = drop_after_s
        self.devices: Dict[str, DeviceRecord] = {}
        self.refused_devices = 0
        self.messages = 0
        self.bad_messages = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def on_message(self, msg: Any) -> None:
        name = device_of(msg.topic, self.prefix)
        if not name or not msg.payload:
            return
        try:
            document = decode(msg.payload)
        except MessageError:
            with self.lock:
                self.bad_messages += 1
            return
        channel = msg.topic.rsplit("/", 1)[-1]
        self.put(name, channel, document, retained=bool(getattr(msg, "retain", False)))

    def put(self, name: str, channel: str, document: Dict[str, Any], now: Optional[float] = None, *, retained: bool = True) -> None:
        now = time.time() if now is None else now
        with self.lock:
            self.messages += 1
            record = self.devices.get(name)
            if record is None:
                if len(self.devices) >= self.max_devices:
                    self.refused_devices += 1
                    return
                record = self.devices[name] = DeviceRecord()
            # a retained message is as old as its `ts`, not as the moment it was delivered; a live one is now (a
            # device's clock may be off, which must not make it look silent)
            ts = figures.number(document.get("ts"))
            at = min(now, ts) if retained and ts is not None else now
            if channel == "status":
                record.status, record.status_seen = document, at
            elif channel == "telemetry":
                record.telemetry, record.telemetry_seen = figures.expand(document), at
            record.seen = max(record.seen, at)

    def expire(self, now: float) -> None:
        with self.lock:
            gone = [name for name, record in self.devices.items() if now - record.seen > self.drop_after_s]
            for name in gone:
                del self.devices[name]
            self.dropped += len(gone)

    def snapshot(self) -> List[Tuple[str, DeviceRecord]]:
        with self.lock:
            return sorted(self.devices.items())


class FleetCollector:
    """A prometheus_client collector over a FleetStore (and the rollout states, when given)."""

    def __init__(self, store: FleetStore, rollouts: Optional[RolloutDocs] = None) -> None:
        self.store = store
        self.rollouts = rollouts

    def describe(self) -> List[Metric]:
        return []  # built at scrape time; no fixed description

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        store = self.store
        store.expire(now)
        labels = ["device", "group", "module"]

        def gauge(name: str, doc: str, extra: Tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels + list(extra))

        up = gauge("edge_device_up", "1 while the device is online and heard from within the stale time")
        stale = gauge("edge_device_stale", "1 when nothing was heard from the device for the stale time (dropped later)")
        last_seen = gauge("edge_device_last_seen_timestamp_seconds", "when the device was last heard from (Unix time)")
        state = gauge("edge_device_state", "1 for the state the device reports", ("state",))
        info = gauge("edge_deployment_info", "the deployment the device serves (value 1)", ("deployment", "precision", "backend"))
        fps = gauge("edge_pipeline_fps", "frames per second the pipeline handles")
        frames = CounterMetricFamily("edge_pipeline_frames", "frames handled since the pipeline started", labels=labels)
        drops = CounterMetricFamily("edge_pipeline_dropped_frames", "frames dropped since the pipeline started", labels=labels)
        latency = gauge("edge_pipeline_latency_seconds", "per-stage latency over the last interval", ("stage", "quantile"))
        temp = gauge("edge_device_temperature_celsius", "the hottest thermal zone")
        power = gauge("edge_device_power_watts", "module input power (tegrastats), else the GPUs' board power (NVML)")
        ram = gauge("edge_device_memory_used_bytes", "RAM in use (shared by CPU and GPU on a Jetson)")
        ram_total = gauge("edge_device_memory_total_bytes", "RAM installed")
        gate_passed = gauge("edge_gate_passed", "1 if the serving engine passed its accuracy gate, 0 if it did not")
        gate_metric = gauge("edge_gate_metric", "the serving engine's accuracy gate figures (agreement, containment...)", ("metric",))
        failed = gauge("edge_deployment_blocked", "deployments the device refuses until told otherwise, by the step that failed", ("step",))
        for name, record in store.snapshot():
            status, telemetry = record.status, record.telemetry
            groups = figures.groups_of(status)
            values = [_label(name), _label(groups[0] if groups else ""), _label(figures.module_of(status))]
            silent = now - record.seen > store.stale_after_s
            online = bool(status) and status.get("online") is not False and not silent
            up.add_metric(values, 1.0 if online else 0.0)
            stale.add_metric(values, 1.0 if silent else 0.0)
            last_seen.add_metric(values, record.seen)
            word = "offline" if (status.get("online") is False or silent) else str(status.get("state") or "")
            for candidate in STATES:
                state.add_metric([*values, candidate], 1.0 if word == candidate else 0.0)
            serving = figures.section(status, "serving")
            if serving:
                engine = figures.section(serving, "engine")
                info.add_metric([*values, _label(serving.get("deployment_id")), _label(serving.get("precision")), _label(engine.get("backend"))], 1.0)
                gate = figures.section(serving, "gate")
                if "passed" in gate:
                    gate_passed.add_metric(values, 1.0 if gate.get("passed") else 0.0)
                for metric_name, value in list(figures.section(gate, "metrics").items())[:GATE_METRICS_MAX]:
                    number = figures.number(value)
                    if number is not None:
                        gate_metric.add_metric([*values, _label(metric_name)], number)
            blocked = status.get("blocked")
            steps: Dict[str, int] = {}
            for entry in blocked if isinstance(blocked, list) else []:
                if isinstance(entry, dict):
                    key = _label(entry.get("step"))
                    steps[key] = steps.get(key, 0) + 1
            for step_name, count in sorted(steps.items())[:STAGES_MAX]:
                failed.add_metric([*values, step_name], float(count))
            if silent:
                continue  # the figures of a silent device are not current: only its marks stay
            for family, value in ((fps, figures.fps(telemetry)), (temp, figures.hottest_c(telemetry)), (power, figures.power_w(telemetry)),
                                  (ram, figures.ram_bytes(telemetry)), (ram_total, figures.ram_total_bytes(telemetry))):
                if value is not None:
                    family.add_metric(values, value)
            pipeline = figures.section(telemetry, "pipeline")
            for counter, key in ((frames, "frames"), (drops, "drops")):
                total = figures.number(pipeline.get(key))
                if total is not None:
                    counter.add_metric(values, total)
            for stage, quantiles in list(figures.latency_ms(telemetry).items())[:STAGES_MAX]:
                for key, value in quantiles.items():
                    if key in QUANTILES:
                        latency.add_metric([*values, _label(stage), QUANTILES[key]], value / 1000.0)
        yield from (up, stale, last_seen, state, info, fps, frames, drops, latency, temp, power, ram, ram_total, gate_passed, gate_metric, failed)
        yield from self._rollouts()
        with store.lock:
            devices, refused, messages, bad, dropped = len(store.devices), store.refused_devices, store.messages, store.bad_messages, store.dropped
        own = GaugeMetricFamily("edge_exporter_devices", "devices the exporter holds")
        own.add_metric([], float(devices))
        yield own
        for metric_name, doc, value in (("edge_exporter_messages", "messages received", messages),
                                        ("edge_exporter_bad_messages", "messages that were not valid documents", bad),
                                        ("edge_exporter_refused_devices", "messages from devices over --max-devices", refused),
                                        ("edge_exporter_dropped_devices", "devices dropped after --drop-after of silence", dropped)):
            counter = CounterMetricFamily(metric_name, doc)
            counter.add_metric([], float(value))
            yield counter

    def _rollouts(self) -> Iterator[Metric]:
        labels = ["group", "rollout", "deployment"]
        status = GaugeMetricFamily("edge_rollout_status", "1 for the rollout's status", labels=[*labels, "status"])
        wave = GaugeMetricFamily("edge_rollout_wave", "the wave in progress (1-based)", labels=labels)
        waves = GaugeMetricFamily("edge_rollout_waves", "waves in the rollout", labels=labels)
        devices = GaugeMetricFamily("edge_rollout_devices", "devices by outcome (reached so far)", labels=[*labels, "outcome"])
        total = GaugeMetricFamily("edge_rollout_devices_planned", "devices in the rollout", labels=labels)
        failed = GaugeMetricFamily("edge_rollout_failed_devices", "devices reached so far that failed or timed out", labels=labels)
        states = []
        if self.rollouts is not None:
            states = [s for s in (self.rollouts.state(g) for g in self.rollouts.groups()) if s is not None]
        for state in states:
            info = summary(state)
            values = [_label(state.group), _label(state.id), _label(info["deployment"])]
            for candidate in ("running", "paused", "aborting", "completed", "aborted"):
                status.add_metric([*values, candidate], 1.0 if state.status == candidate else 0.0)
            wave.add_metric(values, float(info["wave"]))
            waves.add_metric(values, float(info["waves"]))
            total.add_metric(values, float(info["devices"]))
            for outcome, count in sorted(info["outcomes"].items()):
                devices.add_metric([*values, _label(outcome)], float(count))
            failed.add_metric(values, float(sum(n for o, n in info["outcomes"].items() if o in FAILURES)))
        yield from (status, wave, waves, devices, total, failed)


class FleetExporter:
    """The broker side: subscriptions feeding a FleetStore; `registry` holds the collector."""

    def __init__(self, broker: BrokerConfig, prefix: str, *, stale_after_s: float = 60.0, drop_after_s: float = 3600.0, max_devices: int = 10000) -> None:
        self.prefix = prefix
        self.store = FleetStore(prefix, max_devices=max_devices, stale_after_s=stale_after_s, drop_after_s=drop_after_s)
        self.rollouts = RolloutDocs(prefix, "+")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self.store, self.rollouts))  # type: ignore[arg-type]
        self.link = MqttLink(broker, unique_client_id("exporter"), persistent_session=False)

    def start(self) -> FleetExporter:
        for channel in ("status", "telemetry"):
            self.link.subscribe(all_devices(self.prefix, channel), self.store.on_message, qos=0)
        self.link.subscribe(self.rollouts.filter, self.rollouts.on_message, qos=1)
        self.link.start()
        return self

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def close(self) -> None:
        self.link.stop()


def serve_http(exporter: FleetExporter, host: str, port: int) -> Any:
    """prometheus_client's own HTTP server for the registry (returns the server; `.shutdown()` stops it)."""
    server, _thread = start_http_server(port, addr=host, registry=exporter.registry)
    return server
