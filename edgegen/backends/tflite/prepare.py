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
from .decompose import decompose


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
    # the nodes each fused GELU came from, by its output: {"op", "inputs" (names or constants), "out", "grid"}
    gelu_steps: dict[str, list[dict]] = field(default_factory=dict)

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


def prepare(graph: Graph, fold_batchnorm: bool = True, decompose_ops: bool = True) -> Prepared:
    """Strip Q/DQ, fold constants and shape arithmetic, rewrite ops TFLite has no builtin for
    (`decompose`), fold BatchNormalization into convolutions. The fpga backend turns off the last two:
    it keeps the QDQ graph's rounding after the conv, and its refusals name the model's own ops."""
    model = graph.model
    shapes = graph.concrete_shapes()
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = [_copy(n) for n in model.graph.node]
    for i, node in enumerate(nodes):
        node.name = node.name or f"{node.op_type}_{i}"
    outputs = [s.name for s in graph.outputs]
    quant = qdq.QuantInfo()
    if any(n.op_type in qdq.QDQ_OPS for n in nodes):
        nodes, quant = qdq.strip(nodes, consts, outputs)
    nodes = _fold_constants(nodes, consts, shapes)
    if decompose_ops:
        nodes = decompose(nodes, consts, shapes, graph.opset, quant)
    prepared = Prepared(nodes, consts, quant, shapes, graph.inputs, graph.outputs)
    if fold_batchnorm:
        _fold_batchnorm(prepared)
    _fuse_hardswish(prepared)
    _fuse_gelu(prepared)
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
    """BN(conv(x)) -> conv'(x): weights scaled and bias shifted per output channel. (A BatchNorm after a
    Gemm, directly or through a reshape to a map, is folded at import: `edgegen.fold_norm`.)"""
    for bn in [n for n in p.nodes if n.op_type == "BatchNormalization"]:
        if not all(i in p.consts for i in bn.input[1:5]) or any(bn.output[1:]) or not p.single_use(bn.input[0]):
            continue
        gamma, beta, mean, var = (p.consts[i].astype(np.float64) for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + attrs(bn).get("epsilon", 1e-5))
        producer = p.producer(bn.input[0])
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose") or \
                attrs(producer).get("group", 1) != 1 or not _scale_outputs(p, producer, scale, beta - mean * scale):
            continue
        producer.output[0] = bn.output[0]
        p.quant.activations.pop(bn.input[0], None)  # the pre-normalization tensor no longer exists
        p.nodes.remove(bn)
    p.__post_init__()


def _scale_outputs(p: Prepared, node: onnx.NodeProto, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Make node's output o become o * scale + shift per output channel, in its weights and bias.

    int8 weights (symmetric, per output channel) stay int8: the channel's grid absorbs |scale| and
    its integers the sign, so no value is re-rounded."""
    weight = node.input[1]
    if weight not in p.consts:
        return False
    axis = 0 if node.op_type == "Conv" else 1
    w = p.consts[weight].astype(np.float64)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if w.shape[axis] != scale.size or (has_bias and node.input[2] not in p.consts):
        return False
    shape = [1] * w.ndim
    shape[axis] = -1
    new_w, new_b = f"{weight}/bn_folded/{node.name}", f"{node.name}/bias_folded"
    qc = p.quant.constants.get(weight)
    if qc is not None:
        if qc.params.axis % w.ndim != axis or len(qc.params.scale) != scale.size or any(qc.params.zero_point) or \
                (qc.data == np.iinfo(np.int8).min).any():
            return False
        sign = np.where(scale < 0, -1, 1).reshape(shape)
        params = qdq.QParams.of(np.asarray(qc.params.scale) * np.abs(scale), np.zeros(scale.size), qc.params.axis)
        p.quant.constants[new_w] = qdq.QConst((qc.data * sign).astype(np.int8), params)
    bias = p.consts[node.input[2]].astype(np.float64).reshape(-1) if has_bias else np.zeros(scale.size)
    p.consts[new_w] = (w * scale.reshape(shape)).astype(np.float32)
    p.consts[new_b] = (np.broadcast_to(bias, scale.shape) * scale + shift).astype(np.float32)
    node.input[1] = new_w
    if has_bias:
        node.input[2] = new_b
    else:
        node.input.append(new_b)
    return True


def _fuse_hardswish(p: Prepared) -> None:
    """x * HardSigmoid(x) with alpha 1/6, beta 1/2 (how HardSwish is expanded by ONNX Runtime's
    optimizer, e.g. in quant_pre_process) -> HardSwish."""
    for mul in [n for n in p.nodes if n.op_type == "Mul"]:
        for x, gate in (mul.input, reversed(mul.input)):
            hs = p.producer(gate)
            if hs is None or hs.op_type != "HardSigmoid" or hs.input[0] != x or not p.single_use(gate):
                continue
            a = attrs(hs)
            if not (np.isclose(a.get("alpha", 0.2), 1 / 6) and np.isclose(a.get("beta", 0.5), 0.5)):
                continue
            fused = helper.make_node("HardSwish", [x], [mul.output[0]], name=mul.name)
            p.nodes[p.nodes.index(mul)] = fused
            p.nodes.remove(hs)
            break
    p.__post_init__()


def _fuse_gelu(p: Prepared) -> None:
    """x * 0.5 * (1 + erf(x / sqrt 2)), as torch.onnx.export writes exact GELU below opset 20 (Div, Erf,
    Add, then the two Muls by x and by 0.5 in either order, or one Mul by x * 0.5) -> Gelu: TFLite has
    no ERF."""
    for erf in [n for n in p.nodes if n.op_type == "Erf"]:
        chain = _gelu_chain(p, erf)
        if chain is None:
            continue
        x, nodes = chain
        p.gelu_steps[nodes[-1].output[0]] = [_gelu_step(p, node) for node in nodes]
        p.nodes[p.nodes.index(nodes[-1])] = helper.make_node("Gelu", [x], [nodes[-1].output[0]], name=nodes[-1].name)
        for node in nodes[:-1]:
            p.nodes.remove(node)
        p.__post_init__()


def _gelu_step(p: Prepared, node: onnx.NodeProto) -> dict:
    """One node of a fused GELU as the FPGA table replays it: its operands (tensor names, or the constants' values
    as the QDQ graph dequantizes them) and the grid its output is rounded onto (None where it is not)."""
    params = p.quant.activations.get(node.output[0])
    return {"op": node.op_type, "out": node.output[0],
            "inputs": [float(np.ravel(p.consts[i])[0]) if i in p.consts else i for i in node.input],
            "grid": [float(params.scale[0]), int(params.zero_point[0])] if params is not None else None}


def _gelu_chain(p: Prepared, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, [Div (or Mul), Erf, Add, ..., the last Mul]) where erf is the middle of that GELU, else None."""
    scale = p.producer(erf.input[0])
    if scale is None or not (scale.op_type == "Div" and _const_is(p, scale.input[1], np.sqrt(2)) or
                             scale.op_type == "Mul" and any(_const_is(p, i, 1 / np.sqrt(2)) for i in scale.input)):
        return None  # x / sqrt 2, or x * (1 / sqrt 2) as the int8 quantizer writes a division by a constant
    x = next(i for i in scale.input if i not in p.consts)
    nodes = [scale, erf]
    add = _follower(p, erf, "Add")
    if add is None or not _const_is(p, add.input[1] if add.input[0] == erf.output[0] else add.input[0], 1.0):
        return None
    nodes.append(add)
    wanted = {"x", "half"}
    while wanted:
        mul = _follower(p, nodes[-1], "Mul")
        if mul is None:
            return None
        (other,) = [i for i in mul.input if i != nodes[-1].output[0]] or [None]
        half_x = p.producer(other) if other else None
        if other == x and "x" in wanted:
            wanted.discard("x")
        elif other and _const_is(p, other, 0.5) and "half" in wanted:
            wanted.discard("half")
        elif wanted == {"x", "half"} and half_x is not None and half_x.op_type == "Mul" and p.single_use(other) \
                and x in half_x.input and _const_is(p, next(i for i in half_x.input if i != x), 0.5):
            nodes.insert(0, half_x)  # (x * 0.5) * (1 + erf(...))
            wanted.clear()
        else:
            return None
        nodes.append(mul)
    return x, nodes


def _follower(p: Prepared, node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
    """The one consumer of node's output, if it is an `op` and nothing else reads that output."""
    current = node.output[0]
    if not p.single_use(current):
        return None
    (follower,) = p.consumers[current]
    return follower if follower.op_type == op else None


def _const_is(p: Prepared, name: str, value: float) -> bool:
    """Whether tensor `name` is a constant holding `value` (float32 precision) everywhere."""
    array = p.consts.get(name)
    return array is not None and array.size >= 1 and np.allclose(array, value, rtol=1e-6, atol=0)
