#!/usr/bin/env python3
"""What the agent costs before it does anything: CPU of `edge-agent --help` and the RSS of an idle agent.

Budgets (issue 13): `edge-agent --help` under 0.3 s of CPU; an idle agent at most 40 MB RSS.

`--help` is `python -m agent --help` in a child process, run several times: the figure is the median of the
child's user + system CPU (from os.wait4, so the interpreter's own start-up counts, as it does for a user).
The idle agent is `python -m agent run` against one local mosquitto (agent.fleet.local_broker) with its state in
a temporary folder and no deployment: once its retained status says online, the bench waits for the first
telemetry document to go out (so the telemetry collector is loaded) and a few seconds more, then reads its RSS
with psutil, as bench/telemetry.py does for its minimal idle agents.

    python bench/startup.py            # 7 runs of --help, 10 s idle
    python bench/startup.py --quick    # 3 runs of --help, 4 s idle

Last line: help_cpu_s=<median> idle_rss_mb=<RSS> plus the single --help runs and the idle window.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil

ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv:  # measure another checkout (a baseline) with this script
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(ROOT))

HELP_BUDGET_S = 0.3
RSS_BUDGET_MB = 40.0


def child_env(**extra: str) -> Dict[str, str]:
    """The environment of a child agent: this checkout first on the path, no EDGE_AGENT_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def help_cpu_seconds(runs: int) -> List[float]:
    """User + system CPU of `python -m agent --help`, once per run."""
    figures = []
    for _ in range(runs):
        proc = subprocess.Popen([sys.executable, "-m", "agent", "--help"], stdout=subprocess.DEVNULL, env=child_env(), cwd=str(ROOT))
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
        if proc.returncode != 0:
            raise SystemExit(f"`python -m agent --help` exited {proc.returncode}")
        figures.append(usage.ru_utime + usage.ru_stime)
    return figures


def idle_rss_mb(settle_s: float) -> Dict[str, Any]:
    """RSS of `python -m agent run` with no deployment, after it reported online and sent telemetry."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.fleet.local_broker import LocalBroker

    device = "bench-idle"
    seen: Dict[str, List[bytes]] = {"status": [], "telemetry": []}
    with LocalBroker() as broker, tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as state:
        watcher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        watcher.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(f"edge/{device}/#")
        watcher.on_message = lambda _c, _u, m: seen.setdefault(m.topic.rsplit("/", 1)[-1], []).append(m.payload)
        watcher.connect("127.0.0.1", broker.port)
        watcher.loop_start()
        env = child_env(
            EDGE_AGENT_BROKER_HOST="127.0.0.1",
            EDGE_AGENT_BROKER_PORT=str(broker.port),
            EDGE_AGENT_DEVICE_ID=device,
            EDGE_AGENT_STATE_DIR=state,
            EDGE_AGENT_TELEMETRY_INTERVAL_S="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT)
        )
        try:
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and proc.poll() is None:
                online = any(b'"online":true' in p.replace(b" ", b"") for p in seen.get("status", []))
                if online and seen.get("telemetry"):
                    break
                time.sleep(0.1)
            else:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None and proc.stderr else ""
                raise SystemExit(f"the idle agent did not come online with telemetry within 60 s {err}")
            time.sleep(settle_s)
            process = psutil.Process(proc.pid)
            rss = process.memory_info().rss / 1048576.0
            threads = process.num_threads()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            watcher.loop_stop()
            watcher.disconnect()
    return {"idle_rss_mb": round(rss, 1), "idle_threads": threads, "idle_window_s": settle_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of --help and 4 s idle instead of 7 and 10 s")
    parser.add_argument("--root", default=str(ROOT), help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    runs = 3 if args.quick else 7
    helps = help_cpu_seconds(runs)
    idle = idle_rss_mb(4.0 if args.quick else 10.0)
    median = statistics.median(helps)
    figures: Dict[str, Any] = {
        "help_cpu_s": round(median, 3),
        "idle_rss_mb": idle["idle_rss_mb"],
        "help_runs_s": ",".join(f"{v:.3f}" for v in helps),
        "idle_threads": idle["idle_threads"],
        "idle_window_s": idle["idle_window_s"],
        "help_budget_ok": median < HELP_BUDGET_S,
        "rss_budget_ok": idle["idle_rss_mb"] <= RSS_BUDGET_MB,
    }
    print(json.dumps(figures))
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
