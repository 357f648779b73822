"""`edge-agent bench --model M [--batch 1,8,32] [--threads N] [--json]`: throughput and latency per batch size.

Larger batches use an accelerator better (multiples of 32 on V100/T4-class GPUs); on the CPU they mostly
amortise per-call overhead. Inputs are random tensors of the model's input shape, so this measures the engine
alone; `bench/pipeline.py` measures the whole camera pipeline against it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.calib.qdq import FLAVOR_ONNXRUNTIME, write_qdq_model
from agent.calib.table import read_table
from agent.cli.options import add_json_flag
from agent.cli.output import print_json, print_table
from agent.device.target import Backend
from agent.errors import UsageError
from agent.runtime.bench import bench_runner
from agent.runtime.factory import open_runner


def register(sub: Any) -> None:
    parser = sub.add_parser("bench")
    parser.add_argument("--model", required=True, help="ONNX model (onnxruntime) or TensorRT plan")
    parser.add_argument("--backend", default="auto", help="onnxruntime | tensorrt | auto (by suffix, default)")
    parser.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: library default)")
    parser.add_argument("--spin", action="store_true", help="onnxruntime: let idle intra-op threads spin (faster alone, slower beside a camera)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed run per batch size (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--precision", default="model", choices=("model", "int8"), help="model: as given; int8: Q/DQ from --table (onnxruntime)")
    parser.add_argument("--table", default="", help="calibration table for --precision int8")
    parser.add_argument("--dla-core", type=int, default=None, help="TensorRT: run on this DLA core")
    add_json_flag(parser)
    parser.set_defaults(func=_run)


def parse_batches(text: str) -> List[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--batch wants comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--batch wants comma-separated positive integers, got {text!r}")
    return sorted(set(values))


def _int8_model(model: Path, table: str, workdir: str) -> Path:
    """The model with the calibration table applied as onnxruntime-flavoured Q/DQ (agent.calib)."""
    if not table:
        raise UsageError("--precision int8 needs --table (a TensorRT-format calibration table)")
    import onnx  # heavy (protobuf): imported only when a Q/DQ model is made
    out = Path(workdir) / f"{model.stem}.int8.onnx"
    write_qdq_model(onnx.load(str(model)), read_table(table), FLAVOR_ONNXRUNTIME, out)
    return out


def _run(args: argparse.Namespace) -> int:
    batches = parse_batches(args.batch)
    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    model = Path(args.model)
    backend = Backend.for_file(args.backend, model)
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as workdir:
        if args.precision == "int8":
            if backend != Backend.ONNXRUNTIME:
                raise UsageError("--precision int8 applies to ONNX models on onnxruntime; a TensorRT plan has its precision built in")
            model = _int8_model(model, args.table, workdir)
        runner = open_runner(backend, model, threads=args.threads, dla_core=args.dla_core, spin=args.spin)
        with runner:
            rows = bench_runner(runner, batches, args.seconds, args.warmup)
    report: Dict[str, Any] = {
        "model": str(args.model),
        "backend": backend.value,
        "precision": args.precision,
        "threads": args.threads,
        "results": rows,
    }
    if args.json:
        print_json(report)
    else:
        print_table(
            ("batch", "items/s", "p50 ms", "p95 ms", "p99 ms", "ms/item", "note"),
            [
                (
                    r["batch"],
                    r.get("throughput"),
                    r.get("latency_p50_ms"),
                    r.get("latency_p95_ms"),
                    r.get("latency_p99_ms"),
                    r.get("ms_per_item"),
                    r.get("skipped", ""),
                )
                for r in rows
            ],
        )
    measured: Optional[int] = sum(1 for r in rows if "throughput" in r)
    return 0 if measured else 1
