"""Turn a Graph into what the TFLite lowering walks: nodes without Q/DQ, folded constants
(shape arithmetic at the concrete input shapes included) and BatchNormalization folded into
the convolution before it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph import Graph
from ...specs import TensorSpec
from . import qdq


@dataclass
class Prepared:
    """The graph as the lowering sees it (batch 1, concrete shapes)."""

    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    quant: qdq.QuantInfo
    shapes: dict[str, list[int]]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumers = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.nodes if name in n.output), None)

    def single_use(self, name: str) -> bool:
        """Consumed by exactly one node and not a graph output."""
        return len(self.consumers.get(name, [])) == 1 and name not in {s.name for s in self.outputs}


def attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        out[a.name] = value.decode() if isinstance(value, bytes) else value
    return out


def prepare(graph: Graph) -> Prepared:
    """Strip Q/DQ, fold constants and shape arithmetic, fold BatchNormalization into convolutions."""
    model = graph.model
    shapes = graph.concrete_shapes()
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [_copy(n) for n in model.graph.node]
    outputs = [s.name for s in graph.outputs]
    quant = qdq.QuantInfo()
    if any(n.op_type in qdq.QDQ_OPS for n in nodes):
        nodes, quant = qdq.strip(nodes, consts, outputs)
    nodes = _fold_constants(nodes, consts, shapes)
    prepared = Prepared(nodes, consts, quant, shapes, graph.inputs, graph.outputs)
    _fold_batchnorm(prepared)
    return prepared


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _fold_constants(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray],
                    shapes: dict[str, list[int]]) -> list[onnx.NodeProto]:
    """Evaluate every node whose inputs are all known (Shape nodes from the concrete shapes)."""
    from onnx.reference import ReferenceEvaluator

    kept = []
    for node in nodes:
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" and node.input[0] in shapes:
            a = attrs(node)
            dims = shapes[node.input[0]]
            consts[node.output[0]] = np.array(dims[a.get("start", 0):a.get("end", len(dims))], dtype=np.int64)
            continue
        if node.domain in ("", "ai.onnx") and all(i in consts for i in inputs):
            try:
                values = ReferenceEvaluator(node).run(None, {i: consts[i] for i in inputs})
            except Exception:  # not evaluable here; the op check reports the node if it cannot be lowered
                kept.append(node)
                continue
            consts.update({o: np.asarray(v) for o, v in zip(node.output, values) if o})
            continue
        kept.append(node)
    return kept


def _fold_batchnorm(p: Prepared) -> None:
    """y = BN(conv(x)) -> conv'(x) with scaled weights and shifted bias (float weights only)."""
    for bn in [n for n in p.nodes if n.op_type == "BatchNormalization"]:
        conv = p.producer(bn.input[0])
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose") or not p.single_use(bn.input[0]):
            continue
        weight = conv.input[1]
        if weight not in p.consts or weight in p.quant.constants or not all(i in p.consts for i in bn.input[1:5]) \
                or attrs(conv).get("group", 1) != 1 or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        gamma, beta, mean, var = (p.consts[i].astype(np.float64) for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + attrs(bn).get("epsilon", 1e-5))
        w = p.consts[weight].astype(np.float64)
        axis = 0 if conv.op_type == "Conv" else 1
        shape = [1] * w.ndim
        shape[axis] = -1
        out_channels = w.shape[axis]
        bias = p.consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] \
            else np.zeros(out_channels)
        new_w, new_b = f"{weight}/bn_folded", f"{bn.name}/bias_folded"
        p.consts[new_w] = (w * scale.reshape(shape)).astype(np.float32)
        p.consts[new_b] = ((bias - mean) * scale + beta).astype(np.float32)
        conv.input[1] = new_w
        if len(conv.input) > 2:
            conv.input[2] = new_b
        else:
            conv.input.append(new_b)
        conv.output[0] = bn.output[0]
        p.nodes.remove(bn)
    p.__post_init__()
