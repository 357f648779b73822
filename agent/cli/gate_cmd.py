"""The accuracy gate's commands, hung under other command groups by their owners:

    edge-agent fleet make-validation --model M --frames DIR_OR_VIDEO [-n 64] [--preprocess P] [--task T] -o FILE
    edge-agent engine validate ENGINE --validation FILE [--thresholds JSON] [--table TABLE] [--json]

`agent/cli/fleet_cmd.py` calls `register_fleet(its subparsers)`, `agent/cli/engine_cmd.py` calls
`register_engine(its subparsers)`. Heavy modules (onnxruntime, cv2, onnx) load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional

from agent.calib.table import read_table
from agent.cli.options import add_json_flag, add_preprocess_option, json_or_name
from agent.cli.output import print_json
from agent.engine.spec import Precision
from agent.errors import UsageError
from agent.gate.gate import run_gate
from agent.gate.thresholds import parse_thresholds
from agent.gate.validation import load_validation, make_validation
from agent.runtime.factory import open_engine
from agent.vision.framesets import collect_frames
from agent.vision.preprocess import spec_from

TASK_CHOICES = ("classification", "detection", "generic")
SIZE_HINT_BYTES = 8 << 20


def register_fleet(sub: Any) -> None:
    parser = sub.add_parser(
        "make-validation",
        help="build a validation set (frames + FP32 reference outputs) for the accuracy gate",
        description="Run the FP32 model on onnxruntime over frames from image folders or videos and store the "
        "preprocessed frames with the reference outputs, for devices to gate new engines against.",
    )
    parser.add_argument("--model", required=True, help="the FP32 ONNX model the deployment ships")
    parser.add_argument("--frames", required=True, action="append", metavar="DIR_OR_VIDEO", help="image folder, image or video (repeatable)")
    parser.add_argument("-n", type=int, default=64, help="number of frames, spread evenly over the sources (default 64)")
    add_preprocess_option(parser)
    parser.add_argument("--task", choices=TASK_CHOICES, default=None, help="default: classification for one [N, C] output, detection with --decoder, else generic")
    parser.add_argument("--decoder", default=None, help="detection: decoder config as JSON or JSON file, e.g. '{\"kind\": \"blazeface\", \"score_threshold\": 0.5}'")
    parser.add_argument("--labels", default=None, help="optional ground truth: JSON list of class indices, or object {frame name: index}")
    parser.add_argument("-o", "--output", required=True, help="validation set file to write (.npz)")
    add_json_flag(parser)
    parser.set_defaults(func=make_validation_command)




def register_engine(sub: Any) -> None:
    parser = sub.add_parser(
        "validate",
        help="run the accuracy gate on an engine by hand (exit 1 when it fails)",
        description="Run ENGINE over a validation set and compare with its FP32 reference outputs.",
    )
    parser.add_argument("engine", metavar="ENGINE", help="an .onnx file, or a cached engine folder with manifest.json")
    parser.add_argument("--validation", required=True, help="validation set file (.npz) from `fleet make-validation`")
    parser.add_argument("--thresholds", default=None, help="the deployment's accuracy block: JSON object or JSON file")
    parser.add_argument("--table", default=None, help="calibration table of an INT8 build: its scales are checked, and blamed on failure")
    parser.add_argument("--reference-model", default=None, help="FP32 ONNX model: lets a failed INT8 gate find saturated tensors and divergent layers")
    parser.add_argument("--qdq-model", default=None, help="the Q/DQ ONNX the engine was built from (else built from --table when possible)")
    parser.add_argument("--fallback", choices=("none", "fp16_layers", "fp16_engine"), default=None, help="fallback to recommend on failure")
    parser.add_argument("--diagnose-budget", type=float, default=60.0, help="seconds the culprit search may take (default 60)")
    add_json_flag(parser)
    parser.set_defaults(func=validate_command)


# argument helpers -------------------------------------------------------------------------------------------


def _labels_for(value: Optional[str], names: List[str]) -> Optional[List[int]]:
    data = json_or_name(value, "--labels")
    if data is None:
        return None
    values: List[Any]
    if isinstance(data, list):
        if len(data) < len(names):
            raise UsageError(f"--labels: {len(data)} labels for {len(names)} frames")
        values = data[: len(names)]
    elif isinstance(data, dict):
        values = [data.get(name, data.get(name.split("#")[0], -1)) for name in names]
    else:
        raise UsageError("--labels: a JSON list or object")
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError("--labels: class indices must be integers (-1 for unknown)") from None


# make-validation --------------------------------------------------------------------------------------------


def make_validation_command(args: argparse.Namespace) -> int:
    preprocess = spec_from(json_or_name(args.preprocess, "--preprocess"))
    decoder_config = json_or_name(args.decoder, "--decoder")
    if isinstance(decoder_config, str):
        decoder_config = {"kind": decoder_config}
    if args.task == "detection" and decoder_config is None:
        raise UsageError("--task detection needs --decoder")
    frames = collect_frames(args.frames, args.n)
    names = [name for name, _ in frames]
    validation = make_validation(
        args.model,
        (frame for _, frame in frames),
        n=args.n,
        preprocess=preprocess,
        task=args.task,
        decoder_config=decoder_config,
        labels=_labels_for(args.labels, names),
        frame_names=names,
    )
    validation.save(args.output)
    size = Path(args.output).stat().st_size
    summary = dict(validation.summary(), path=str(args.output), bytes=size)
    if args.json:
        print_json(summary)
    else:
        boxes = f", {summary['reference_boxes']} reference boxes" if summary["reference_boxes"] is not None else ""
        sys.stdout.write(f"wrote {args.output}: {validation.task}, {validation.count} frames{boxes}, {size / 1e6:.2f} MB, sha256 {validation.sha256}\n")
    ties = summary["near_tie_frames"]
    if ties and len(ties) * 4 >= validation.count:
        sys.stderr.write(
            f"note: on {len(ties)} of {validation.count} frames the model's top two classes are nearly tied; they flip under "
            "any precision change and weaken the gate: prefer frames the model is sure about\n"
        )
    if size > SIZE_HINT_BYTES:
        sys.stderr.write(f"note: {size / 1e6:.1f} MB is large for a validation set; a smaller -n keeps transfers short\n")
    return 0


# engine validate --------------------------------------------------------------------------------------------


def _read_table(path: Optional[str]) -> Any:
    if path is None:
        return None
    return read_table(path)


def validate_command(args: argparse.Namespace) -> int:
    block = json_or_name(args.thresholds, "--thresholds")
    if block is not None and not isinstance(block, dict):
        raise UsageError("--thresholds: a JSON object, e.g. '{\"top1_agreement\": 0.9}'")
    if isinstance(block, dict) and isinstance(block.get("accuracy"), dict):
        block = block["accuracy"]  # a whole deployment's block
    if args.fallback:
        block = dict(block or {}, fallback=args.fallback)
    thresholds = parse_thresholds(block)
    validation = load_validation(Path(args.validation))
    table = _read_table(args.table)
    runner, manifest = open_engine(args.engine)
    result = run_gate(
        runner,
        validation,
        thresholds,
        table,
        reference_model=args.reference_model,
        candidate_model=args.qdq_model or (args.engine if args.table and str(args.engine).endswith(".onnx") else None),
        precision=Precision(manifest.spec.precision).value if manifest is not None else None,
        diagnose_budget_s=args.diagnose_budget,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        _print_result(result)
    return 0 if result.passed else 1


def _print_result(result: Any) -> None:
    out = sys.stdout
    out.write(result.summary() + "\n")
    for note in result.better_than_reference:
        out.write(f"  better than the reference: {note}\n")
    for note in result.notes:
        out.write(f"  note: {note}\n")
    for culprit in result.culprits[:10]:
        out.write(f"  culprit {culprit.tensor}: {culprit.reason}: {culprit.detail}\n")
    if len(result.culprits) > 10:
        out.write(f"  ... {len(result.culprits) - 10} more culprits (--json lists them all)\n")
    for layer in result.divergent_layers[:5]:
        out.write(f"  diverges: {layer.node} ({layer.op_type}) cosine {layer.cosine:.4f}, loses {layer.local_drop:.4f}\n")
    if result.fallback and result.fallback.get("policy") != "none":
        out.write(f"  fallback ({result.fallback['policy']}): {result.fallback['applies']}\n")
