#!/usr/bin/env python3
"""What the camera pipeline costs over the bare engine, on the CPU backend.

1. Throughput: the whole pipeline (decode vtest.avi as fast as possible -> preprocess -> EfficientNet-Lite0
   INT8 Q/DQ on onnxruntime -> postprocess -> result callback), divided by the bare runner's throughput on
   tensors preprocessed beforehand, with the same runner (same session, thread budget, batch) in the same run.
   Rounds alternate bare / pipeline / bare ...; each pipeline round is divided by the mean of the bare rounds
   around it (load from other processes hits both alike), and the ratio is the median of those.
2. Added latency: the same file paced like a 30 fps camera, batch 1, results published to a real mosquitto
   through MqttLink; the agent's share is capture-to-published minus inference, per frame, at p50 and p99.

The INT8 model comes from the project's own calibration table (agent.calib.qdq.to_qdq, onnxruntime flavour).
Where that cannot run (no agent.calib, or onnxruntime older than the flavour needs), it falls back to
onnxruntime.quantization.quantize_static (MinMax, per-channel, QDQ) on frames of the video, and says so.

    python bench/pipeline.py            # 5 rounds, 15 s latency run
    python bench/pipeline.py --quick    # 2 rounds of 400 frames, 5 s latency run (under a minute)

Last line: ratio=<pipeline/bare> fps=<pipeline> added_p50_ms=... added_p99_ms=... plus the bare fps, batch,
threads and how the INT8 model was made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"
VIDEO = SHARED / "video" / "vtest.avi"
MODEL = SHARED / "models" / "efficientnet_lite0.onnx"
TABLE = SHARED / "models" / "efficientnet_lite0.cache"
LABELS = SHARED / "models" / "imagenet_labels.txt"


def int8_model(workdir: Path) -> Tuple[Path, str]:
    """The INT8 Q/DQ model and how it was made."""
    import onnx

    out = workdir / "efficientnet_lite0.int8.onnx"
    try:
        from agent.calib.qdq import to_qdq
        from agent.calib.table import read_table

        onnx.save(to_qdq(onnx.load(str(MODEL)), read_table(TABLE), "onnxruntime").model, str(out))
        return out, "calib_table"
    except Exception as exc:  # ImportError, or the flavour needs a newer onnxruntime
        print(f"agent.calib Q/DQ unavailable ({type(exc).__name__}: {exc}); using onnxruntime quantize_static", flush=True)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from agent.vision.preprocess import EFFICIENTNET_LITE, prepare
    from agent.vision.sources import SourceOptions, open_source

    reader = open_source(f"file://{VIDEO}", SourceOptions(loop=False))
    samples: List[np.ndarray] = []
    index = 0
    while len(samples) < 40:
        frame = reader.read()
        if frame is None:
            break
        if index % 20 == 0:
            samples.append(prepare(frame, EFFICIENTNET_LITE)[0][None])
        index += 1
    reader.close()

    class Frames(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self) -> Any:
            item = next(self.items, None)
            return None if item is None else {"input": item}

    quantize_static(str(MODEL), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out, "quantize_static"


def preprocessed_batches(batch: int, limit: int) -> Tuple[List[np.ndarray], int]:
    """The first `limit` frames of the video (0: all), preprocessed, stacked into batches (the bare runner's input)."""
    from agent.vision.preprocess import EFFICIENTNET_LITE, prepare
    from agent.vision.sources import SourceOptions, open_source

    reader = open_source(f"file://{VIDEO}", SourceOptions(loop=False))
    tensors: List[np.ndarray] = []
    while not limit or len(tensors) < limit:
        frame = reader.read()
        if frame is None:
            break
        tensors.append(prepare(frame, EFFICIENTNET_LITE)[0])
    reader.close()
    batches = [np.stack(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
    return batches, len(tensors)


def bare_fps(runner: Any, batches: List[np.ndarray], frames: int) -> float:
    name = runner.first_input().name
    started = time.perf_counter()
    for tensor in batches:
        runner.infer({name: tensor})
    return frames / (time.perf_counter() - started)


def pipeline_fps(runner: Any, batch: int, frames: int) -> Tuple[float, int, Dict[str, Any]]:
    """The pipeline over the first `frames` frames of the video, decoded as fast as possible."""
    import threading

    from agent.vision.capture import Capture
    from agent.vision.pipeline import FrameResult, Pipeline
    from agent.vision.sources import SourceOptions

    count = [0]
    done = threading.Event()

    def on_result(result: FrameResult) -> None:
        count[0] += 1
        if count[0] == frames:
            done.set()

    capture = Capture(f"file://{VIDEO}", SourceOptions(loop=False), stop_at_end=True, depth=2 * batch)
    post = {"type": "classification", "labels": str(LABELS), "top_k": 5}
    pipeline = Pipeline(capture, runner, "efficientnet_lite", post, on_result, batch=batch)
    started = time.perf_counter()
    pipeline.start()
    finished = done.wait(300)
    elapsed = time.perf_counter() - started
    metrics = pipeline.metrics()
    pipeline.stop()
    if not finished:
        raise RuntimeError(f"the pipeline finished {count[0]} of {frames} frames in 300 s")
    return frames / elapsed, count[0], metrics


def added_latency(runner: Any, seconds: float, fps: float) -> Dict[str, Any]:
    """Paced like a camera, batch 1, published to a real broker: the agent's share of each frame's latency."""
    from agent.config import BrokerConfig
    from agent.daemon.results_publisher import ResultsPublisher
    from agent.fleet.link import MqttLink, unique_client_id
    from agent.fleet.local_broker import LocalBroker
    from agent.fleet.topics import Topics
    from agent.vision.capture import Capture
    from agent.vision.pipeline import Pipeline
    from agent.vision.sources import SourceOptions

    with LocalBroker() as broker:
        link = MqttLink(BrokerConfig(host=broker.host, port=broker.port), unique_client_id("bench-pipeline"))
        link.start()
        if not link.wait_connected(20):
            raise RuntimeError("cannot connect to the local mosquitto")
        publisher = ResultsPublisher(link, Topics("bench", "pipeline"))
        capture = Capture(f"file://{VIDEO}", SourceOptions(loop=True, realtime=True, fps=fps))
        post = {"type": "classification", "labels": str(LABELS), "top_k": 5}
        pipeline = Pipeline(capture, runner, "efficientnet_lite", post, publisher, batch=1)
        pipeline.start()
        time.sleep(min(2.0, seconds / 4))  # warm: caches, first frames
        pipeline.reset_metrics()
        time.sleep(seconds)
        metrics = pipeline.metrics()
        pipeline.stop()
        counters = publisher.counters()
        link.stop()
    return {"metrics": metrics, "published": counters["published"]}


def compare(model: Path, threads: int, batch: int, rounds: int, spin: bool, batches: List[np.ndarray], frames: int) -> Dict[str, Any]:
    """Alternating rounds of the bare runner and the pipeline on one runner; medians and the last metrics."""
    from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model, threads=threads, name="efficientnet_lite0-int8", spin=spin)
    runner.activate()
    for tensor in batches[:3]:  # warm-up
        runner.infer({"input": tensor})
    bare: List[float] = [bare_fps(runner, batches, frames)]
    piped: List[float] = []
    metrics: Dict[str, Any] = {}
    for round_index in range(rounds):
        fps, done, metrics = pipeline_fps(runner, batch, frames)
        if done < frames:
            raise RuntimeError(f"the pipeline finished {done} of {frames} frames")
        piped.append(fps)
        bare.append(bare_fps(runner, batches, frames))
        print(f"threads={threads} round {round_index + 1}: pipeline {piped[-1]:.1f} fps between bare {bare[-2]:.1f} and {bare[-1]:.1f} fps", flush=True)
    stages = metrics["stages"]
    print(f"threads={threads} pipeline stages (last round, per batch of {batch}): "
          + ", ".join(f"{name} p50 {s['p50_ms']:.2f} ms" for name, s in stages.items()))
    # each pipeline round against the bare rounds just before and after it: background load hits both alike
    ratios = [p / ((bare[i] + bare[i + 1]) / 2) for i, p in enumerate(piped)]
    return {"runner": runner, "bare": statistics.median(bare), "pipeline": statistics.median(piped), "ratio": statistics.median(ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 400 frames and a 5 s latency run")
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=max(1, cores - 1),
                        help="onnxruntime intra-op threads, the same for both (default: all cores but the one capture uses)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--frames", type=int, default=0, help="frames of the video per round (default: all 795; 400 with --quick)")
    parser.add_argument("--latency-seconds", type=float, default=0.0)
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--spin", action="store_true", help="let onnxruntime's idle threads spin (for comparison)")
    parser.add_argument("--no-all-cores", action="store_true", help="skip the comparison with the engine on every core")
    args = parser.parse_args()
    for path in (VIDEO, MODEL, TABLE, LABELS):
        if not path.exists():
            print(f"missing shared test data: {path}")
            return 1
    import cv2

    cv2.setNumThreads(1)  # decode and resize in their own thread; the other cores belong to the engine
    rounds = args.rounds or (2 if args.quick else 5)
    latency_s = args.latency_seconds or (5.0 if args.quick else 15.0)
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as workdir:
        model, how = int8_model(Path(workdir))
        batches, frames = preprocessed_batches(args.batch, args.frames or (400 if args.quick else 0))
        main_run = compare(model, args.threads, args.batch, rounds, args.spin, batches, frames)
        latency = added_latency(main_run["runner"], latency_s, args.camera_fps)
        main_run["runner"].deactivate()
        extra = ""
        if not args.no_all_cores and cores != args.threads:
            # the engine on every core too: nothing left for decoding, so the ratio shows what capture costs
            all_cores = compare(model, cores, args.batch, rounds, args.spin, batches, frames)
            all_cores["runner"].deactivate()
            extra = f" ratio_all_cores={all_cores['ratio']:.3f} fps_all_cores={all_cores['pipeline']:.1f} bare_fps_all_cores={all_cores['bare']:.1f}"
    m = latency["metrics"]
    added, end_to_end, infer = m["added_latency"], m["latency"], m["stages"]["infer"]
    print(
        f"latency run: {latency['published']} results published at {args.camera_fps:g} fps; capture-to-published "
        f"p50 {end_to_end['p50_ms']:.2f} ms p99 {end_to_end['p99_ms']:.2f} ms; inference p50 {infer['p50_ms']:.2f} ms; "
        f"drops {m['drops']}"
    )
    print(
        f"ratio={main_run['ratio']:.3f} fps={main_run['pipeline']:.1f} added_p50_ms={added['p50_ms']:.2f} "
        f"added_p99_ms={added['p99_ms']:.2f} bare_fps={main_run['bare']:.1f} batch={args.batch} threads={args.threads} "
        f"int8={how}{extra}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
