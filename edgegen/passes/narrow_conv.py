"""A convolution with few output channels and a large kernel, as a 1x1 convolution and a Col2Im, exactly.

ONNX Runtime's CPU convolutions (float and int8) lay the input out as im2col columns of Cin x kh x kw
values per output pixel and multiply them by a matrix that is Cout wide. For an image generator's last
layer (Cout = 3, a 7x7 or 9x9 kernel) the columns are 49-81 times the input and the product is 3
wide: on this project's bench machine, 3-4 ms of an 11 ms int8 CycleGAN. Computed the other way round,
every input pixel's contribution to each of the Cout x kh x kw output taps is one 1x1 convolution
(an ordinary, wide matrix product), and Col2Im adds the taps into place: the same sums, in another
order. Used by the ONNX Runtime backend on its artifacts; the weights may be float or a
DequantizeLinear of per-channel int8 (the rewritten weights are the same int8 values, permuted, so
the QDQ graph computes what it did).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import first_line
from .channel_edit import drop_dead_nodes

log = logging.getLogger(__name__)

MAX_OUTPUTS = 8   # up to this many output channels
MIN_TAPS = 9      # and at least a 3x3 kernel
COL2IM_OPSET = 18


def narrow_convs_as_col2im(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every qualifying Conv rewritten (opset raised to 18 where needed); else unchanged."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    if not any(_plan(node, inits, producers) for node in model.graph.node):
        return model
    out = _at_opset(model)
    if out is None:
        return model
    inits = {t.name: t for t in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    nodes, rewritten = [], 0
    for node in out.graph.node:
        plan = _plan(node, inits, producers)
        nodes.extend(_replacement(node, plan, out, inits) if plan else [node])
        rewritten += plan is not None
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    drop_dead_nodes(out)
    log.info("%d narrow convolution(s) rewritten as 1x1 Conv + Col2Im", rewritten)
    return out


def _plan(node: onnx.NodeProto, inits: dict, producers: dict) -> dict | None:
    """The rewrite's parameters for a Conv that qualifies, else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight, dequantize = _weight(node.input[1], inits, producers)
    if weight is None or weight.ndim != 4:
        return None
    cout, _, kh, kw = weight.shape
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if not plain_stride_one(attrs) or len(pads) != 4:
        return None
    if cout > MAX_OUTPUTS or kh * kw < MIN_TAPS or pads[0] > kh - 1 or pads[2] > kh - 1 \
            or pads[1] > kw - 1 or pads[3] > kw - 1:
        return None
    return {"weight": weight, "dequantize": dequantize, "pads": pads}


def plain_stride_one(attrs: dict) -> bool:
    """Whether Conv attributes say: one group, stride 1, no dilation, explicit pads."""
    return attrs.get("group", 1) == 1 and all(s == 1 for s in attrs.get("strides", [1, 1])) \
        and all(d == 1 for d in attrs.get("dilations", [1, 1])) \
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")


def _weight(name: str, inits: dict, producers: dict) -> tuple[np.ndarray | None, onnx.NodeProto | None]:
    """The weight as an array (float, or the int8 values under a per-channel DequantizeLinear on axis 0)."""
    if name in inits:
        return numpy_helper.to_array(inits[name]), None
    node = producers.get(name)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return None, None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
    values = numpy_helper.to_array(inits[node.input[0]])
    if scale is None or values.ndim != 4 or (scale.size > 1 and axis != 0):
        return None, None
    return values, node


def _replacement(node: onnx.NodeProto, plan: dict, model: onnx.ModelProto, inits: dict) -> list[onnx.NodeProto]:
    weight, dequantize, (top, left, bottom, right) = plan["weight"], plan["dequantize"], plan["pads"]
    cout, cin, kh, kw = weight.shape
    taps = kh * kw
    at = (node.name or node.output[0]) + "/col2im/"  # its own names: "<conv>/bias" may be the conv's bias

    def const(name: str, array: np.ndarray) -> str:
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), at + name))
        return at + name

    def step(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output if output == node.output[0] else at + output],
                                name=at + output, **attrs)

    # channel c*taps + ky*kw + kx of the 1x1 conv: output channel c's weights at the flipped tap (ky, kx)
    columns = weight[:, :, ::-1, ::-1].reshape(cout, cin, taps).transpose(0, 2, 1).reshape(cout * taps, cin, 1, 1)
    nodes = []
    if dequantize is None:
        column_weight = const("col_weight", columns)
    else:  # the same int8 values, each output channel's scale (and zero point) repeated for its taps
        per_tap = [numpy_helper.to_array(inits[name]) for name in dequantize.input[1:] if name]
        per_tap = [np.repeat(v, taps) if v.size > 1 else v for v in per_tap]
        nodes.append(step("DequantizeLinear", [const("col_weight_q", columns)] + [
            const(f"col_weight_{i}", v) for i, v in enumerate(per_tap)], "col_weight", axis=0))
        column_weight = at + "col_weight"
    x = node.input[0]
    has_bias = len(node.input) > 2 and bool(node.input[2])
    nodes += [
        step("Conv", [x, column_weight], "taps"),
        step("Reshape", [at + "taps", const("columns_shape", np.array([0, cout * taps, -1], np.int64))], "columns"),
        step("Shape", [x], "in_size", start=2, end=4),
        step("Add", [at + "in_size", const("size_change", np.array([top + bottom - kh + 1, left + right - kw + 1],
                                                                     np.int64))], "out_size"),
        step("Col2Im", [at + "columns", at + "out_size", const("block", np.array([kh, kw], np.int64))],
             "folded" if has_bias else node.output[0],
             pads=[kh - 1 - top, kw - 1 - left, kh - 1 - bottom, kw - 1 - right]),
    ]
    if has_bias:
        nodes += [step("Reshape", [node.input[2], const("bias_shape", np.array([1, cout, 1, 1], np.int64))], "bias"),
                  step("Add", [at + "folded", at + "bias"], node.output[0])]
    return nodes


def _at_opset(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of the model at opset >= 18 (Col2Im), converted by onnx's version converter; None if it cannot be."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    if current >= COL2IM_OPSET:
        return copy
    try:
        return onnx.version_converter.convert_version(copy, COL2IM_OPSET)
    except Exception as exc:  # the converter has no adapter for some op of this model
        log.info("narrow convolutions left as they are: opset %d -> %d failed (%s)", current, COL2IM_OPSET,
                 first_line(exc))
        return None
