"""Activations, element-wise arithmetic and normalizations."""

from __future__ import annotations

import numpy as np
import onnx

from ..flatbuffer import QParams
from ..layout import channel_axis
from ..lower import Lowerer, Value
from ..prepare import Prepared, attrs
from . import rule, static_shapes

_UNARY = {"Relu": "RELU", "Tanh": "TANH", "Sigmoid": "LOGISTIC", "HardSwish": "HARD_SWISH",
          "LeakyRelu": "LEAKY_RELU", "Elu": "ELU", "Gelu": "GELU", "Sqrt": "SQRT", "Exp": "EXP",
          "Round": "ROUND"}
_FLOAT_ONLY = {"ELU", "SQRT", "EXP", "ROUND"}  # LiteRT registers these for float only
# int8 TANH and LOGISTIC have a fixed output grid (their range is [-1, 1] / [0, 1])
FIXED_GRID = {"TANH": QParams.of(1 / 128, 0), "LOGISTIC": QParams.of(1 / 256, -128)}
COARSER = 1.5  # warn where the fixed grid's step is this many times the calibrated one's (3.5 dB), or more
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV"}
_CLIPS = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}


def layout_const(array: np.ndarray, rank: int, nhwc: bool, order: np.ndarray | None) -> np.ndarray:
    """An ONNX constant operand in the layout of a stored tensor of the given rank."""
    array = array.reshape((1,) * (rank - array.ndim) + array.shape)
    if nhwc:
        array = array.transpose(0, 2, 3, 1)
    axis = channel_axis(rank, nhwc)
    if order is not None and axis is not None and array.shape[axis] > 1:
        array = array.take(order, axis)
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    return np.ascontiguousarray(array)


def _unary_op(lw: Lowerer, node: onnx.NodeProto, code: str, options=None, int8_ok: bool = True) -> None:
    x, out = node.input[0], node.output[0]
    grid = lw.quantized([x], out, FIXED_GRID.get(code)) if int8_ok else None
    calibrated = lw.p.quant.activations.get(out)
    if calibrated is None and grid is not None and code in FIXED_GRID:  # an output the QDQ graph left float
        calibrated = _range_through(code, lw.grid(x))
    if grid is not None and code in FIXED_GRID and calibrated is not None and \
            calibrated.scale[0] * COARSER <= grid.scale[0]:
        coarser = grid.scale[0] / calibrated.scale[0]
        lw.warnings.append(f"node {node.name!r} ({node.op_type}): its calibrated output range is "
                           f"{255 * calibrated.scale[0]:.3g} wide, and TFLite's int8 {code} has a fixed grid "
                           f"{255 * grid.scale[0]:.3g} wide, {coarser:.1f}x as coarse as the QDQ graph's: up to "
                           f"{20 * np.log10(coarser):.0f} dB of PSNR lost on LiteRT at that tensor (the build's "
                           "fidelity line gives the output's; another target, or fp16, keeps it)")
    value = lw.operand(x, grid is not None)
    index = lw.define(out, lw.tshape(value), value.nhwc, value.order, grid)
    lw.op(code, [value.index], [index], options)


def _range_through(code: str, grid: QParams) -> QParams:
    """The grid of 255 steps over what a monotonic TANH or LOGISTIC makes of its input grid's range."""
    ends = grid.scale[0] * (np.array([-128.0, 127.0]) - grid.zero_point[0])
    low, high = np.tanh(ends) if code == "TANH" else 1 / (1 + np.exp(-ends))
    return QParams.of(max(float(high - low), 1e-12) / 255, 0)


def _check_unary(node: onnx.NodeProto, p: Prepared) -> str | None:
    if node.op_type == "Elu" and attrs(node).get("alpha", 1.0) != 1.0:
        return "TFLite's ELU has alpha 1 only"
    return static_shapes(node, p)


@rule(*_UNARY, check=_check_unary)
def unary(lw: Lowerer, node: onnx.NodeProto) -> None:
    code = _UNARY[node.op_type]
    options = None
    if code == "LEAKY_RELU":
        options = lw.options("LeakyRelu", alpha=attrs(node).get("alpha", 0.01))
    elif code == "GELU":
        options = lw.options("Gelu", approximate=attrs(node).get("approximate", "none") == "tanh")
    edgetpu_form = _EDGETPU_FORMS.get(code) if lw.delegate == "edgetpu" else None
    grid = lw.quantized([node.input[0]], node.output[0]) if edgetpu_form else None
    if grid is not None:  # the Edge TPU has no such op: written with ops it maps
        edgetpu_form(lw, node, grid)
        return
    # LiteRT's XNNPACK takes no int8 HARD_SWISH (each one would split the graph); between DEQUANTIZE
    # and QUANTIZE onto the same grids it stays inside the delegate
    _unary_op(lw, node, code, options,
              int8_ok=code not in _FLOAT_ONLY and not (code == "HARD_SWISH" and lw.delegate == "xnnpack"))


def _hard_swish_as_gate(lw: Lowerer, node: onnx.NodeProto, grid: QParams) -> None:
    """int8 HardSwish for the Edge TPU, which has no HARD_SWISH (the graph would leave it at the first
    one): x * g / 6 with g = clip(x + 3, 0, 6) as ADD onto a grid over [0, 6] (its saturation is the
    clip), MUL by 1/6 onto a grid over [0, 1], and MUL by x, all int8 ops the Edge TPU maps."""
    x = lw.as_int8(node.input[0])
    shape = lw.tshape(x)

    def scalar(value: float, hint: str) -> int:  # 127 steps of value / 127: exact
        return lw.weight(np.array([127], np.int8), f"{node.name}/{hint}", QParams.of(value / 127, 0))

    gate = lw.temp(shape, QParams.of(6 / 255, -128), hint="gate")
    lw.op("ADD", [x.index, scalar(3.0, "three")], [gate])
    fraction = lw.temp(shape, QParams.of(1 / 255, -128), hint="gate_fraction")
    lw.op("MUL", [gate, scalar(1 / 6, "sixth")], [fraction])
    lw.op("MUL", [x.index, fraction], [lw.define(node.output[0], shape, x.nhwc, x.order, grid)])


def _leaky_relu_as_prelu(lw: Lowerer, node: onnx.NodeProto, grid: QParams) -> None:
    """int8 LeakyRelu as PRELU with every channel's slope alpha (127 steps of alpha / 127: exact)."""
    alpha = attrs(node).get("alpha", 0.01)
    x = lw.as_int8(node.input[0])
    shape = lw.tshape(x)
    slopes = np.full(shape[-1:], int(np.sign(alpha)) * 127, np.int8)
    slope = lw.weight(slopes, f"{node.name}/alpha", QParams.of(abs(alpha) / 127 if alpha else 1.0, 0))
    lw.op("PRELU", [x.index, slope], [lw.define(node.output[0], shape, x.nhwc, x.order, grid)])


_EDGETPU_FORMS = {"HARD_SWISH": _hard_swish_as_gate, "LEAKY_RELU": _leaky_relu_as_prelu}


def _clip_bounds(node: onnx.NodeProto, p: Prepared) -> tuple[float | None, float | None]:
    a = attrs(node)
    lo, hi = a.get("min"), a.get("max")
    if len(node.input) > 1 and node.input[1]:
        lo = float(p.consts[node.input[1]])
    if len(node.input) > 2 and node.input[2]:
        hi = float(p.consts[node.input[2]])
    lo = None if lo is None or lo <= -3.4e38 else float(lo)
    hi = None if hi is None or hi >= 3.4e38 else float(hi)
    return lo, hi


def _check_clip(node: onnx.NodeProto, p: Prepared) -> str | None:
    if any(i and i not in p.consts for i in node.input[1:]):
        return "min and max must be constants"
    return static_shapes(node, p)


@rule("Clip", check=_check_clip)
def clip(lw: Lowerer, node: onnx.NodeProto) -> None:
    lo, hi = _clip_bounds(node, lw.p)
    if lo is None and hi is None:
        lw.bind(node.output[0], lw.value(node.input[0]))
        return
    code = _CLIPS.get((lo, hi))
    if code is not None:
        _unary_op(lw, node, code)
        return
    value = lw.as_float(node.input[0])
    shape = lw.tshape(value)
    current = value.index
    for bound, op in ((lo, "MAXIMUM"), (hi, "MINIMUM")):
        if bound is None:
            continue
        last = op == "MINIMUM" or hi is None
        target = lw.define(node.output[0], shape, value.nhwc, value.order) if last else lw.temp(shape, hint=op)
        lw.op(op, [current, lw.weight(np.array([bound], np.float32), f"{node.name}/{op.lower()}")], [target])
        current = target


@rule("HardSigmoid", check=static_shapes)
def hard_sigmoid(lw: Lowerer, node: onnx.NodeProto) -> None:
    """max(0, min(1, alpha * x + beta)) in float."""
    a = attrs(node)
    value = lw.as_float(node.input[0])
    shape = lw.tshape(value)
    current = value.index
    steps = (("MUL", a.get("alpha", 0.2)), ("ADD", a.get("beta", 0.5)), ("MAXIMUM", 0.0), ("MINIMUM", 1.0))
    for i, (code, constant) in enumerate(steps):
        last = i == len(steps) - 1
        target = lw.define(node.output[0], shape, value.nhwc, value.order) if last else lw.temp(shape, hint=code)
        lw.op(code, [current, lw.weight(np.array([constant], np.float32), f"{node.name}/{code.lower()}")], [target])
        current = target


def _check_prelu(node: onnx.NodeProto, p: Prepared) -> str | None:
    return "its slope is not a constant" if node.input[1] not in p.consts else static_shapes(node, p)


@rule("PRelu", check=_check_prelu)
def prelu(lw: Lowerer, node: onnx.NodeProto) -> None:
    """PRELU in float; in int8 for the Edge TPU (which maps only int8 ops) where the QDQ graph gives both
    sides a grid, its slopes on one int8 grid (TFLite's PRELU takes a per-tensor one)."""
    grid = lw.quantized([node.input[0]], node.output[0]) if lw.delegate == "edgetpu" else None
    value = lw.operand(node.input[0], grid is not None)
    shape = lw.tshape(value)
    alpha = layout_const(lw.const(node.input[1]).astype(np.float32), len(shape), value.nhwc, value.order)
    alpha = np.broadcast_to(alpha, shape[len(shape) - alpha.ndim:]).copy()  # PRELU wants alpha without broadcast rank gaps
    if grid is None:
        slope = lw.weight(alpha, f"{node.name}/alpha")
    else:
        step = float(np.abs(alpha).max()) / 127 or 1.0
        slope = lw.weight(np.round(alpha / step).astype(np.int8), f"{node.name}/alpha", QParams.of(step, 0))
    lw.op("PRELU", [value.index, slope], [lw.define(node.output[0], shape, value.nhwc, value.order, grid)])


def _check_binary(node: onnx.NodeProto, p: Prepared) -> str | None:
    variable = [i for i in node.input if i not in p.consts]
    ranks = {len(p.shapes[i]) for i in variable if i in p.shapes}
    if len(ranks) > 1:
        return "both operands are computed but have different ranks (broadcast across ranks is not supported)"
    const_ranks = {p.consts[i].ndim for i in node.input if i in p.consts}
    if ranks and const_ranks and max(const_ranks) > max(ranks):
        return (f"a constant of rank {max(const_ranks)} meets a computed operand of rank {max(ranks)} (a constant map "
                "plus a value computed without the map's axes, such as a sum over the whole latent), a broadcast "
                "the lowering does not lay out; give the computed value the map's rank (a [N, C, 1, 1] view)")
    if ranks and max(ranks) > 4:
        return "tensors of rank > 4 are not supported"
    return static_shapes(node, p)


@rule(*_BINARY, check=_check_binary)
def binary(lw: Lowerer, node: onnx.NodeProto) -> None:
    code = _BINARY[node.op_type]
    out = node.output[0]
    variable = [i for i in node.input if lw.const(i) is None]
    qconsts = {i: lw.p.quant.constants.get(i) for i in node.input if lw.const(i) is not None}
    int8_consts = all(q is not None and q.params.per_tensor and q.data.dtype == np.int8 for q in qconsts.values())
    grid = lw.quantized(variable, out) if int8_consts and code != "DIV" else None
    ref = lw.operand(variable[0], grid is not None)
    operands = []
    for name in node.input:
        if name in variable:
            value = lw.operand(name, grid is not None)
            operands.append(lw.reorder(value, ref.order).index)
            continue
        rank, hint = len(lw.tshape(ref)), f"{node.name}/{name}"
        if grid is not None:
            qc = qconsts[name]
            operands.append(lw.weight(layout_const(qc.data, rank, ref.nhwc, ref.order), hint, qc.params))
        else:
            operands.append(lw.weight(layout_const(lw.const(name).astype(np.float32), rank, ref.nhwc, ref.order), hint))
    lw.op(code, operands, [lw.define(out, _broadcast(lw, operands), ref.nhwc, ref.order, grid)])



_COMPARE = {"Greater": "GREATER", "Less": "LESS", "GreaterOrEqual": "GREATER_EQUAL", "LessOrEqual": "LESS_EQUAL",
            "Equal": "EQUAL"}


def _float_operands(lw: Lowerer, names: list[str]) -> tuple[list[int], Value]:
    """Float operands in the layout of the first computed one (constants laid out to match), and that one."""
    variable = [n for n in names if lw.const(n) is None]
    ref = lw.as_float(variable[0])
    operands = []
    for name in names:
        if name in variable:
            operands.append(lw.reorder(lw.as_float(name), ref.order).index)
        else:
            array = lw.const(name)
            array = array.astype(np.float32) if array.dtype != np.bool_ else array
            operands.append(lw.weight(layout_const(array, len(lw.tshape(ref)), ref.nhwc, ref.order),
                                      f"{lw.node.name}/{name}"))
    return operands, ref


def _broadcast(lw: Lowerer, operands: list[int]) -> list[int]:
    return [int(d) for d in np.broadcast_shapes(*(tuple(lw.b.shape(i)) for i in operands))]


@rule(*_COMPARE, check=_check_binary)
def compare(lw: Lowerer, node: onnx.NodeProto) -> None:
    """A float comparison giving a bool tensor (e.g. an exporter's softplus threshold)."""
    operands, ref = _float_operands(lw, list(node.input))
    lw.op(_COMPARE[node.op_type], operands,
          [lw.define(node.output[0], _broadcast(lw, operands), ref.nhwc, ref.order, dtype="bool")])


def _check_where(node: onnx.NodeProto, p: Prepared) -> str | None:
    if node.input[0] in p.consts or all(i in p.consts for i in node.input[1:]):
        return "a Where with a constant condition or constant branches is not supported"
    return _check_binary(node, p)


@rule("Where", check=_check_where)
def where(lw: Lowerer, node: onnx.NodeProto) -> None:
    """SELECT_V2 of two float branches by a computed condition."""
    operands, ref = _float_operands(lw, list(node.input))
    lw.op("SELECT_V2", operands, [lw.define(node.output[0], _broadcast(lw, operands), ref.nhwc, ref.order)])


@rule("Softplus", check=static_shapes)
def softplus(lw: Lowerer, node: onnx.NodeProto) -> None:
    """log(exp(x) + 1) in float."""
    value = lw.as_float(node.input[0])
    shape = lw.tshape(value)
    exp, plus = lw.temp(shape, hint="exp"), lw.temp(shape, hint="exp_plus_1")
    lw.op("EXP", [value.index], [exp])
    lw.op("ADD", [exp, lw.weight(np.array([1.0], np.float32), f"{node.name}/one")], [plus])
    lw.op("LOG", [plus], [lw.define(node.output[0], shape, value.nhwc, value.order)])


def _check_norm(node: onnx.NodeProto, p: Prepared) -> str | None:
    if any(i not in p.consts for i in node.input[1:] if i):
        return "its scale, bias (and statistics) must be constants"
    if node.input[0] in p.shapes and len(p.shapes[node.input[0]]) not in (3, 4):
        return "only 3-D (N, C, L) and 4-D (NCHW) inputs are supported"
    if node.op_type == "BatchNormalization" and attrs(node).get("training_mode", 0):
        return "training_mode=1 is not supported"
    return static_shapes(node, p)


def _affine(lw: Lowerer, node: onnx.NodeProto, value: Value, scale: np.ndarray, shift: np.ndarray) -> None:
    """out = value * scale + shift, per channel (ONNX axis 1), in float."""
    shape = lw.tshape(value)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    c_scale = layout_const(scale.reshape(per_channel).astype(np.float32), len(shape), value.nhwc, value.order)
    c_shift = layout_const(shift.reshape(per_channel).astype(np.float32), len(shape), value.nhwc, value.order)
    scaled = lw.temp(shape, hint="scaled")
    lw.op("MUL", [value.index, lw.weight(c_scale, f"{node.name}/scale")], [scaled])
    lw.op("ADD", [scaled, lw.weight(c_shift, f"{node.name}/shift")],
          [lw.define(node.output[0], shape, value.nhwc, value.order)])


@rule("BatchNormalization", check=_check_norm)
def batch_norm(lw: Lowerer, node: onnx.NodeProto) -> None:
    gamma, beta, mean, var = (lw.const(i).astype(np.float64) for i in node.input[1:5])
    scale = gamma / np.sqrt(var + attrs(node).get("epsilon", 1e-5))
    _affine(lw, node, lw.as_float(node.input[0]), scale, beta - mean * scale)


@rule("InstanceNormalization", check=_check_norm)
def instance_norm(lw: Lowerer, node: onnx.NodeProto) -> None:
    """(x - mean) * rsqrt(var + eps) over the spatial axes per channel, then the affine scale and bias.
    A 3-D input [N, C, L] (GroupNorm as exporters write it: reshaped to [N, groups, -1]) is kept in ONNX order."""
    value = lw.as_float(node.input[0])
    shape = lw.tshape(value)
    spatial = [1, 2] if value.nhwc else list(range(2, len(shape)))
    stat_shape = [1 if axis in spatial else d for axis, d in enumerate(shape)]
    axes = lw.int32(spatial, "axes")
    keep = lw.options("Reducer", keepDims=True)
    mean, centered, square, var, ve, inv, normed = (
        lw.temp(s, hint=h) for s, h in ((stat_shape, "mean"), (shape, "centered"), (shape, "square"),
                                        (stat_shape, "var"), (stat_shape, "var_eps"), (stat_shape, "rsqrt"),
                                        (shape, "normalized")))
    eps = lw.weight(np.array([attrs(node).get("epsilon", 1e-5)], np.float32), f"{node.name}/epsilon")
    lw.op("MEAN", [value.index, axes], [mean], keep)
    lw.op("SUB", [value.index, mean], [centered])
    lw.op("MUL", [centered, centered], [square])
    lw.op("MEAN", [square, axes], [var], keep)
    lw.op("ADD", [var, eps], [ve])
    lw.op("RSQRT", [ve], [inv])
    lw.op("MUL", [centered, inv], [normed])
    _affine(lw, node, Value(normed, value.nhwc, value.order), lw.const(node.input[1]), lw.const(node.input[2]))
