"""The daemon on a local mosquitto with the onnxruntime backend and a camera: what a deployment costs and what a
swap costs the camera stream.

    python bench/daemon.py [--quick]

Measured side by side in one run, one agent (in-process Daemon), one broker:

1. deploy: desired state published -> serving, with a cold engine build, then `rebuild` of the same deployment
   (engine cache hit); cache_speedup = cold / cached.
2. swap: the camera keeps running while a new engine is swapped in (a new desired state whose cameras and
   pre/postprocessing are unchanged) versus `restart-pipeline` (cameras stopped and opened again). The figure is
   the longest gap between two published results in the 1.5 s around each; swap_vs_restart = swap gap /
   restart gap (below 1: the hot swap interrupts the stream less). The sources here are local files, which
   reopen in milliseconds; an RTSP or CSI camera takes seconds to reopen, which the hot swap never pays.
3. ping: command round trip (operator publish -> SUCCEEDED reply), median over N pings.

The real classifier (../shared/testdata) is used where present and not --quick; the tiny model otherwise.
The last line: `deploy_cold_s=... deploy_cached_s=... cache_speedup=... swap_gap_ms=... restart_gap_ms=...
swap_vs_restart=... ping_p50_ms=... model=...`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.daemon.daemon import Daemon  # noqa: E402
from agent.fleet.local_broker import LocalBroker  # noqa: E402
from tests.daemon.conftest import make_config  # noqa: E402
from tests.daemon.fleet_kit import TINY_PREPROCESS, FleetKit, make_tiny_artifacts  # noqa: E402
from tests.helpers import Collector, drawn_frames, shared_dir  # noqa: E402


class Results:
    """Arrival times of results published by the agent."""

    def __init__(self, broker: LocalBroker, device: str) -> None:
        self.times: List[float] = []
        self._lock = threading.Lock()
        self.collector = Collector(broker.host, broker.port, [f"edge/{device}/results"])
        self.collector.client.on_message = lambda _c, _u, _m: self._record()

    def _record(self) -> None:
        with self._lock:
            self.times.append(time.monotonic())

    def largest_gap_ms(self, start: float, end: float) -> float:
        with self._lock:
            stamps = [t for t in self.times if start <= t <= end]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return round(max(gaps) * 1000.0, 1) if gaps else float("nan")

    def count_since(self, start: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if t >= start)


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.01)


def artifacts(tmp: Path, quick: bool) -> Dict[str, Any]:
    base = shared_dir()
    data = base / "testdata" if base is not None else None
    if not quick and data is not None and (data / "models" / "efficientnet_lite0.onnx").is_file():
        import cv2

        from agent.gate.validation import make_validation

        frames = [cv2.imread(str(p)) for p in sorted((data / "images").glob("*.*"))[:8]]
        validation = tmp / "effnet.npz"
        make_validation(data / "models" / "efficientnet_lite0.onnx", iter(frames), n=8, preprocess="efficientnet_lite").save(validation)
        return {"name": "effnet-lite0", "model": data / "models" / "efficientnet_lite0.onnx", "table": data / "models" / "efficientnet_lite0.cache",
                "validation": validation, "preprocess": "efficientnet_lite", "camera": str(data / "video" / "vtest.avi")}
    import cv2

    made = make_tiny_artifacts(tmp / "tiny")
    folder = tmp / "frames"
    folder.mkdir()
    for index, frame in enumerate(drawn_frames(8, 64, 48)):
        cv2.imwrite(str(folder / f"{index}.png"), frame)
    return {"name": "tiny", "model": made.model, "table": made.table, "validation": made.validation, "preprocess": TINY_PREPROCESS,
            "camera": f"images://{folder}"}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, fewer pings (under a minute)")
    args = parser.parse_args(argv)
    pings = 10 if args.quick else 50
    fps = 20
    with LocalBroker() as broker, tempfile.TemporaryDirectory(prefix="bench-daemon-") as folder:
        tmp = Path(folder)
        chosen = artifacts(tmp, args.quick)
        kit = FleetKit(broker, tmp / "fleet", chunk_bytes=1024 * 1024)
        ids = {"model": kit.publish(chosen["model"], "model"), "table": kit.publish(chosen["table"], "calib"),
               "validation": kit.publish(chosen["validation"], "validation")}
        config = make_config(broker, tmp / "state", "bench-1", artifacts_public_keys=kit.public_key, artifacts_allow_unsigned="false", engine_threads="1")
        daemon = Daemon(config).start()
        results = Results(broker, "bench-1")
        try:
            deployment: Dict[str, Any] = dict(
                precision="int8", target="cpu", preprocess=chosen["preprocess"], postprocess={"type": "classification", "top_k": 1},
                cameras=[chosen["camera"]], camera_options={"realtime": True, "fps": fps, "loop": True}, **ids,
            )

            def serving(deployment_id: str) -> bool:
                current = daemon.serving.deployment
                return current is not None and current.id == deployment_id and not daemon.store.snapshot().applying

            started = time.monotonic()
            kit.deploy("bench-1", id="v1", **deployment)
            wait(lambda: serving("v1"), 120)
            cold = time.monotonic() - started
            wait(lambda: results.count_since(started) >= fps, 30)

            started = time.monotonic()
            replies = kit.operator.command("bench-1", "rebuild", wait=True, wait_s=120)
            cached = time.monotonic() - started
            if not replies[-1].result.get("cache_hit"):
                raise RuntimeError(f"the rebuild did not hit the engine cache: {replies[-1]}")
            time.sleep(1.0)

            # hot swap: same cameras and pre/postprocessing, another precision -> swap_runner between two batches
            kit.deploy("bench-1", id="v2", **{**deployment, "precision": "fp32", "table": None})
            wait(lambda: serving("v2"), 120)
            swapped = time.monotonic() - (time.time() - daemon.serving.since)  # the moment the runner changed
            time.sleep(1.5)
            # the window around the swap itself: the build and the gate before it only compete for the CPU
            swap_gap = results.largest_gap_ms(swapped - 0.25, swapped + 1.25)

            before = time.monotonic()
            kit.operator.command("bench-1", "restart-pipeline", wait=True, wait_s=60)
            wait(lambda: results.count_since(time.monotonic() - 0.5) > 0, 30)
            time.sleep(1.5)
            restart_gap = results.largest_gap_ms(before, time.monotonic())

            rtts: List[float] = []
            for _ in range(pings):
                started = time.monotonic()
                kit.operator.command("bench-1", "ping", wait=True, wait_s=10)
                rtts.append((time.monotonic() - started) * 1000.0)
            ping = statistics.median(rtts)
        finally:
            results.collector.close()
            daemon.stop()
            kit.close()
    print(f"{chosen['name']}: deployed (cold build) in {cold:.2f} s, rebuilt from the cache in {cached:.2f} s; "
          f"longest result gap at {fps} fps: {swap_gap:.0f} ms across a hot swap, {restart_gap:.0f} ms across a pipeline restart; "
          f"ping round trip {ping:.1f} ms (median of {pings})")
    print(f"deploy_cold_s={cold:.2f} deploy_cached_s={cached:.2f} cache_speedup={cold / cached:.1f} swap_gap_ms={swap_gap:.0f} "
          f"restart_gap_ms={restart_gap:.0f} swap_vs_restart={swap_gap / restart_gap:.2f} ping_p50_ms={ping:.1f} model={chosen['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
