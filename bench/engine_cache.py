"""Engine cache: a restart with unchanged inputs reaches a loaded runner in under 5% of a cold build's time.

Both paths are timed in this process, from "the agent wants an engine for this spec" to "an activated runner":

    cold: fingerprint + ensure_engine (cache miss: Q/DQ conversion, optimization and a trial run in a child
          process, manifest, atomic install) + runner activate
    hit:  fingerprint + ensure_engine on a fresh EngineCache object, as after a restart (manifest against the
          device, size and sha256 of the artifact) + runner activate

on EfficientNet-Lite0 with the onnxruntime backend: INT8 through the calibration table when agent.calib.qdq has
to_qdq, else FP32 (said in the output). The runner is agent.runtime.onnxruntime_runner.OnnxRuntimeRunner where it
exists, else a plain onnxruntime.InferenceSession (said in the output). The Python start-up and imports of a real
restart are the same for both paths and are not counted.

    python bench/engine_cache.py [--quick] [--model M.onnx] [--table T.cache] [--target cpu|gpu|dla:N]

The last line: ratio=<hit/cold> hit_s=<median hit> cold_s=<median cold> ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.device.fingerprint import fingerprint  # noqa: E402
from agent.engine.build import BuildOptions, ensure_engine  # noqa: E402
from agent.engine.cache import EngineCache  # noqa: E402
from agent.engine.spec import BuildSpec, Precision  # noqa: E402
from agent.lazy import try_import  # noqa: E402
from agent.store.hashing import sha256_file  # noqa: E402

TARGET_RATIO = 0.05


def shared_models() -> Path:
    env = os.environ.get("EDGE_AGENT_SHARED")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO.parent.parent / "shared"]:
        if (base / "testdata" / "models").is_dir():
            return base / "testdata" / "models"
    raise SystemExit("shared test data not found (../shared/testdata/models); pass --model and --table")


def runner_loader(threads: int) -> Tuple[str, Callable[[Path], Any]]:
    """(name, load(path) -> something to close) for the runner this checkout has."""
    if try_import("agent.runtime.onnxruntime_runner") is not None:
        from agent.runtime.onnxruntime_runner import OnnxRuntimeRunner

        def load_runner(path: Path) -> Any:
            return OnnxRuntimeRunner(path, threads=threads).activate()

        return "OnnxRuntimeRunner", load_runner
    import onnxruntime as ort

    def load_session(path: Path) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    return "onnxruntime.InferenceSession", load_session


def close(runner: Any) -> None:
    if hasattr(runner, "deactivate"):
        runner.deactivate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 cold build, 5 hits (under a minute)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--target", default="cpu", help="cpu (onnxruntime), or gpu / dla:N where TensorRT is installed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    models = None if args.model and args.table else shared_models()
    model = args.model or models / "efficientnet_lite0.onnx"  # type: ignore[operator]
    table = args.table or models / "efficientnet_lite0.cache"  # type: ignore[operator]
    has_qdq = try_import("agent.calib.qdq") is not None and hasattr(try_import("agent.calib.qdq"), "to_qdq")
    precision = Precision.INT8 if has_qdq or args.target != "cpu" else Precision.FP32
    if precision == Precision.FP32:
        print("agent.calib.qdq.to_qdq is missing: benchmarking FP32 (no calibration table applied)")
    spec = BuildSpec(
        model_sha256=sha256_file(model),
        precision=precision,
        target=args.target,
        calib_sha256=sha256_file(table) if precision == Precision.INT8 else None,
    )
    runner_name, load = runner_loader(args.threads)
    colds, hits = (1, 5) if args.quick else (3, 20)
    print(f"model {model.name}, {precision.value}, target {args.target}, runner {runner_name}, {colds} cold build(s), {hits} hits")

    cold_times: List[float] = []
    with tempfile.TemporaryDirectory(prefix="engine-cache-bench-") as work:
        root = Path(work)
        for index in range(colds):
            cache = EngineCache(root / f"cold-{index}" / "engines")
            started = time.perf_counter()
            fp = fingerprint()
            result = ensure_engine(spec, cache, fp, model=model, calib=table if precision == Precision.INT8 else None,
                                   options=BuildOptions(threads=args.threads))
            runner = load(result.path)
            cold_times.append(time.perf_counter() - started)
            close(runner)
            assert not result.cache_hit
            print(f"  cold {index + 1}: {cold_times[-1]:.3f} s (build {result.manifest.build_seconds:.3f} s in the child, "
                  f"int8 {result.manifest.int8.get('flavor', '-')}, {result.report.int8_layers}/{result.report.layers} layers INT8)")
        hit_times: List[float] = []
        cache_root = root / "cold-0" / "engines"
        for _ in range(hits):
            started = time.perf_counter()
            fp = fingerprint()
            result = ensure_engine(spec, EngineCache(cache_root), fp)  # a new cache object: nothing carried in memory
            runner = load(result.path)
            hit_times.append(time.perf_counter() - started)
            close(runner)
            assert result.cache_hit
        engine_mb = result.path.stat().st_size / 2**20
    cold_s = statistics.median(cold_times)
    hit_s = statistics.median(hit_times)
    ratio = hit_s / cold_s
    print(f"  hits: median {hit_s:.4f} s, min {min(hit_times):.4f} s, max {max(hit_times):.4f} s (artifact {engine_mb:.1f} MB, sha256 checked each time)")
    print(f"  target: hit under {TARGET_RATIO:.0%} of a cold build -> {'met' if ratio < TARGET_RATIO else 'NOT met'}")
    print(f"ratio={ratio:.4f} hit_s={hit_s:.4f} cold_s={cold_s:.3f} target_ratio={TARGET_RATIO} backend={spec.backend} "
          f"precision={precision.value} runner={runner_name} model={model.stem}")
    return 0 if ratio < TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
