"""Strided ConvTranspose -> one Conv per output phase + Concat + DepthToSpace, exactly.

Output pixel o = s*i + p of a transposed convolution (stride s, begin padding b, kernel K) sums
x[i + d] * w[p + b - s*d] over the d that keep the tap inside the kernel: for each phase p an
ordinary convolution over the input with the taps of that phase only, so the phases together do
exactly the transposed convolution's MACs (no inserted zeros). The phase outputs are concatenated
phase-major and interleaved by DepthToSpace (DCR), then sliced to the output size. Backends that
run Conv in int8 but ConvTranspose in float (ONNX Runtime's CPU provider) then run it in int8.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph
from .node_rewrite import rewrite_nodes

END = np.iinfo(np.int64).max  # Slice: up to the end of the axis


def lower_conv_transposes(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every 2-D strided ConvTranspose with one stride on both axes; report what was rewritten."""
    return rewrite_nodes(graph, _rewrite, "ConvTranspose(s) lowered to per-phase Conv + DepthToSpace")


def _rewrite(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    plan = _plan(node, shapes, inits)
    if plan is None:
        return None
    return _replacement(node, model, inits, shapes, *plan), {"node": node.name, "stride": plan[0],
                                                             "phases": plan[0] ** 2}


def _plan(node: onnx.NodeProto, shapes: dict[str, list[int]], inits: dict) -> tuple[int, list[int]] | None:
    """(stride, begin pads [top, left]) for a lowerable ConvTranspose, else None."""
    if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or node.input[1] not in inits:
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
        return None
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    strides = a.get("strides", [1, 1])
    if not src or not dst or len(src) != 4 or len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2:
        return None
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])) or "output_shape" in a \
            or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    pads = a.get("pads", [0, 0, 0, 0])
    return strides[0], list(pads[:2])


def _taps(phase: int, begin: int, stride: int, kernel: int) -> list[tuple[int, int]]:
    """(input offset d, kernel tap k) pairs feeding output phase `phase`."""
    return [((phase + begin - k) // stride, k) for k in range(kernel) if (phase + begin - k) % stride == 0]


def _replacement(node: onnx.NodeProto, model: onnx.ModelProto, inits: dict, shapes: dict[str, list[int]],
                 s: int, begin: list[int]) -> list[onnx.NodeProto]:
    weight = numpy_helper.to_array(inits[node.input[1]])  # [Cin, Cout, Kh, Kw]
    bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    _, cout, kh, kw = weight.shape
    (height, width), (out_h, out_w) = shapes[node.input[0]][2:], shapes[node.output[0]][2:]
    taps = [[_taps(p, begin[axis], s, (kh, kw)[axis]) for p in range(s)] for axis in (0, 1)]
    # every phase conv yields `rows` x `cols` outputs: enough for the output, never a negative pad
    rows = max(math.ceil(out_h / s), *(height - max([d for d, _ in t] or [0]) for t in taps[0]))
    cols = max(math.ceil(out_w / s), *(width - max([d for d, _ in t] or [0]) for t in taps[1]))
    base = node.name or node.output[0]
    nodes, phase_outputs = [], []
    for py in range(s):
        for px in range(s):
            name = f"{base}/phase{py}{px}"
            ty, tx = taps[0][py], taps[1][px]
            (lo_y, hi_y), (lo_x, hi_x) = _span(ty), _span(tx)
            w = np.zeros((cout, weight.shape[0], hi_y - lo_y + 1, hi_x - lo_x + 1), weight.dtype)
            for dy, ky in ty:
                for dx, kx in tx:
                    w[:, :, dy - lo_y, dx - lo_x] = weight[:, :, ky, kx].T
            pads = [-lo_y, -lo_x, rows - height + hi_y, cols - width + hi_x]
            inputs = [node.input[0], f"{name}/weight"]
            model.graph.initializer.append(numpy_helper.from_array(w, inputs[1]))
            if bias is not None:
                inputs.append(node.input[2])
            phase_outputs.append(f"{name}/out")
            nodes.append(helper.make_node("Conv", inputs, [phase_outputs[-1]], name, kernel_shape=list(w.shape[2:]),
                                          pads=pads))
    shuffled = f"{base}/shuffled" if (rows * s, cols * s) != (out_h, out_w) else node.output[0]
    nodes += [helper.make_node("Concat", phase_outputs, [f"{base}/phases"], f"{base}/phases", axis=1),
              helper.make_node("DepthToSpace", [f"{base}/phases"], [shuffled], f"{base}/shuffle", blocksize=s,
                               mode="DCR")]
    if shuffled != node.output[0]:
        # the surplus rows and columns do not depend on the input size: crop them from the end, so that a
        # model with dynamic spatial axes stays right at every size
        ends = numpy_helper.from_array(np.array([out_h - rows * s or END, out_w - cols * s or END], np.int64),
                                       f"{base}/crop_ends")
        starts = numpy_helper.from_array(np.array([0, 0], np.int64), f"{base}/crop_starts")
        axes = numpy_helper.from_array(np.array([2, 3], np.int64), f"{base}/crop_axes")
        model.graph.initializer.extend([starts, ends, axes])
        nodes.append(helper.make_node("Slice", [shuffled, starts.name, ends.name, axes.name], [node.output[0]],
                                      f"{base}/crop"))
    return nodes


def _span(taps: list[tuple[int, int]]) -> tuple[int, int]:
    """Input offsets a phase conv covers: its taps' range, widened to include 0 (pads stay >= 0)."""
    offsets = [d for d, _ in taps] or [0]
    return min(min(offsets), 0), max(max(offsets), 0)
