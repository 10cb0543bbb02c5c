"""Channel importance: how much each channel of a group feeds the layers that read it.

For a consumer layer with input x and weights W, channel c contributes about
rms(x_c) * ||W[:, c]|| to the layer's output (calibration activations times weight norms, as in
Torch-Pruning's activation-aware magnitude criteria). Each consumer's contributions are normalised to
shares that sum to 1, and a channel's importance is the sum of its shares over every consumer of its
group, so a group read by several layers (a residual trunk) is judged by all of them. A group read by
no weighted layer falls back to the norms of its producers' output filters.
"""

from __future__ import annotations

import numpy as np
import onnx

from .activations import capture
from .calibration import Calibration
from .channel_edit import initializer
from .channel_groups import ChannelGraph, Consumer, Group

_INPUT_AXIS = {"conv": 1, "convtranspose": 0, "matmul": 0}


def channel_importance(model: onnx.ModelProto, cg: ChannelGraph, groups: list[Group], calibration: Calibration,
                       batch: int | None) -> dict[int, np.ndarray]:
    """Importance of every channel of each group (group root -> array of the group's size)."""
    roots = {g.root for g in groups}
    consumers = [c for c in cg.consumers if any(cg.find(s) in roots for s, _ in c.layout.segments)]
    nodes = model.graph.node
    tensors = sorted({nodes[c.node].input[0] for c in consumers})
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def accumulate(_start: int, arrays: dict[str, np.ndarray]) -> None:
        for name, x in arrays.items():
            axes = tuple(a for a in range(x.ndim) if a != 1)
            sums[name] = sums.get(name, 0.0) + np.square(x, dtype=np.float64).sum(axis=axes)
            counts[name] = counts.get(name, 0) + x.size // x.shape[1]

    if tensors:
        capture(model, tensors, calibration, batch, accumulate)
    scores = {g.root: np.zeros(g.size) for g in groups}
    for consumer in consumers:
        name = nodes[consumer.node].input[0]
        rms = np.sqrt(sums[name] / counts[name])
        contribution = rms * _column_norms(model, consumer)
        share = contribution / (contribution.sum() or 1.0)
        offset = 0
        for space, n in consumer.layout.segments:
            root, width = cg.find(space), n * consumer.layout.block
            if root in scores:
                scores[root] += share[offset:offset + width].reshape(n, consumer.layout.block).sum(axis=1)
            offset += width
    for g in groups:
        if not scores[g.root].any():
            scores[g.root] = _producer_norms(model, cg, g)
    return scores


def _column_norms(model: onnx.ModelProto, consumer: Consumer) -> np.ndarray:
    """||W[:, c]|| for each input position c of a consumer layer."""
    node = model.graph.node[consumer.node]
    w = initializer(model, node.input[1]).astype(np.float64)
    axis = _INPUT_AXIS.get(consumer.kind)
    if axis is None:  # gemm
        axis = 1 if any(a.name == "transB" and a.i for a in node.attribute) else 0
    return np.sqrt(np.square(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).sum(axis=1))


def _producer_norms(model: onnx.ModelProto, cg: ChannelGraph, group: Group) -> np.ndarray:
    """Sum over the group's producers of each output filter's norm (normalised per producer)."""
    nodes = model.graph.node
    total = np.zeros(group.size)
    for p in cg.params:
        node = nodes[p.node]
        if node.name in group.producers and p.slot == 1 and len(p.layout.segments) == 1 and \
                cg.find(p.layout.segments[0][0]) == group.root:
            w = np.moveaxis(initializer(model, node.input[1]).astype(np.float64), p.axis, 0)
            norms = np.sqrt(np.square(w.reshape(group.size, -1)).sum(axis=1))
            total += norms / (norms.sum() or 1.0)
    return total
