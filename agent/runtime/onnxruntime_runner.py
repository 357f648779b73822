"""The onnxruntime (CPU) runner: the product's CPU backend and the vehicle that runs the pipeline in tests.

One session, sequential execution, a fixed intra-op thread budget. Spinning of the intra-op threads is off by
default: the runner always shares the cores with capture and preprocessing threads, and spinning threads steal
the time those need (measured on 2 cores: pipeline throughput 215 fps without spinning, 178 with).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple, Union

from agent.lazy import deferred, require
from agent.runtime.base import Dim, Runner, RunnerError, TensorSpec

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

log = logging.getLogger(__name__)

# onnxruntime's type strings -> numpy dtype names
ORT_TYPES: Dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def numpy_dtype_of(ort_type: str) -> str:
    """'tensor(float)' -> 'float32'; an unknown type keeps its text so the error names it."""
    return ORT_TYPES.get(ort_type, ort_type)


def spec_dims(shape: Any) -> Tuple[Dim, ...]:
    """onnxruntime's shape (ints, symbolic names, None) -> TensorSpec dims; every dynamic dim becomes a str."""
    dims: List[Dim] = []
    for index, dim in enumerate(shape or ()):
        if (isinstance(dim, int) and dim >= 0) or (isinstance(dim, str) and dim):
            dims.append(dim)
        else:
            dims.append(f"dim{index}")
    return tuple(dims)


class OnnxRuntimeRunner(Runner):
    """`OnnxRuntimeRunner("model.onnx", threads=2)`; `with runner: runner.infer({"input": x})`."""

    backend = "onnxruntime"

    def __init__(self, model_path: Union[str, Path], threads: int = 0, name: str = "", *, spin: bool = False) -> None:
        super().__init__(name or Path(model_path).name)
        if threads < 0:
            raise RunnerError(f"threads must be 0 (library default) or positive, got {threads}")
        self.model_path = Path(model_path)
        self.threads = threads
        self.spin = spin
        self.max_batch: Optional[int] = None  # None: any batch the model's dims allow
        self._session: Any = None
        self._output_names: List[str] = []

    def _activate(self) -> None:
        ort = require("onnxruntime", "the onnxruntime backend")
        if not self.model_path.is_file():
            raise RunnerError(f"model file not found: {self.model_path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        options.log_severity_level = 3  # errors only: onnxruntime's warnings about unused initialisers are noise
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise RunnerError(f"onnxruntime cannot load {self.model_path}: {_short(exc)}") from None
        self._session = session
        self.inputs = [TensorSpec(i.name, spec_dims(i.shape), numpy_dtype_of(i.type)) for i in session.get_inputs()]
        self.outputs = [TensorSpec(o.name, spec_dims(o.shape), numpy_dtype_of(o.type)) for o in session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        first = self.inputs[0].shape if self.inputs else ()
        self.max_batch = first[0] if first and isinstance(first[0], int) else None
        log.info("onnxruntime %s: %s, %d intra-op threads", ort.__version__, self.model_path.name, self.threads)

    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        inputs: Dict[str, np.ndarray] = {}
        for spec in self.inputs:
            array = feed[spec.name]
            if array.dtype.name != spec.dtype:
                raise RunnerError(f"runner {self.name}: input '{spec.name}' is {array.dtype.name}, the model takes {spec.dtype}")
            inputs[spec.name] = array
        try:
            values = self._session.run(self._output_names, inputs)
        except Exception as exc:
            raise RunnerError(f"runner {self.name}: onnxruntime failed: {_short(exc)}") from None
        return dict(zip(self._output_names, values))

    def _deactivate(self) -> None:
        self._session = None


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
