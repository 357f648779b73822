"""The TensorRT runner: a serialized plan, page-locked host buffers, device buffers, one stream, async copies.

Thin on purpose: every decision (which execution API, which numpy type, how shapes become specs) is a plain
function above the class, tested without TensorRT. `tensorrt` and `pycuda` are imported lazily on activate().

One execution API, the name-based one of TensorRT 8.5 and later: `set_input_shape`, `set_tensor_address` for
every I/O tensor, then `execute_async_v3(stream)`. It is the only one from 10.0 on, and the project supports
TensorRT 8.5 and up, so an older TensorRT is refused with the reason (`check_supported_version`). The bindings
of every TensorRT on PyPI (8.6 to 11.4) have each name used here: docs/hardware/trt-api-matrix.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from agent.device.versions import VersionError, parse_version
from agent.lazy import deferred, require
from agent.runtime.base import Dim, Runner, RunnerError, TensorSpec
from agent.runtime.cuda_buffers import CudaContext, HostDeviceBuffer

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) type-check this module; the real module loads on activate()
    import tensorrt as trt  # type: ignore[import-untyped]  # the stubs need a patched copy to parse; see docs/camera.md

log = logging.getLogger(__name__)

OLDEST_SUPPORTED: Tuple[int, int, int] = (8, 5, 0)  # name-based tensors and execute_async_v3 start here


def check_supported_version(trt_version: str) -> Tuple[int, int, int]:
    """The parsed version of a TensorRT the runner can drive ('8.5.2.2', '10.3.0.30'), or a RunnerError that
    says why not (unreadable, or older than 8.5: JetPack 4.x and 5.0 ship those)."""
    try:
        version = parse_version(trt_version)
    except VersionError as exc:
        raise RunnerError(f"cannot read the TensorRT version: {exc}") from None
    if version < OLDEST_SUPPORTED:
        raise RunnerError(
            f"TensorRT {trt_version} is older than 8.5, the oldest this agent supports (name-based tensors and "
            "execute_async_v3): upgrade to JetPack 5.1 or later, or run the model with the onnxruntime backend"
        )
    return version


# TensorRT DataType member names -> numpy dtype names, for the types a host buffer can hold
TRT_TO_NUMPY: Dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def numpy_dtype_for(trt_type_name: str) -> str:
    """'FLOAT' (or 'DataType.FLOAT') -> 'float32'; types numpy cannot hold (BF16, FP8, INT4, FP4) are an error."""
    name = trt_type_name.rsplit(".", 1)[-1].upper()
    if name not in TRT_TO_NUMPY:
        raise RunnerError(f"engine I/O type {name} has no numpy equivalent; rebuild the engine with float32/float16 I/O")
    return TRT_TO_NUMPY[name]


def spec_shape(dims: Sequence[int], profile: Optional[Tuple[Sequence[int], Sequence[int]]] = None) -> Tuple[Dim, ...]:
    """Engine dims (-1 dynamic) -> TensorSpec dims: a dynamic dim becomes 'min..max' from the optimisation
    profile when known, else 'dynamic'."""
    out: List[Dim] = []
    for index, dim in enumerate(dims):
        if dim >= 0:
            out.append(int(dim))
        elif profile is not None:
            low, high = profile
            out.append(f"{int(low[index])}..{int(high[index])}")
        else:
            out.append("dynamic")
    return tuple(out)


def profile_max_batch(spec: TensorSpec) -> Optional[int]:
    """The largest batch an input takes: its fixed first dim, the top of a 'min..max' range, or None."""
    if not spec.shape:
        return None
    first = spec.shape[0]
    if isinstance(first, int):
        return first
    if isinstance(first, str) and ".." in first:
        try:
            return int(first.split("..", 1)[1])
        except ValueError:
            return None
    return None


def dims_of(dims: Any) -> List[int]:
    """A TensorRT Dims (indexable, not iterable in the stubs) or any sequence -> a list of ints."""
    return [int(dims[i]) for i in range(len(dims))]


@dataclass
class IoTensor:
    name: str
    index: int  # I/O tensor index
    is_input: bool
    dtype: str
    spec: TensorSpec


class TensorRTRunner(Runner):
    """`TensorRTRunner("model.plan", dla_core=None)`; the plan must come from this device's TensorRT."""

    backend = "tensorrt"

    def __init__(self, plan_path: Union[str, Path], dla_core: Optional[int] = None, name: str = "", device_index: int = 0) -> None:
        super().__init__(name or Path(plan_path).name)
        self.plan_path = Path(plan_path)
        self.dla_core = dla_core
        self.device_index = device_index
        self.max_batch: Optional[int] = None
        self._cuda: Optional[CudaContext] = None
        self._logger: Optional[trt.Logger] = None  # the logger and runtime must outlive the engine
        self._runtime: Optional[trt.Runtime] = None
        self._engine: Optional[trt.ICudaEngine] = None
        self._context: Optional[trt.IExecutionContext] = None
        self._stream: Any = None
        self._io: List[IoTensor] = []
        self._buffers: Dict[str, HostDeviceBuffer] = {}
        self._input_shapes: Dict[str, Tuple[int, ...]] = {}

    # lifecycle ------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt_module = require("tensorrt", "the TensorRT runner")
        if not self.plan_path.is_file():
            raise RunnerError(f"engine plan not found: {self.plan_path}")
        plan = self.plan_path.read_bytes()
        check_supported_version(str(trt_module.__version__))
        self._cuda = CudaContext(self.device_index)
        try:
            with self._cuda.active():
                self._load(trt_module, plan)
        except BaseException:
            self._release()  # a plan that does not load must not leave the CUDA context or buffers behind
            raise
        self.inputs = [io.spec for io in self._io if io.is_input]
        self.outputs = [io.spec for io in self._io if not io.is_input]
        self.max_batch = profile_max_batch(self.inputs[0]) if self.inputs else None
        log.info("TensorRT %s: %s (dla_core=%s)", trt_module.__version__, self.plan_path.name, self.dla_core)

    def _load(self, trt_module: Any, plan: bytes) -> None:
        """Deserialize the plan and describe its I/O; the CUDA context is current."""
        if self._cuda is None:
            raise RunnerError(f"runner {self.name}: no CUDA context")
        self._logger = trt_module.Logger(trt_module.Logger.WARNING)
        runtime: trt.Runtime = trt_module.Runtime(self._logger)
        self._runtime = runtime
        if self.dla_core is not None:
            available = int(runtime.num_DLA_cores)
            if not 0 <= self.dla_core < available:
                raise RunnerError(f"DLA core {self.dla_core} requested, this device has {available} DLA core(s)")
            runtime.DLA_core = self.dla_core
        engine: Optional[trt.ICudaEngine] = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise RunnerError(
                f"TensorRT {trt_module.__version__} could not load {self.plan_path.name}: the plan was built by another "
                "TensorRT version, for another GPU or DLA core, or is damaged; rebuild it on this device"
            )
        self._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise RunnerError(f"TensorRT could not create an execution context for {self.plan_path.name} (out of GPU memory?)")
        self._context = context
        self._io = self._describe(engine)
        self._stream = self._cuda.stream()

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free buffers, then context, engine, runtime (in that order), then the CUDA context."""
        if self._cuda is not None:
            with self._cuda.active():
                for buffer in self._buffers.values():
                    buffer.free()
                self._buffers.clear()
                self._context = None
                self._engine = None
                self._runtime = None
                self._stream = None
            self._cuda.release()
        self._cuda = None
        self._logger = None
        self._io = []
        self._input_shapes.clear()

    # inference ------------------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._cuda is None or self._context is None:
            raise RunnerError(f"runner {self.name} is not active")
        with self._cuda.active() as cuda:
            for io in self._io:
                if io.is_input:
                    array = np.ascontiguousarray(feed[io.name])
                    if array.dtype.name != io.dtype:
                        raise RunnerError(f"runner {self.name}: input '{io.name}' is {array.dtype.name}, the engine takes {io.dtype}")
                    self._set_input_shape(io, tuple(int(d) for d in array.shape))
                    self._buffer(cuda, io.name, array.nbytes).upload(cuda, array, self._stream)
            out_shapes: Dict[str, Tuple[int, ...]] = {}
            for io in self._io:
                if not io.is_input:
                    shape = self._output_shape(io)
                    out_shapes[io.name] = shape
                    self._buffer(cuda, io.name, int(np.prod(shape, dtype=np.int64)) * np.dtype(io.dtype).itemsize)
            self._execute()
            views = {name: self._buffers[name].download(cuda, shape, self._io_by_name(name).dtype, self._stream) for name, shape in out_shapes.items()}
            self._stream.synchronize()
            return {name: view.copy() for name, view in views.items()}  # the pinned buffers are reused next call

    def _active_context(self) -> trt.IExecutionContext:
        if self._context is None:
            raise RunnerError(f"runner {self.name} is not active")
        return self._context

    def _buffer(self, cuda: Any, name: str, nbytes: int) -> HostDeviceBuffer:
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = HostDeviceBuffer.allocate(cuda, name, nbytes)
            self._buffers[name] = buffer
        else:
            buffer.ensure(cuda, nbytes)
        return buffer

    def _io_by_name(self, name: str) -> IoTensor:
        for io in self._io:
            if io.name == name:
                return io
        raise RunnerError(f"runner {self.name}: no I/O tensor named '{name}'")

    # the name-based execution API (TensorRT 8.5+) ------------------------------------------------------------
    def _describe(self, engine: trt.ICudaEngine) -> List[IoTensor]:
        trt_module = require("tensorrt", "the TensorRT runner")
        tensors: List[IoTensor] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt_module.TensorIOMode.INPUT
            dtype = numpy_dtype_for(engine.get_tensor_dtype(name).name)
            dims = dims_of(engine.get_tensor_shape(name))
            profile: Optional[Tuple[Sequence[int], Sequence[int]]] = None
            if is_input and any(d < 0 for d in dims) and engine.num_optimization_profiles > 0:
                low, _opt, high = engine.get_tensor_profile_shape(name, 0)
                profile = (dims_of(low), dims_of(high))
            tensors.append(IoTensor(name, index, is_input, dtype, TensorSpec(name, spec_shape(dims, profile), dtype)))
        return tensors

    def _set_input_shape(self, io: IoTensor, shape: Tuple[int, ...]) -> None:
        if self._input_shapes.get(io.name) == shape:
            return
        if not self._active_context().set_input_shape(io.name, shape):
            raise RunnerError(f"runner {self.name}: the engine does not take shape {shape} for '{io.name}' (its profile: {io.spec.shape})")
        self._input_shapes[io.name] = shape

    def _output_shape(self, io: IoTensor) -> Tuple[int, ...]:
        dims = dims_of(self._active_context().get_tensor_shape(io.name))
        if any(d < 0 for d in dims):
            raise RunnerError(f"runner {self.name}: output '{io.name}' shape {dims} is unresolved after setting the input shapes")
        return tuple(dims)

    def _execute(self) -> None:
        context = self._active_context()
        stream_handle = int(self._stream.handle)
        for io in self._io:  # every I/O tensor needs an address before execute_async_v3
            if not context.set_tensor_address(io.name, self._buffers[io.name].device_ptr):
                raise RunnerError(f"runner {self.name}: TensorRT refused the address of '{io.name}'")
        if not context.execute_async_v3(stream_handle):
            raise RunnerError(f"runner {self.name}: TensorRT execution failed (see the TensorRT log above)")
