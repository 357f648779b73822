"""A fleet on one mosquitto: a group deployment of a new calibration table to N simulated devices.

    python bench/fleet.py [--quick] [--sizes 100,500,1000]

Each size runs in a fresh child process (`--one N`) against a fresh broker, so memory figures do not carry over:

- the operator: `edge-agent fleet publish` (signed manifests) and `edge-agent fleet serve` as real CLI processes;
  the deployment itself through agent.operator.client.Operator, the code behind `edge-agent fleet deploy --group`;
- N devices in threads of the child process, each the agent's own fleet-protocol code without cameras or
  engines: an MqttLink (reconnect, last will, outbox), the retained group desired state decoded by
  agent.fleet.deployment, the table pulled by agent.fleet.transfer.ArtifactPuller (signed manifest verified,
  blocks hashed, stored in its own agent.store.artifacts.ArtifactStore), parsed by agent.calib.table, and the
  retained status published with agent.daemon.reported.encode_status;
- measured: from the deploy call to each device's status naming the new table (p50, p99, max), the broker's
  PUBLISH messages in and out per second during the rollout ($SYS counters), the child's RSS growth per device,
  the broker's RSS and CPU, and the file descriptors used against `ulimit -n`.

The last line: `devices=N p50_s=... p99_s=... msgs_per_s=... mem_per_device_kb=...` for the largest size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import ArtifactsConfig, BrokerConfig  # noqa: E402
from agent.fleet.local_broker import LocalBroker  # noqa: E402

PREFIX = "edge"
GROUP = "bench"
SETTLE_S = 120.0


# ------------------------------------------------------------------------------------------ the fleet's files
def calibration_table(path: Path, entries: int = 600, seed: int = 0) -> Path:
    """A TensorRT calibration table (header + `name: hex` lines) of a realistic size (~25 KB)."""
    import random
    import struct

    rng = random.Random(seed)
    lines = ["TRT-100300-EntropyCalibration2"]
    for i in range(entries):
        scale = rng.uniform(0.001, 0.2)
        lines.append(f"/backbone/block.{i // 8}/conv{i % 8}/Conv_output_0: {struct.unpack('>I', struct.pack('>f', scale))[0]:08x}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_model(path: Path) -> Path:
    from tests.helpers import tiny_classifier_onnx

    return tiny_classifier_onnx(path)


def cli_env(broker: LocalBroker, state: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({
        "EDGE_AGENT_BROKER_HOST": broker.host,
        "EDGE_AGENT_BROKER_PORT": str(broker.port),
        "EDGE_AGENT_DEVICE_ID": "operator",
        "EDGE_AGENT_STATE_DIR": str(state),
        "PYTHONPATH": str(REPO),
    })
    return env


def cli(env: Dict[str, str], *args: str) -> Dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "agent", *args, "--json"], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"edge-agent {' '.join(args)} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout))


# ------------------------------------------------------------------------------------------ one device
class SimDevice:
    """The fleet-protocol half of one agent (no camera, no engine): desired state in, table pulled, status out."""

    def __init__(self, index: int, broker: BrokerConfig, root: Path, artifacts: ArtifactsConfig, pool: ThreadPoolExecutor) -> None:
        from agent.daemon.reported import offline_payload
        from agent.fleet.link import MqttLink, Outbox, Will
        from agent.fleet.topics import Topics
        from agent.fleet.transfer import ArtifactPuller
        from agent.store.artifacts import ArtifactStore

        self.id = f"bench-{index:04d}"
        self.topics = Topics(PREFIX, self.id)
        self.pool = pool
        self.link = MqttLink(broker, f"edge-agent-{self.id}", will=Will(self.topics.status, offline_payload(self.id, "connection lost")),
                             outbox=Outbox(100), persistent_session=False, on_connected=self._report_idle)
        self.puller = ArtifactPuller(self.link, self.topics, ArtifactStore(root / self.id), artifacts, min_free_mb=0)
        self.errors: List[str] = []
        self.applied = ""
        self.link.subscribe(self.topics.desired, self._on_desired, qos=1)
        self.link.subscribe(self.topics.group(GROUP, "desired"), self._on_desired, qos=1)

    def start(self) -> None:
        self.link.start()

    def _report_idle(self) -> None:
        self._publish_status({"state": "degraded", "serving": None})

    def _publish_status(self, fields: Dict[str, Any]) -> None:
        from agent.daemon.reported import encode_status

        document = {"device": self.id, "online": True, **fields}
        self.link.publish(self.topics.status, encode_status(document), qos=1, retain=True, keep_if_offline=False)

    def _on_desired(self, msg: Any) -> None:  # paho's thread: hand over
        self.pool.submit(self._apply, bytes(msg.payload))

    def _apply(self, payload: bytes) -> None:
        from agent.calib.table import read_table
        from agent.errors import AgentError
        from agent.fleet.deployment import decode_desired

        try:
            deployment = decode_desired(payload)
            if deployment is None or not deployment.table or deployment.table == self.applied:
                return
            table = read_table(self.puller.pull(deployment.table, expect_kind="calib", timeout_s=SETTLE_S))
            self.applied = deployment.table
            self._publish_status({"state": "serving", "serving": {"deployment_id": deployment.id, "table": deployment.table,
                                                                  "table_entries": len(table)}})
        except AgentError as exc:
            self.errors.append(str(exc))
            self._publish_status({"state": "degraded", "last_error": {"step": "fetch", "reason": str(exc)}})

    def stop(self) -> None:
        self.link.stop()


# ------------------------------------------------------------------------------------------ the broker's counters
class SysCounters:
    """mosquitto's $SYS counters (every second with sys_interval 1) and the status documents, as one operator
    client sees them."""

    COUNTERS = ("publish/messages/received", "publish/messages/sent")

    def __init__(self, broker: LocalBroker) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.values: Dict[str, float] = {}
        self.applied_at: Dict[str, float] = {}
        self.want_table = ""
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-watch", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_a: c.subscribe([(f"$SYS/broker/{name}", 0) for name in self.COUNTERS] + [(f"{PREFIX}/+/status", 1)])
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise SystemExit("the bench's watcher could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        if msg.topic.startswith("$SYS/"):
            try:
                value = float(bytes(msg.payload).decode("ascii").split()[0])
            except (ValueError, IndexError, UnicodeDecodeError):
                return
            with self._lock:
                self.values[msg.topic[len("$SYS/broker/"):]] = value
            return
        if not self.want_table or not msg.payload:
            return
        try:
            status = json.loads(msg.payload)
        except ValueError:
            return
        if ((status.get("serving") or {}).get("table")) == self.want_table:
            with self._lock:
                self.applied_at.setdefault(status.get("device", msg.topic), time.monotonic())

    def publishes(self) -> float:
        with self._lock:
            return self.values.get("publish/messages/received", 0.0) + self.values.get("publish/messages/sent", 0.0)

    def wait_fresh(self) -> float:
        """The counters after the next $SYS update (they come once a second)."""
        with self._lock:
            before = dict(self.values)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with self._lock:
                if self.values != before:
                    break
            time.sleep(0.05)
        time.sleep(0.25)  # one tick publishes every counter; let the rest of it arrive
        return self.publishes()

    def applied(self) -> int:
        with self._lock:
            return len(self.applied_at)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def raise_fd_limit(devices: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = devices + 1024  # mosquitto: one descriptor per connection
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


# ------------------------------------------------------------------------------------------ device workers
def run_worker(first: int, count: int, port: int, public_key: str, root: str) -> int:
    """`--worker`: `count` devices in this process. paho's loop uses select(), which takes no file descriptor
    above 1023, so one process holds at most ~300 clients: a fleet is spread over several workers (a real
    device runs one agent, one connection). Protocol on stdout/stdin: `ready {json}`, wait for a line, `done {json}`."""
    import psutil

    # what every device uses, imported before the baseline: memory per device is the devices', not the imports'
    import agent.calib.table
    import agent.daemon.reported
    import agent.fleet.deployment
    import agent.fleet.link
    import agent.fleet.transfer
    import agent.store.artifacts  # noqa: F401

    me = psutil.Process()
    broker = BrokerConfig(host="127.0.0.1", port=port, keepalive_s=60, reconnect_min_s=1, reconnect_max_s=5)
    artifacts = ArtifactsConfig(public_keys=[public_key], block_timeout_s=10.0, window=8)
    rss_before, fds_before = me.memory_info().rss, me.num_fds()
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="device-work")
    fleet = [SimDevice(first + i, broker, Path(root), artifacts, pool) for i in range(count)]
    started = time.monotonic()
    for device in fleet:
        device.start()
    missing = [d.id for d in fleet if not d.link.wait_connected(max(0.1, 30 - (time.monotonic() - started)))]
    print("ready " + json.dumps({"connect_s": round(time.monotonic() - started, 2), "missing": missing[:5], "missing_count": len(missing)}), flush=True)
    sys.stdin.readline()
    report = {"rss_delta": me.memory_info().rss - rss_before, "fds": me.num_fds() - fds_before, "threads": threading.active_count(),
              "errors": sorted({e for d in fleet for e in d.errors})[:3], "applied": sum(1 for d in fleet if d.applied)}
    print("done " + json.dumps(report), flush=True)
    with ThreadPoolExecutor(max_workers=64) as stopper:  # paho's loop_stop waits up to a second each
        list(stopper.map(lambda device: device.stop(), fleet))
    return 0


def read_tagged(proc: subprocess.Popen[str], tag: str) -> Dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(tag + " "):
            return dict(json.loads(line[len(tag) + 1 :]))
    raise SystemExit(f"a device worker ended without '{tag}' (exit {proc.wait()})")


# ------------------------------------------------------------------------------------------ one size
def run_one(devices: int, per_worker: int, broker_nofile: int = 0) -> Dict[str, Any]:
    import psutil

    from agent.fleet.deployment import Deployment
    from agent.fleet.signing import generate_keys
    from agent.operator.client import Operator

    fd_limit = raise_fd_limit(devices)  # before mosquitto starts: it inherits the limit
    if fd_limit < devices + 256:
        raise SystemExit(f"ulimit -n is {fd_limit}: mosquitto needs one descriptor per device ({devices}) and some")
    me = psutil.Process()
    work = Path(tempfile.mkdtemp(prefix="edge-agent-bench-fleet-"))
    children: List[subprocess.Popen[str]] = []
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if broker_nofile:  # a broker as systemd starts it by default (LimitNOFILE soft 1024)
            resource.setrlimit(resource.RLIMIT_NOFILE, (broker_nofile, hard))
        broker_cm = LocalBroker(extra_config="sys_interval 1\nmax_connections -1")
        broker_cm.start()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with broker_cm as broker:
            mosquitto = next(p for p in me.children() if "mosquitto" in p.name())
            keys = generate_keys(work / "keys")
            env = cli_env(broker, work / "operator")
            folder = work / "fleet-artifacts"
            model = cli(env, "fleet", "publish", str(tiny_model(work / "model.onnx")), "--kind", "model", "--key", str(keys.private_path), "--artifacts", str(folder))
            table = cli(env, "fleet", "publish", str(calibration_table(work / "calibration.cache")), "--kind", "calib", "--key", str(keys.private_path), "--artifacts", str(folder))
            children.append(subprocess.Popen([sys.executable, "-m", "agent", "fleet", "serve", "--artifacts", str(folder)], env=env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
            watch = SysCounters(broker)
            started = time.monotonic()
            workers = []
            for first in range(0, devices, per_worker):
                count = min(per_worker, devices - first)
                workers.append(subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(first), str(count), str(broker.port), str(keys.public_path), str(work / "devices")],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
            children += workers
            ready = [read_tagged(w, "ready") for w in workers]
            missing = [m for r in ready for m in r["missing"]]
            if missing:
                log = broker.log_path.read_text(errors="replace").strip().splitlines()
                raise SystemExit(f"{sum(r['missing_count'] for r in ready)} of {devices} devices did not connect, e.g. {missing[:3]}; "
                                 f"mosquitto ({mosquitto.num_fds()} fds open, ulimit -n {broker_nofile or soft}) "
                                 f"says: {log[-1] if log else '(nothing)'}")
            connect_s = time.monotonic() - started

            time.sleep(1.5)  # idle statuses settle, $SYS counters refresh
            before = watch.wait_fresh()
            watch.want_table = str(table["artifact_id"])
            watched = {"broker": [mosquitto], "serve": [psutil.Process(children[0].pid)], "devices": [psutil.Process(w.pid) for w in workers]}
            for processes in watched.values():
                for process in processes:
                    process.cpu_percent(None)
            broker_config = BrokerConfig(host=broker.host, port=broker.port)
            with Operator(broker_config, PREFIX) as operator:
                deployment = Deployment(id=f"table-{devices}", model=str(model["artifact_id"]), table=str(table["artifact_id"]), precision="int8", target="gpu")
                deploy_at = time.monotonic()
                operator.deploy(deployment, group=GROUP)
            while watch.applied() < devices and time.monotonic() - deploy_at < SETTLE_S:
                time.sleep(0.02)
            rollout_s = time.monotonic() - deploy_at
            cpu = {name: round(sum(p.cpu_percent(None) for p in processes)) for name, processes in watched.items()}
            after = watch.wait_fresh()
            latencies = [at - deploy_at for at in watch.applied_at.values()]
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("stop\n")
                worker.stdin.flush()
            done = [read_tagged(w, "done") for w in workers]
            return {
                "devices": devices,
                "workers": len(workers),
                "applied": len(latencies),
                "connect_s": round(connect_s, 2),
                "p50_s": round(percentile(latencies, 50), 3),
                "p99_s": round(percentile(latencies, 99), 3),
                "max_s": round(max(latencies) if latencies else float("nan"), 3),
                "msgs_per_s": round((after - before) / max(rollout_s, 1e-6)),
                "publishes": int(after - before),
                "mem_per_device_kb": round(sum(d["rss_delta"] for d in done) / 1024 / devices, 1),
                "broker_rss_mb": round(mosquitto.memory_info().rss / 1e6, 1),
                "cpu_pct": cpu,
                "broker_fds": mosquitto.num_fds(),
                "fds_per_device": round(sum(d["fds"] for d in done) / devices, 2),
                "fd_limit": fd_limit,
                "errors": sorted({e for d in done for e in d["errors"]})[:3],
            }
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------ main
def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 and 200 devices (under a minute)")
    parser.add_argument("--sizes", default="", help="comma-separated fleet sizes (default 100,500,1000)")
    parser.add_argument("--per-worker", type=int, default=250, help="simulated devices per process (paho's select() limit: ~300)")
    parser.add_argument("--broker-nofile", type=int, default=0, help="start mosquitto with this ulimit -n (1024: systemd's default)")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: one size, JSON out
    parser.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)  # internal: FIRST COUNT PORT KEY ROOT
    args = parser.parse_args(argv)
    if args.worker:
        first, count, port, key, root = args.worker
        return run_worker(int(first), int(count), int(port), key, root)
    if args.one:
        print(json.dumps(run_one(args.one, args.per_worker, args.broker_nofile)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s] if args.sizes else ([50, 200] if args.quick else [100, 500, 1000])
    results: List[Dict[str, Any]] = []
    for size in sizes:
        done = subprocess.run([sys.executable, __file__, "--one", str(size), "--per-worker", str(args.per_worker), "--broker-nofile", str(args.broker_nofile)],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(f"{size} devices: failed\n{done.stderr[-3000:]}{done.stdout[-1000:]}")
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{size:5d} devices: connected in {result['connect_s']:.1f} s; table applied by {result['applied']}/{size} "
            f"p50 {result['p50_s']:.2f} s p99 {result['p99_s']:.2f} s max {result['max_s']:.2f} s; "
            f"{result['msgs_per_s']} broker msgs/s ({result['publishes']} publishes); "
            f"{result['mem_per_device_kb']:.0f} KB and {result['fds_per_device']:.1f} fds per device in {result['workers']} processes; "
            f"mosquitto {result['broker_rss_mb']:.0f} MB, {result['broker_fds']} fds (ulimit -n {result['fd_limit']}); "
            f"CPU during the rollout: mosquitto {result['cpu_pct']['broker']}%, fleet serve {result['cpu_pct']['serve']}%, "
            f"device processes {result['cpu_pct']['devices']}% (of {100 * (os.cpu_count() or 1)}%)"
            + (f"; errors: {result['errors']}" if result["errors"] else "")
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = last["p50_s"] / first["p50_s"] if first["p50_s"] > 0 else float("nan")
        print(f"p50 grew {growth:.1f}x for {last['devices'] / first['devices']:.0f}x the devices; "
              f"median p50 {statistics.median(r['p50_s'] for r in results):.2f} s over {len(results)} sizes")
    last = results[-1]
    print(f"devices={last['devices']} p50_s={last['p50_s']} p99_s={last['p99_s']} msgs_per_s={last['msgs_per_s']} "
          f"mem_per_device_kb={last['mem_per_device_kb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
