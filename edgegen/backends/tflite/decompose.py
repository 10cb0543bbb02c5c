"""ONNX ops with no TFLite builtin of their own, rewritten exactly into ops that have one.

- Split -> one Slice per output (dynamo exports of `torch.chunk` / `split`: gated convs, GLU, IMDN);
- Pow by a constant 2, 3 or 0.5 -> Mul / Sqrt (PixelNorm, hand-written LayerNorm2d, std);
- LayerNormalization -> ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add;
- Softmax -> ReduceMax, Sub, Exp, ReduceSum, Div;
- Reciprocal -> Div of a constant 1 (the dynamo exporter's `torch.rsqrt`);
- Mish -> Softplus, Tanh, Mul and Selu -> Elu, Relu, Mul, Add (the dynamo exporter keeps both as one node);
- a grouped Conv that is not depthwise (CARN, ResNeXt-style blocks) -> one Conv per group on a Slice
  of the input, and Concat.

On int8 the slices keep their input's grid, each group's weights and bias keep their own int8 data
and scales, and each group's conv writes onto the grouped conv's output grid.

Each replacement writes the original node's output under its name, so the QDQ graph's grid for it
(and every consumer) still applies; the new intermediate tensors have no grid and run in float.
New nodes are named after the node they replace, so an op the lowering then refuses still points
at the model's own node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .flatbuffer import QParams
from .qdq import QConst, QuantInfo

POW_EXPONENTS = (0.5, 2.0, 3.0)
SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX's defaults


class _Writer:
    """Collects the nodes, constants and shapes of one node's replacement."""

    def __init__(self, node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, list[int]],
                 quant: QuantInfo):
        self.base = node.name or node.output[0]
        self.consts, self.shapes, self.quant = consts, shapes, quant
        self.nodes: list[onnx.NodeProto] = []

    def const(self, hint: str, value: np.ndarray) -> str:
        name = f"{self.base}/{hint}"
        self.consts[name] = value
        return name

    def const_slice(self, name: str, hint: str, start: int, stop: int) -> str:
        """Rows start:stop (axis 0) of a constant, with its int8 data and scales when quantized."""
        sliced = self.const(hint, self.consts[name][start:stop])
        qc = self.quant.constants.get(name)
        if qc is not None:
            params = qc.params
            if not params.per_tensor:
                params = QParams(params.scale[start:stop], params.zero_point[start:stop], params.axis)
            self.quant.constants[sliced] = QConst(qc.data[start:stop], params)
        return sliced

    def same_grid(self, source: str, name: str) -> None:
        """Give tensor `name` the int8 grid of `source`, if it has one."""
        if source in self.quant.activations:
            self.quant.activations[name] = self.quant.activations[source]

    def op(self, op_type: str, inputs: list[str], hint: str, shape: list[int] | None, output: str | None = None,
           **attributes) -> str:
        out = output or f"{self.base}/{hint}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], f"{self.base}/{hint}", **attributes))
        if shape is not None:
            self.shapes[out] = list(shape)
        return out


def decompose(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], shapes: dict[str, list[int]],
              opset: int, quant: QuantInfo) -> list[onnx.NodeProto]:
    """The nodes with every rewritable Split, Pow, LayerNormalization, Softmax, Reciprocal, Mish, Selu and
    grouped Conv replaced (quant gains the grids of the new tensors that stay int8)."""
    out = []
    for node in nodes:
        rewrite = _REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        replacement = rewrite(_Writer(node, consts, shapes, quant), node, opset) if rewrite else None
        out.extend(replacement if replacement is not None else [node])
    return out


def why_kept(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> str | None:
    """Why `decompose` left a node it rewrites in some forms as it is (no TFLite builtin runs it), for the
    refusal to name; None where the op has no such form or no known reason."""
    if node.op_type == "Pow" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
        return _pow_kept(consts.get(node.input[1]), node.input[1])
    return None


def _pow_kept(exponent: np.ndarray | None, name: str) -> str:
    """Why a Pow with this exponent (None: not a constant) has no TFLite form."""
    values = [f"{e:g}" for e in POW_EXPONENTS]
    lowered = (f"Pow is lowered for a constant exponent of {', '.join(values[:-1])} or {values[-1]} "
               "(as SQRT or products)")
    if exponent is None:
        got = f"its exponent {name!r} is computed in the model"
    elif exponent.size != 1:
        got = f"its exponent is a constant of shape {list(exponent.shape)}, not one value"
    else:
        got = f"got the exponent {float(exponent.ravel()[0]):g}"
    return f"{lowered}; {got}: write the power with those in the model (x ** 2.5 as x * x * sqrt(x), say)"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _split(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    shape = w.shapes.get(node.input[0])
    if shape is None:
        return None
    a = _attrs(node)
    axis = a.get("axis", 0) % len(shape)
    outputs = list(node.output)
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in w.consts:
            return None
        sizes = [int(s) for s in w.consts[node.input[1]]]
    elif "split" in a:
        sizes = [int(s) for s in a["split"]]
    else:  # equal parts (num_outputs from opset 18: the last part may be smaller)
        part = -(-shape[axis] // len(outputs))
        sizes = [min(part, shape[axis] - i * part) for i in range(len(outputs))]
    if sum(sizes) != shape[axis] or len(sizes) != len(outputs):
        return None
    start = 0
    for n, (name, size) in enumerate(zip(outputs, sizes)):
        if name:
            piece = list(shape)
            piece[axis] = size
            w.op("Slice", [node.input[0], w.const(f"starts{n}", np.array([start], np.int64)),
                           w.const(f"ends{n}", np.array([start + size], np.int64)),
                           w.const(f"axes{n}", np.array([axis], np.int64))], f"slice{n}", piece, name)
        start += size
    return w.nodes


def _pow(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    exponent = w.consts.get(node.input[1])
    if exponent is None or exponent.size != 1 or float(exponent.ravel()[0]) not in POW_EXPONENTS:
        return None
    x, shape = node.input[0], w.shapes.get(node.output[0])
    e = float(exponent.ravel()[0])
    if e == 0.5:
        w.op("Sqrt", [x], "sqrt", shape, node.output[0])
    elif e == 2.0:
        w.op("Mul", [x, x], "square", shape, node.output[0])
    else:
        w.op("Mul", [w.op("Mul", [x, x], "square", shape), x], "cube", shape, node.output[0])
    return w.nodes


def _layer_norm(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    shape = w.shapes.get(node.input[0])
    if shape is None or any(node.output[1:]) or any(i not in w.consts for i in node.input[1:] if i):
        return None
    a = _attrs(node)
    axes = list(range(a.get("axis", -1) % len(shape), len(shape)))
    reduced = [1 if i in axes else d for i, d in enumerate(shape)]
    x = node.input[0]
    mean = w.op("ReduceMean", [x], "mean", reduced, axes=axes, keepdims=1)
    centred = w.op("Sub", [x, mean], "centred", shape)
    var = w.op("ReduceMean", [w.op("Mul", [centred, centred], "squared", shape)], "variance", reduced, axes=axes,
               keepdims=1)
    eps = w.const("epsilon", np.array(a.get("epsilon", 1e-5), np.float32))
    std = w.op("Sqrt", [w.op("Add", [var, eps], "variance_eps", reduced)], "std", reduced)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    normed = w.op("Div", [centred, std], "normalized", shape)
    scaled = w.op("Mul", [normed, node.input[1]], "scaled", shape, None if has_bias else node.output[0])
    if has_bias:
        w.op("Add", [scaled, node.input[2]], "shifted", shape, node.output[0])
    return w.nodes


def _softmax(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    shape = w.shapes.get(node.input[0])
    if shape is None:
        return None
    axis = _attrs(node).get("axis", -1 if opset >= 13 else 1) % len(shape)
    if opset < 13 and axis != len(shape) - 1:  # before opset 13 the axes from `axis` on are one flattened axis
        return None
    reduced = [1 if i == axis else d for i, d in enumerate(shape)]
    x = node.input[0]
    top = w.op("ReduceMax", [x], "max", reduced, axes=[axis], keepdims=1)
    exp = w.op("Exp", [w.op("Sub", [x, top], "shifted", shape)], "exp", shape)
    total = w.op("ReduceSum", [exp], "sum", reduced, axes=[axis], keepdims=1)
    w.op("Div", [exp, total], "normalized", shape, node.output[0])
    return w.nodes


def _reciprocal(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    w.op("Div", [w.const("one", np.array(1.0, np.float32)), node.input[0]], "divide", w.shapes.get(node.output[0]),
         node.output[0])
    return w.nodes


def _mish(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    x, shape = node.input[0], w.shapes.get(node.output[0])
    w.op("Mul", [x, w.op("Tanh", [w.op("Softplus", [x], "softplus", shape)], "tanh", shape)], "product", shape,
         node.output[0])
    return w.nodes


def _selu(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    """gamma * (alpha * elu(x) + (1 - alpha) * relu(x)) with an alpha-1 ELU (TFLite's only one)."""
    a, x, shape = _attrs(node), node.input[0], w.shapes.get(node.output[0])
    alpha, gamma = float(a.get("alpha", SELU_ALPHA)), float(a.get("gamma", SELU_GAMMA))
    negative = w.op("Mul", [w.op("Elu", [x], "elu", shape), w.const("ga", np.array(gamma * alpha, np.float32))],
                    "negative", shape)
    positive = w.op("Mul", [w.op("Relu", [x], "relu", shape), w.const("gb", np.array(gamma * (1 - alpha), np.float32))],
                    "positive", shape)
    w.op("Add", [negative, positive], "sum", shape, node.output[0])
    return w.nodes


def _grouped_conv(w: _Writer, node: onnx.NodeProto, opset: int) -> list | None:
    a = _attrs(node)
    group = a.pop("group", 1)
    weight = w.consts.get(node.input[1])
    x_shape, y_shape = w.shapes.get(node.input[0]), w.shapes.get(node.output[0])
    if group == 1 or weight is None or weight.ndim != 4 or weight.shape[1] == 1 or x_shape is None or \
            y_shape is None or (len(node.input) > 2 and node.input[2] and node.input[2] not in w.consts):
        return None
    cin, cout = weight.shape[1], weight.shape[0] // group
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    parts = []
    for g in range(group):
        piece = [x_shape[0], cin, *x_shape[2:]]
        xs = w.op("Slice", [node.input[0], w.const(f"starts{g}", np.array([g * cin], np.int64)),
                            w.const(f"ends{g}", np.array([(g + 1) * cin], np.int64)),
                            w.const(f"axes{g}", np.array([1], np.int64))], f"input{g}", piece)
        w.same_grid(node.input[0], xs)
        inputs = [xs, w.const_slice(node.input[1], f"weight{g}", g * cout, (g + 1) * cout)]
        if bias:
            inputs.append(w.const_slice(bias, f"bias{g}", g * cout, (g + 1) * cout))
        parts.append(w.op("Conv", inputs, f"group{g}", [y_shape[0], cout, *y_shape[2:]], **a))
        w.same_grid(node.output[0], parts[-1])
    w.op("Concat", parts, "concat", y_shape, node.output[0], axis=1)
    return w.nodes


_REWRITES = {"Split": _split, "Pow": _pow, "LayerNormalization": _layer_norm, "Softmax": _softmax,
             "Reciprocal": _reciprocal, "Mish": _mish, "Selu": _selu, "Conv": _grouped_conv}
