"""Conv -> CONV_2D / DEPTHWISE_CONV_2D, ConvTranspose -> TRANSPOSE_CONV, Gemm/MatMul -> FULLY_CONNECTED.

Padding: TF's SAME where it reproduces the ONNX pads, VALID where there are none, else an
explicit PAD before a VALID conv; a TRANSPOSE_CONV whose pads SAME cannot express is computed
VALID and sliced.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..layout import tfl_shape
from ..lower import Lowerer, Value
from ..prepare import Prepared, attrs
from . import rule, static_shapes
from .weights import Weights, bias_tensor


def _spatial(node: onnx.NodeProto, p: Prepared) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, strides, dilations and ONNX pads [top, left, bottom, right] of a 2-D conv."""
    a = attrs(node)
    w = p.consts[node.input[1]]
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    auto = a.get("auto_pad", "NOTSET")
    if node.op_type == "Conv" and auto in ("SAME_UPPER", "SAME_LOWER"):
        size = p.shapes[node.input[0]][2:]
        pads = [0, 0, 0, 0]
        for i in range(2):
            out = -(-size[i] // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size[i], 0)
            small, large = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, large) if auto == "SAME_UPPER" else (large, small)
    return kernel, strides, dilations, pads


def _check_conv(node: onnx.NodeProto, p: Prepared) -> str | None:
    if node.input[1] not in p.consts:
        return "its weights are not a constant"
    if p.consts[node.input[1]].ndim != 4:
        return "only 2-D convolutions (4-D weights) are supported"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in p.consts:
        return "its bias is not a constant"
    group = attrs(node).get("group", 1)
    cout, cin_per_group = p.consts[node.input[1]].shape[:2]
    if group != 1 and not (cin_per_group == 1 and cout % group == 0):
        return f"grouped convolution with group={group} (not 1, not depthwise) has no TFLite builtin"
    return static_shapes(node, p)


def same_padding(size: list[int], kernel: list[int], strides: list[int], dilations: list[int],
                  pads: list[int]) -> str | None:
    """'SAME' or 'VALID' when TF's padding scheme gives exactly these ONNX pads, else None."""
    if not any(pads):
        return "VALID"
    for i in range(2):
        out = -(-size[i] // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size[i], 0)
        if (pads[i], pads[i + 2]) != (total // 2, total - total // 2):
            return None
    return "SAME"


def _explicit_pad(lw: Lowerer, value: Value, pads: list[int]) -> Value:
    """PAD with zeros (the zero point on int8) in H and W: pads are ONNX [top, left, bottom, right]."""
    n, h, w, c = lw.tshape(value)
    shape = [n, h + pads[0] + pads[2], w + pads[1] + pads[3], c]
    out = lw.temp(shape, value.quant, hint="pad")
    paddings = lw.int32([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], "paddings")
    lw.op("PAD", [value.index, paddings], [out])
    return Value(out, True, value.order, value.quant)


@rule("Conv", check=_check_conv)
def conv(lw: Lowerer, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    group = attrs(node).get("group", 1)
    kernel, strides, dilations, pads = _spatial(node, lw.p)
    weights = Weights.of(lw, node.input[1], 0)
    grid = lw.quantized([x], out) if weights.quantized else None
    value = lw.operand(x, grid is not None)
    depthwise = group > 1
    if value.order is not None:
        if depthwise:
            value = lw.reorder(value, None)
        else:
            weights = weights.take(value.order, 1)
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    order = None if depthwise else lw.plan.get(out)
    cout = weights.real.shape[0]
    bias = bias_tensor(lw, bias_name, cout, order, f"{node.name}/bias",
                       value.quant.scale[0] if grid else None, weights.scale)
    if order is not None:
        weights = weights.take(order, 0)
    padding = same_padding(lw.shape(x)[2:], kernel, strides, dilations, pads)
    if padding is None:
        value, padding = _explicit_pad(lw, value, pads), "VALID"
    fb = lw.fb
    common = dict(padding=getattr(fb.Padding, padding), strideH=strides[0], strideW=strides[1],
                  dilationHFactor=dilations[0], dilationWFactor=dilations[1])
    if depthwise:
        filt = weights.transpose((1, 2, 3, 0))  # [Cout,1,kh,kw] -> [1,kh,kw,Cout]
        code, options = "DEPTHWISE_CONV_2D", lw.options("DepthwiseConv2D", depthMultiplier=cout // group, **common)
    else:
        filt = weights.transpose((0, 2, 3, 1))  # [Cout,Cin,kh,kw] -> [Cout,kh,kw,Cin]
        code, options = "CONV_2D", lw.options("Conv2D", **common)
    out_index = lw.define(out, tfl_shape(lw.shape(out), True), True, order, grid)
    lw.op(code, [value.index, filt.tensor(lw, f"{node.input[1]}/{node.name}", grid is not None), bias],
          [out_index], options)


def _check_conv_transpose(node: onnx.NodeProto, p: Prepared) -> str | None:
    a = attrs(node)
    if node.input[1] not in p.consts or p.consts[node.input[1]].ndim != 4:
        return "only 2-D transposed convolutions with constant weights are supported"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in p.consts:
        return "its bias is not a constant"
    if a.get("group", 1) != 1:
        return "grouped transposed convolution has no TFLite builtin"
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return "dilated transposed convolution has no TFLite builtin"
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "output_shape / auto_pad SAME are not supported; export with explicit pads"
    pads = a.get("pads", [0, 0, 0, 0])
    extra = a.get("output_padding", [0, 0])
    if any(extra[i] > pads[i + 2] for i in range(2)):
        return f"output_padding {list(extra)} larger than the end pads {pads[2:]} is not supported"
    return static_shapes(node, p)


@rule("ConvTranspose", check=_check_conv_transpose)
def conv_transpose(lw: Lowerer, node: onnx.NodeProto) -> None:
    x, out = node.input[0], node.output[0]
    kernel, strides, _, pads = _spatial(node, lw.p)
    weights = Weights.of(lw, node.input[1], 1)
    grid = lw.quantized([x], out) if weights.quantized else None
    value = lw.operand(x, grid is not None)
    if value.order is not None:
        weights = weights.take(value.order, 0)
    order = lw.plan.get(out)
    cout = weights.real.shape[1]
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    size = lw.shape(x)[2:]
    final = tfl_shape(lw.shape(out), True)
    phases = _phase_taps(kernel, strides, pads, size, final[1:3])
    subpixel = lw.delegate == "xnnpack" and strides[0] == strides[1] > 1 and phases
    bias = bias_tensor(lw, bias_name, cout, order, f"{node.name}/bias", value.quant.scale[0] if grid else None,
                       weights.scale, repeat=strides[0] ** 2 if subpixel else 1)
    if order is not None:
        weights = weights.take(order, 1)
    if subpixel:
        _subpixel(lw, value, weights, bias, phases, strides[0], out, final, order, grid)
        return
    filt = weights.transpose((1, 2, 3, 0)).tensor(lw, f"{node.input[1]}/{node.name}", grid is not None)
    same = all(final[1 + i] == size[i] * strides[i] and kernel[i] >= strides[i]
               and pads[i] == (kernel[i] - strides[i]) // 2 for i in range(2))
    full = [1, *((size[i] - 1) * strides[i] + kernel[i] for i in range(2)), cout]
    conv_shape = final if same else full
    options = lw.options("TransposeConv", padding=lw.fb.Padding.SAME if same else lw.fb.Padding.VALID,
                         strideH=strides[0], strideW=strides[1])
    inputs = [lw.int32(conv_shape, "output_shape"), filt, value.index, bias]
    if conv_shape == final:  # SAME, or VALID with nothing to crop
        lw.op("TRANSPOSE_CONV", inputs, [lw.define(out, final, True, order, grid)], options)
        return
    computed = lw.temp(full, grid, hint="full")
    lw.op("TRANSPOSE_CONV", inputs, [computed], options)
    begin = lw.int32([0, pads[0], pads[1], 0], "begin")
    lw.op("SLICE", [computed, begin, lw.int32(final, "size")], [lw.define(out, final, True, order, grid)])


def _phase_taps(kernel: list[int], strides: list[int], pads: list[int], size: list[int],
                out: list[int]) -> list[tuple[list[list[tuple[int, int]]], int, int]] | None:
    """Per axis: for each output phase r (output y = s*m + r) the (kernel tap, input offset) pairs of
    a transposed convolution, and the zero padding before/after that a stride-1 conv over the
    input needs to compute every phase; None where that form needs cropping instead."""
    axes = []
    for i in range(2):
        s, k, pad = strides[i], kernel[i], pads[i]
        taps = [[(t, (r + pad - t) // s) for t in range(k) if (r + pad - t) % s == 0] for r in range(s)]
        offsets = [d for phase in taps for _, d in phase]
        rows = -(-out[i] // s)
        before, after = -min(offsets), rows - 1 + max(offsets) - (size[i] - 1)
        if before < 0 or after < 0:
            return None
        axes.append((taps, before, after))
    return axes


def _subpixel(lw: Lowerer, value: Value, weights: Weights, bias: int, phases: list, s: int, out: str,
              final: list[int], order, grid) -> None:
    """A strided TRANSPOSE_CONV as one stride-1 CONV_2D computing every output phase (sub-pixel
    convolution) and DEPTH_TO_SPACE: the same weights (the same integers on int8), rearranged;
    `bias` is already repeated per phase. XNNPACK's transposed convolution is slow (fp32 on few
    output channels, int8 nearly always); its CONV_2D is not."""
    (taps_y, top, bottom), (taps_x, left, right) = phases
    ty = top + max(d for phase in taps_y for _, d in phase) + 1
    tx = left + max(d for phase in taps_x for _, d in phase) + 1
    cin, cout = weights.real.shape[:2]
    int8 = grid is not None
    real = np.zeros((s * s * cout, ty, tx, cin), np.float32)
    q = np.zeros(real.shape, np.int8) if int8 else None
    for ry in range(s):
        for rx in range(s):
            rows = slice((ry * s + rx) * cout, (ry * s + rx + 1) * cout)
            for ky, dy in taps_y[ry]:
                for kx, dx in taps_x[rx]:
                    real[rows, dy + top, dx + left, :] = weights.real[:, :, ky, kx].T
                    if int8:
                        q[rows, dy + top, dx + left, :] = weights.q[:, :, ky, kx].T
    scale = None
    if int8:
        scale = np.tile(weights.scale, s * s) if weights.scale.size > 1 else weights.scale
    filt = Weights(real, q, scale, 0).tensor(lw, f"{lw.node.name}/subpixel_filter", int8)
    padded = _explicit_pad(lw, value, [top, left, bottom, right]) if top + left + bottom + right else value
    n, h, w, _ = lw.tshape(padded)
    rows, cols = h - ty + 1, w - tx + 1
    computed = lw.temp([n, rows, cols, s * s * cout], grid, hint="phases")
    lw.op("CONV_2D", [padded.index, filt, bias], [computed],
          lw.options("Conv2D", padding=lw.fb.Padding.VALID, strideH=1, strideW=1, dilationHFactor=1,
                     dilationWFactor=1))
    if [rows * s, cols * s] == final[1:3]:
        lw.op("DEPTH_TO_SPACE", [computed], [lw.define(out, final, True, order, grid)],
              lw.options("DepthToSpace", blockSize=s))
        return
    spread = lw.temp([n, rows * s, cols * s, cout], grid, hint="spread")
    lw.op("DEPTH_TO_SPACE", [computed], [spread], lw.options("DepthToSpace", blockSize=s))
    lw.op("SLICE", [spread, lw.int32([0, 0, 0, 0], "begin"), lw.int32(final, "size")],
          [lw.define(out, final, True, order, grid)])


def _check_dense(node: onnx.NodeProto, p: Prepared) -> str | None:
    a = attrs(node)
    if node.input[1] not in p.consts or p.consts[node.input[1]].ndim != 2:
        return "only a constant 2-D weight matrix (B) is supported"
    rank = len(p.shapes[node.input[0]]) if node.input[0] in p.shapes else 2
    if rank != 2 and (node.op_type != "MatMul" or rank != 3):
        return "only 2-D inputs (and 3-D ones to a MatMul: a Linear over tokens) are supported"
    if a.get("transA", 0):
        return "transA=1 is not supported"
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in p.consts:
            return "a non-constant C is not supported"
        n = p.consts[node.input[1]].shape[0 if a.get("transB", 0) else 1]
        if p.consts[node.input[2]].size not in (1, n):
            return "C must be a per-output vector or a scalar"
    return static_shapes(node, p)


@rule("Gemm", "MatMul", check=_check_dense)
def dense(lw: Lowerer, node: onnx.NodeProto) -> None:
    a = attrs(node)
    x, out = node.input[0], node.output[0]
    trans_b = a.get("transB", 0) if node.op_type == "Gemm" else 0
    weights = Weights.of(lw, node.input[1], 0 if trans_b else 1)
    if not trans_b:
        weights = weights.transpose((1, 0))  # -> [N, K]
    weights = weights.scaled(a.get("alpha", 1.0)) if a.get("alpha", 1.0) != 1.0 else weights
    grid = lw.quantized([x], out) if weights.quantized else None
    value = lw.operand(x, grid is not None)
    if value.order is not None:
        weights = weights.take(value.order, 1)
    n = weights.real.shape[0]
    c_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    beta = a.get("beta", 1.0)
    if c_name is not None and (beta != 1.0 or lw.const(c_name).size == 1):
        lw.p.consts[f"{c_name}/{node.name}"] = np.broadcast_to(lw.const(c_name).reshape(-1) * beta, (n,)).copy()
        c_name = f"{c_name}/{node.name}"
    tokens = len(lw.tshape(value)) == 3  # [N, T, K] in ONNX order: a Linear applied to every token
    order = lw.plan.get(out) if not tokens else None
    bias = bias_tensor(lw, c_name, n, order, f"{node.name}/bias", value.quant.scale[0] if grid else None,
                       weights.scale)
    if order is not None:
        weights = weights.take(order, 0)
    out_index = lw.define(out, lw.shape(out), False, order, grid)
    lw.op("FULLY_CONNECTED", [value.index, weights.tensor(lw, f"{node.input[1]}/{node.name}", grid is not None),
                              bias], [out_index], lw.options("FullyConnected", keepNumDims=tokens))
