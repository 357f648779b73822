"""The fleet exporter: real devices' documents through a real mosquitto, scraped over HTTP, parsed with
prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request
from typing import Any, Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families

from agent.config import BrokerConfig
from agent.fleet.local_broker import LocalBroker
from agent.operator.exporter import FleetCollector, FleetExporter, FleetStore, serve_http
from agent.operator.rollout import parse_criteria, parse_waves
from agent.operator.rollout_runner import RolloutRunner
from tests.helpers import wait_until
from tests.operator.conftest import GROUP, NEW, all_pass
from tests.operator.simfleet import SimFleet, Verdict

Sample = Tuple[str, Dict[str, str], float]


def samples(text: str) -> List[Sample]:
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: List[Sample], name: str, **labels: str) -> float:
    hits = [v for n, have, v in found if n == name and all(have.get(k) == want for k, want in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_the_exporter_serves_every_devices_figures_and_marks_silent_ones(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    def verdict(device: str, chosen: Any) -> Verdict:
        return Verdict(gate={"passed": True, "metrics": {"top1_agreement": 0.97}}, fps=24.5, temp_c=61.0)

    fleet: SimFleet = make_fleet(5, all_pass)
    exporter = FleetExporter(broker_config, "edge", stale_after_s=2.0, drop_after_s=3600).start()
    server = serve_http(exporter, "127.0.0.1", 0)
    try:
        with RolloutRunner(broker_config, "edge", GROUP, tick_s=0.1).open(settle_s=0.3) as runner:
            for device in fleet.devices:
                device.verdict = verdict
            runner.run(runner.start(NEW, waves=parse_waves("100%"), criteria=parse_criteria([])), timeout_s=30)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        wait_until(lambda: b'edge_pipeline_fps{device="cam-0004"' in urllib.request.urlopen(url).read()
                   and b'outcome="serving"' in urllib.request.urlopen(url).read(), 10, lambda: urllib.request.urlopen(url).read().decode()[-3000:])
        found = samples(urllib.request.urlopen(url).read().decode())
        for device in fleet.devices:
            labels = {"device": device.id, "group": GROUP, "module": "Simulated Orin"}
            assert value(found, "edge_pipeline_fps", **labels) == 24.5
            assert value(found, "edge_device_temperature_celsius", **labels) == 61.0
            assert value(found, "edge_device_power_watts", **labels) == 7.4
            assert value(found, "edge_device_memory_used_bytes", **labels) == 2100 * 1024 * 1024
            assert value(found, "edge_gate_passed", **labels) == 1.0
            assert value(found, "edge_gate_metric", metric="top1_agreement", **labels) == 0.97
            assert value(found, "edge_device_up", **labels) == 1.0
            assert value(found, "edge_device_state", state="serving", **labels) == 1.0
            assert value(found, "edge_deployment_info", deployment=NEW.id, **labels) == 1.0
            assert value(found, "edge_pipeline_latency_seconds", stage="infer", quantile="0.99", **labels) == 0.0125
            assert value(found, "edge_pipeline_frames_total", **labels) > 0
        assert value(found, "edge_rollout_status", group=GROUP, status="completed") == 1.0
        assert value(found, "edge_rollout_devices", group=GROUP, outcome="serving") == 5.0
        # one device goes silent (no status change: its connection stays, nothing more is published)
        quiet = fleet.devices[0]
        time.sleep(2.5)
        for device in fleet.devices[1:]:
            device.publish_telemetry()
        wait_until(lambda: 'edge_device_stale{device="cam-0000"' in urllib.request.urlopen(url).read().decode(), 5, "a scrape")
        found = samples(urllib.request.urlopen(url).read().decode())
        assert value(found, "edge_device_stale", device=quiet.id) == 1.0 and value(found, "edge_device_up", device=quiet.id) == 0.0
        assert not [s for s in found if s[0] == "edge_pipeline_fps" and s[1]["device"] == quiet.id]
        assert value(found, "edge_device_stale", device=fleet.devices[1].id) == 0.0
    finally:
        server.shutdown()
        exporter.close()


def test_silent_devices_are_dropped_and_devices_are_bounded() -> None:
    store = FleetStore("edge", max_devices=3, stale_after_s=10, drop_after_s=100)
    now = time.time()
    for i in range(5):
        store.put(f"d{i}", "status", {"ts": now - 200 if i == 0 else now, "online": True, "groups": ["g"], "state": "serving"}, now=now)
    assert store.refused_devices == 2 and len(store.devices) == 3
    text = FleetExporterText(store)
    assert 'device="d0"' not in text and 'device="d1"' in text
    assert "edge_exporter_dropped_devices_total 1.0" in text and "edge_exporter_refused_devices_total 2.0" in text


def FleetExporterText(store: FleetStore) -> str:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_the_grafana_dashboard_uses_only_metrics_the_exporter_serves() -> None:
    import json
    import re

    from tests.helpers import REPO_ROOT
    from tests.operator.conftest import OLD
    from tests.operator.simfleet import SimDevice

    store = FleetStore("edge")
    device = SimDevice("d1", BrokerConfig(), ["g"], all_pass, None, initial=OLD)  # type: ignore[arg-type]
    device.gate = {"passed": True, "metrics": {"top1_agreement": 0.9}}
    store.put("d1", "status", dict(device.status_document(), blocked=[{"digest": "x", "step": "validate"}]))
    store.put("d1", "telemetry", device.telemetry_document())
    served = {s.name for family in text_string_to_metric_families(FleetExporterText(store)) for s in family.samples}
    served |= {"edge_rollout_devices", "edge_rollout_wave", "edge_rollout_waves", "edge_rollout_status"}  # with a rollout on the broker
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "edge-fleet.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"] for name in re.findall(r"edge_[a-z0-9_]+", target["expr"])}
    assert used and used <= served, used - served


def test_fleet_status_shows_fps_and_temperature_from_the_retained_telemetry(broker: LocalBroker, broker_config: BrokerConfig, make_fleet: Any) -> None:
    from agent.operator.client import Operator

    make_fleet(2, all_pass)
    with Operator(broker_config, "edge") as op:
        rows = op.status(wait_s=1.0)
        one = op.status("cam-0001", wait_s=3.0)
    assert sorted(rows) == ["cam-0000", "cam-0001"]
    assert all(row.fps == 30.0 and row.temperature_c == 50.0 for row in rows.values())  # tegrastats' zones (jetson.tegrastats.temps_c)
    assert one["cam-0001"].fps == 30.0


def test_the_exporter_command(broker: LocalBroker, make_fleet: Any, tmp_path: Any) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    make_fleet(3, all_pass)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"EDGE_AGENT_BROKER_HOST": broker.host, "EDGE_AGENT_BROKER_PORT": str(broker.port), "EDGE_AGENT_DEVICE_ID": "operator",
                "EDGE_AGENT_STATE_DIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)})
    proc = subprocess.Popen([sys.executable, "-m", "agent", "fleet", "exporter", "--listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert port, line
        url = f"http://127.0.0.1:{port.group(1)}/metrics"
        wait_until(lambda: urllib.request.urlopen(url).read().count(b"edge_pipeline_fps{") == 3, 10, "three devices' fps")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
