#!/usr/bin/env python3
"""A real RTSP camera through the real pipeline: latency at 30 fps and recovery after the camera dies.

The camera is GStreamer's RTSP server (tests/streams/rtsp_server.py, run by the system Python) streaming H.264
at 640x480 and 30 fps from vtest.avi (a clip drawn with OpenCV without ../shared); the agent opens it through
its sources (OpenCV's FFmpeg backend, TCP), and the pipeline runs EfficientNet-Lite0 FP32 from
../shared/testdata on onnxruntime (without it, a small classifier the bench makes, and it says so).

1. Latency: for `--seconds`, every result's capture-to-result time (the read of the frame finished -> its
   result ready for publishing: queueing, preprocessing, inference, postprocessing), p50 and p99, with the
   results' rate and the frames the capture dropped because inference was busy.
2. Recovery: the server is killed (SIGKILL), stays down `--down` seconds, and is started again; the time from
   the server's return (it listens again) to the first result from a frame read after it, `--kills` times,
   with the agent's default reconnect policy (backoff 0.5 s doubling to 30 s, reset after 10 s of streaming;
   the kills are that far apart), so it includes the backoff wait that was running when the server came back.

    python bench/camera_stream.py            # 20 s latency run, 4 kills
    python bench/camera_stream.py --quick    # 8 s, 2 kills (about 45 s)

Last line: p50_ms=... p99_ms=... fps=... drops=... recover_p50_s=... recover_max_s=... open_p50_s=... (a fresh
open of the running stream: the part of the recovery that is not backoff) and the model, backend, threads, stream
and policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner
from agent.vision.capture import Capture, ReconnectPolicy
from agent.vision.pipeline import FrameResult, Pipeline
from agent.vision.sources import SourceOptions, open_source
from tests.helpers import shared_dir, tiny_classifier_onnx
from tests.streams import RtspServer, rtsp_server_missing, stream_video


def model_and_steps(workdir: Path) -> Tuple[Path, Any, Dict[str, Any], str]:
    """(model, preprocess, postprocess, label): EfficientNet-Lite0 when ../shared has it, else a made one."""
    base = shared_dir()
    if base is not None:
        model = base / "testdata" / "models" / "efficientnet_lite0.onnx"
        labels = base / "testdata" / "models" / "imagenet_labels.txt"
        if model.is_file() and labels.is_file():
            return model, "efficientnet_lite", {"type": "classification", "labels": str(labels), "top_k": 5}, "efficientnet_lite0_fp32"
    print("EfficientNet-Lite0 not in ../shared/testdata: using a small classifier made here (224x224 input)", flush=True)
    model = tiny_classifier_onnx(workdir / "small.onnx", num_classes=10, size=224)
    return model, {"size": [224, 224], "resize": "stretch"}, {"type": "classification"}, "small_classifier"


class Collector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.results: List[Tuple[float, FrameResult]] = []  # (monotonic time the result arrived, result)
        self.arrived = threading.Condition(self.lock)

    def __call__(self, result: FrameResult) -> None:
        with self.arrived:
            self.results.append((time.monotonic(), result))
            self.arrived.notify_all()

    def first_after(self, since_mono: float, since_wall: float, timeout: float) -> float:
        """Monotonic time of the first result from a frame read after `since_wall` (epoch s)."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for arrived, result in self.results:
                    if arrived >= since_mono and result.captured >= since_wall:
                        return arrived
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"no result within {timeout} s of the server's return")
                self.arrived.wait(remaining)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 s latency run and 2 kills (under a minute)")
    parser.add_argument("--seconds", type=float, default=0.0, help="latency run length (default 20; 8 with --quick)")
    parser.add_argument("--kills", type=int, default=0, help="server kills (default 4; 2 with --quick)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the server stays dead each time")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1))
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args()
    missing = rtsp_server_missing()
    if missing:
        print(f"cannot run GStreamer's RTSP server: {missing}")
        return 1
    import cv2

    cv2.setNumThreads(1)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    kills = args.kills or (2 if args.quick else 4)
    policy = ReconnectPolicy()
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        workdir = Path(tmp)
        model, preprocess, postprocess, label = model_and_steps(workdir)
        video = stream_video(workdir, width=640, height=480)
        server = RtspServer(video, width=640, height=480, fps=args.fps, frames=150).start()
        runner = OnnxRuntimeRunner(model, threads=args.threads, name=label)
        collector = Collector()
        capture = Capture(server.url, SourceOptions(open_timeout_s=5.0, read_timeout_s=3.0), name="bench", policy=policy)
        pipeline = Pipeline(capture, runner, preprocess, postprocess, collector, batch=1)
        recoveries: List[float] = []
        try:
            pipeline.start()
            capture.wait_open(60)
            time.sleep(2.0)  # warm: the session's first runs, the stream's first keyframes
            with collector.lock:
                collector.results.clear()
            pipeline.reset_metrics()
            drops_before = capture.stats().drops
            started = time.monotonic()
            time.sleep(seconds)
            with collector.lock:
                window = [r for arrived, r in collector.results if arrived <= started + seconds]
            drops = capture.stats().drops - drops_before
            metrics = pipeline.metrics()
            latencies = np.asarray([r.latency_ms for r in window])
            infer_p50 = metrics["stages"]["infer"]["p50_ms"]
            print(f"latency run: {len(window)} results in {seconds:g} s from a {args.fps:g} fps stream; capture-to-result "
                  f"p50 {np.percentile(latencies, 50):.1f} ms p99 {np.percentile(latencies, 99):.1f} ms; inference p50 "
                  f"{infer_p50:.1f} ms; read p50 {metrics['stages']['capture']['p50_ms']:.1f} ms; drops {drops}", flush=True)

            for kill in range(kills):
                server.kill()
                time.sleep(args.down)
                server.start()
                back_mono, back_wall = time.monotonic(), time.time()
                first = collector.first_after(back_mono, back_wall, 120.0)
                recoveries.append(first - back_mono)
                print(f"kill {kill + 1}: down {args.down:g} s; first result {recoveries[-1]:.2f} s after the server was back "
                      f"({capture.stats().reconnects} reconnects, {capture.stats().open_failures} failed opens so far)", flush=True)
                if kill + 1 < kills:  # serve long enough that the backoff starts over, as after a real reboot
                    time.sleep(policy.healthy_s + 0.5)
            connections = server.stats()["connections"]
            # how much of the recovery is the open itself (RTSP handshake, first keyframe) rather than backoff
            opens: List[float] = []
            for _ in range(3):
                tick = time.monotonic()
                open_source(server.url, SourceOptions(open_timeout_s=5.0, read_timeout_s=3.0)).close()
                opens.append(time.monotonic() - tick)
        finally:
            pipeline.stop()
            runner.deactivate()
            server.stop()
    print(
        f"p50_ms={np.percentile(latencies, 50):.1f} p99_ms={np.percentile(latencies, 99):.1f} "
        f"fps={len(window) / seconds:.1f} drops={drops} infer_p50_ms={infer_p50:.1f} "
        f"recover_p50_s={statistics.median(recoveries):.2f} recover_max_s={max(recoveries):.2f} open_p50_s={statistics.median(opens):.2f} "
        f"kills={kills} down_s={args.down:g} "
        f"connections_last_run={connections} model={label} backend=onnxruntime threads={args.threads} "
        f"stream=640x480@{args.fps:g}fps_h264_rtsp_tcp policy={policy.initial_s:g}..{policy.max_s:g}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
