"""What a calibration table means inside an ONNX graph: which tensors are network activations, which of them
feed a layer that INT8 would quantize, and where residual skips are. Shared by check, to-qdq and make.

The quantization points follow NVIDIA's placement (ModelOpt, TensorRT's explicit-quantization guide): the
activation inputs of Conv / ConvTranspose / Gemm / MatMul and of pooling, plus the skip input of a residual Add
(the other input comes straight from a Conv and stays float so TensorRT fuses Conv+Add).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

from agent.calib.table import CalibError

if TYPE_CHECKING:
    import onnx

# op type -> input positions that carry activations (initializers at these positions are weights, not activations)
ACTIVATION_INPUTS: Dict[str, Tuple[int, ...]] = {
    "Conv": (0,),
    "ConvTranspose": (0,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "AveragePool": (0,),
    "GlobalAveragePool": (0,),
    "MaxPool": (0,),
}
# op type -> input positions whose initializers are weights quantized per channel
WEIGHT_INPUTS: Dict[str, Tuple[int, ...]] = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
WEIGHTED_OPS = frozenset(WEIGHT_INPUTS)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul"})

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10
FLOAT_TYPES = frozenset({FLOAT, FLOAT16})


@dataclass
class GraphIndex:
    """Lookups over one (shape-inferred) ONNX graph; built once, read many times."""

    model: onnx.ModelProto
    initializers: Set[str]
    producer: Dict[str, onnx.NodeProto]
    consumers: Dict[str, List[onnx.NodeProto]]
    elem_type: Dict[str, int]  # tensor -> onnx elem type, where known
    graph_inputs: List[str]  # real inputs (not initializers listed as inputs)
    graph_outputs: List[str]
    network_tensors: List[str] = field(default_factory=list)  # float graph inputs and float node outputs, graph order

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name, FLOAT) in FLOAT_TYPES  # unknown type: assume float (most activations are)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or (name in self.producer and self.producer[name].op_type == "Constant")


def node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with value_info filled by onnx shape inference, or unchanged where inference fails."""
    import onnx  # heavy (protobuf): imported only where a model is read or written

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a best effort: custom ops and odd exports make it raise anything
        return model


def index_graph(model: onnx.ModelProto, infer: bool = True) -> GraphIndex:
    typed = infer_types(model) if infer else model
    graph = typed.graph
    initializers = {init.name for init in graph.initializer}
    producer: Dict[str, onnx.NodeProto] = {}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for out in node.output:
            if out:
                producer[out] = node
        for inp in node.input:
            if inp:
                consumers.setdefault(inp, []).append(node)
    elem_type: Dict[str, int] = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            elem_type[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        elem_type[init.name] = init.data_type
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    index = GraphIndex(
        model=typed,
        initializers=initializers,
        producer=producer,
        consumers=consumers,
        elem_type=elem_type,
        graph_inputs=graph_inputs,
        graph_outputs=[o.name for o in graph.output],
    )
    tensors = [name for name in graph_inputs if index.is_float(name)]
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        tensors.extend(out for out in node.output if out and out not in initializers and index.is_float(out))
    index.network_tensors = tensors
    return index


SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # their outputs depend on the input's shape, never on its values


def input_independent_tensors(index: GraphIndex) -> Set[str]:
    """Network tensors whose values cannot depend on the frames: computed from constants and from shapes only
    (YOLOv8's anchor grid: Shape -> ConstantOfShape -> Range ...). TensorRT folds or ignores them; calibrating them
    tells nothing, and an all-zero one (ConstantOfShape) would read as a dead branch. Conservative: a node with a
    subgraph attribute (If, Loop, Scan) counts as depending on the input."""
    dependent: Set[str] = set(index.graph_inputs)
    for node in index.model.graph.node:  # ONNX requires graph order to be topological
        if node.op_type in SHAPE_ONLY_OPS:
            continue
        has_subgraph = any(attr.type in (5, 10) for attr in node.attribute)  # GRAPH, GRAPHS
        if has_subgraph or any(name in dependent for name in node.input if name):
            dependent.update(out for out in node.output if out)
    return {name for name in index.network_tensors if name not in dependent}


def activation_positions(node: onnx.NodeProto, index: GraphIndex) -> List[int]:
    """Input positions of `node` that a Q/DQ placement quantizes as activations."""
    if node.op_type in ACTIVATION_INPUTS:
        return [
            i for i in ACTIVATION_INPUTS[node.op_type] if i < len(node.input) and node.input[i] and not index.is_constant(node.input[i])
        ]
    skip = residual_skip_position(node, index)
    return [] if skip is None else [skip]


def residual_skip_position(node: onnx.NodeProto, index: GraphIndex) -> Optional[int]:
    """For an Add where exactly one input is the single-use output of a Conv/Gemm/MatMul, the other (skip) input."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    fusible = [
        name in index.producer and index.producer[name].op_type in WEIGHTED_OPS and len(index.consumers.get(name, [])) == 1
        for name in node.input
    ]
    if sum(fusible) != 1:
        return None
    skip = fusible.index(False)
    return None if index.is_constant(node.input[skip]) else skip


def quantization_points(index: GraphIndex) -> List[Tuple[onnx.NodeProto, List[str]]]:
    """(node, activation tensors that must have a scale for the node to run INT8), in graph order."""
    points = []
    for node in index.model.graph.node:
        positions = activation_positions(node, index)
        if positions:
            points.append((node, [node.input[i] for i in positions]))
    return points


def require_plain_float_model(model: onnx.ModelProto, what: str) -> None:
    """Refuse models that are already quantized: a second set of Q/DQ on top is never what was meant."""
    found = sorted({node.op_type for node in model.graph.node if node.op_type in QDQ_OPS})
    if found:
        raise CalibError(f"{what}: the model is already quantized ({', '.join(found)} present); start from the float ONNX export")


def model_float_type(model: onnx.ModelProto) -> str:
    """The float type a strongly typed TensorRT network would take from this model: "float16" when its float
    weights and float graph inputs are all FP16, "float32" when all FP32, "mixed" otherwise (an FP32 model with
    FP16 parts, or the reverse); "float32" for a model without float tensors at all."""
    types = {t.data_type for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
    types.update(i.type.tensor_type.elem_type for i in model.graph.input if i.type.tensor_type.elem_type in FLOAT_TYPES)
    if types == {FLOAT16}:
        return "float16"
    if types <= {FLOAT}:
        return "float32"
    return "mixed"


def is_quantized(model: onnx.ModelProto) -> bool:
    """The model already holds Q/DQ or quantized operators (it cannot take a table's Q/DQ rewrite)."""
    return any(node.op_type in QDQ_OPS for node in model.graph.node)
