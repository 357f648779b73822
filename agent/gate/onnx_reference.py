"""onnxruntime sessions for the gate's own reference work: the FP32 outputs a validation set stores, and the
intermediate tensors the culprit search compares. This is not a serving runner (that is
agent.runtime.onnxruntime_runner); it adds graph outputs and turns graph optimisation off, which a runner must
never do."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from agent.gate.thresholds import GateError
from agent.lazy import deferred, require

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

ModelSource = Union[str, Path, Any]  # a path or an onnx.ModelProto


def load_model(model: ModelSource) -> Any:
    """An onnx.ModelProto from a path (or the proto itself), with a clear error for an unreadable file."""
    onnx = require("onnx", "the accuracy gate")
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise GateError(f"model file not found: {path}")
        try:
            return onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise GateError(f"cannot read ONNX model {path}: {exc}") from None
    return model


def with_all_outputs(model: Any) -> Tuple[Any, List[str]]:
    """A copy of `model` whose every node output is also a graph output (the Polygraphy "mark all" trick);
    returns it and the names added. onnxruntime infers the types of outputs declared by name only.

    Outputs computed from constants only (a weight's DequantizeLinear, a Constant) are not marked: they are no
    activation to compare, and onnxruntime before 1.17 duplicates a per-channel weight DequantizeLinear that is
    also a graph output without its `axis`, then fails ("scale must be 1D tensor with size ...")."""
    onnx = require("onnx", "the accuracy gate")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {output.name for output in copy.graph.output}
    initializers = {init.name for init in copy.graph.initializer}
    constant = set(initializers)
    added: List[str] = []
    for node in copy.graph.node:
        if all(not name or name in constant for name in node.input):
            constant.update(name for name in node.output if name)
            continue
        for name in node.output:
            if name and name not in present and name not in initializers:
                copy.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
                added.append(name)
    return copy, added


class ReferenceSession:
    """One onnxruntime CPU session over a model file or proto; run(feed) -> {output name: array}."""

    def __init__(self, model: ModelSource, optimize: bool = True, threads: int = 0) -> None:
        ort = require("onnxruntime", "the accuracy gate")
        options = ort.SessionOptions()
        if not optimize:  # keep every intermediate tensor as the graph names it
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        source: Any = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            where = model if isinstance(model, (str, Path)) else "model"
            raise GateError(f"onnxruntime cannot load {where}: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_shapes = [tuple(i.shape) for i in self.session.get_inputs()]
        self.input_types = [i.type for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = [tuple(o.shape) for o in self.session.get_outputs()]

    def run(self, feed: Dict[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        try:
            values = self.session.run(names, feed)
        except Exception as exc:
            raise GateError(f"onnxruntime failed on the validation inputs: {exc}") from None
        return dict(zip(names, values))

