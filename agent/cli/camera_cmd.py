"""`edge-agent camera probe URI [-n N] [--json]`: open a source, read N frames, report size, rates, decode time.

Also `edge-agent camera run URI --model M ...`: the pipeline on this machine, results printed as JSON lines
(no broker), to try a camera and a model before deploying them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict

from agent.cli.options import add_json_flag, add_preprocess_option, json_or_name, require_action
from agent.cli.output import print_json, print_table
from agent.errors import UsageError
from agent.models import parse
from agent.runtime.factory import open_runner
from agent.vision.capture import Capture
from agent.vision.pipeline import FrameResult, Pipeline
from agent.vision.sources import SourceError, SourceOptions, probe_source


def register(sub: Any) -> None:
    parser = sub.add_parser("camera")
    camera_sub = parser.add_subparsers(dest="camera_command", metavar="ACTION")
    require_action(parser)

    probe = camera_sub.add_parser("probe", help="open a source, read N frames, print resolution, fps and decode time")
    probe.add_argument("uri", help="v4l2:///dev/video0, csi://0, rtsp://..., file:///path.mp4, images:///folder")
    probe.add_argument("-n", "--frames", type=int, default=30, help="frames to read (default 30)")
    _add_source_options(probe)
    add_json_flag(probe)
    probe.set_defaults(func=_probe)

    run = camera_sub.add_parser("run", help="run the pipeline on a source with a model, print results as JSON lines")
    run.add_argument("uri")
    run.add_argument("--model", required=True, help="ONNX model (onnxruntime) or TensorRT plan")
    run.add_argument("--backend", default="auto", help="onnxruntime | tensorrt | auto (by the model's suffix)")
    add_preprocess_option(run, default="efficientnet_lite")
    run.add_argument("--postprocess", default="classification", help="a plugin name (classification, blazeface, yolo), inline JSON, or a JSON file")
    run.add_argument("--batch", type=int, default=1)
    run.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: library default)")
    run.add_argument("--seconds", type=float, default=10.0, help="stop after this long (default 10)")
    run.add_argument("--stop-at-end", action="store_true", help="files: stop at the end instead of reopening")
    _add_source_options(run)
    run.set_defaults(func=_run)


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--height", type=int, default=0)
    parser.add_argument("--fps", type=float, default=0.0)
    parser.add_argument("--format", default="", help="V4L2 FOURCC such as MJPG or YUYV")
    parser.add_argument("--loop", action="store_true", help="files: start again at the end")
    parser.add_argument("--realtime", action="store_true", help="files: pace at the file's frame rate")
    parser.add_argument("--backend-preference", dest="source_backend", default="auto", help="auto | gstreamer | ffmpeg | v4l2 | any")


def _source_options(args: argparse.Namespace) -> Any:
    return parse(
        SourceOptions,
        {
            "width": args.width,
            "height": args.height,
            "fps": args.fps,
            "format": args.format,
            "loop": args.loop,
            "realtime": args.realtime,
            "backend": args.source_backend,
        },
        error=SourceError,
        root="source options",
    )


def _probe(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UsageError("-n must be at least 1")
    report = probe_source(args.uri, args.frames, _source_options(args))
    if args.json:
        print_json(report)
    else:
        rows = [
            ("source", report.uri),
            ("opened with", f"{report.backend} ({report.description})"),
            ("resolution", f"{report.width}x{report.height}"),
            ("declared fps", report.declared_fps or "unknown"),
            ("measured fps", report.measured_fps),
            ("frames read", f"{report.frames}{' (ended early)' if report.ended_early else ''}"),
            ("open", f"{report.open_ms} ms"),
            ("decode", f"mean {report.decode_ms_mean} ms, p50 {report.decode_ms_p50} ms, p95 {report.decode_ms_p95} ms"),
        ]
        print_table(("what", "value"), rows)
    return 0 if report.frames >= 1 else 1


def _run(args: argparse.Namespace) -> int:
    runner = open_runner(args.backend, args.model, threads=args.threads)
    capture = Capture(args.uri, _source_options(args), stop_at_end=args.stop_at_end, depth=max(1, args.batch))

    def emit(result: FrameResult) -> None:
        sys.stdout.write(json.dumps(result.to_dict(), separators=(",", ":")) + "\n")

    pipeline = Pipeline(capture, runner, json_or_name(args.preprocess, "--preprocess"), json_or_name(args.postprocess, "--postprocess"), emit, batch=args.batch)
    try:
        pipeline.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline and not pipeline.wait_finished(0.2):
            pass
        metrics: Dict[str, Any] = pipeline.metrics()
    finally:
        pipeline.stop()
        runner.deactivate()
    summary = {k: metrics[k] for k in ("results", "fps", "drops", "reconnects", "errors", "last_error")}
    summary["latency_p50_ms"] = metrics["latency"]["p50_ms"]
    summary["latency_p99_ms"] = metrics["latency"]["p99_ms"]
    sys.stderr.write(json.dumps(summary) + "\n")
    return 0 if metrics["results"] > 0 else 1
