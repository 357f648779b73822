#!/usr/bin/env python3
"""What telemetry costs the agent: CPU with telemetry every 1 s divided by CPU with telemetry off, and the RSS
of an idle agent (no model loaded) that publishes telemetry.

Two child processes run side by side for the same window against one local mosquitto: each is a minimal idle
agent (an MqttLink connected to the broker and a 1 s main-loop tick, as the daemon's reconcile loop has); one
also runs TelemetryCollector + TelemetryPublisher at 1 s. CPU is each child's user + system time from psutil,
its own children (tegrastats on a Jetson) included, measured over the window after both are ready.

    python bench/telemetry.py            # 60 s window
    python bench/telemetry.py --quick    # 20 s window

Last line: ratio=<on/off> rss_mb=<on child> plus the absolute figures (CPU seconds of each child, the added CPU
as a share of one core, documents received, CPU per document, tegrastats parse time per line).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

SAMPLE_LINE = (
    "11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,14%@729,"
    "13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off NVJPG off NVJPG1 off VIC off OFA off "
    "APE 200 cpu@53.968C soc2@52.437C soc0@50.75C gpu@53.343C tj@53.968C soc1@51.656C VDD_IN 12479mW/12479mW "
    "VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW"
)


# ------------------------------------------------------------------------------------------------- child
def child(mode: str, port: int, interval_s: float, device: str) -> int:
    from agent import __version__
    from agent.config import BrokerConfig, TelemetryConfig
    from agent.fleet.link import MqttLink
    from agent.fleet.topics import Topics

    link = MqttLink(BrokerConfig(host="127.0.0.1", port=port), f"bench-{device}")
    link.start()
    if not link.wait_connected(20):
        print("error: cannot connect", flush=True)
        return 1
    publisher = None
    if mode == "on":
        from agent.daemon.telemetry_publisher import TelemetryPublisher, agent_provider
        from agent.telemetry.document import TelemetryCollector

        state = Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
        collector = TelemetryCollector(
            TelemetryConfig(interval_s=interval_s), state, {"agent": agent_provider(link, __version__)}, device_id=device
        )
        publisher = TelemetryPublisher(link, Topics("edge", device).telemetry, collector, interval_s).start()
    stop = threading.Event()

    def wait_for_parent() -> None:  # the parent closes our stdin to stop us
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_parent, daemon=True).start()
    print("ready", flush=True)
    while not stop.wait(1.0):  # the idle main loop: a reconcile tick with nothing to do
        pass
    if publisher is not None:
        publisher.stop()
        publisher.collector.close()
    link.stop()
    return 0


# ------------------------------------------------------------------------------------------------ parent
def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process and its live children."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def precise_cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of every thread of the process and its children from /proc/<pid>/task/<tid>/schedstat
    (nanoseconds; psutil's cpu_times count 10 ms ticks, too coarse for an idle process). NaN off Linux."""
    total_ns = 0
    pids = [proc.pid]
    try:
        pids += [c.pid for c in proc.children(recursive=True)]
    except psutil.Error:
        pass
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total_ns += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total_ns / 1e9 if Path(f"/proc/{proc.pid}/task").is_dir() else float("nan")


def count_messages(port: int, topic: str, received: List[float]) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic)
    client.on_message = lambda _c, _u, _m: received.append(time.monotonic())
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def in_process_costs(iterations: int) -> Dict[str, float]:
    from agent.config import TelemetryConfig
    from agent.telemetry.document import TelemetryCollector, encode_document
    from agent.telemetry.tegrastats import parse_line

    with TelemetryCollector(TelemetryConfig(interval_s=1.0), Path(tempfile.gettempdir()), device_id="bench") as collector:
        collector.collect()
        began = time.process_time()
        for _ in range(iterations):
            encode_document(collector.collect())
        per_doc_ms = (time.process_time() - began) / iterations * 1000.0
    began = time.process_time()
    for _ in range(iterations * 10):
        parse_line(SAMPLE_LINE)
    parse_us = (time.process_time() - began) / (iterations * 10) * 1e6
    return {"collect_ms": per_doc_ms, "parse_us": parse_us}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 20 s window instead of 60 s")
    parser.add_argument("--seconds", type=float, default=None, help="window length (overrides --quick)")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry interval in the 'on' agent")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.port, args.interval, args.device)

    from agent.fleet.local_broker import LocalBroker

    window = args.seconds if args.seconds is not None else (20.0 if args.quick else 60.0)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with LocalBroker() as broker:
        received: List[float] = []
        counter = count_messages(broker.port, "edge/bench-on/telemetry", received)
        children: Dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]
        for mode in ("on", "off"):
            children[mode] = subprocess.Popen(
                [sys.executable, __file__, "--child", mode, "--port", str(broker.port), "--interval", str(args.interval),
                 "--device", f"bench-{mode}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )
        try:
            for mode, proc in children.items():
                line = proc.stdout.readline().strip() if proc.stdout else ""
                if line != "ready":
                    print(f"the '{mode}' agent did not start: {line!r}", file=sys.stderr)
                    return 1
            time.sleep(max(2.0, 2 * args.interval))  # both settled; the publisher has sent its first documents
            procs = {mode: psutil.Process(p.pid) for mode, p in children.items()}
            before = {mode: cpu_seconds(p) for mode, p in procs.items()}
            before_ns = {mode: precise_cpu_seconds(p) for mode, p in procs.items()}
            docs_before = len(received)
            began = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - began
            after = {mode: cpu_seconds(p) for mode, p in procs.items()}
            after_ns = {mode: precise_cpu_seconds(p) for mode, p in procs.items()}
            docs = len(received) - docs_before
            rss_on = procs["on"].memory_info().rss / 1048576.0
            rss_off = procs["off"].memory_info().rss / 1048576.0
        finally:
            for proc in children.values():
                if proc.stdin:
                    proc.stdin.close()
            for proc in children.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            counter.loop_stop()
            counter.disconnect()
    cpu_on = after["on"] - before["on"]
    cpu_off = after["off"] - before["off"]
    tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
    precise_on = after_ns["on"] - before_ns["on"]
    precise_off = after_ns["off"] - before_ns["off"]
    # the ratio from psutil's ticks when the idle agent used enough of them to count (50 ticks), else from the
    # nanosecond scheduler accounting; both sets of figures are printed
    if cpu_off >= 50 * tick:
        ratio, ratio_source = cpu_on / cpu_off, "psutil"
    elif precise_off > 0:
        ratio, ratio_source = precise_on / precise_off, "schedstat"
    else:
        ratio, ratio_source = (cpu_on / cpu_off if cpu_off > 0 else float("inf")), "psutil"
    costs = in_process_costs(100 if args.quick else 300)
    figures = {
        "window_s": round(elapsed, 1),
        "cpu_on_s": round(cpu_on, 3),
        "cpu_off_s": round(cpu_off, 3),
        "cpu_tick_s": round(tick, 3),
        "ns_cpu_on_s": round(precise_on, 4),
        "ns_cpu_off_s": round(precise_off, 4),
        "ratio_source": ratio_source,
        "added_cpu_pct_of_core": round(100.0 * (precise_on - precise_off) / elapsed, 3),
        "docs": docs,
        "cpu_ms_per_doc": round(1000.0 * (precise_on - precise_off) / docs, 3) if docs else None,
        "collect_ms": round(costs["collect_ms"], 3),
        "parse_us": round(costs["parse_us"], 1),
        "rss_off_mb": round(rss_off, 1),
    }
    print(json.dumps(figures))
    extras = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"ratio={ratio:.2f} rss_mb={rss_on:.1f} {extras}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
