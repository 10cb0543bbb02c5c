"""Read edgegen's quantized IR (a QDQ ONNX graph) as a float graph plus int8 annotations.

Every QuantizeLinear -> DequantizeLinear pair around an activation becomes the activation's
QParams; every DequantizeLinear of an initializer becomes a quantized constant (int8 weights,
int32 biases) whose float value is also kept. The Q/DQ nodes themselves disappear. No scale is
invented here: each one comes from the graph. uint8 grids (U8S8 graphs) are shifted to int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedOpError
from ...passes.qdq import links
from .flatbuffer import QParams

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class QConst:
    """A quantized constant: stored integers and their grid (axis is the ONNX axis)."""

    data: np.ndarray
    params: QParams


@dataclass
class QuantInfo:
    """The int8 annotations of a QDQ graph."""

    activations: dict[str, QParams] = field(default_factory=dict)
    constants: dict[str, QConst] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.activations or self.constants)


def strip(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], outputs: list[str]
          ) -> tuple[list[onnx.NodeProto], QuantInfo]:
    """Remove Q/DQ nodes, annotating tensors and constants; consts gains dequantized values."""
    info = QuantInfo()
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {out: node for node in nodes for out in node.output}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dropped: set[int] = set()
    rename: dict[str, str] = {}
    for node in nodes:
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            params = _params(node, consts)
            data = _to_int8_grid(consts[node.input[0]])
            info.constants[node.output[0]] = QConst(data, params)
            consts[node.output[0]] = _dequantize(data, params)
            dropped.add(id(node))
        elif node.op_type == "QuantizeLinear":
            params = _params(node, consts)
            if not params.per_tensor:
                raise UnsupportedOpError(f"node {node.name!r} (op QuantizeLinear) quantizes an activation per "
                                         "channel; the TFLite lowering takes per-tensor activation grids only")
            dequants = consumers.get(node.output[0], [])
            if not dequants or any(d.op_type != "DequantizeLinear" or _params(d, consts) != params for d in dequants):
                raise UnsupportedOpError(f"node {node.name!r} (op QuantizeLinear): its output must feed only "
                                         "DequantizeLinear nodes with the same scale and zero point (QDQ form)")
            source = node.input[0]
            dropped.add(id(node))
            for dq in dequants:
                dropped.add(id(dq))
                rename[dq.output[0]] = source
            info.activations.setdefault(source, params)
        elif node.op_type == "DequantizeLinear":
            producer = producers.get(node.input[0])
            if producer is None or producer.op_type != "QuantizeLinear":
                raise UnsupportedOpError(f"node {node.name!r} (op DequantizeLinear) dequantizes "
                                         f"{node.input[0]!r}, which is neither a constant nor a QuantizeLinear "
                                         "output (QDQ form expected)")
    kept = [n for n in nodes if id(n) not in dropped]
    _apply(kept, rename, set(outputs), info)
    return kept, info


def _apply(nodes: list[onnx.NodeProto], rename: dict[str, str], outputs: set[str], info: QuantInfo) -> None:
    """Point consumers of each DQ output at the quantized source; a graph output keeps its name,
    so there the source is renamed instead."""
    reverse = {src: dq for dq, src in rename.items() if dq in outputs}
    for node in nodes:
        for i, name in enumerate(node.input):
            target = rename.get(name, name)
            node.input[i] = reverse.get(target, target)
        for i, name in enumerate(node.output):
            node.output[i] = reverse.get(name, name)
    for src, dq in reverse.items():
        if src in info.activations:
            info.activations[dq] = info.activations.pop(src)


def _params(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> QParams:
    if node.input[1] not in consts or (len(node.input) > 2 and node.input[2] and node.input[2] not in consts):
        raise UnsupportedOpError(f"node {node.name!r} (op {node.op_type}): scale and zero point must be constants")
    scale = consts[node.input[1]]
    zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int8)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "block_size" in attrs and attrs["block_size"]:
        raise UnsupportedOpError(f"node {node.name!r} (op {node.op_type}): blocked quantization is not supported")
    zero = _to_int8_grid(np.asarray(zero))
    return QParams.of(scale, zero, attrs.get("axis", 1) if np.size(scale) > 1 else 0)


def _to_int8_grid(data: np.ndarray) -> np.ndarray:
    """uint8 values as the same grid in int8 (q - 128); int8 and int32 unchanged."""
    if data.dtype == np.uint8:
        return (data.astype(np.int16) - 128).astype(np.int8)
    if data.dtype not in (np.int8, np.int32):
        raise UnsupportedOpError(f"quantized constants of type {data.dtype} are not supported (int8, uint8, int32)")
    return data


def _dequantize(data: np.ndarray, params: QParams) -> np.ndarray:
    scale = np.asarray(params.scale, np.float32)
    zero = np.asarray(params.zero_point, np.float32)
    if not params.per_tensor:
        shape = [1] * data.ndim
        shape[params.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((data.astype(np.float32) - zero) * scale).astype(np.float32)


def with_fixed_grids(model: onnx.ModelProto, grids: dict[str, QParams]) -> onnx.ModelProto:
    """The QDQ graph with each op of `grids` (ONNX op type -> TFLite's fixed int8 output grid) whose input is
    on an int8 grid writing that grid, as the lowering runs it: in place of the grid the QDQ graph gave its
    output, or of none (a layer the graph kept float there still runs int8 on LiteRT)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    producers, consumers = links(graph)
    outputs = {o.name for o in graph.output}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        grid = grids.get(node.op_type)
        source = producers.get(node.input[0]) if node.input else None
        if grid is None or source is None or source.op_type != "DequantizeLinear":
            continue
        scale, zero = f"{node.output[0]}/fixed_scale", f"{node.output[0]}/fixed_zero_point"
        graph.initializer.extend([helper.make_tensor(scale, onnx.TensorProto.FLOAT, [], [grid.scale[0]]),
                                  helper.make_tensor(zero, onnx.TensorProto.INT8, [], [grid.zero_point[0]])])
        readers = consumers.get(node.output[0], [])
        if readers and node.output[0] not in outputs and all(r.op_type == "QuantizeLinear" for r in readers):
            for quantize in readers:  # onto the fixed grid, and so are their DequantizeLinear readers
                for reader in [quantize, *consumers.get(quantize.output[0], [])]:
                    reader.input[1:3] = [scale, zero]
            continue
        rounded = node.output[0]
        node.output[0] = f"{rounded}/unrounded"
        nodes += [helper.make_node("QuantizeLinear", [node.output[0], scale, zero], [f"{rounded}/fixed_grid"]),
                  helper.make_node("DequantizeLinear", [f"{rounded}/fixed_grid", scale, zero], [rounded])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
