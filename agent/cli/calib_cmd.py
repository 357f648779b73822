"""`edge-agent calib`: inspect, check, diff, make and convert INT8 calibration tables.

    edge-agent calib inspect TABLE [--json]
    edge-agent calib check TABLE [--model ONNX] [--trt-version V] [--target gpu|dla|cpu] [--portable] [--json]
    edge-agent calib diff A B [--rel-tol R] [--fail-on-diff] [--json]
    edge-agent calib make --model ONNX --frames DIR_OR_VIDEO... [--preprocess PRESET_OR_JSON] [--method M] [-n N] -o TABLE
    edge-agent calib make --method auto --validation SET --model ONNX --frames ... -o TABLE   (the most accurate method)
    edge-agent calib to-qdq --model ONNX --table TABLE --flavor tensorrt|onnxruntime -o OUT.onnx

`calib make` writes the table's provenance beside it (`TABLE.json`: model and frame hashes, method, command,
library versions; with `--method auto` the comparison of every method on the validation set).

Exit 0 when the command did its job, 1 when a check blocks deployment or an input cannot be read (and for
`--method auto`, when no candidate table passes the accuracy gate: the best one is written all the same).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.calib.check import check_table
from agent.calib.diff import diff_tables
from agent.calib.make import Candidate, auto_candidates, make_tables
from agent.calib.provenance import table_provenance, write_provenance
from agent.calib.qdq import describe, write_qdq_model
from agent.calib.table import (
    DEGENERATE_KINDS,
    CalibError,
    json_float,
    printable,
    read_table,
    table_stats,
    write_table,
)
from agent.cli.options import (
    add_json_flag,
    add_preprocess_option,
    add_target_option,
    json_or_name,
    require_action,
)
from agent.cli.output import print_json, print_table
from agent.errors import UsageError
from agent.gate.autocalib import choose_table, require_same_model
from agent.gate.thresholds import parse_thresholds
from agent.gate.validation import load_validation
from agent.store.atomic import atomic_write_bytes
from agent.store.hashing import sha256_file
from agent.vision.framesets import iter_sources
from agent.vision.preprocess import prepare, spec_from


def register(sub: Any) -> None:
    parser = sub.add_parser("calib")
    require_action(parser)
    calib = parser.add_subparsers(dest="calib_command", metavar="ACTION")

    inspect = calib.add_parser("inspect", help="format, header and degenerate scales of a table")
    inspect.add_argument("table", help="calibration table (TensorRT cache, onnxruntime calibration.cache/json)")
    add_json_flag(inspect)
    inspect.set_defaults(func=_inspect)

    check = calib.add_parser("check", help="verdicts before deployment: scales, fit to the model, target TensorRT")
    check.add_argument("table")
    check.add_argument("--model", help="the ONNX model the table will be applied to")
    check.add_argument("--trt-version", help="TensorRT version on the target, e.g. 10.3.0 (JetPack 6.1/6.2)")
    add_target_option(check, default="gpu", help="gpu, dla (or dla:N) or cpu (default gpu)")
    check.add_argument("--portable", action="store_true", help="the table is declared portable (cache calibrator route on GPU)")
    add_json_flag(check)
    check.set_defaults(func=_check)

    diff = calib.add_parser("diff", help="entries added, removed and changed between two tables")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--rel-tol", type=float, default=1e-3, help="relative difference counted as a change (default 0.001)")
    diff.add_argument("--fail-on-diff", action="store_true", help="exit 1 when the tables differ")
    add_json_flag(diff)
    diff.set_defaults(func=_diff)

    make = calib.add_parser("make", help="compute a TensorRT-format table on the CPU with onnxruntime")
    make.add_argument("--model", required=True, help="float ONNX model")
    make.add_argument("--frames", required=True, nargs="+", help="folder(s) of images, image files or video files")
    add_preprocess_option(make)
    make.add_argument(
        "--method",
        default="entropy",
        choices=("entropy", "minmax", "percentile", "auto"),
        help="default entropy (TensorRT's EntropyCalibration2); auto: every method, the one the accuracy gate rates best (needs --validation)",
    )
    make.add_argument("-n", "--count", type=int, default=64, help="frames taken from each source, spread over it (default 64)")
    make.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default 99.99)")
    make.add_argument("--validation", help="--method auto: validation set (.npz from `fleet make-validation`) of this model")
    make.add_argument("--percentiles", default="99.9,99.99,99.999", help="--method auto: the percentile points tried (default 99.9,99.99,99.999)")
    make.add_argument("--thresholds", help="--method auto: the deployment's accuracy block (JSON object or file; default the gate's defaults)")
    make.add_argument("--flavor", default="tensorrt", choices=("tensorrt", "onnxruntime"), help="--method auto: the Q/DQ model measured (default tensorrt, what TensorRT builds)")
    make.add_argument("--trt-version", default="10.3.0", help="TensorRT version written in the header (default 10.3.0)")
    make.add_argument("--algorithm", help="calibrator name written in the header (default from the method)")
    make.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    make.add_argument("-o", "--output", required=True, help="table to write")
    add_json_flag(make)
    make.set_defaults(func=_make)

    qdq = calib.add_parser("to-qdq", help="explicitly quantized ONNX (Q/DQ) from a table")
    qdq.add_argument("--model", required=True, help="float ONNX model")
    qdq.add_argument("--table", required=True)
    qdq.add_argument("--flavor", required=True, choices=("tensorrt", "onnxruntime"), help="tensorrt: TensorRT/ModelOpt placement; onnxruntime: fast on onnxruntime CPU")
    qdq.add_argument("--exclude-op", action="append", default=[], metavar="OP_TYPE", help="keep this op type float (repeatable; Gemm gives ModelOpt's exact file)")
    qdq.add_argument("-o", "--output", required=True)
    add_json_flag(qdq)
    qdq.set_defaults(func=_to_qdq)


def _load_model(path: str) -> Any:
    import onnx  # heavy (protobuf): imported only where a model is read or written

    try:
        return onnx.load(path)
    except FileNotFoundError:
        raise CalibError(f"{path}: no such model file") from None
    except Exception as exc:  # protobuf raises DecodeError (and others) for a file that is not ONNX
        raise CalibError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def _float(value: Optional[float]) -> Any:
    return json_float(value)


# --- inspect -------------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    table = read_table(args.table)
    stats = table_stats(table)
    report: Dict[str, Any] = {
        "path": args.table,
        "sha256": sha256_file(args.table),
        "format": table.format,
        "trt_version": table.trt_version,
        "version_code": table.version_code,
        "algorithm": table.algorithm,
        "header": table.header,
        "entries": stats.entries,
        **{kind: getattr(stats, kind) for kind in DEGENERATE_KINDS},
        "min_scale": _float(stats.min_scale),
        "max_scale": _float(stats.max_scale),
        "min_positive_scale": _float(stats.min_positive_scale),
        "max_amax": _float(stats.max_scale * 127.0 if stats.max_scale is not None else None),
        "degenerate": stats.degenerate,
        "degenerate_names": stats.degenerate_names,
        "duplicates": stats.duplicates,
    }
    if args.json:
        print_json(report)
        return 0
    rows = [
        ("format", table.format),
        ("header", table.header or "(none)"),
        ("TensorRT", table.trt_version or "unknown"),
        ("algorithm", table.algorithm or "unknown"),
        ("entries", stats.entries),
        ("zero / inf / nan", f"{stats.zero} / {stats.inf} / {stats.nan}"),
        ("negative / subnormal", f"{stats.negative} / {stats.denormal}"),
        ("scale range", f"{_fmt(stats.min_scale)} .. {_fmt(stats.max_scale)} (amax up to {_fmt(report['max_amax'])})"),
    ]
    print_table(("field", "value"), rows)
    for kind in DEGENERATE_KINDS:
        for name in stats.degenerate[kind]:
            sys.stdout.write(f"  {kind}: {printable(name)}\n")
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


# --- check ---------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    table = read_table(args.table)
    model = _load_model(args.model) if args.model else None
    report = check_table(table, model, args.trt_version, args.target, portable=args.portable)
    if args.json:
        coverage = report.coverage
        print_json(
            {
                "table": args.table,
                "model": args.model,
                "format": table.format,
                "header_trt_version": table.trt_version,
                "trt_version": report.trt_version,
                "target": report.target,
                "blocking": report.blocking,
                "route": None if report.route is None else {"method": report.route.method.value, "reason": report.route.reason, "deprecated": report.route.deprecated},
                "findings": report.findings,
                "coverage": None
                if coverage is None
                else {
                    "network_tensors": coverage.network_tensors,
                    "with_scale": coverage.with_scale,
                    "without_scale": coverage.without_scale,
                    "unmatched_entries": coverage.unmatched_entries,
                    "rename_hints": coverage.rename_hints,
                    "int8_layers": coverage.int8_layers,
                    "layers": coverage.layers,
                },
            }
        )
    else:
        for finding in report.findings:
            sys.stdout.write(f"{finding.severity.upper():8s}{finding.code}: {finding.message}\n")
        sys.stdout.write("verdict: " + ("BLOCKED (errors above)" if report.blocking else "ok to deploy") + "\n")
    return 1 if report.blocking else 0


# --- diff ----------------------------------------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    first, second = read_table(args.a), read_table(args.b)
    result = diff_tables(first, second, args.rel_tol)
    if args.json:
        print_json(
            {
                "a": args.a,
                "b": args.b,
                "rel_tol": args.rel_tol,
                "identical": result.identical,
                "header": {k: {"a": v[0], "b": v[1]} for k, v in result.header.items()},
                "added": result.added,
                "removed": result.removed,
                "changed": [
                    {"name": c.name, "a_scale": _float(c.a), "b_scale": _float(c.b), "a_amax": _float(c.a * 127.0), "b_amax": _float(c.b * 127.0), "rel": _float(c.rel)}
                    for c in result.changed
                ],
                "unchanged": result.unchanged,
                "max_rel": _float(result.max_rel),
            }
        )
    else:
        for key, (left, right) in result.header.items():
            sys.stdout.write(f"header {key}: {left} -> {right}\n")
        sys.stdout.write(
            f"{len(result.added)} added, {len(result.removed)} removed, {len(result.changed)} changed beyond {args.rel_tol:g}, {result.unchanged} unchanged\n"
        )
        for name in result.added:
            sys.stdout.write(f"+ {printable(name)}\n")
        for name in result.removed:
            sys.stdout.write(f"- {printable(name)}\n")
        for change in result.changed:
            sys.stdout.write(f"~ {printable(change.name)}: amax {change.a * 127.0:.6g} -> {change.b * 127.0:.6g} ({_fmt(change.rel)})\n")
    return 1 if args.fail_on_diff and not result.identical else 0


# --- make ----------------------------------------------------------------------------------------------


def _make(args: argparse.Namespace) -> int:
    if args.count <= 0:
        raise UsageError("-n must be at least 1")
    auto = args.method == "auto"
    if auto and not args.validation:
        raise UsageError("--method auto needs --validation SET (from `edge-agent fleet make-validation` on this model)")
    if not auto and (args.validation or args.thresholds):
        raise UsageError("--validation and --thresholds apply to --method auto only")
    spec = spec_from(json_or_name(args.preprocess, "--preprocess"))
    validation = thresholds = None
    if auto:  # read and check the set before the minutes of calibration, not after
        validation = load_validation(Path(args.validation))
        require_same_model(validation, args.model)
        thresholds = _thresholds(args.thresholds)
        candidates = auto_candidates(_percentiles(args.percentiles))
    else:
        candidates = [Candidate(args.method, args.percentile)]
    counted = {"frames": 0}

    def frames() -> Any:
        for frame in iter_sources(args.frames, args.count):
            counted["frames"] += 1
            yield prepare(frame, spec)[0]

    def progress(stage: str, done: int) -> None:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\r{stage}: {done} frames")

    started = time.monotonic()
    tables = make_tables(args.model, frames(), candidates, trt_version=args.trt_version, algorithm=args.algorithm, threads=args.threads, progress=progress)
    if not args.json and sys.stderr.isatty():
        sys.stderr.write("\n")
    selection = None
    if auto:
        def measured(outcome: Any) -> None:
            if not args.json and sys.stderr.isatty():
                sys.stderr.write(f"measured {outcome.label} ({outcome.seconds:.1f} s)\n")

        assert validation is not None  # read above for --method auto
        selection = choose_table(args.model, tables, validation, thresholds, flavor=args.flavor, threads=args.threads, progress=measured)
        chosen = selection.chosen
        assert chosen is not None  # choose_table always marks one
        method, table = chosen.label, chosen.table
    else:
        method, table = candidates[0].label, tables[candidates[0].label]
    data = write_table(table)
    atomic_write_bytes(args.output, data)
    record = table_provenance(
        args.output,
        table,
        data,
        model_path=args.model,
        sources=args.frames,
        per_source=args.count,
        frames=counted["frames"],
        preprocess=args.preprocess if args.preprocess and not args.preprocess.strip().startswith("{") else spec.to_dict(),
        method=method,
        argv=_command(args),
    )
    if selection is not None:
        record["selection"] = selection.to_dict()
    sidecar = write_provenance(args.output, record)
    stats = table_stats(table)
    report: Dict[str, Any] = {
        "output": args.output,
        "provenance": str(sidecar),
        "model": args.model,
        "method": method,
        "frames": counted["frames"],
        "header": table.header,
        "entries": stats.entries,
        "degenerate_names": stats.degenerate_names,
        "seconds": round(time.monotonic() - started, 2),
    }
    if selection is not None:
        report["selection"] = record["selection"]
    if args.json:
        print_json(report)
    else:
        if selection is not None:
            sys.stdout.write(f"calibration methods on {selection.validation['frames']} validation frames ({selection.task}, {selection.flavor} Q/DQ on onnxruntime):\n")
            print_table(selection.header(), selection.rows())
            for outcome in selection.outcomes:
                for message in outcome.problem_messages:
                    sys.stdout.write(f"{outcome.label}: {message}\n")
        sys.stdout.write(f"wrote {args.output}: {table.header}, {stats.entries} tensors from {counted['frames']} frames ({method}, {report['seconds']} s)\n")
        if stats.degenerate_names:
            sys.stdout.write(f"warning: degenerate scales (run 'calib check'): {', '.join(stats.degenerate_names[:20])}\n")
        if selection is not None and not selection.passed:
            sys.stdout.write(f"no candidate passes the accuracy gate; {method} came closest. Consider FP16, or frames closer to the deployment's\n")
    return 1 if selection is not None and not selection.passed else 0


def _percentiles(text: str) -> List[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"--percentiles: comma-separated numbers, got {text!r}") from None


def _thresholds(value: Optional[str]) -> Any:
    block = json_or_name(value, "--thresholds")
    if block is not None and not isinstance(block, dict):
        raise UsageError("--thresholds: a JSON object, e.g. '{\"top1_agreement\": 0.9}'")
    if isinstance(block, dict) and isinstance(block.get("accuracy"), dict):
        block = block["accuracy"]  # a whole deployment's block
    return parse_thresholds(block)


def _command(args: argparse.Namespace) -> List[str]:
    """The command line that remakes the table, with file names as given."""
    argv = ["calib", "make", "--model", args.model, "--frames", *args.frames, "-n", str(args.count)]
    if args.preprocess:
        argv += ["--preprocess", args.preprocess]
    argv += ["--method", args.method]
    if args.method == "percentile":
        argv += ["--percentile", f"{args.percentile:g}"]
    if args.method == "auto":
        argv += ["--validation", args.validation, "--percentiles", args.percentiles, "--flavor", args.flavor]
        if args.thresholds:
            argv += ["--thresholds", args.thresholds]
    if args.trt_version != "10.3.0":
        argv += ["--trt-version", args.trt_version]
    if args.algorithm:
        argv += ["--algorithm", args.algorithm]
    return [*argv, "-o", args.output]


# --- to-qdq --------------------------------------------------------------------------------------------


def _to_qdq(args: argparse.Namespace) -> int:
    table = read_table(args.table)
    model = _load_model(args.model)
    result, size = write_qdq_model(model, table, args.flavor, args.output, exclude_op_types=args.exclude_op)
    summary: Dict[str, Any] = {"output": args.output, "bytes": size, **describe(result)}
    if args.json:
        print_json(summary)
    else:
        skipped: List[str] = result.skipped
        sys.stdout.write(
            f"wrote {args.output} ({args.flavor} flavour, {size} bytes): {result.quantized_nodes} nodes quantized, "
            f"{summary['quantize_linear']} QuantizeLinear, {summary['dequantize_linear']} DequantizeLinear\n"
        )
        if skipped:
            sys.stdout.write(f"left float (no usable scale): {', '.join(skipped[:20])}{' ...' if len(skipped) > 20 else ''}\n")
        for note in result.notes:
            sys.stdout.write(f"note: {note}\n")
    return 0
