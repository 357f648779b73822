"""A calibration table -> an explicitly quantized (QuantizeLinear/DequantizeLinear) ONNX model, in two flavours,
because one file cannot be both (`bench/qdq.py` measures both; calibtables/README.md):

- "tensorrt": NVIDIA's placement, bit-identical to ModelOpt's (`--high_precision_dtype fp32 --dq_only`): int8, zero
  point 0, the table's scale on the activation inputs of Conv/Gemm/MatMul/pooling and on the skip input of residual
  Adds, weights int8 per output channel behind a DequantizeLinear, biases float, nothing between a Conv and its
  activation, nothing on graph outputs. What TensorRT 11 builds (and 8.x/10.x with explicit quantization).
  onnxruntime runs it correctly but slowly (float convolutions with runtime weight dequantization).
- "onnxruntime": onnxruntime's own QDQQuantizer fed with the table's ranges: uint8 activations, lower bounds taken
  from the graph's Relu/Clip (the table stores only |max|, and with asymmetric activations onnxruntime removes
  Relu/Clip and trusts the range to clip), int32 biases. The real INT8 speed-up on the CPU; not TensorRT-legal.
  Needs onnxruntime >= 1.20 (its quantizer's constructor and bias handling changed before that).

A node is quantized only where every activation it quantizes has a usable scale (finite, > 0); the others are
left float and reported in `skipped`, as ModelOpt does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from agent.calib.graph import (
    FLOAT,
    WEIGHT_INPUTS,
    WEIGHTED_OPS,
    GraphIndex,
    activation_positions,
    index_graph,
    infer_types,
    quantization_points,
    require_plain_float_model,
)
from agent.calib.table import CalibError, CalibTable, is_usable_scale
from agent.lazy import deferred, require
from agent.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

if TYPE_CHECKING:
    import onnx

FLAVOR_TENSORRT = "tensorrt"
FLAVOR_ONNXRUNTIME = "onnxruntime"
FLAVORS = (FLAVOR_TENSORRT, FLAVOR_ONNXRUNTIME)
MIN_OPSET = 13  # per-axis DequantizeLinear
ORT_FLAVOR_MIN_VERSION = (1, 20)


@dataclass
class QdqResult:
    model: onnx.ModelProto
    flavor: str
    skipped: List[str]  # activation tensors left float because the table has no usable scale for them
    quantized_nodes: int  # nodes whose inputs now come through Q/DQ
    notes: List[str] = field(default_factory=list)


def to_qdq(model: onnx.ModelProto, table: CalibTable, flavor: str, exclude_op_types: Sequence[str] = ()) -> QdqResult:
    """The explicitly quantized copy of `model` (the argument is not modified). `exclude_op_types` keeps those
    ops float (ModelOpt leaves a batch-1 Gemm float: pass ("Gemm",) for an identical file)."""
    if flavor not in FLAVORS:
        raise CalibError(f"unknown Q/DQ flavour {flavor!r}: use {' or '.join(FLAVORS)}")
    import onnx  # heavy (protobuf): imported only where a model is read or written

    require_plain_float_model(model, "to-qdq")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    notes = _prepare(work)
    scales = {name: scale for name, scale in table.entries.items() if is_usable_scale(scale)}
    if not any(name in scales for name in _tensor_names(work)):
        raise CalibError("no table entry matches a tensor of this model: wrong model, or a renamed export (run 'calib check --model')")
    if flavor == FLAVOR_TENSORRT:
        result = _tensorrt_flavor(work, scales, frozenset(exclude_op_types))
    else:
        result = _onnxruntime_flavor(work, scales, frozenset(exclude_op_types))
    result.notes[:0] = notes
    try:
        onnx.checker.check_model(result.model)
    except onnx.checker.ValidationError as exc:
        raise CalibError(f"the {flavor} Q/DQ model does not pass the ONNX checker: {str(exc).splitlines()[0]}") from None
    return result


# --- shared preparation --------------------------------------------------------------------------------


def write_qdq_model(
    model: onnx.ModelProto, table: CalibTable, flavor: str, output: Union[str, Path], exclude_op_types: Sequence[str] = ()
) -> Tuple[QdqResult, int]:
    """`to_qdq`, written atomically to `output` (`calib to-qdq`, `bench --precision int8`): (the result, bytes written)."""
    result = to_qdq(model, table, flavor, exclude_op_types)
    try:
        data = result.model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise CalibError(f"the quantized model cannot be serialized: {exc}") from None
    atomic_write_bytes(output, data)
    return result, len(data)


def _tensor_names(model: onnx.ModelProto) -> Set[str]:
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(node.output)
    return names


def _prepare(model: onnx.ModelProto) -> List[str]:
    """In place: opset >= 13, Constant nodes as initializers (so weights and Clip bounds are found one way), and
    every node named (onnxruntime's quantizer selects nodes by name)."""
    import onnx  # heavy (protobuf): imported only where a model is read or written
    from onnx import numpy_helper  # heavy (protobuf): imported only where a model is read or written

    notes = []
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise CalibError("the model imports no standard ONNX opset")
    if opset < MIN_OPSET:
        try:
            converted = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported adapters
            raise CalibError(f"the model uses opset {opset}; converting it to {MIN_OPSET} for per-channel Q/DQ failed: {exc}") from None
        model.CopyFrom(converted)
        notes.append(f"opset converted from {opset} to {MIN_OPSET} (per-channel DequantizeLinear needs {MIN_OPSET})")
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and value is not None and node.output[0] not in outputs:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    used: Set[str] = {node.name for node in graph.node if node.name}
    for position, node in enumerate(graph.node):
        if not node.name:
            node.name = _fresh(f"{node.op_type}_{position}", used)
            used.add(node.name)
    return notes


def _fresh(base: str, taken: Set[str]) -> str:
    name, counter = base, 1
    while name in taken:
        counter += 1
        name = f"{base}_{counter}"
    return name


class _Names:
    """Fresh tensor/node/initializer names that collide with nothing in the graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.taken: Set[str] = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)
            self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name = _fresh(re.sub(r"\s+", "_", base), self.taken)
        self.taken.add(name)
        return name


def _skipped_tensors(index: GraphIndex, scales: Dict[str, float], exclude: Iterable[str]) -> List[str]:
    excluded = set(exclude)
    skipped: Dict[str, None] = {}
    for node, tensors in quantization_points(index):
        if node.op_type in excluded:
            continue
        for tensor in tensors:
            if tensor not in scales or index.elem_type.get(tensor, FLOAT) != FLOAT:
                skipped.setdefault(tensor, None)
    return list(skipped)


# --- the TensorRT flavour (ModelOpt's placement) -------------------------------------------------------


def weight_axis(node: onnx.NodeProto, position: int, ndim: int) -> Optional[int]:
    """The output-channel axis of a weight, or None for a per-tensor scale."""
    if ndim < 2:
        return None
    if node.op_type == "ConvTranspose":
        return 1  # [Cin, Cout/group, kH, kW]
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        if position == 1:
            return 0 if attrs.get("transB", 0) else 1  # B is [N, K] when transposed, else [K, N]
        return 1 if attrs.get("transA", 0) else 0
    if node.op_type == "MatMul":
        return ndim - 1 if position == 1 else ndim - 2  # per output column of B, per row of A
    return 0  # Conv: [Cout, Cin/group, kH, kW]


def quantize_weight(weights: np.ndarray, axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per channel: scale = max|W_c| / 127 (1 for an all-zero channel), values clipped to +-127."""
    weights = weights.astype(np.float32)
    if axis is None:
        scale = np.array(np.abs(weights).max() / 127.0 if weights.size else 0.0, np.float32)
        scale = np.array(1.0, np.float32) if scale == 0 else scale
        return np.clip(np.round(weights / scale), -127, 127).astype(np.int8), scale
    reduce = tuple(i for i in range(weights.ndim) if i != axis)
    scale = (np.abs(weights).max(axis=reduce) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * weights.ndim
    shape[axis] = -1
    return np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def _tensorrt_flavor(model: onnx.ModelProto, scales: Dict[str, float], exclude: frozenset) -> QdqResult:
    from onnx import helper, numpy_helper  # heavy (protobuf): imported only where a model is read or written

    model = infer_types(model)
    index = index_graph(model, infer=False)
    skipped = _skipped_tensors(index, scales, exclude)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    fresh = _Names(model)
    new_initializers = []
    after: Dict[str, List[onnx.NodeProto]] = {}  # tensor -> Q/DQ nodes placed right after its producer
    before: Dict[int, List[onnx.NodeProto]] = {}  # id(node) -> weight DQ nodes placed right before it
    activation_dq: Dict[str, str] = {}
    zero_point = fresh("qdq_zero_point_int8")
    new_initializers.append(numpy_helper.from_array(np.zeros((), np.int8), zero_point))

    def dequantized(tensor: str) -> str:
        """One shared Q->DQ pair per activation tensor."""
        if tensor not in activation_dq:
            scale_name = fresh(f"{tensor}_qdq_scale")
            new_initializers.append(numpy_helper.from_array(np.array(scales[tensor], np.float32), scale_name))
            quantized, output = fresh(f"{tensor}_quantized"), fresh(f"{tensor}_dequantized")
            after.setdefault(tensor, []).extend(
                [
                    helper.make_node("QuantizeLinear", [tensor, scale_name, zero_point], [quantized], name=fresh(f"{tensor}_QuantizeLinear")),
                    helper.make_node("DequantizeLinear", [quantized, scale_name, zero_point], [output], name=fresh(f"{tensor}_DequantizeLinear")),
                ]
            )
            activation_dq[tensor] = output
        return activation_dq[tensor]

    def dequantize_weight(node: onnx.NodeProto, position: int) -> None:
        weights = numpy_helper.to_array(initializers[node.input[position]])
        axis = weight_axis(node, position, weights.ndim)
        values, scale = quantize_weight(weights, axis)
        base = f"{node.input[position]}_{node.name}"
        names = fresh(f"{base}_int8"), fresh(f"{base}_w_scale"), fresh(f"{base}_w_zero_point"), fresh(f"{base}_dequantized")
        new_initializers.extend(
            [
                numpy_helper.from_array(values, names[0]),
                numpy_helper.from_array(scale, names[1]),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2]),
            ]
        )
        dq = helper.make_node("DequantizeLinear", list(names[:3]), [names[3]], name=fresh(f"{base}_DequantizeLinear"))
        if axis is not None:
            dq.attribute.append(helper.make_attribute("axis", axis))
        before.setdefault(id(node), []).append(dq)
        node.input[position] = names[3]

    quantized_nodes = 0
    for node in graph.node:
        if node.op_type in exclude:
            continue
        positions = activation_positions(node, index)
        if not positions or any(
            node.input[i] not in scales or index.elem_type.get(node.input[i], FLOAT) != FLOAT for i in positions
        ):
            continue
        for i in positions:
            node.input[i] = dequantized(node.input[i])
        if node.op_type in WEIGHTED_OPS:
            for i in WEIGHT_INPUTS[node.op_type]:
                if i < len(node.input) and node.input[i] in initializers and initializers[node.input[i]].data_type == FLOAT:
                    dequantize_weight(node, i)
        quantized_nodes += 1

    ordered = [dq for name in index.graph_inputs for dq in after.get(name, [])]
    for name in initializers:  # a tensor may be quantized right where it is a constant (rare; keeps order valid)
        ordered.extend(after.get(name, []))
    for node in graph.node:
        ordered.extend(before.get(id(node), []))
        ordered.append(node)
        for out in node.output:
            ordered.extend(after.get(out, []))
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(model, new_initializers)
    return QdqResult(model, FLAVOR_TENSORRT, skipped, quantized_nodes)


def _drop_unused_initializers(model: onnx.ModelProto, added: List[onnx.TensorProto]) -> None:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in list(graph.initializer) + added if init.name in used]
    removed = {init.name for init in graph.initializer} - used
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if removed:  # old exports list initializers as graph inputs too: an unused one would become a required input
        inputs = [i for i in graph.input if i.name not in removed]
        del graph.input[:]
        graph.input.extend(inputs)
        infos = [v for v in graph.value_info if v.name not in removed]
        del graph.value_info[:]
        graph.value_info.extend(infos)


# --- the onnxruntime flavour (onnxruntime's own QDQ placement) -------------------------------------------


def ort_flavor_supported(version: Optional[str]) -> bool:
    if not version:
        return False
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2))) >= ORT_FLAVOR_MIN_VERSION


def require_ort_flavor(version: Optional[str]) -> None:
    if not ort_flavor_supported(version):
        need = ".".join(str(v) for v in ORT_FLAVOR_MIN_VERSION)
        raise CalibError(
            f"the onnxruntime Q/DQ flavour needs onnxruntime >= {need} (found {version or 'none'}; Python 3.8 stops at "
            f"1.19.2): its quantizer's API and int32-bias handling differ before {need}. Upgrade onnxruntime, or use "
            "--flavor tensorrt, which onnxruntime runs correctly but about 2.7x slower than FP32 on the CPU"
        )


def relu_clip_lower_bounds(model: onnx.ModelProto) -> Dict[str, float]:
    """Output tensor -> lower bound for Relu (0) and Clip (its min, from the attribute or the initializer input)."""
    from onnx import numpy_helper  # heavy (protobuf): imported only where a model is read or written

    initializers = {init.name: init for init in model.graph.initializer}
    bounds: Dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "Relu":
            bounds[node.output[0]] = 0.0
        elif node.op_type == "Clip":
            attr = next((a for a in node.attribute if a.name == "min"), None)
            if attr is not None:
                bounds[node.output[0]] = float(attr.f)
            elif len(node.input) > 1 and node.input[1] in initializers:
                bounds[node.output[0]] = float(numpy_helper.to_array(initializers[node.input[1]]).reshape(-1)[0])
    return bounds


def _slow_int8_conv(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """A Conv whose input channels are not a multiple of 4 (the image stem, typically 3 channels): MLAS's symmetric
    int8 convolution kernels need that alignment, and the fallback is about twice as slow as float (measured on
    EfficientNet-Lite0's first layer), so it stays float; keeping the image unquantized also costs no accuracy."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    if next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
        return False
    weight = next((init for init in model.graph.initializer if init.name == node.input[1]), None)
    return weight is not None and len(weight.dims) >= 2 and weight.dims[1] % 4 != 0


def _onnxruntime_flavor(model: onnx.ModelProto, scales: Dict[str, float], exclude: frozenset) -> QdqResult:
    ort = require("onnxruntime", "the onnxruntime Q/DQ flavour")
    require_ort_flavor(getattr(ort, "__version__", None))
    # optional (cpu extra): onnxruntime's Q/DQ placement, imported only when that flavour is asked for
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model = infer_types(model)
    index = index_graph(model, infer=False)
    lower = relu_clip_lower_bounds(model)
    ranges = {}
    for name in index.network_tensors:
        if name in scales and index.elem_type.get(name, FLOAT) == FLOAT:
            amax = float(np.float32(scales[name]) * np.float32(127.0))
            low = min(lower.get(name, -amax), 0.0)
            ranges[name] = TensorData(lowest=np.float32(low), highest=np.float32(amax))
    # The quantizer needs a range for every float activation a quantized node reads or writes: keep the others float.
    excluded = []
    stems = []
    for node in model.graph.node:
        touched = [t for t in list(node.input) + list(node.output) if t and not index.is_constant(t) and index.is_float(t)]
        if node.op_type in exclude or any(t not in ranges for t in touched):
            excluded.append(node.name)
        elif _slow_int8_conv(node, model):
            stems.append(node.name)
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    quantizer = QDQQuantizer(
        model, True, False, QuantType.QInt8, QuantType.QUInt8, TensorsData(CalibrationMethod.MinMax, ranges), [], excluded + stems, op_types, {}
    )
    try:
        quantizer.quantize_model()
    except Exception as exc:  # onnxruntime's quantizer raises ValueError/KeyError/RuntimeError for graphs it cannot handle
        raise CalibError(f"onnxruntime's quantizer failed on this model: {type(exc).__name__}: {exc}") from None
    quantizer.model.topological_sort()  # what onnxruntime's own save_model_to_file does first
    quantized = quantizer.model.model
    dq_outputs = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    count = sum(
        1 for n in quantized.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)
    )
    notes = [f"{len(excluded)} node(s) kept float for lack of a usable range: {', '.join(excluded[:10])}"] if excluded else []
    if stems:
        notes.append(f"kept float, as int8 is slower there on onnxruntime CPU (input channels not a multiple of 4): {', '.join(stems)}")
    return QdqResult(quantized, FLAVOR_ONNXRUNTIME, _skipped_tensors(index, scales, exclude), count, notes)


def describe(result: QdqResult) -> Dict[str, object]:
    """A summary for the CLI: op counts of the quantized model."""
    counts: Dict[str, int] = {}
    for node in result.model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {
        "flavor": result.flavor,
        "quantized_nodes": result.quantized_nodes,
        "skipped": result.skipped,
        "quantize_linear": counts.get("QuantizeLinear", 0),
        "dequantize_linear": counts.get("DequantizeLinear", 0),
        "notes": result.notes,
        "nodes": len(result.model.graph.node),
    }
