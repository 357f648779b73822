"""Artifact transfer over a local mosquitto: pull throughput against raw paho, and what a broker crash costs.

    python bench/transfer.py [--quick] [--size-mb N]

Four measurements in one run, on one broker (agent.fleet.local_broker.LocalBroker, a real mosquitto):

1. raw: a paho publisher process sends the artifact's bytes as chunk-sized QoS 0 messages to a paho subscriber
   (this process); time from the first publish to the last byte received.
2. pull: `edge-agent fleet serve` in its own process answers an ArtifactPuller (this process) with the agent's
   configured window and chunk size; time from `pull()` to the file verified and stored. ratio = pull / raw.
3. 64 KiB blocks: the pull again with blocks that fit a broker limited to 128 KB packets (AWS IoT Core), the
   window raised to keep as many bytes in flight.
4. crash: the same pull (server rate-limited so the crash lands mid-transfer); the broker is SIGKILLed at about
   a third and started again; the server's count of bytes it had to send twice is printed with the window size.

Each round measures raw and pull back to back; the median of the per-round ratios is reported (the machine
may be shared). The last line: `ratio=... mb_per_s=... mb_per_s_64k=... raw_mb_per_s=... resent_bytes=... window_bytes=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config import ArtifactsConfig, BrokerConfig  # noqa: E402
from agent.fleet.artifact_protocol import ArtifactManifest, describe_file, sign_manifest  # noqa: E402
from agent.fleet.link import MqttLink, unique_client_id  # noqa: E402
from agent.fleet.local_broker import LocalBroker  # noqa: E402
from agent.fleet.signing import generate_keys, load_private_key  # noqa: E402
from agent.fleet.topics import Topics  # noqa: E402
from agent.fleet.transfer import ArtifactPuller  # noqa: E402
from agent.operator.artifact_server import add_to_folder, publish_manifest  # noqa: E402
from agent.store.artifacts import ArtifactStore  # noqa: E402

PUBLISHER = r"""
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, topic, path, chunk = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
data = open(path, "rb").read()
client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
client.on_connect = lambda *a: print("ready", flush=True)
client.connect(host, port)
client.loop_start()
sys.stdin.readline()
start = time.time()
infos = [client.publish(topic, data[i:i + chunk], qos=0) for i in range(0, len(data), chunk)]
infos[-1].wait_for_publish(120)
print(start, flush=True)
sys.stdin.readline()
client.disconnect()
client.loop_stop()
"""


def raw_throughput(broker: LocalBroker, path: Path, chunk: int) -> float:
    """MB/s from a paho publisher process to a paho subscriber, QoS 0, same message size as the blocks."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    total = path.stat().st_size
    topic = f"bench/raw/{time.time_ns()}"
    got = {"bytes": 0, "last": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got["bytes"] += len(msg.payload)
        if got["bytes"] >= total:
            got["last"] = time.time()
            done.set()

    sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_connect = lambda c, *_a: c.subscribe(topic, qos=0)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    subscribed.wait(10)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), topic, str(path), str(chunk)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw publisher did not connect")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if not done.wait(120):
            raise RuntimeError(f"raw subscriber got {got['bytes']} of {total} bytes")
        start = float(proc.stdout.readline())
        proc.stdin.write("bye\n")
        proc.stdin.flush()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.disconnect()
        sub.loop_stop()
    return total / 1e6 / (got["last"] - start)


def start_server(config_path: Path, folder: Path, rate_limit_mb: float = 0.0) -> subprocess.Popen:  # type: ignore[type-arg]
    cmd = [sys.executable, "-m", "agent", "--config", str(config_path), "fleet", "serve", "--artifacts", str(folder), "--json"]
    if rate_limit_mb:
        cmd += ["--rate-limit", str(rate_limit_mb)]
    proc = subprocess.Popen(cmd, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    for _ in range(20):  # warnings may come first (cryptography on Python 3.8)
        if line.startswith("serving") or not line:
            break
        line = proc.stderr.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise RuntimeError(f"fleet serve did not start: {line}{proc.stderr.read()}")
    time.sleep(0.5)  # its subscription reaches the broker
    return proc


def stop_server(proc: subprocess.Popen) -> Dict[str, Any]:  # type: ignore[type-arg]
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    try:
        return dict(json.loads(out))
    except ValueError:
        raise RuntimeError(f"fleet serve printed no counters: {out!r} {err[-2000:]!r}") from None


def timed_pull(broker_config: BrokerConfig, config: ArtifactsConfig, store_root: Path, manifest: ArtifactManifest,
               device: str, on_start: Any = None) -> Tuple[float, ArtifactPuller]:
    link = MqttLink(broker_config, unique_client_id(device))
    link.start()
    if not link.wait_connected(10):
        raise RuntimeError("device link did not connect")
    try:
        puller = ArtifactPuller(link, Topics("edge", device), ArtifactStore(store_root), config, min_free_mb=0)
        if on_start is not None:
            on_start(puller)
        start = time.monotonic()
        puller.pull(manifest.artifact_id, expect_kind="model", timeout_s=300)
        return time.monotonic() - start, puller
    finally:
        link.stop()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 MB, three rounds (under a minute)")
    parser.add_argument("--size-mb", type=int, default=0, help="artifact size (default 50, or 20 with --quick)")
    parser.add_argument("--rounds", type=int, default=0, help="raw/pull rounds; the median ratio counts (default 5, 3 with --quick)")
    args = parser.parse_args(argv)
    size_mb = args.size_mb or (20 if args.quick else 50)
    rounds = args.rounds or (3 if args.quick else 5)
    defaults = ArtifactsConfig()
    chunk, window = defaults.chunk_bytes, defaults.window

    # set_tcp_nodelay: without it mosquitto holds a retained message behind its SUBACK until the client's delayed
    # ACK (40 ms on Linux), which is a third of a 50 MB pull here; deploy/mosquitto sets it too.
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp_name, LocalBroker(extra_config="set_tcp_nodelay true") as broker:
        tmp = Path(tmp_name)
        keys = generate_keys(tmp / "keys")
        source = tmp / "model.onnx"
        with open(source, "wb") as handle:
            handle.write(os.urandom(size_mb * 1024 * 1024))
        manifest = sign_manifest(describe_file(source, "model", "bench-model.onnx", chunk), load_private_key(keys.private_path))
        folder = tmp / "operator"
        add_to_folder(folder, source, manifest)
        broker_config = BrokerConfig(host=broker.host, port=broker.port)
        config_path = tmp / "agent.toml"
        config_path.write_text(f'[device]\nid = "bench-operator"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                               f'[state]\ndir = "{tmp / "operator-state"}"\n')
        op_link = MqttLink(broker_config, unique_client_id("bench-publish"), persistent_session=False)
        op_link.start()
        publish_manifest(op_link, "edge", manifest)
        op_link.stop()
        device_config = ArtifactsConfig(public_keys=[keys.public_hex], chunk_bytes=chunk, window=window, block_timeout_s=2.0)
        print(f"artifact: {size_mb} MB, chunk {chunk // 1024} KB, window {window} ({window * chunk // 1024} KB in flight)")

        raw_rates: List[float] = []
        pull_rates: List[float] = []
        ratios: List[float] = []
        server = start_server(config_path, folder)
        try:
            for i in range(rounds + 1):
                # raw and pull back to back, each from a clean page cache state; the ratio of each pair counts,
                # so that load from elsewhere on the machine hits both sides of a ratio alike. Round 0 warms up
                # (imports, the broker, and memory: in a VM the first touch of a page can cost ten times a reuse)
                # and is not counted; each round's store is removed so the next one reuses its pages.
                os.sync()
                raw = raw_throughput(broker, source, chunk)
                os.sync()
                store_root = tmp / f"store-{i}"
                seconds, _puller = timed_pull(broker_config, device_config, store_root, manifest, f"bench-dev-{i}")
                shutil.rmtree(store_root)
                pulled = manifest.size / 1e6 / seconds
                print(f"round {i}{' (warm-up)' if i == 0 else ''}: raw {raw:.1f} MB/s, pull {pulled:.1f} MB/s, ratio {pulled / raw:.2f}")
                if i:
                    raw_rates.append(raw)
                    pull_rates.append(pulled)
                    ratios.append(pulled / raw)
            # blocks for a broker with a 128 KB packet limit (AWS IoT Core): 64 KiB, and a window holding as many
            # bytes in flight as the default one
            small_chunk = 64 * 1024
            small_window = max(1, window * chunk // small_chunk)
            small = sign_manifest(describe_file(source, "model", "bench-model.onnx", small_chunk), load_private_key(keys.private_path))
            add_to_folder(folder, source, small)
            republish = MqttLink(broker_config, unique_client_id("bench-publish"), persistent_session=False)
            republish.start()
            publish_manifest(republish, "edge", small)
            small_config = ArtifactsConfig(public_keys=[keys.public_hex], chunk_bytes=small_chunk, window=small_window, block_timeout_s=2.0)
            small_rates: List[float] = []
            small_raw: List[float] = []
            for i in range(max(1, rounds // 2)):
                os.sync()
                small_raw.append(raw_throughput(broker, source, small_chunk))
                store_root = tmp / f"store-64k-{i}"
                seconds, _puller = timed_pull(broker_config, small_config, store_root, small, f"bench-dev-64k-{i}")
                shutil.rmtree(store_root)
                small_rates.append(manifest.size / 1e6 / seconds)
                print(f"64 KiB blocks, window {small_window}: raw {small_raw[-1]:.1f} MB/s, pull {small_rates[-1]:.1f} MB/s")
            add_to_folder(folder, source, manifest)  # back to the default blocks for the crash run
            publish_manifest(republish, "edge", manifest)
            republish.stop()
        finally:
            clean_stats = stop_server(server)
        raw, pulled, ratio = statistics.median(raw_rates), statistics.median(pull_rates), statistics.median(ratios)
        pulled_64k = statistics.median(small_rates)

        # the crash: kill -9 the broker at about a third, start it again on the same port
        rate_limit = size_mb * 1.048576 / 4.0  # about 4 s for the whole transfer, so the crash lands inside it
        server = start_server(config_path, folder, rate_limit_mb=rate_limit)
        crashed = threading.Event()

        def crash_when_a_third_is_in(puller: ArtifactPuller) -> None:
            def watch() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if puller.last_stats.received_bytes >= manifest.size // 3:
                        broker.kill()
                        time.sleep(0.3)
                        broker.start()
                        crashed.set()
                        return
                    time.sleep(0.005)

            threading.Thread(target=watch, daemon=True).start()

        try:
            seconds, puller = timed_pull(broker_config, device_config, tmp / "store-crash", manifest, "bench-dev-crash",
                                         on_start=crash_when_a_third_is_in)
        finally:
            crash_stats = stop_server(server)
        if not crashed.is_set():
            raise RuntimeError("the transfer finished before the broker could be killed")
        resent = int(crash_stats["resent_bytes"])
        stats = puller.last_stats
        print(f"crash run: {seconds:.1f} s with a broker kill -9 + restart; re-requested {stats.rerequested_blocks} blocks, "
              f"server sent {crash_stats['resent_blocks']} blocks twice ({resent} bytes); clean runs resent "
              f"{clean_stats['resent_bytes']} bytes")
    print(f"ratio={ratio:.2f} mb_per_s={pulled:.1f} mb_per_s_64k={pulled_64k:.1f} raw_mb_per_s={raw:.1f} resent_bytes={resent} "
          f"rerequested_bytes={stats.rerequested_blocks * chunk} window_bytes={window * chunk} size_mb={size_mb}")
    return 0 if ratio >= 0.5 and resent <= window * chunk else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
