"""`edge-agent engine build|check|inspect|list|gc|diagnose`: the engine cache by hand.

    engine build MODEL [--calib TABLE] [--precision P] [--target T] ... [--json]   build or reuse; prints key, manifest, cache hit
    engine check PATH [--json]        may this engine load here? exit 1 when not
    engine inspect KEY|PATH [--json]  manifest, build report, verdict of a cached engine
    engine list [--json]              the cached engines
    engine gc [--keep KEY]... [--dry-run] [--json]   remove engines no deployment uses
    engine diagnose --log FILE [--json]   classify a TensorRT log: one JSON object a problem
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.cli import gate_cmd
from agent.cli.options import add_json_flag, add_target_option, require_action
from agent.cli.output import print_json, print_table
from agent.config import load_config
from agent.device.fingerprint import fingerprint
from agent.device.target import Backend, resolve_target, tensorrt_usable
from agent.engine.build import BuildOptions, ensure_engine, with_local_onnxruntime
from agent.engine.cache import BUILD_LOG, EngineCache, keys_in_state_file
from agent.engine.diagnose import diagnose_log
from agent.engine.hardware_class import manifest_class
from agent.engine.remedy import decide
from agent.engine.spec import BatchProfile, BuildPolicy, BuildSpec, PluginLib, Precision, SpecError
from agent.engine.verify import verify_engine_file
from agent.errors import AgentError, UsageError
from agent.lazy import try_import
from agent.store.hashing import sha256_file


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "engine",
        description="Engines are built per device and cached under <state>/engines/<key>/ with a manifest beside them.",
    )
    esub = parser.add_subparsers(dest="engine_command", metavar="ACTION")
    require_action(parser)

    build = esub.add_parser("build", help="build an engine, or reuse the cached one when it is compatible")
    build.add_argument("model", help="the ONNX model")
    build.add_argument("--calib", help="calibration table (TensorRT cache format or onnxruntime's) for int8/best")
    build.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8", "best"))
    add_target_option(build, help="auto, gpu, dla:N or cpu (default auto: from engine.backend, gpu where TensorRT is usable, else cpu)")
    build.add_argument("--gpu-fallback", action="store_true", help="DLA: let layers DLA cannot run fall back to the GPU")
    build.add_argument("--batch", default="1", help="N, or MIN:OPT:MAX for a dynamic batch (GPU/CPU)")
    build.add_argument("--workspace-mb", type=int, default=None, help="TensorRT workspace limit (default engine.workspace_mb)")
    build.add_argument("--plugin", action="append", default=[], metavar="NAME.so:SHA256", help="TensorRT plugin in engine.plugin_dir")
    build.add_argument("--no-timing-cache", action="store_true", help="do not load or save the TensorRT timing cache")
    build.add_argument("--portable-table", action="store_true", help="the table is declared portable: cache-only calibrator route")
    build.add_argument("--require-int8", action="store_true", help="fail when INT8 was asked but the engine has no INT8 layer")
    build.add_argument("--min-dla-fraction", type=float, default=0.0, help="fail when fewer layers than this fraction run on DLA")
    build.add_argument("--force", action="store_true", help="rebuild even when cached; retry a build that failed before")
    build.add_argument("--timeout", type=float, default=None, help="seconds (default engine.build_timeout_s)")
    add_json_flag(build)
    build.set_defaults(func=_build)

    check = esub.add_parser("check", help="may this engine load on this device? (exit 1 when not)")
    check.add_argument("path", help="an engine file (with its manifest.json beside it, or a foreign plan) or a cache folder")
    check.add_argument("--sysroot", metavar="DIR", help="judge against the device whose files are under DIR")
    check.add_argument("--no-trial", action="store_true", help="TensorRT: skip the trial deserialization")
    add_json_flag(check)
    check.set_defaults(func=_check)

    inspect = esub.add_parser("inspect", help="the manifest, build report and verdict of a cached engine")
    inspect.add_argument("engine", help="cache key (or a unique prefix), or the engine's folder or file")
    add_json_flag(inspect)
    inspect.set_defaults(func=_inspect)

    listing = esub.add_parser("list", help="the cached engines")
    add_json_flag(listing)
    listing.set_defaults(func=_list)

    gc = esub.add_parser("gc", help="remove cached engines no deployment uses (current and previous are kept)")
    gc.add_argument("--keep", action="append", default=[], metavar="KEY", help="also keep this key")
    gc.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    add_json_flag(gc)
    gc.set_defaults(func=_gc)

    diagnose = esub.add_parser("diagnose", help="classify a TensorRT log (version or device mismatch, corrupt plan, DLA, ...)")
    diagnose.add_argument("--log", required=True, metavar="FILE", help="the log file ('-' for stdin)")
    add_json_flag(diagnose)
    diagnose.set_defaults(func=_diagnose)

    gate_cmd.register_engine(esub)  # engine validate: the accuracy gate by hand


def _cache(args: argparse.Namespace) -> Any:
    return EngineCache.for_state(load_config(args.config).state_dir)


# --- build -----------------------------------------------------------------------------------------------------


class _Progress:
    """Build events on stderr: a redrawn bar on a terminal, one line a phase otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, event: Any) -> None:
        if event.kind == "progress":
            fraction = event.fraction
            if self.tty and fraction is not None:
                filled = int(30 * fraction)
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {event.message[:60]:<60}")
                sys.stderr.flush()
            elif event.message != self.last:
                sys.stderr.write(f"  {event.message}\n")
            self.last = event.message
            return
        if self.tty and self.last:
            sys.stderr.write("\n")
            self.last = ""
        sys.stderr.write(f"{event.kind}: {event.message}\n")


def _build(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"model not found: {model}")
    calib = Path(args.calib) if args.calib else None
    if calib is not None and not calib.is_file():
        raise UsageError(f"calibration table not found: {calib}")
    device = fingerprint()
    target = resolve_target(args.target, config.engine.backend, tensorrt_usable(device))
    spec = BuildSpec(
        model_sha256=sha256_file(model),
        precision=Precision(args.precision),
        target=target,
        calib_sha256=sha256_file(calib) if calib else None,
        gpu_fallback=args.gpu_fallback,
        batch=BatchProfile.parse(args.batch),
        workspace_mb=args.workspace_mb if args.workspace_mb is not None else config.engine.workspace_mb,
        plugins=tuple(PluginLib.parse(p) for p in args.plugin),
        timing_cache=config.engine.timing_cache and not args.no_timing_cache,
        calib_portable=args.portable_table,
    )
    policy = BuildPolicy(min_dla_layer_fraction=args.min_dla_fraction, require_int8=args.require_int8)
    overrides: Dict[str, Any] = {"force": args.force}
    if args.timeout is not None:
        overrides["timeout_s"] = args.timeout
    options = BuildOptions.from_config(config, policy, **overrides)
    spec = spec.validate()  # an impossible request is reported before a missing TensorRT
    if spec.backend == Backend.TENSORRT and try_import("tensorrt") is None:
        raise AgentError(f"target {target} needs TensorRT, which this machine lacks (it comes with JetPack); use --target cpu for onnxruntime")
    result = ensure_engine(
        spec, EngineCache.for_state(config.state_dir), device, model=model, calib=calib, options=options, on_event=_Progress()
    )
    if args.json:
        print_json({"key": result.key, "cache_hit": result.cache_hit, "path": str(result.path), "rebuilt_because": result.rebuilt_because,
                    "warnings": result.warnings, "manifest": result.manifest.to_dict()})
        return 0
    report = result.report
    sys.stdout.write(f"{'cache hit' if result.cache_hit else 'built'}: {result.key}\n  {result.path}\n")
    sys.stdout.write(f"  layers {report.layers} (dla {report.layers_dla}, gpu {report.layers_gpu}, cpu {report.layers_cpu}); "
                     f"precisions {json.dumps(report.precisions)}\n")
    for warning in result.warnings:
        sys.stdout.write(f"  warning: {warning}\n")
    return 0


# --- check -----------------------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    fp = with_local_onnxruntime(fingerprint(Path(args.sysroot)) if args.sysroot else fingerprint())
    result = verify_engine_file(Path(args.path), fp, trial=not args.no_trial)
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(("loadable here" if result["loadable"] else "NOT loadable here") + f": {result['path']}\n")
        for reason in result["reasons"]:
            sys.stdout.write(f"  - {reason}\n")
        for hint in result["hints"]:
            sys.stdout.write(f"  hint: {hint}\n")
    return 0 if result["loadable"] else 1


# --- inspect, list, gc -----------------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entry = cache.find(args.engine)
    fp = with_local_onnxruntime(fingerprint())
    verdict = cache.verify(entry, fp) if entry.manifest is not None else None
    log_path = entry.path / BUILD_LOG
    data: Dict[str, Any] = {
        **entry.summary(),
        "loadable_here": verdict.loadable if verdict else False,
        "reasons": verdict.reasons if verdict else [entry.problem],
        "hints": verdict.hints if verdict else [],
        "failure": entry.failure,
        "manifest": entry.manifest.to_dict() if entry.manifest else None,
        "build_log": str(log_path) if log_path.is_file() else None,
        "hardware_class": _built_for(entry.manifest),
    }
    if args.json:
        print_json(data)
        return 0
    rows: List[Any] = [(k, data[k]) for k in ("key", "status", "backend", "precision", "target", "built_at", "engine", "size_bytes", "loadable_here")]
    rows.append(("hardware class", (data["hardware_class"] or {}).get("key")))
    if entry.manifest is not None:
        rows += [(k, v) for k, v in entry.manifest.versions.items()]
        report = entry.manifest.report
        rows += [("layers (dla/gpu/cpu)", f"{report.layers} ({report.layers_dla}/{report.layers_gpu}/{report.layers_cpu})"),
                 ("precisions", json.dumps(report.precisions)), ("fallbacks", len(report.fallbacks)),
                 ("tensors without scale", len(report.tensors_without_scale)), ("int8 route", entry.manifest.int8.get("route"))]
    print_table(("field", "value"), rows)
    for reason in data["reasons"]:
        sys.stdout.write(f"  - {reason}\n")
    return 0


def _built_for(manifest: Any) -> Optional[Dict[str, Any]]:
    """The hardware class the engine was built for (agent.engine.hardware_class), from its manifest."""
    if manifest is None:
        return None
    try:
        return manifest_class(manifest).to_dict()
    except SpecError:
        return None


def _list(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entries = [e.summary() for e in cache.entries()]
    if args.json:
        print_json(entries)
        return 0
    print_table(
        ("key", "status", "backend", "precision", "target", "MB", "built", "pinned"),
        [(e["key"], e["status"], e["backend"], e["precision"], e["target"], f"{e['size_bytes'] / 2**20:.1f}", e["built_at"], ",".join(e["pinned"]))
         for e in entries],
    )
    return 0


def _gc(args: argparse.Namespace) -> int:
    config = load_config(args.config)

    cache = EngineCache.for_state(config.state_dir)
    keep = set(args.keep) | keys_in_state_file(config.state_dir / "state.json")
    if not args.dry_run:
        cache.check_writable()
    result = cache.gc(keep, dry_run=args.dry_run)
    if args.json:
        print_json(result)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    sys.stdout.write(f"{verb} {len(result.removed)} engine(s), {len(result.removed_inputs)} input(s), {result.freed_bytes / 2**20:.1f} MB; "
                     f"kept {len(result.kept)}\n")
    for key in result.removed:
        sys.stdout.write(f"  - {key}\n")
    return 0


# --- diagnose --------------------------------------------------------------------------------------------------


def _diagnose(args: argparse.Namespace) -> int:
    if args.log == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.log).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot read {args.log}: {exc.strerror or exc}") from None
    problems = diagnose_log(text)
    if args.json:
        for problem in problems:  # one JSON object a recognised problem, one a line
            sys.stdout.write(json.dumps(problem.to_dict()) + "\n")
        return 0
    if not problems:
        sys.stdout.write("no known TensorRT problem in this log\n")
        return 0
    print_table(("kind", "runtime", "plan", "what it means"), [(p.kind, p.runtime or "", p.plan or "", p.detail or p.line[:80]) for p in problems])
    decision = decide(problems)
    sys.stdout.write(f"verdict: {decision.reason}\nthe agent would: {decision.action}\n")
    return 0
