"""The edge-agent demo, end to end on one machine with the onnxruntime CPU backend.

An operator and a device share a local mosquitto. The operator computes a portable INT8 calibration table on
the CPU, signs and publishes the model, the table, a validation set and the labels, serves them over MQTT and
deploys them to the device; the device pulls and verifies them, builds its INT8 engine, passes the accuracy
gate, classifies a video, and reports status, results and telemetry. Every step is the real `edge-agent`
command, printed before it runs.

Usage: python deploy/demo/run_demo.py DATA_DIR [--seconds 40] [--work .demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agent.fleet.local_broker import LocalBroker  # noqa: E402

DEVICE = "demo-cam-01"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def edge_agent(config: Path, *args: str, capture: bool = False) -> str:
    command = [sys.executable, "-m", "agent", "--config", str(config), *args]
    print(f"{DIM}$ edge-agent --config {config.name} {' '.join(shlex.quote(a) for a in args)}{RESET}", flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=capture, text=True, check=False)
    if done.returncode != 0:
        if capture:
            sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"demo step failed (exit {done.returncode}): edge-agent {' '.join(args)}")
    return done.stdout if capture else ""


def background(config: Path, log: Path, *args: str) -> subprocess.Popen:  # type: ignore[type-arg]
    print(f"{DIM}$ edge-agent --config {config.name} {' '.join(args)} &   (log: {log}){RESET}", flush=True)
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "agent", "--config", str(config), "--log-level", "INFO", *args],
                                cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


def publish(operator: Path, keys: Path, path: Path, kind: str) -> str:
    out = edge_agent(operator, "fleet", "publish", str(path), "--kind", kind, "--key", str(keys / "fleet-signing.key"), "--json", capture=True)
    manifest = json.loads(out)
    artifact_id = str(manifest.get("artifact_id") or manifest.get("manifest", {}).get("artifact_id"))
    print(f"   {kind:10s} {path.name:28s} -> artifact {artifact_id[:16]}...")
    return artifact_id


class Watcher:
    """Prints what the device reports: status steps, results (when the label changes), telemetry."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.last_step = ""
        self.results = 0
        self.telemetry = 0
        self.serving = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe([(f"edge/{DEVICE}/{ch}", 0) for ch in ("status", "results", "telemetry", "events")])
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        try:
            data: Dict[str, Any] = json.loads(msg.payload)
        except ValueError:
            return
        channel = msg.topic.rsplit("/", 1)[-1]
        if channel == "status":
            applying = data.get("applying") or {}
            step = f"{applying.get('step', '')}" if applying else ""
            serving = (data.get("serving") or {}).get("deployment_id") if isinstance(data.get("serving"), dict) else None
            line = f"state={data.get('state')} step={step or '-'} serving={serving or '-'}"
            if line != self.last_step:
                self.last_step = line
                print(f"   [status]    {line}" + (f"  last_error={data.get('last_error')}" if data.get("last_error") else ""), flush=True)
            if serving:
                self.serving.set()
        elif channel == "results":
            self.results += 1
            classes = data.get("classes") or []
            top = classes[0] if classes else {}
            label = str(top.get("label", top.get("index", "?")))
            latency = data.get("latency_ms")
            print(f"   [results]   frame {data.get('frame')}: {label} ({top.get('score', 0):.2f})"
                  + (f", capture to result {latency:.1f} ms" if isinstance(latency, (int, float)) else ""), flush=True)
        elif channel == "telemetry":
            self.telemetry += 1
            pipeline = data.get("pipeline") or {}
            engine = data.get("engine") or {}
            system = data.get("system") or {}
            process = system.get("process") or {}
            print(f"   [telemetry] fps={pipeline.get('fps')} engine={engine.get('precision')}/{engine.get('target')} "
                  f"cpu={(system.get('cpu') or {}).get('total_pct')}% agent_rss={process.get('rss_mb')} MB", flush=True)
        elif channel == "events":
            kind = data.get("event") or data.get("type") or data.get("kind")
            if kind and "progress" not in str(kind):
                detail = data.get("message") or data.get("reason") or ""
                print(f"   [event]     {kind} {detail}"[:160], flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder made by fetch_demo_data.py")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to watch the device serve")
    parser.add_argument("--work", default=".demo", help="scratch folder for keys, configs and state")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    processes: List[subprocess.Popen] = []  # type: ignore[type-arg]
    watcher: Optional[Watcher] = None

    say("1. a local MQTT broker (mosquitto)")
    broker = LocalBroker().start()
    print(f"   mosquitto on {broker.host}:{broker.port}")
    try:
        keys = work / "keys"
        operator = work / "operator.toml"
        device = work / "agent.toml"
        operator.write_text(f'[device]\nid = "operator"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                            f'[state]\ndir = "{work / "operator-state"}"\n')

        say("2. operator: a signing key, a calibration table made on the CPU, a validation set")
        if not (keys / "fleet-signing.key").exists():
            edge_agent(operator, "fleet", "keys", "generate", "-o", str(keys))
        table = work / "efficientnet_lite0.cache"
        edge_agent(operator, "calib", "make", "--model", str(data / "efficientnet_lite0.onnx"), "--frames", str(data / "calibration"), str(data / "demo.avi"),
                   "--preprocess", "efficientnet_lite", "--method", "minmax", "-n", "32", "-o", str(table))
        edge_agent(operator, "calib", "check", str(table), "--model", str(data / "efficientnet_lite0.onnx"), "--target", "cpu")
        validation = work / "validation.npz"
        edge_agent(operator, "fleet", "make-validation", "--model", str(data / "efficientnet_lite0.onnx"), "--frames", str(data / "demo.avi"),
                   "-n", "16", "--preprocess", "efficientnet_lite", "--task", "classification", "-o", str(validation))

        say("3. operator: sign and publish the artifacts, then serve them over MQTT")
        ids = {
            "model": publish(operator, keys, data / "efficientnet_lite0.onnx", "model"),
            "table": publish(operator, keys, table, "calib"),
            "validation": publish(operator, keys, validation, "validation"),
            "labels": publish(operator, keys, data / "imagenet_labels.txt", "labels"),
        }
        processes.append(background(operator, work / "fleet-serve.log", "fleet", "serve"))

        say(f"4. the device '{DEVICE}': edge-agent run (trusts only the fleet's public key)")
        device.write_text(
            f'[device]\nid = "{DEVICE}"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            f'[state]\ndir = "{work / "device-state"}"\n[artifacts]\npublic_keys = [{json.dumps(str(keys / "fleet-signing.pub"))}]\n'
            f'[engine]\nbackend = "onnxruntime"\n[telemetry]\ninterval_s = 5.0\n'
        )
        watcher = Watcher(broker.host, broker.port)
        processes.append(background(device, work / "agent.log", "run"))

        say("5. operator: deploy the INT8 classifier and a camera (the demo video) to the device")
        deployment = {
            "id": "effnet-lite0-int8-demo",
            "model": ids["model"], "table": ids["table"], "validation": ids["validation"], "labels": ids["labels"],
            "precision": "int8", "target": "cpu",
            "cameras": [f"file://{data / 'demo.avi'}"], "camera_options": {"realtime": True, "loop": True},
            "preprocess": "efficientnet_lite", "postprocess": {"type": "classification", "top_k": 3},
            "results": {"on_change": True, "heartbeat_s": 5.0},  # publish when the top class changes, else every 5 s
            "telemetry_interval_s": 5.0,
        }
        deployment_file = work / "deployment.json"
        deployment_file.write_text(json.dumps(deployment, indent=2))
        edge_agent(operator, "fleet", "deploy", DEVICE, "--file", str(deployment_file))

        say(f"6. watching the device for {args.seconds:.0f} s: status, results, telemetry")
        if not watcher.serving.wait(timeout=120.0):
            print(f"   the device is not serving yet; see {work / 'agent.log'}")
        time.sleep(args.seconds)

        say("7. operator: fleet status and a command")
        edge_agent(operator, "fleet", "status", DEVICE)
        edge_agent(operator, "fleet", "cmd", DEVICE, "ping", "--wait")
        print(f"\n   {watcher.results} results and {watcher.telemetry} telemetry documents received. Logs and state: {work}")
        return 0
    finally:
        if watcher is not None:
            watcher.close()
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
