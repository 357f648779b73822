"""The onnxruntime backend's "build": the same path as TensorRT's, so the whole flow runs without a GPU.

For INT8 the table becomes an explicitly quantized (Q/DQ) model (agent.calib.qdq): onnxruntime's own flavour
where onnxruntime >= 1.20 has it, else the TensorRT flavour (correct on onnxruntime, slower), with the reason
recorded. Then a session optimizes the graph and writes it (`SessionOptions.optimized_model_filepath`); that
optimized model is the cached artifact, loaded on later starts without quantizing or optimizing again.

The saved model uses ORT_ENABLE_EXTENDED: the level above it (layout transforms such as NCHWc) is specific to the
CPU that ran it, and onnxruntime warns against saving it. Runners re-apply that last level when they load.
Runs inside the build worker (agent.engine.worker), never in the daemon.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

from agent.calib.qdq import FLAVOR_ONNXRUNTIME, FLAVOR_TENSORRT, ort_flavor_supported, to_qdq
from agent.calib.routes import choose_int8_route
from agent.calib.table import read_table
from agent.engine.build_job import BuildJob, Emit, WorkerError
from agent.engine.diagnose import diagnose_log
from agent.engine.report import report_from_onnx
from agent.engine.spec import BuildSpec, Precision
from agent.lazy import require

SAVE_LEVEL = "ORT_ENABLE_EXTENDED"


def runtime_version() -> str:
    return str(require("onnxruntime", "the onnxruntime backend").__version__)


def build(job: BuildJob, emit: Emit) -> Dict[str, Any]:
    ort = require("onnxruntime", "the onnxruntime backend")
    onnx = require("onnx", "the onnxruntime backend")
    spec = BuildSpec.from_dict(job.spec)
    started = time.monotonic()
    notes: List[str] = []
    emit("load", 0.05, "reading the model")
    try:
        model = onnx.load(job.model)
    except Exception as exc:
        raise WorkerError(f"the model is not a readable ONNX file: {exc}") from None
    int8: Dict[str, Any] = {}
    skipped: List[str] = []
    if spec.effective_precision() == Precision.INT8:
        model, int8, skipped = _quantize(model, job, emit, str(ort.__version__))
        notes.extend(int8.get("notes", []))
    emit("optimize", 0.5, f"optimizing with onnxruntime {ort.__version__}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SAVE_LEVEL)
    options.optimized_model_filepath = str(job.engine_path)
    options.intra_op_num_threads = max(1, int(job.threads or 1))
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        problems = diagnose_log(str(exc))  # an operator onnxruntime has no kernel for is named, not a generic error
        kind = problems[0].kind if problems and problems[0].kind != "unknown" else "failed"
        raise WorkerError(f"onnxruntime cannot build a session for this model: {_first_line(exc)}", kind, [p.to_dict() for p in problems]) from None
    if not job.engine_path.is_file():
        raise WorkerError("onnxruntime did not write the optimized model")
    emit("verify", 0.85, "loading the optimized model and running it once")
    _trial_run(ort, str(job.engine_path), spec)
    report = report_from_onnx(onnx.load(str(job.engine_path), load_external_data=False), skipped, time.monotonic() - started)
    emit("done", 1.0, "built")
    return {"backend_version": str(ort.__version__), "report": report.to_dict(), "int8": int8, "notes": notes}


def _quantize(model: Any, job: BuildJob, emit: Emit, ort_version: str) -> Any:
    if not job.calib:
        raise WorkerError("INT8 needs the calibration table, and the job has none")
    route = choose_int8_route(None, "cpu")
    flavor = FLAVOR_ONNXRUNTIME
    notes: List[str] = []
    if not ort_flavor_supported(ort_version):
        flavor = FLAVOR_TENSORRT
        notes.append(
            f"onnxruntime {ort_version} < 1.20 lacks what the onnxruntime Q/DQ flavour needs: used the TensorRT flavour, "
            "which onnxruntime runs correctly but more slowly"
        )
    emit("quantize", 0.15, f"applying the calibration table as Q/DQ ({flavor} flavour)")
    table = read_table(job.calib)
    result = to_qdq(model, table, flavor)
    notes.extend(result.notes)
    int8 = {"route": route.method.value, "reason": route.reason, "flavor": flavor, "quantized_nodes": result.quantized_nodes, "notes": notes}
    return result.model, int8, list(result.skipped)


def _trial_run(ort: Any, path: str, spec: BuildSpec) -> None:
    """Load what was written and run it once on zeros: a saved model that does not load must not be cached."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        feed: Dict[str, Any] = {}
        for tensor in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else (spec.batch.opt if i == 0 else 1) for i, d in enumerate(tensor.shape)]
            dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                     "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}.get(tensor.type, np.float32)
            feed[tensor.name] = np.zeros(shape, dtype=dtype)
        session.run(None, feed)
    except Exception as exc:
        raise WorkerError(f"the optimized model does not run: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
