"""MaxPool -> MAX_POOL_2D, AveragePool -> AVERAGE_POOL_2D; GlobalAveragePool / GlobalMaxPool and
ReduceMean / ReduceMax / ReduceSum of a 4-D tensor -> MEAN / REDUCE_MAX / SUM (a squeeze-and-excite
block's global mean, for instance).

Pads that TF's SAME reproduces use it (a SAME max pool ignores the border, an average pool leaves it
out of the count: ONNX's count_include_pad=0). Other pads become an explicit pad before a VALID
pool: PADV2 with the lowest value for a max pool, zeros (PAD) for an average pool that counts them.
An int8 pool keeps its input's grid (TFLite requires it), requantized onto the QDQ graph's output
grid where that one differs.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..layout import tfl_axis
from ..lower import Lowerer, Value
from ..prepare import Prepared, attrs
from . import rule, static_shapes
from .conv import same_padding


def _window(node: onnx.NodeProto, p: Prepared) -> tuple[list[int], list[int], list[int]]:
    """kernel, strides and ONNX pads [top, left, bottom, right] (auto_pad resolved)."""
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        size = p.shapes[node.input[0]][2:]
        for i in range(2):
            total = max((-(-size[i] // strides[i]) - 1) * strides[i] + kernel[i] - size[i], 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, large) if auto == "SAME_UPPER" else (large, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    return kernel, strides, pads


def _check_pool(node: onnx.NodeProto, p: Prepared) -> str | None:
    why = static_shapes(node, p)
    if why:
        return why
    a = attrs(node)
    if len(p.shapes[node.input[0]]) != 4 or len(a.get("kernel_shape", [])) != 2:
        return "only 2-D pooling of 4-D (NCHW) inputs is supported"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated pooling has no TFLite builtin"
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        return "MaxPool's Indices output has no TFLite equivalent"
    kernel, strides, pads = _window(node, p)
    size, out = p.shapes[node.input[0]][2:], p.shapes[node.output[0]][2:]
    floor = [(size[i] + pads[i] + pads[i + 2] - kernel[i]) // strides[i] + 1 for i in range(2)]
    if list(out) != floor:
        return "ceil_mode=1 with a window that reaches past the padded input is not supported"
    counts_pads = node.op_type == "AveragePool" and a.get("count_include_pad", 0)
    if node.op_type == "AveragePool" and any(pads) and not counts_pads and \
            same_padding(size, kernel, strides, [1, 1], pads) is None:
        return ("an average pool that leaves padding out of its count (count_include_pad=0) needs pads that "
                "TFLite's SAME padding reproduces")
    return None


@rule("MaxPool", "AveragePool", check=_check_pool)
def pool(lw: Lowerer, node: onnx.NodeProto) -> None:
    kernel, strides, pads = _window(node, lw.p)
    value = lw.operand(node.input[0], lw.keeps_grid(node.input[0]))
    size = lw.shape(node.input[0])[2:]
    counts_pads = node.op_type == "AveragePool" and attrs(node).get("count_include_pad", 0) and any(pads)
    # SAME leaves the border out of an average's count: one that counts its pads pads with zeros, then VALID
    padding = None if counts_pads else same_padding(size, kernel, strides, [1, 1], pads)
    if padding is None:
        value = _pad(lw, value, pads, lowest=node.op_type == "MaxPool")
        padding = "VALID"
    n, _, _, c = lw.tshape(value)
    out = lw.shape(node.output[0])
    options = lw.options("Pool2D", padding=getattr(lw.fb.Padding, padding), strideH=strides[0], strideW=strides[1],
                         filterHeight=kernel[0], filterWidth=kernel[1])
    code = "MAX_POOL_2D" if node.op_type == "MaxPool" else "AVERAGE_POOL_2D"
    lw.emit_keeping_grid(code, [value.index], node.output[0], [n, out[2], out[3], c], True, value.quant, options,
                         value.order)


def _pad(lw: Lowerer, value: Value, pads: list[int], lowest: bool) -> Value:
    """H and W padded by ONNX pads [top, left, bottom, right]: with the lowest value (PADV2) or with zeros."""
    n, h, w, c = lw.tshape(value)
    shape = [n, h + pads[0] + pads[2], w + pads[1] + pads[3], c]
    out = lw.temp(shape, value.quant, hint="pool_pad")
    paddings = lw.int32([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], "paddings")
    if lowest:
        fill = np.array([-128], np.int8) if value.quant else np.array([np.finfo(np.float32).min], np.float32)
        lw.op("PADV2", [value.index, paddings, lw.weight(fill, f"{lw.node.name}/lowest", value.quant)], [out])
    else:
        lw.op("PAD", [value.index, paddings], [out])
    return Value(out, True, value.order, value.quant)


_REDUCERS = {"GlobalAveragePool": "MEAN", "GlobalMaxPool": "REDUCE_MAX", "ReduceMean": "MEAN",
             "ReduceMax": "REDUCE_MAX", "ReduceSum": "SUM"}


def _reduced_axes(node: onnx.NodeProto, p: Prepared) -> tuple[list[int], bool]:
    """The ONNX axes a reduction removes (sorted, non-negative) and whether it keeps them as size 1."""
    rank = len(p.shapes[node.input[0]])
    if node.op_type.startswith("Global"):
        return list(range(2, rank)), True
    a = attrs(node)
    axes = a.get("axes")
    if len(node.input) > 1 and node.input[1]:
        axes = p.consts[node.input[1]].tolist()
    if axes is None or len(axes) == 0:
        axes = [] if a.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(x) % rank for x in axes), bool(a.get("keepdims", 1))


def _check_reduce(node: onnx.NodeProto, p: Prepared) -> str | None:
    why = static_shapes(node, p)
    if why:
        return why
    if len(node.input) > 1 and node.input[1] and node.input[1] not in p.consts:
        return "its axes must be a constant"
    rank = len(p.shapes[node.input[0]])
    if not 2 <= rank <= 4:
        return f"only reductions of 2-D to 4-D tensors are supported (this one is {rank}-D)"
    axes, keep = _reduced_axes(node, p)
    if not axes:
        return "a reduction over no axis is an identity; remove it before export"
    if rank == 4 and not keep and axes != [2, 3]:
        return "keepdims=0 is supported for reductions of a 4-D tensor over H and W only"
    return None


@rule(*_REDUCERS, check=_check_reduce)
def reduce(lw: Lowerer, node: onnx.NodeProto) -> None:
    """A mean, maximum or sum over ONNX axes of an NHWC tensor (keepdims=0 over H and W gives [N, C]), or of
    a 2-D or 3-D one (stored in ONNX order: a LayerNorm over tokens)."""
    axes, keep = _reduced_axes(node, lw.p)
    code = _REDUCERS[node.op_type]
    int8 = lw.quantized([node.input[0]], node.output[0]) is not None if code != "REDUCE_MAX" else \
        lw.keeps_grid(node.input[0])
    value = lw.operand(node.input[0], int8)
    if not value.nhwc:  # 2-D or 3-D, stored in ONNX order once its channels are
        value = lw.reorder(value, None)
    shape = lw.tshape(value)
    stored = sorted(tfl_axis(axis, len(shape), value.nhwc) for axis in axes)
    out_shape = [1 if i in stored else d for i, d in enumerate(shape)] if keep else \
        [d for i, d in enumerate(shape) if i not in stored]  # 4-D over H and W: [N, C]
    inputs = [value.index, lw.int32(stored, "axes")]
    options = lw.options("Reducer", keepDims=keep)
    order = value.order if 3 not in stored else None
    nhwc = value.nhwc and keep
    if code == "REDUCE_MAX" or not int8:
        lw.emit_keeping_grid(code, inputs, node.output[0], out_shape, nhwc, value.quant, options, order)
    else:  # int8 MEAN and SUM requantize onto the QDQ graph's output grid themselves
        grid = lw.quantized([node.input[0]], node.output[0])
        lw.op(code, inputs, [lw.define(node.output[0], out_shape, nhwc, order, grid)], options)
