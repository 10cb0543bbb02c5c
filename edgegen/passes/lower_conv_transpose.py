"""Strided ConvTranspose -> one Conv per output phase + Concat + DepthToSpace, exactly.

Output pixel o = s*i + p of a transposed convolution (stride s, begin padding b, kernel K) sums
x[i + d] * w[p + b - s*d] over the d that keep the tap inside the kernel: for each phase p an
ordinary convolution over the input with the taps of that phase only, so the phases together do
exactly the transposed convolution's MACs (no inserted zeros). The phase outputs are concatenated
phase-major and interleaved by DepthToSpace (DCR), then sliced to the output size. Backends that
run Conv in int8 but ConvTranspose in float (ONNX Runtime's CPU provider) then run it in int8.

A transposed convolution with few outputs (a generator's to-RGB layer) can instead run as one Conv
whose s*s*Cout outputs are all the phases, over the union of their taps (zeros where a phase has no
tap): more MACs, but a product 4x wider, which int8 kernels that pad the output channels to 16
(OpenVINO's) run far faster than the 3-wide transposed convolution: the pix2pix U-Net's last layer.
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


NARROW_OUTPUTS = 4  # a merged narrow layer has s*s times as many: 16 at stride 2


def lower_conv_transposes(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every 2-D strided ConvTranspose with one stride on both axes; report what was rewritten."""
    return rewrite_nodes(graph, _rewrite, "ConvTranspose(s) lowered to per-phase Conv + DepthToSpace")


def merge_narrow_conv_transposes(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every such ConvTranspose with at most NARROW_OUTPUTS outputs as one Conv of all its phases."""
    return rewrite_nodes(graph, _rewrite_narrow, "narrow ConvTranspose(s) lowered to one Conv + DepthToSpace")


def lower_short_conv_transposes(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every such ConvTranspose whose output stops short of stride x its input (k3 s2 p1: 2n - 1 rows,
    k5 s2 p2 too). OpenVINO 2026.4's int8 Deconvolution computes such a layer differently from call to call
    on 2 threads (a fuzzed generator: 400-1400 of 3200 calls of one input off, by up to 97 8-bit levels on a
    strip of the image; at 1 thread, in fp32, and with an output of 2n or 2n + 1 it is stable); as phase
    Convs it is stable."""
    return rewrite_nodes(graph, _rewrite_short, "ConvTranspose(s) with a short output lowered to per-phase Conv + "
                                                "DepthToSpace")


def _rewrite_short(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    plan = _plan(node, shapes, inits)
    short = plan is not None and short_output(node, inits[node.input[1]].dims[2:])
    return _rewrite(node, model, shapes, inits) if short else None


def short_output(node: onnx.NodeProto, kernel: list[int]) -> bool:
    """Whether a ConvTranspose's output stops short of stride x its input on an axis (at any input size: the
    difference is (k - 1) d + 1 - s - pads + output_padding), or an output_shape or auto_pad sets it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if "output_shape" in attrs or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return True
    rank = len(kernel)
    strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
    pads, extra = attrs.get("pads", [0] * 2 * rank), attrs.get("output_padding", [0] * rank)
    return any((k - 1) * d + 1 - s - pads[i] - pads[i + rank] + extra[i] < 0
               for i, (k, s, d) in enumerate(zip(kernel, strides, dilations)))


def _rewrite(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict, merged: bool = False):
    plan = _plan(node, shapes, inits)
    if plan is None:
        return None
    return _replacement(node, model, inits, shapes, *plan, merged), {"node": node.name, "stride": plan[0],
                                                                     "phases": plan[0] ** 2, "merged": merged}


def _rewrite_narrow(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    """Only where the phases tile the output exactly: a crop after the interleave would keep the int8
    backends from fusing the layer's rounding away (see passes.qdq.shuffles_after_float_convs)."""
    plan = _plan(node, shapes, inits)
    if plan is None or inits[node.input[1]].dims[1] > NARROW_OUTPUTS:
        return None
    _, rows, cols = _phase_grid(node, shapes, inits, *plan)
    if [rows * plan[0], cols * plan[0]] != list(shapes[node.output[0]][2:]):
        return None
    return _rewrite(node, model, shapes, inits, merged=True)


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


def _phase_grid(node: onnx.NodeProto, shapes: dict[str, list[int]], inits: dict, s: int,
                begin: list[int]) -> tuple[list, int, int]:
    """(the taps of each phase on each axis, and the rows and columns every phase conv yields: enough for
    the output, never a negative pad)."""
    kh, kw = inits[node.input[1]].dims[2:]
    (height, width), (out_h, out_w) = shapes[node.input[0]][2:], shapes[node.output[0]][2:]
    taps = [[_taps(p, begin[axis], s, (kh, kw)[axis]) for p in range(s)] for axis in (0, 1)]
    rows = max(math.ceil(out_h / s), *(height - max([d for d, _ in t] or [0]) for t in taps[0]))
    cols = max(math.ceil(out_w / s), *(width - max([d for d, _ in t] or [0]) for t in taps[1]))
    return taps, rows, cols


def _replacement(node: onnx.NodeProto, model: onnx.ModelProto, inits: dict, shapes: dict[str, list[int]],
                 s: int, begin: list[int], merged: bool) -> list[onnx.NodeProto]:
    weight = numpy_helper.to_array(inits[node.input[1]])  # [Cin, Cout, Kh, Kw]
    bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    cout = weight.shape[1]
    (height, width), (out_h, out_w) = shapes[node.input[0]][2:], shapes[node.output[0]][2:]
    taps, rows, cols = _phase_grid(node, shapes, inits, s, begin)
    base = node.name or node.output[0]
    phases = [(py, px) for py in range(s) for px in range(s)]  # phase-major, as DepthToSpace DCR reads them
    groups = [phases] if merged else [[phase] for phase in phases]
    nodes, phase_outputs = [], []
    for group in groups:
        name = f"{base}/phases" if merged else f"{base}/phase{group[0][0]}{group[0][1]}"
        (lo_y, hi_y) = _span([tap for py, _ in group for tap in taps[0][py]])
        (lo_x, hi_x) = _span([tap for _, px in group for tap in taps[1][px]])
        w = np.zeros((len(group) * cout, weight.shape[0], hi_y - lo_y + 1, hi_x - lo_x + 1), weight.dtype)
        for n, (py, px) in enumerate(group):
            for dy, ky in taps[0][py]:
                for dx, kx in taps[1][px]:
                    w[n * cout:(n + 1) * cout, :, dy - lo_y, dx - lo_x] = weight[:, :, ky, kx].T
        pads = [-lo_y, -lo_x, rows - height + hi_y, cols - width + hi_x]
        inputs = [node.input[0], f"{name}/weight"]
        model.graph.initializer.append(numpy_helper.from_array(w, inputs[1]))
        if bias is not None and merged:
            model.graph.initializer.append(numpy_helper.from_array(np.tile(bias, len(group)), f"{name}/bias"))
            inputs.append(f"{name}/bias")
        elif bias is not None:
            inputs.append(node.input[2])
        phase_outputs.append(f"{name}/out")
        nodes.append(helper.make_node("Conv", inputs, [phase_outputs[-1]], name, kernel_shape=list(w.shape[2:]),
                                      pads=pads))
    if not merged:
        nodes.append(helper.make_node("Concat", phase_outputs, [f"{base}/phases"], f"{base}/phases", axis=1))
    shuffled = f"{base}/shuffled" if (rows * s, cols * s) != (out_h, out_w) else node.output[0]
    nodes.append(helper.make_node("DepthToSpace", [phase_outputs[0] if merged else f"{base}/phases"], [shuffled],
                                  f"{base}/shuffle", blocksize=s, mode="DCR"))
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
