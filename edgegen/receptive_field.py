"""Receptive fields and coordinate maps from the Graph: the spatial program behind ROI, edits and tiles.

Walking back from an image output through spatially local ops (convolutions, pooling, resizes,
pixel (un)shuffles, pads, per-pixel and channel-wise ops), the analysis records for every op its
per-axis geometry and for every tensor its scale (how an offset in output pixels moves it). The
walk stops at the *roots*: graph inputs, or tensors computed by a projection from non-spatial
tensors (a Gemm reshaped to a map, an embedding expanded over the frame, a 1x1 latent through a
transposed conv). Roots are computed whole by a small `pre` graph; the local rest (`post`) runs on a
crop. A global op on the way, map in and map out (InstanceNormalization, attention, reshapes of a map),
means no ROI: `RoiRefused` names it. A tensor read beside the map that is computed from the whole image
but is not a map at its scale (a squeeze-excite gate; the 3-D tensor GroupNorm's exported Reshapes turn
back into a map) is a root too, computed whole.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from onnx import helper, numpy_helper

from .graph import Graph
from .runtime.geometry import out_size, scale_factor

POINTWISE = {"Relu", "LeakyRelu", "PRelu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Elu", "Selu",
             "Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Cast", "Identity",
             "Dropout", "Erf", "Gelu", "Mish", "Round", "Floor", "Ceil", "Sign", "Not", "BatchNormalization",
             "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Greater", "Less",
             "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Sin", "Cos", "ThresholdedRelu", "Shrink", "LRN"}
CHANNEL_AXIS_OPS = {"Concat", "Split", "Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin"}
REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


# ops whose every output pixel depends on the whole frame (statistics, global pooling, attention)
_GLOBAL_OPS = {"InstanceNormalization", "GroupNormalization", "LayerNormalization", "MeanVarianceNormalization",
               "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MatMul", "Gemm", "Softmax", "Einsum", "TopK",
               *REDUCE_OPS}


class RoiRefused(Exception):
    """The output cannot be computed by region: names the node and op that prevent it."""


def _why_not_local(node, consts) -> str:
    op = node.op_type
    if op in _GLOBAL_OPS:
        return "mixes pixels across the whole frame"
    scales = node.input[2] if op == "Resize" and len(node.input) > 2 else ""
    if op == "Resize" and not (scales and scales in consts):
        sizes = node.input[3] if len(node.input) > 3 else ""
        given = "to a fixed size" if sizes in consts else "to sizes computed from another tensor's shape " \
            "(F.interpolate(size=t.shape[2:]) in a dynamic-size export)"
        return (f"resizes {given}, not by constant scales, so its ratio depends on the frame; the region planner "
                "maps resizes by constant scales: export with scale_factor= to get ROI")
    if op in ("Resize", "Upsample"):
        return ("is a resize the region planner does not map (it maps nearest, linear and cubic resizes by an "
                "integer ratio or its inverse, without align_corners, antialiasing, or pytorch_half_pixel below a "
                "2x upscale)")
    return ("moves pixels in a way the region planner does not map (it maps convolutions, pooling, resizes, "
            "pixel shuffles, pads and per-pixel ops)")


def spatial_program(graph: Graph, output: str) -> dict[str, Any]:
    """The spatial program of one image output (JSON-ready), or RoiRefused."""
    model = graph.model.graph
    shapes = graph.concrete_shapes()
    consts = {t.name: t for t in model.initializer}
    producer = {out: n for n in model.node for out in n.output}
    inputs = {s.name for s in graph.inputs}
    deps = graph.input_dependencies()  # tensors that depend on no input (weights, dequantized weights) are constants
    if not _spatial(shapes.get(output)):
        raise RoiRefused(f"output {output!r} is not an image map (shape {shapes.get(output)})")
    scales: dict[str, tuple[Fraction, Fraction]] = {output: (Fraction(1), Fraction(1))}
    roots: dict[str, bool] = {}
    ops: dict[str, dict[str, Any]] = {}
    stack = [output]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in inputs or node is None:
            roots[name] = True
            continue
        data = [x for x in node.input if x and x not in consts and deps.get(x)]
        kind, axes = _local(node, shapes, consts)
        mapped = data[:1] if kind in ("conv", "convT", "pool") else data  # a conv's weights are not pixels
        spatial_in = [x for x in mapped if _spatial(shapes.get(x))]
        if kind is None:
            if spatial_in:
                raise RoiRefused(f"node {node.name or node.op_type!r} ({node.op_type}) {_why_not_local(node, consts)}; "
                                 "ROI, edits and tiles need a model whose image path is local")
            roots[name] = True  # a projection from non-spatial tensors: computed whole
            continue
        if not spatial_in:
            roots[name] = True  # e.g. a transposed conv from a 1x1 latent: a projection too
            continue
        _check_sizes(node, kind, axes, spatial_in, name, shapes)
        if kind == "same" and any(_spatial(shapes.get(x)) for x in node.input if x and not deps.get(x)):
            raise RoiRefused(f"node {node.name or node.op_type!r} ({node.op_type}) applies a constant map of "
                             "the whole frame; ROI needs a model whose image path is local")
        ops[name] = {"node": node.name or node.op_type, "op": node.op_type, "kind": kind, "inputs": spatial_in,
                     "output": name, "axes": axes}
        for x in data:
            if x not in spatial_in:
                roots.setdefault(x, False)
        for x in spatial_in:
            want = tuple(s / scale_factor(kind, a) for s, a in zip(scales[name], axes))
            if x in scales and scales[x] != want:
                raise RoiRefused(f"tensor {x!r} is read at two different scales ({scales[x]} and {want}); "
                                 "ROI needs one coordinate map per tensor")
            if x not in scales:
                scales[x] = want
                stack.append(x)
    spatial_roots = [r for r, spatial in roots.items() if spatial and _spatial(shapes.get(r))]
    _check_proportional(output, spatial_roots, scales, ops, shapes)
    _check_holes(ops, shapes)
    side_roots = [r for r in roots if r not in spatial_roots]
    align = [math.lcm(*(s[axis].denominator for s in scales.values())) for axis in (0, 1)]
    order = [out for n in model.node for out in n.output if out in ops]
    return {
        "output": output,
        "roots": [{"name": r, "spatial": True, "scale": _pair(scales[r])} for r in spatial_roots] +
                 [{"name": r, "spatial": False} for r in side_roots],
        "ops": [ops[o] for o in order],
        "scales": {t: _pair(s) for t, s in scales.items()},
        "align": align,
        "needs_pre": any(r not in inputs for r in roots),
        "bytes_per_pixel": _bytes_per_pixel(ops, shapes, output),
    }


def _spatial(shape: list[int] | None) -> bool:
    return bool(shape) and len(shape) == 4 and (shape[2], shape[3]) != (1, 1)


def _pair(scale: tuple[Fraction, Fraction]) -> list[list[int]]:
    return [[s.numerator, s.denominator] for s in scale]


def _local(node, shapes: dict, consts: dict) -> tuple[str | None, list[dict[str, Any]]]:
    """(kind, per-axis params [H, W]) of a spatially local node, or (None, []) for anything else."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op in POINTWISE:
        return "same", [{}, {}]
    if op in ("QuantizeLinear", "DequantizeLinear"):  # per tensor, or per channel along axis 1
        return ("same", [{}, {}]) if attrs.get("axis", 1) % 4 in (0, 1) else (None, [])
    if op in CHANNEL_AXIS_OPS:
        axis = attrs.get("axis", 1 if op in ("Concat", "Split") else -1)
        rank = len(shapes.get(node.input[0], [0] * 4))
        return ("same", [{}, {}]) if axis % rank == 1 else (None, [])
    if op == "Slice":
        axes = numpy_helper.to_array(consts[node.input[3]]).tolist() if len(node.input) > 3 and \
            node.input[3] in consts else None
        rank = len(shapes.get(node.input[0], []))
        return ("same", [{}, {}]) if axes is not None and rank == 4 and all(a % 4 < 2 for a in axes) else (None, [])
    if op in REDUCE_OPS:
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = numpy_helper.to_array(consts[node.input[1]]).tolist()
        return ("same", [{}, {}]) if axes is not None and all(a % 4 == 1 for a in axes) else (None, [])
    if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"):
        return _windowed(node, attrs, shapes, consts)
    if op == "Resize":
        return _resize(node, attrs, consts)
    if op in ("DepthToSpace", "SpaceToDepth"):
        kind = "d2s" if op == "DepthToSpace" else "s2d"
        return kind, [{"b": attrs["blocksize"]}, {"b": attrs["blocksize"]}]
    if op == "Pad":
        return _pad(node, attrs, consts)
    return None, []


def _windowed(node, attrs, shapes, consts):
    if node.op_type.startswith("Conv"):
        if len(node.input) < 2 or node.input[1] not in shapes:
            return None, []
        kernel = shapes[node.input[1]][2:]
    else:
        kernel = attrs["kernel_shape"]
    if len(kernel) != 2 or "output_shape" in attrs:
        return None, []
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        n = shapes[node.input[0]][2:]
        totals = [max((math.ceil(n[i] / strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - n[i], 0)
                  for i in (0, 1)]
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = [first[0], first[1], totals[0] - first[0], totals[1] - first[1]]
    kind = "convT" if node.op_type == "ConvTranspose" else ("conv" if node.op_type == "Conv" else "pool")
    out_pad = attrs.get("output_padding", [0, 0])
    axes = []
    for i in (0, 1):
        a = {"k": int(kernel[i]), "s": int(strides[i]), "d": int(dilations[i]), "p0": int(pads[i]),
             "p1": int(pads[i + 2])}
        if kind == "convT":
            a["op"] = int(out_pad[i])
        if kind == "pool" and attrs.get("ceil_mode"):
            a["ceil"] = True
        axes.append(a)
    return kind, axes


def _resize(node, attrs, consts):
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = attrs.get("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    scales_name = node.input[2] if len(node.input) > 2 else ""
    if coord in ("align_corners", "tf_crop_and_resize") or not scales_name or scales_name not in consts:
        return None, []  # sizes fixed by the frame, or a mapping that depends on the frame size
    scales = numpy_helper.to_array(consts[scales_name]).tolist()
    if len(scales) != 4 or scales[0] != 1 or scales[1] != 1 or attrs.get("exclude_outside") \
            or attrs.get("antialias") and min(scales[2:]) < 1:  # an antialiased downscale widens its filter
        return None, []
    if coord == "pytorch_half_pixel" and min(scales[2:]) < 2:  # maps an output of length 1 to source 0: a narrow
        return None, []  # region would compute another value than the frame does
    nearest = attrs.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    axes = []
    for s in scales[2:]:
        frac = Fraction(s).limit_denominator(64)
        if abs(float(frac) - s) > 1e-6 or not (frac.denominator == 1 or frac.numerator == 1):
            return None, []
        axes.append({"scale": [frac.numerator, frac.denominator], "mode": mode, "coord": coord,
                     "nearest_mode": nearest})
    return "resize", axes


def _pad(node, attrs, consts):
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if len(node.input) < 2 or node.input[1] not in consts or len(node.input) > 3 and node.input[3]:
        return None, []
    pads = numpy_helper.to_array(consts[node.input[1]]).tolist()
    if len(pads) != 8 or any(pads[i] or pads[i + 4] for i in (0, 1)) or min(pads) < 0:
        return None, []
    if mode not in ("constant", "reflect", "edge"):
        return None, []
    return "pad", [{"p0": int(pads[2]), "p1": int(pads[6]), "mode": mode},
                   {"p0": int(pads[3]), "p1": int(pads[7]), "mode": mode}]


def _check_sizes(node, kind, axes, spatial_in, name, shapes) -> None:
    """Every spatial input must map onto the output by the op's own size rule (no hidden resizing)."""
    out = shapes[name][2:]
    for x in spatial_in:
        n = shapes[x][2:]
        if [out_size(kind, axes[i], n[i]) for i in (0, 1)] != out:
            raise RoiRefused(f"node {node.name or node.op_type!r} ({node.op_type}) maps a {n[0]}x{n[1]} input "
                             f"to {out[0]}x{out[1]}, which its geometry does not explain (broadcast over the frame?)")


def _check_proportional(output: str, roots: list[str], scales: dict, ops: dict, shapes: dict) -> None:
    """A crop of a root must give the matching part of the output: the output's size must be the roots'
    times their scale (a ConvTranspose k3 s2 p1 without output_padding gives 2n - 1 rows, one short)."""
    out = shapes[output][2:]
    for root in roots:
        expected = [float(shapes[root][2 + i] / scales[root][i]) for i in (0, 1)]
        if expected == out:
            continue
        off = [op for op in ops.values() if op["kind"] != "pad" and _off_scale(op, shapes)]
        off = off or [op for op in ops.values() if _off_scale(op, shapes)]  # a Pad that adds rows of its own
        culprits = [f"{op['node']!r} ({op['op']}: {'x'.join(map(str, shapes[op['inputs'][0]][2:]))} -> "
                    f"{'x'.join(map(str, shapes[op['output']][2:]))})" for op in off]
        hint = " (a ConvTranspose k3 s2 p1 needs output_padding=1)" if any(op["kind"] == "convT" for op in off) else ""
        raise RoiRefused(f"output {output!r} is {out[0]}x{out[1]} where its input {root!r} "
                         f"({shapes[root][2]}x{shapes[root][3]}) maps to {expected[0]:g}x{expected[1]:g}"
                         f"{' (' + ', '.join(culprits) + ')' if culprits else ''}, so a crop of the input would not "
                         f"give the matching part of the output; ROI, edits and tiles need an output whose size "
                         f"follows the input's{hint}")


def _off_scale(op: dict, shapes: dict) -> bool:
    """Whether an op's output size is not its input's times its scale (a Pad adding rows, a ConvTranspose giving
    2n - 1 rows)."""
    sizes = shapes[op["inputs"][0]][2:]
    return [out_size(op["kind"], a, n) for a, n in zip(op["axes"], sizes)] != \
        [n * scale_factor(op["kind"], a) for a, n in zip(op["axes"], sizes)]


def _check_holes(ops: dict, shapes: dict) -> None:
    """A ConvTranspose whose taps leave gaps (kernel span < stride: the rows between them are its bias, read from
    no input) and whose output is not its input's times the stride (2n - 1 rows) gives a crop's output one gap
    short of the frame's at its end, which the layers after it read as padding: regions came out 0.17 off the
    frame. Refused, even where later layers bring the size back in proportion."""
    for op in ops.values():
        sizes = shapes[op["inputs"][0]][2:]
        if op["kind"] == "convT" and any(a["d"] * (a["k"] - 1) + 1 < a["s"] and out_size("convT", a, n) != n * a["s"]
                                         for a, n in zip(op["axes"], sizes)):  # both on one axis
            out = shapes[op["output"]][2:]
            raise RoiRefused(f"node {op['node']!r} (ConvTranspose: {sizes[0]}x{sizes[1]} -> {out[0]}x{out[1]}, "
                             f"kernel {[a['k'] for a in op['axes']]}, stride {[a['s'] for a in op['axes']]}) leaves "
                             "rows between its taps that no input computes, and gives fewer than its input's rows "
                             "times its stride, so a crop of its input would not give the matching part of its "
                             "output; export it with output_padding making its output stride x its input")


def _bytes_per_pixel(ops: dict, shapes: dict, output: str) -> float:
    """Peak activation bytes of one op (inputs + output, float32) per output pixel, at one sample."""
    area = shapes[output][2] * shapes[output][3]

    def size(t):
        s = shapes.get(t, [])
        return math.prod(s[1:]) * 4 if s else 0

    return max((sum(size(x) for x in op["inputs"]) + size(op["output"])) / area for op in ops.values())
