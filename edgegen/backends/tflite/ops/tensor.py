"""Data movement: Reshape/Flatten/Squeeze/Unsqueeze, Identity, Concat, Expand, DepthToSpace, Pad, Gather,
Slice, Transpose. On int8 these keep their input's grid (requantized when the QDQ graph says
otherwise)."""

from __future__ import annotations

import numpy as np
import onnx

from ..layout import NCHW, NHWC, channel_axis, crd_order, reshape_demand, tfl_axis, tfl_shape
from ..flatbuffer import QParams
from ..lower import Lowerer, Value
from ..prepare import Prepared, attrs
from . import rule, static_shapes
from .tiling import edge_pad, reflect_pad, tile

# reflect pads up to this width are written as SLICE + CONCATENATION (which XNNPACK and the Edge
# TPU take), wider ones as MIRROR_PAD (which neither takes)
MAX_SLICED_REFLECT = 4


# -- Reshape family ------------------------------------------------------------------------------
def _transpose(lw: Lowerer, value: Value, perm: tuple[int, ...], shape: list[int], nhwc: bool) -> Value:
    out = lw.temp(shape, value.quant, hint="transposed")
    lw.op("TRANSPOSE", [value.index, lw.int32(perm, "perm")], [out])
    return Value(out, nhwc, None, value.quant)


def _reshape_into(lw: Lowerer, value: Value, name: str, shape: list[int], nhwc: bool,
                  order: np.ndarray | None = None) -> None:
    lw.emit_keeping_grid("RESHAPE", [value.index, lw.int32(shape, "shape")], name, shape, nhwc, value.quant,
                         lw.options("Reshape", newShape=shape), order)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", check=static_shapes)
def reshape(lw: Lowerer, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    src, dst = lw.shape(x), lw.shape(out)
    value = lw.value(x)
    if len(src) == 2 and len(dst) == 4 and src[0] == dst[0]:
        demand = reshape_demand(src, dst)
        if demand is None:  # [N, C] -> [N, C, 1, 1]: the same element order
            _reshape_into(lw, lw.reorder(value, None), out, tfl_shape(dst, True), True)
            return
        if value.order is not None and np.array_equal(value.order, demand):  # laid out by the planner
            _reshape_into(lw, value, out, tfl_shape(dst, True), True)
            return
    if len(src) == 4 and len(dst) == 2 and src[0] == dst[0]:
        c, h, w = src[1:]
        channels = value.order if value.order is not None else np.arange(c)
        order = np.arange(c * h * w).reshape(c, h, w)[channels].transpose(1, 2, 0).ravel()
        _reshape_into(lw, value, out, dst, False, None if np.array_equal(order, np.arange(order.size)) else order)
        return
    # general case: through ONNX element order (costs a TRANSPOSE on each 4-D side)
    value = lw.reorder(value, None)
    if value.nhwc:
        value = _transpose(lw, value, NCHW, src, False)
    if len(dst) != 4:
        _reshape_into(lw, value, out, dst, False)
        return
    flat = lw.temp(dst, value.quant, hint="nchw")
    lw.op("RESHAPE", [value.index, lw.int32(dst, "shape")], [flat], lw.options("Reshape", newShape=dst))
    moved = _transpose(lw, Value(flat, False, None, value.quant), NHWC, tfl_shape(dst, True), True)
    lw.emit_keeping_grid("RESHAPE", [moved.index, lw.int32(tfl_shape(dst, True), "nhwc_shape")], out,
                         tfl_shape(dst, True), True, moved.quant,
                         lw.options("Reshape", newShape=tfl_shape(dst, True)))


@rule("Identity", check=static_shapes)
def identity(lw: Lowerer, node: onnx.NodeProto) -> None:
    """An Identity the import keeps (an output repeating another, an input passed through to an output):
    TFLite has no copy op, so a RESHAPE to the same shape, in the same layout."""
    value = lw.value(node.input[0])
    _reshape_into(lw, value, node.output[0], lw.tshape(value), value.nhwc, value.order)


# -- Concat --------------------------------------------------------------------------------------
@rule("Concat", check=static_shapes)
def concat(lw: Lowerer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    rank = len(lw.shape(out))
    variable = [i for i in node.input if lw.const(i) is None]
    grid = None
    if len(variable) == len(node.input):
        grids = {lw.grid(i) for i in variable}
        shared = grids.pop() if len(grids) == 1 and lw.precision == "int8" else None
        grid = lw.quantized(variable, out) or shared  # one input grid: the output keeps it
    if len(variable) == len(node.input):
        values = [lw.operand(i, grid is not None) for i in node.input]
    else:
        values = [lw.as_float(i) if lw.const(i) is None else _const_value(lw, i) for i in node.input]
    nhwc = rank == 4
    axis = tfl_axis(attrs(node)["axis"], rank, nhwc)
    on_channels = axis == channel_axis(rank, nhwc)
    order = None
    if on_channels and any(v.order is not None for v in values):
        parts, offset = [], 0
        for v in values:
            size = lw.tshape(v)[axis]
            parts.append((v.order if v.order is not None else np.arange(size)) + offset)
            offset += size
        order = np.concatenate(parts)
    elif not on_channels:
        values = [lw.reorder(v, values[0].order) for v in values]
        order = values[0].order
    inputs = [lw.requantize(v.index, grid) for v in values]
    index = lw.define(out, tfl_shape(lw.shape(out), nhwc), nhwc, order, grid)
    lw.op("CONCATENATION", inputs, [index], lw.options("Concatenation", axis=axis))


def _const_value(lw: Lowerer, name: str) -> Value:
    array = lw.const(name).astype(np.float32)
    nhwc = array.ndim == 4
    return Value(lw.weight(array.transpose(NHWC) if nhwc else array, f"{lw.node.name}/{name}"), nhwc)


def _check_expand(node: onnx.NodeProto, p: Prepared) -> str | None:
    why = static_shapes(node, p)
    if why:
        return why
    src, dst = p.shapes[node.input[0]], p.shapes[node.output[0]]
    if len(src) != len(dst):
        return "Expand that adds dimensions is not supported (Unsqueeze first)"
    if any(s != d and s != 1 for s, d in zip(src, dst)):
        return f"cannot broadcast {src} to {dst}"
    return None


@rule("Expand", check=_check_expand)
def expand(lw: Lowerer, node: onnx.NodeProto) -> None:
    """Broadcast size-1 axes by tiling (e.g. a label embedding [N,E,1,1] over an HxW map)."""
    src, dst = lw.shape(node.input[0]), lw.shape(node.output[0])
    value = lw.operand(node.input[0], lw.keeps_grid(node.input[0]))
    nhwc = len(dst) == 4
    if value.order is not None and src[1] != dst[1]:
        value = lw.reorder(value, None)
    current = value.index
    for axis in range(len(dst)):
        if src[axis] != dst[axis]:
            current = tile(lw, current, tfl_axis(axis, len(dst), nhwc), dst[axis])
    if current == value.index:
        lw.bind(node.output[0], value)
        return
    final = tfl_shape(dst, nhwc)
    lw.emit_keeping_grid("RESHAPE", [current, lw.int32(final, "shape")], node.output[0], final, nhwc, value.quant,
                         lw.options("Reshape", newShape=final), value.order)


# -- DepthToSpace --------------------------------------------------------------------------------
@rule("DepthToSpace", check=static_shapes)
def depth_to_space(lw: Lowerer, node: onnx.NodeProto) -> None:
    a = attrs(node)
    block, out = a["blocksize"], node.output[0]
    value = lw.operand(node.input[0], lw.keeps_grid(node.input[0]))
    crd = a.get("mode", "DCR") == "CRD"
    shape = tfl_shape(lw.shape(out), True)
    if lw.delegate == "edgetpu" and value.quant is not None:
        _depth_to_space_as_transpose_conv(lw, value, out, shape, block, crd)
        return
    value = lw.reorder(value, crd_order(lw.shape(out)[1], block) if crd else None)
    lw.emit_keeping_grid("DEPTH_TO_SPACE", [value.index], out, shape, True, value.quant,
                         lw.options("DepthToSpace", blockSize=block))


@rule("SpaceToDepth", check=static_shapes)
def space_to_depth(lw: Lowerer, node: onnx.NodeProto) -> None:
    """SPACE_TO_DEPTH: its channel order (i * block + j) * C + c is ONNX's (the input's channels taken
    in ONNX order)."""
    block, out = attrs(node)["blocksize"], node.output[0]
    value = lw.reorder(lw.operand(node.input[0], lw.keeps_grid(node.input[0])), None)
    lw.emit_keeping_grid("SPACE_TO_DEPTH", [value.index], out, tfl_shape(lw.shape(out), True), True, value.quant,
                         lw.options("SpaceToDepth", blockSize=block))


def _depth_to_space_as_transpose_conv(lw: Lowerer, value: Value, out: str, shape: list[int], block: int,
                                      crd: bool) -> None:
    """An int8 DepthToSpace for the Edge TPU, which has no DEPTH_TO_SPACE, as a TRANSPOSE_CONV of stride
    and kernel `block` whose weights pick, for output channel c at kernel tap (i, j), the input channel
    DepthToSpace reads ((i * block + j) * C + c in DCR mode, (c * block + i) * block + j in CRD), where
    the stored tensor holds it (its channel order absorbed, so no GATHER): each output is one input
    value times 1 (127 steps of 1/127), exact on the input's grid."""
    channels = shape[-1]
    stored = np.argsort(value.order) if value.order is not None else np.arange(block * block * channels)
    weights = np.zeros((channels, block, block, block * block * channels), np.int8)
    for c in range(channels):
        for i in range(block):
            for j in range(block):
                source = (c * block + i) * block + j if crd else (i * block + j) * channels + c
                weights[c, i, j, stored[source]] = 127
    step = np.full(channels, 1 / 127, np.float32)
    base = lw.node.name
    filt = lw.weight(weights, f"{base}/one_hot", QParams.of(step, np.zeros(channels, np.int64), 0))
    bias = lw.weight(np.zeros(channels, np.int32), f"{base}/bias",
                     QParams.of(step * value.quant.scale[0], np.zeros(channels, np.int64), 0))
    options = lw.options("TransposeConv", padding=lw.fb.Padding.SAME, strideH=block, strideW=block)
    target = lw.p.quant.activations.get(out) or value.quant
    lw.op("TRANSPOSE_CONV", [lw.int32(shape, "output_shape"), filt, value.index, bias],
          [lw.define(out, shape, True, None, target)], options)


# -- Pad -----------------------------------------------------------------------------------------
def _pad_amounts(node: onnx.NodeProto, p: Prepared) -> np.ndarray:
    """[rank, 2] (begin, end) per ONNX axis."""
    rank = len(p.shapes[node.input[0]])
    pads = p.consts[node.input[1]].astype(np.int64).reshape(-1)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in p.consts[node.input[3]]]
    amounts = np.zeros((rank, 2), np.int64)
    for i, axis in enumerate(axes):
        amounts[axis] = pads[i], pads[i + len(axes)]
    return amounts


def _check_pad(node: onnx.NodeProto, p: Prepared) -> str | None:
    if len(node.input) < 2 or any(i and i not in p.consts for i in node.input[1:]):
        return "pads (and the constant value, axes) must be constants"
    mode = attrs(node).get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        return f"mode={mode} is not supported (constant, reflect, edge)"
    why = static_shapes(node, p)
    if why:
        return why
    if (_pad_amounts(node, p) < 0).any():
        return "negative pads (cropping) are not supported"
    return None


@rule("Pad", check=_check_pad)
def pad(lw: Lowerer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    amounts = _pad_amounts(node, lw.p)
    mode = attrs(node).get("mode", "constant")
    fill = lw.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    fill = 0.0 if fill is None or fill.size == 0 else float(fill.reshape(-1)[0])
    value = lw.operand(node.input[0], fill == 0.0 and lw.keeps_grid(node.input[0]))
    if value.order is not None and amounts[1].any():
        value = lw.reorder(value, None)
    paddings = amounts[list(NHWC)] if value.nhwc else amounts
    shape = tfl_shape(lw.shape(out), value.nhwc)
    per_axis = {a: (int(p[0]), int(p[1])) for a, p in enumerate(paddings) if p.any()}
    if mode == "edge" or (mode == "reflect" and paddings.max() <= MAX_SLICED_REFLECT):
        padded = (edge_pad if mode == "edge" else reflect_pad)(lw, value.index, per_axis)
        lw.emit_keeping_grid("RESHAPE", [padded, lw.int32(shape, "shape")], out, shape, value.nhwc, value.quant,
                             lw.options("Reshape", newShape=shape), value.order)
        return
    inputs = [value.index, lw.int32(paddings, "paddings")]
    if mode == "reflect":
        code, options = "MIRROR_PAD", lw.options("MirrorPad", mode=lw.fb.MirrorPadMode.REFLECT)
    elif fill == 0.0:
        code, options = "PAD", None
    else:
        code, options = "PADV2", None
        inputs.append(lw.weight(np.array([fill], np.float32), f"{node.name}/value"))
    lw.emit_keeping_grid(code, inputs, out, shape, value.nhwc, value.quant, options, value.order)


# -- Gather (embedding tables) -------------------------------------------------------------------
def _check_gather(node: onnx.NodeProto, p: Prepared) -> str | None:
    if node.input[0] not in p.consts:
        return "only gathers from a constant table (embeddings) are supported"
    if attrs(node).get("axis", 0) != 0:
        return "only axis=0 is supported"
    why = static_shapes(node, p)
    if why is None and len(p.shapes[node.output[0]]) == 4:
        return "a gather producing a 4-D tensor is not supported"
    return why


@rule("Gather", check=_check_gather)
def gather(lw: Lowerer, node: onnx.NodeProto) -> None:
    table_name, indices, out = node.input[0], node.input[1], node.output[0]
    table = lw.const(table_name)
    qc = lw.p.quant.constants.get(table_name)
    int8 = lw.precision == "int8" and qc is not None and qc.params.per_tensor and qc.data.dtype == np.int8
    data = qc.data if int8 else table.astype(np.float32)
    order = lw.plan.get(out) if table.ndim == 2 else None
    if order is not None:
        data = data[:, order]
    table_index = lw.weight(data, f"{table_name}/{node.name}", qc.params if int8 else None)
    index_value = lw.const(indices)
    index_tensor = lw.int32(index_value, "indices") if index_value is not None else lw.value(indices).index
    grid = qc.params if int8 else None
    lw.emit_keeping_grid("GATHER", [table_index, index_tensor], out, lw.shape(out), False, grid,
                         lw.options("Gather", axis=0), order)


# -- Cast of an integer model input (a label fed as int32, cast to int64 for its embedding) --------
_INDEX_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)


def _check_cast(node: onnx.NodeProto, p: Prepared) -> str | None:
    source = next((s for s in p.inputs if s.name == node.input[0]), None)
    if source is None or source.dtype not in ("int32", "int64") or attrs(node).get("to") not in _INDEX_TYPES:
        return "only a cast of an integer model input to int32 or int64 (a label's indices) is supported"
    return None


@rule("Cast", check=_check_cast)
def cast(lw: Lowerer, node: onnx.NodeProto) -> None:
    """Indices keep their values either way, and GATHER takes int32 and int64 alike: the same tensor."""
    lw.bind(node.output[0], lw.value(node.input[0]))


# -- Slice, Transpose ----------------------------------------------------------------------------
def _check_slice(node: onnx.NodeProto, p: Prepared) -> str | None:
    if any(i and i not in p.consts for i in node.input[1:]):
        return "starts, ends, axes and steps must be constants"
    if len(node.input) > 4 and node.input[4] and (p.consts[node.input[4]] <= 0).any():
        return "only positive steps are supported"
    return static_shapes(node, p)


@rule("Slice", check=_check_slice)
def slice_(lw: Lowerer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    src = lw.shape(node.input[0])
    rank = len(src)
    starts, ends = (lw.const(i).astype(np.int64) for i in node.input[1:3])
    axes = lw.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = lw.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts), np.int64)
    value = lw.operand(node.input[0], lw.keeps_grid(node.input[0]))
    begin, end, stride = [0] * rank, list(src), [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        size = src[a]
        begin[a] = int(np.clip(s + size if s < 0 else s, 0, size))
        end[a] = int(np.clip(e + size if e < 0 else e, 0, size))
        stride[a] = int(st)
        if a == 1 and value.order is not None:
            value = lw.reorder(value, None)
    if value.nhwc:
        begin, end, stride = ([v[i] for i in NHWC] for v in (begin, end, stride))
    inputs = [value.index, lw.int32(begin, "begin"), lw.int32(end, "end"), lw.int32(stride, "strides")]
    lw.emit_keeping_grid("STRIDED_SLICE", inputs, out, tfl_shape(lw.shape(out), value.nhwc), value.nhwc,
                         value.quant, lw.options("StridedSlice"), value.order)


@rule("Transpose", check=static_shapes)
def transpose(lw: Lowerer, node: onnx.NodeProto) -> None:
    out = node.output[0]
    rank = len(lw.shape(node.input[0]))
    perm = list(attrs(node).get("perm", reversed(range(rank))))
    value = lw.reorder(lw.operand(node.input[0], lw.keeps_grid(node.input[0])), None)
    in_axes = list(NHWC) if value.nhwc else list(range(rank))
    out_nhwc = rank == 4
    out_axes = list(NHWC) if out_nhwc else list(range(rank))
    stored = [int(np.argsort(in_axes)[perm[a]]) for a in out_axes]
    shape = tfl_shape(lw.shape(out), out_nhwc)
    if stored == list(range(rank)):
        _reshape_into(lw, value, out, shape, out_nhwc)
        return
    lw.emit_keeping_grid("TRANSPOSE", [value.index, lw.int32(stored, "perm")], out, shape, out_nhwc, value.quant)
