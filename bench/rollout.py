"""A staged rollout that stops itself, on one mosquitto: how far a bad deployment gets, how fast the fleet is back.

    python bench/rollout.py [--quick] [--devices 200]

- the verdicts are real: the device's own build-and-validate steps (agent/daemon/pipeline_steps.PackageSteps:
  table check, onnxruntime INT8 engine, the accuracy gate against the validation set) run once per case on a
  small real model: its proper calibration table (passes) and the same table with every scale divided by 100
  (a table damaged on purpose: it passes the table check and fails the gate);
- N simulated devices (tests/operator/simfleet.py: the agent's MqttLink, last will, desired-state decoding and
  resolution, command decoding and replies, status layout) serve the old deployment; the new one behaves like
  the damaged case on 30% of them (chosen by a hash of the id), like the proper one elsewhere;
- the operator: agent/operator/rollout_runner.RolloutRunner, 4 waves (1, 5%, 25%, 100%), default criteria
  (gate_failures>10% among them), no bake;
- measured: devices that received the bad deployment before the abort (must be at most the first two waves),
  the time from the abort to each device that served the bad deployment serving its previous one again (p50,
  p99, max), and the exporter's scrape time (HTTP GET /metrics, median of 5) with 1000 devices' retained
  status and telemetry on the broker.

The last line: `devices=... received_bad=... first_two_waves=... abort_to_previous_p99_s=... scrape_1000_ms=...`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import BrokerConfig  # noqa: E402
from agent.fleet.local_broker import LocalBroker  # noqa: E402

GROUP = "bench"
BAD_SHARE = 0.30


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))]


def gate_cases(work: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Run the device's own check_table -> build -> validate once per case. Returns (good, damaged) as
    {passed, step, reason, gate, seconds}."""
    from agent.config import load_config
    from agent.daemon.pipeline_steps import PackageSteps
    from agent.daemon.steps import StepFailed
    from agent.fleet.deployment import deployment_from_dict
    from agent.fleet.link import MqttLink
    from agent.fleet.topics import Topics
    from agent.store.hashing import sha256_file
    from tests.daemon.fleet_kit import TINY_PREPROCESS, make_tiny_artifacts

    made = make_tiny_artifacts(work / "artifacts")
    config = load_config(None, env={"EDGE_AGENT_DEVICE_ID": "gate-bench", "EDGE_AGENT_STATE_DIR": str(work / "device"),
                                    "EDGE_AGENT_ENGINE_BACKEND": "onnxruntime", "EDGE_AGENT_TELEMETRY_TEGRASTATS": "false"})
    link = MqttLink(config.broker, "gate-bench-unconnected", persistent_session=False)  # never started: the artifacts are local
    steps = PackageSteps(config, link, Topics("edge", "gate-bench"), work / "device")
    results = []
    for name, table in (("good", made.table), ("damaged", made.shrunk_table)):
        artifacts = {"model": made.model, "table": table, "validation": made.validation}
        deployment = deployment_from_dict({"id": f"tiny-{name}", "model": sha256_file(made.model), "table": sha256_file(table),
                                           "validation": sha256_file(made.validation), "precision": "int8", "target": "cpu",
                                           "preprocess": TINY_PREPROCESS, "accuracy": {"top1_agreement": 0.9, "top5_containment": 0.97}})
        started = time.monotonic()
        try:
            check = steps.check_table(deployment, artifacts)
            engine = steps.build(deployment, artifacts, cold=True, cancel=threading.Event(), beat=lambda: None)
            loaded = steps.validate(deployment, artifacts, engine)
            loaded.close()
            results.append({"passed": True, "gate": loaded.gate, "table_check": bool(check), "seconds": time.monotonic() - started})
        except StepFailed as exc:
            results.append({"passed": False, "step": exc.step, "reason": exc.reason, "seconds": time.monotonic() - started})
    return results[0], results[1]


def scrape_time(broker: LocalBroker, devices: int) -> Dict[str, Any]:
    """Publish `devices` devices' retained status and telemetry, start the exporter, time GET /metrics."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.daemon.reported import encode_status
    from agent.fleet.deployment import deployment_from_dict
    from agent.fleet.messages import encode
    from agent.operator.exporter import FleetExporter, serve_http
    from tests.operator.simfleet import SimDevice

    deployment = deployment_from_dict({"id": "scrape-v1", "model": "1" * 64, "precision": "fp16"})
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-scrape-publisher")
    client.max_inflight_messages_set(1000)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = []
    for i in range(devices):
        device = SimDevice(f"scrape-{i:04d}", BrokerConfig(), [f"site-{i % 10}"], lambda *_a: None, None, initial=deployment)  # type: ignore[arg-type]
        device.gate = {"passed": True, "metrics": {"top1_agreement": 0.97, "top5_containment": 0.99}}
        infos.append(client.publish(f"edge/{device.id}/status", encode_status(device.status_document()), qos=1, retain=True))
        infos.append(client.publish(f"edge/{device.id}/telemetry", encode("telemetry", device.telemetry_document()), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()
    exporter = FleetExporter(BrokerConfig(host=broker.host, port=broker.port), "edge", stale_after_s=3600).start()
    server = serve_http(exporter, "127.0.0.1", 0)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(1 for n, _ in exporter.store.snapshot() if n.startswith("scrape-")) < devices:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        times, size = [], 0
        for _ in range(5):
            started = time.perf_counter()
            body = urllib.request.urlopen(url).read()
            times.append(time.perf_counter() - started)
            size = len(body)
        samples = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        return {"scrape_ms": round(1000 * statistics.median(times), 1), "bytes": size, "samples": samples,
                "devices": sum(1 for n, _ in exporter.store.snapshot() if n.startswith("scrape-"))}
    finally:
        server.shutdown()
        exporter.close()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 devices (under a minute)")
    parser.add_argument("--devices", type=int, default=0, help="simulated devices (default 200; 60 with --quick)")
    parser.add_argument("--scrape-devices", type=int, default=1000)
    args = parser.parse_args(argv)
    count = args.devices or (60 if args.quick else 200)

    from agent.fleet.deployment import deployment_from_dict
    from agent.operator.client import Operator
    from agent.operator.rollout import parse_criteria, parse_waves
    from agent.operator.rollout_runner import RolloutRunner
    from tests.operator.simfleet import SimFleet, Verdict

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    work = Path(tempfile.mkdtemp(prefix="edge-agent-bench-rollout-"))
    good, damaged = gate_cases(work)
    if not good["passed"] or damaged["passed"]:
        raise SystemExit(f"the gate cases are not what the bench needs: good={good} damaged={damaged}")
    print(f"real gate: proper table passed ({good['seconds']:.1f} s, {json.dumps(good['gate'].get('metrics'))}); "
          f"damaged table refused at {damaged['step']} ({damaged['seconds']:.1f} s): {damaged['reason'][:160]}")
    model = hashlib.sha256(b"model").hexdigest()  # one model, a new calibration table
    old = deployment_from_dict({"id": "tiny-v1", "model": model, "table": hashlib.sha256(b"table-1").hexdigest(), "precision": "int8"})
    new = deployment_from_dict({"id": "tiny-v2", "model": model, "table": hashlib.sha256(b"table-2").hexdigest(), "precision": "int8"})

    def bad(device: str) -> bool:
        return int(hashlib.sha256(device.encode()).hexdigest(), 16) % 1000 < BAD_SHARE * 1000

    def verdict(device: str, chosen: Any) -> Verdict:
        if chosen.id == new.id and bad(device):
            return Verdict(damaged["step"], damaged["reason"], gate={"passed": False})
        return Verdict(gate=good["gate"])

    with LocalBroker(extra_config="max_connections -1") as broker:
        config = BrokerConfig(host=broker.host, port=broker.port, reconnect_min_s=1, reconnect_max_s=2)
        with Operator(config, "edge") as op:
            op.deploy(old, group=GROUP)
        fleet = SimFleet(config, count, GROUP, verdict, prefix_name="bench", initial=old, apply_s=0.2, workers=32).start(timeout=60)
        for device in fleet.devices:
            device.publish_telemetry()
        try:
            lines: List[str] = []
            with RolloutRunner(config, "edge", GROUP, tick_s=0.1, say=lines.append).open(settle_s=1.0) as runner:
                state = runner.start(new, waves=parse_waves("1,5%,25%,100%"), criteria=parse_criteria([]), rollback_timeout_s=30)
                started = time.monotonic()
                state = runner.run(state, timeout_s=120)
                run_s = time.monotonic() - started
            waves = [len(w.devices) for w in state.waves]
            if state.status != "aborted" or state.abort is None:
                print("\n".join(lines))
                raise SystemExit(f"the rollout was not aborted: {state.status}")
            received = [d for d in fleet.devices if new.digest() in d.received]
            served_bad = [d for d in fleet.devices if new.id in d.served]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(d.serving is not None and d.serving.id == old.id for d in fleet.devices):
                time.sleep(0.05)
            back = [d.served_at.get(old.digest(), float("nan")) - state.abort.at for d in served_bad]
            all_back = all(d.serving is not None and d.serving.id == old.id for d in fleet.devices)
        finally:
            fleet.close()
        for line in lines:
            print("  " + line)
    with LocalBroker(extra_config="max_connections -1") as broker:  # a fresh one: exactly the scrape's devices
        scrape = scrape_time(broker, args.scrape_devices)
    limit = sum(waves[:2])
    print(f"{count} devices, waves {'+'.join(map(str, waves))}; the new deployment fails the gate on "
          f"{sum(1 for d in fleet.devices if bad(d.id))} of them ({BAD_SHARE:.0%})")
    print(f"aborted after {run_s:.1f} s on {state.abort.criterion}: {state.abort.detail}")
    print(f"received the bad deployment: {len(received)} devices (first two waves: {limit}) "
          f"{'OK' if len(received) <= limit else 'OVER THE LIMIT'}; served it: {len(served_bad)}; all back on {old.id}: {all_back}")
    print(f"abort -> previous deployment serving again: p50 {percentile(back, 50):.3f} s p99 {percentile(back, 99):.3f} s max "
          f"{max(back) if back else float('nan'):.3f} s over {len(back)} devices")
    print(f"exporter: {scrape['devices']} devices, {scrape['samples']} samples, {scrape['bytes']} bytes, GET /metrics {scrape['scrape_ms']} ms (median of 5)")
    print(f"devices={count} waves={'+'.join(map(str, waves))} received_bad={len(received)} first_two_waves={limit} served_bad={len(served_bad)} "
          f"abort_to_previous_p50_s={percentile(back, 50):.3f} abort_to_previous_p99_s={percentile(back, 99):.3f} "
          f"scrape_devices={scrape['devices']} scrape_1000_ms={scrape['scrape_ms']} scrape_samples={scrape['samples']}")
    return 0 if len(received) <= limit and all_back else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
