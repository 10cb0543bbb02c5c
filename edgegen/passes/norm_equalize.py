"""Before int8: centre and equalize the channels of each convolution whose only reader is an InstanceNormalization.

InstanceNormalization takes each channel's mean out and divides by its standard deviation, per image.
So the convolution before it may shift each output channel by any constant, exactly, and scale it by any
k > 0, exactly but for the epsilon under the square root. Its output is one per-tensor int8 grid, which
must span the union of every channel's range, and the normalization then magnifies the narrow channels'
share of that grid's error. Each channel is shifted to centre its calibrated range on zero, and scaled
towards the median half-range, as far as keeps the normalization's output within `tolerance` (relative)
of what it was: the epsilon's weight changes from eps / var to eps / (k^2 var), which is bounded with
the smallest per-image variance the calibration saw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..graph import Graph
from ..inputs import fixed_batch
from .activations import capture
from .calibration import Calibration
from .channel_edit import initializer, set_inputs

TOLERANCE = 1e-4  # the largest relative change of a normalized channel the scaling may cause


def equalize_before_instance_norms(graph: Graph, calibration: Calibration,
                                   tolerance: float = TOLERANCE) -> tuple[Graph, list[dict[str, Any]]]:
    """The graph with every Conv / ConvTranspose -> InstanceNormalization pair equalized; a row per pair."""
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    pairs = _pairs(model)
    if not pairs:
        return graph, []
    nodes = model.graph.node
    stats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def accumulate(_: int, tensors: dict[str, np.ndarray]) -> None:
        for name, y in tensors.items():
            y = y.astype(np.float64)
            low, high, var = y.min(axis=(0, 2, 3)), y.max(axis=(0, 2, 3)), y.var(axis=(2, 3)).min(axis=0)
            if name in stats:
                seen = stats[name]
                low, high, var = np.minimum(seen[0], low), np.maximum(seen[1], high), np.minimum(seen[2], var)
            stats[name] = (low, high, var)

    capture(model, [nodes[i].output[0] for i, _ in pairs], calibration, fixed_batch(graph.inputs), accumulate)
    rows = []
    for index, eps in pairs:
        node = nodes[index]
        low, high, var = stats[node.output[0]]
        centre, k = (high + low) / 2, _scales((high - low) / 2, var, eps, tolerance)
        weight = initializer(model, node.input[1]).astype(np.float64)
        axis_shape = (-1, 1, 1, 1) if node.op_type == "Conv" else (1, -1, 1, 1)
        bias = initializer(model, node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] \
            else np.zeros(len(k))
        set_inputs(model, index, {1: weight * k.reshape(axis_shape), 2: (bias - centre) * k}, "equalized")
        rows.append({"node": node.name, "channels": len(k), "scale": [round(float(k.min()), 4),
                                                                       round(float(k.max()), 4)]})
    return graph.with_model(model, [f"{len(rows)} convolution(s) before InstanceNormalization centred and "
                                    "equalized for int8"]), rows


def _pairs(model: onnx.ModelProto) -> list[tuple[int, float]]:
    """(node index, the normalization's epsilon) of each Conv, or ungrouped ConvTranspose, with constant
    4-D weights whose output is read by one InstanceNormalization only."""
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for i, node in enumerate(graph.node):
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type not in ("Conv", "ConvTranspose") or (node.op_type == "ConvTranspose" and groups != 1):
            continue
        if node.input[1] not in consts or (len(node.input) > 2 and node.input[2] and node.input[2] not in consts):
            continue
        users = readers.get(node.output[0], [])
        if node.output[0] in outputs or len(users) != 1 or users[0].op_type != "InstanceNormalization" \
                or users[0].input[0] != node.output[0]:
            continue
        if len(initializer(model, node.input[1]).shape) != 4:
            continue
        found.append((i, next((a.f for a in users[0].attribute if a.name == "epsilon"), 1e-5)))
    return found


def _scales(half_range: np.ndarray, min_var: np.ndarray, eps: float, tolerance: float) -> np.ndarray:
    """Per channel, the factor towards the median half-range that keeps eps's weight in the normalization
    within `tolerance`: |eps/(2 var) * (1 - 1/k^2)| <= tolerance."""
    live = half_range > 0
    if not live.any():
        return np.ones_like(half_range)
    wanted = np.where(live, np.median(half_range[live]) / np.where(live, half_range, 1.0), 1.0)
    room = 2 * np.maximum(min_var, np.finfo(np.float64).tiny) * tolerance / eps
    highest = np.where(room >= 1, np.inf, 1 / np.sqrt(np.maximum(1 - room, np.finfo(np.float64).tiny)))
    return np.clip(wanted, 1 / np.sqrt(1 + room), highest)
