"""Resize: nearest at integer factors as CONCATENATION + RESHAPE (XNNPACK never takes
RESIZE_NEAREST_NEIGHBOR), other nearest mappings as RESIZE_NEAREST_NEIGHBOR, linear as
RESIZE_BILINEAR, and cubic at integer factors as an edge pad, one CONV_2D holding every output
phase's separable 4-tap filter, and DEPTH_TO_SPACE (exact ONNX cubic; float, an island on int8)."""

from __future__ import annotations

import numpy as np
import onnx

from ....resample import onnx_nearest, phase_filters
from ..layout import tfl_shape
from ..lower import Lowerer, Value
from ..prepare import Prepared, attrs
from . import rule, static_shapes
from .tiling import edge_pad, tile

# nearest-neighbour x k is written as CONCATENATION + RESHAPE up to this k
MAX_REPLICATION = 8

_NEAREST_FLAGS = ((False, False), (False, True), (True, False))
_LINEAR_FLAGS = {"half_pixel": (False, True), "pytorch_half_pixel": (False, True),
                 "align_corners": (True, False), "asymmetric": (False, False)}


def tflite_nearest(out_len: int, in_len: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Source index of every output position of TFLite's RESIZE_NEAREST_NEIGHBOR."""
    x = np.arange(out_len, dtype=np.float32)
    scale = np.float32((in_len - 1) / (out_len - 1) if align_corners and out_len > 1 else in_len / out_len)
    offset = np.float32(0.5 if half_pixel else 0.0)
    src = np.round((x + offset) * scale) if align_corners else np.floor((x + offset) * scale)
    src = np.minimum(src, in_len - 1)
    return (np.maximum(src, 0) if half_pixel else src).astype(int)


def _plan(node: onnx.NodeProto, p: Prepared) -> tuple[str, tuple] | str:
    """('replicate', (kh, kw)) | ('nearest'|'bilinear', (align_corners, half_pixel)) |
    ('cubic', ((fh, ph), (fw, pw))), or why the resize cannot be lowered."""
    a = attrs(node)
    src, dst = p.shapes[node.input[0]], p.shapes[node.output[0]]
    if len(src) != 4 or src[:2] != dst[:2]:
        return "only 4-D resizes of H and W are supported"
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    scales = p.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if mode != "nearest" and ctm != "align_corners" and scales is not None and scales.size == 4 and any(
            s * float(k) != d for s, k, d in zip(src[2:], scales[2:], dst[2:])):
        return (f"a {mode} resize by scales {[float(k) for k in scales[2:]]} of {src[2]}x{src[3]} (to "
                f"{dst[2]}x{dst[3]}, not a whole size) maps pixels by 1/scale, TFLite's by {src[2]}/{dst[2]}: "
                "export the resize with size=(H, W) instead of scale_factor, or build at a size where every "
                "scaled side is whole")
    if a.get("antialias", 0) and any(d < s for d, s in zip(dst[2:], src[2:])):
        return "antialiased downscaling is not supported"
    if mode == "linear":
        if ctm not in _LINEAR_FLAGS or (ctm == "pytorch_half_pixel" and min(dst[2:]) == 1):
            return f"linear resize with coordinate_transformation_mode={ctm} is not supported"
        return "bilinear", _LINEAR_FLAGS[ctm]
    if mode == "cubic":
        if a.get("exclude_outside", 0):
            return "cubic resize with exclude_outside=1 is not supported"
        filters = [phase_filters(d, s, ctm, a.get("cubic_coeff_a", -0.75)) for d, s in zip(dst[2:], src[2:])]
        if any(f is None for f in filters):
            return (f"cubic resize is supported at integer upscaling factors with half_pixel/pytorch_half_pixel/"
                    f"asymmetric coordinates on inputs larger than 6 pixels; got {src[2:]} -> {dst[2:]}, {ctm}")
        return "cubic", tuple(filters)
    if mode != "nearest":
        return f"mode={mode} is not supported (nearest, linear, cubic)"
    maps = [onnx_nearest(d, s, ctm, a.get("nearest_mode", "round_prefer_floor")) for d, s in zip(dst[2:], src[2:])]
    if any(m is None for m in maps):
        return f"nearest resize with coordinate_transformation_mode={ctm} is not supported"
    factors = tuple(d // s for d, s in zip(dst[2:], src[2:]))
    if all(d % s == 0 and np.array_equal(m, np.arange(d) // (d // s)) for m, d, s in zip(maps, dst[2:], src[2:])) \
            and max(factors) <= MAX_REPLICATION:
        return "replicate", factors
    for flags in _NEAREST_FLAGS:
        if all(np.array_equal(m, tflite_nearest(d, s, *flags)) for m, d, s in zip(maps, dst[2:], src[2:])):
            return "nearest", flags
    return "this nearest resize has no TFLite equivalent (pixel mapping differs)"


def _check(node: onnx.NodeProto, p: Prepared) -> str | None:
    why = static_shapes(node, p)
    if why:
        return why
    plan = _plan(node, p)
    return plan if isinstance(plan, str) else None


@rule("Resize", check=_check)
def resize(lw: Lowerer, node: onnx.NodeProto) -> None:
    kind, params = _plan(node, lw.p)
    out = node.output[0]
    value = lw.operand(node.input[0], kind != "cubic" and lw.keeps_grid(node.input[0]))
    final = tfl_shape(lw.shape(out), True)
    if kind == "replicate":
        _replicate(lw, value, params, out, final)
    elif kind == "cubic":
        _cubic(lw, value, params, out, final)
    else:
        code = "RESIZE_NEAREST_NEIGHBOR" if kind == "nearest" else "RESIZE_BILINEAR"
        options = lw.options("ResizeNearestNeighbor" if kind == "nearest" else "ResizeBilinear",
                             alignCorners=params[0], halfPixelCenters=params[1])
        lw.emit_keeping_grid(code, [value.index, lw.int32(final[1:3], "size")], out, final, True, value.quant,
                             options, value.order)


def _replicate(lw: Lowerer, value: Value, factors: tuple[int, int], out: str, final: list[int]) -> None:
    """Nearest x(kh, kw): tile along C and RESHAPE (repeats each pixel along W), then tile along W
    (repeats each row) and RESHAPE into the output."""
    n, h, w, c = lw.tshape(value)
    kh, kw = factors
    current = value.index
    if kw > 1:
        shape = [n, h, w * kw, c]
        moved = lw.temp(shape, value.quant, hint="repeat_w")
        lw.op("RESHAPE", [tile(lw, current, 3, kw), lw.int32(shape, "shape")], [moved],
              lw.options("Reshape", newShape=shape))
        current = moved
    if kh > 1:
        current = tile(lw, current, 2, kh)
    lw.emit_keeping_grid("RESHAPE", [current, lw.int32(final, "shape")], out, final, True, value.quant,
                         lw.options("Reshape", newShape=final), value.order)


def _cubic(lw: Lowerer, value: Value, filters: tuple, out: str, final: list[int]) -> None:
    """Edge pad, CONV_2D with output channel (py*s + px)*C + c = filter_y[py] x filter_x[px] on
    channel c, then DEPTH_TO_SPACE(s)."""
    (fy, pad_y), (fx, pad_x) = filters
    s = fy.shape[0]
    if fx.shape[0] != s:
        raise lw.unsupported("cubic resize needs the same factor on H and W")
    value = lw.reorder(value, None)
    n, h, w, c = lw.tshape(value)
    padded = edge_pad(lw, value.index, {1: (pad_y, pad_y), 2: (pad_x, pad_x)})
    kernel = np.einsum("ak,bl->abkl", fy, fx).reshape(s * s, fy.shape[1], fx.shape[1])  # phase (py, px)
    weights = np.zeros((s * s * c, fy.shape[1], fx.shape[1], c), np.float32)
    for phase in range(s * s):
        for ch in range(c):
            weights[phase * c + ch, :, :, ch] = kernel[phase]
    phases = lw.temp([n, h, w, s * s * c], hint="cubic_phases")
    options = lw.options("Conv2D", padding=lw.fb.Padding.VALID, strideH=1, strideW=1, dilationHFactor=1,
                         dilationWFactor=1)
    lw.op("CONV_2D", [padded, lw.weight(weights, f"{lw.node.name}/cubic_filter"),
                      lw.weight(np.zeros(s * s * c, np.float32), f"{lw.node.name}/cubic_bias")], [phases], options)
    lw.op("DEPTH_TO_SPACE", [phases], [lw.define(out, final, True)], lw.options("DepthToSpace", blockSize=s))
