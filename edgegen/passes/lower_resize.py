"""Integer-factor cubic Resize -> edge Pad + grouped Conv + DepthToSpace, exactly.

A cubic upscale by an integer factor s is, per output phase (py, px), a fixed separable filter
over the edge-padded input (ONNX clamps cubic taps to the border, exclude_outside=0). One Conv
with s*s output channels per input channel (group = C) computes every phase and DepthToSpace
(CRD) interleaves them. The result is the same float function, but made of ops every backend
quantizes: run before int8 quantization it keeps the resize in int8 instead of a float island
between DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import Graph
from ..resample import phase_filters
from .node_rewrite import rewrite_nodes

DENSE_MAX_CHANNELS = 4  # up to this many channels the phases come from one dense Conv (see _replacement)


def lower_cubic_resizes(graph: Graph) -> tuple[Graph, list[dict[str, Any]]]:
    """Rewrite every cubic Resize that has an exact convolution form; report what was rewritten."""
    return rewrite_nodes(graph, _rewrite, "cubic Resize(s) lowered to Pad + Conv + DepthToSpace")


def _rewrite(node: onnx.NodeProto, model: onnx.ModelProto, shapes: dict, inits: dict):
    plan = _plan(node, shapes, inits)
    if plan is None:
        return None
    (fy, ry), (fx, rx), channels = plan
    return _replacement(node, model, fy, ry, fx, rx, channels), {
        "node": node.name, "factor": fy.shape[0], "kernel": [fy.shape[1], fx.shape[1]], "channels": channels}


def _plan(node: onnx.NodeProto, shapes: dict[str, list[int]], inits: dict) -> tuple | None:
    """((filters_y, reach_y), (filters_x, reach_x), channels) for a lowerable cubic Resize, else None."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
        return None
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    if a.get("mode", b"nearest") != b"cubic" or a.get("exclude_outside", 0) or a.get("antialias", 0):
        return None
    src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
    if not src or not dst or len(src) != 4 or src[:2] != dst[:2]:
        return None
    # a factor given as constant scales holds at every input size; output `sizes` may not be a factor elsewhere
    scales = numpy_helper.to_array(inits[node.input[2]]).tolist() if len(node.input) > 2 and node.input[2] in inits \
        else None
    if len(node.input) > 3 and node.input[3] or scales != [1, 1, dst[2] / src[2], dst[3] / src[3]]:
        return None
    mode = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    coeff = a.get("cubic_coeff_a", -0.75)
    filters = [phase_filters(d, s, mode, coeff) for d, s in zip(dst[2:], src[2:])]
    if any(f is None for f in filters) or filters[0][0].shape[0] != filters[1][0].shape[0]:
        return None
    return filters[0], filters[1], src[1]


def _replacement(node: onnx.NodeProto, model: onnx.ModelProto, fy: np.ndarray, ry: int, fx: np.ndarray, rx: int,
                 channels: int) -> list[onnx.NodeProto]:
    """Pad(edge) -> Conv (s*s phases per channel) -> DepthToSpace writing node's output.

    Up to DENSE_MAX_CHANNELS channels (an RGB skip), one dense Conv writes the phases phase-major for
    DepthToSpace DCR, the layout TFLite's DEPTH_TO_SPACE has (no channel gather); wider inputs get a
    grouped Conv (group = C, channel-major phases, DepthToSpace CRD), C times fewer MACs.
    """
    s = fy.shape[0]
    base = node.name or node.output[0]
    phases = np.einsum("ak,bl->abkl", fy, fx).reshape(s * s, fy.shape[1], fx.shape[1])
    dense = channels <= DENSE_MAX_CHANNELS
    if dense:
        weight = np.zeros((s * s * channels, channels, *phases.shape[1:]), np.float32)
        for p in range(s * s):
            for c in range(channels):
                weight[p * channels + c, c] = phases[p]
    else:
        weight = np.tile(phases[:, None], (channels, 1, 1, 1)).astype(np.float32)  # channel c, phase p -> c*s*s + p
    names = {k: f"{base}/cubic_{k}" for k in ("pads", "padded", "weight", "phases")}
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, ry, rx, 0, 0, ry, rx], np.int64), names["pads"]),
        numpy_helper.from_array(weight, names["weight"]),
    ])
    return [
        helper.make_node("Pad", [node.input[0], names["pads"]], [names["padded"]], f"{base}/cubic_pad",
                         mode="edge"),
        helper.make_node("Conv", [names["padded"], names["weight"]], [names["phases"]], f"{base}/cubic_conv",
                         group=1 if dense else channels, kernel_shape=[fy.shape[1], fx.shape[1]]),
        helper.make_node("DepthToSpace", [names["phases"]], [node.output[0]], f"{base}/cubic_shuffle",
                         blocksize=s, mode="DCR" if dense else "CRD"),
    ]
