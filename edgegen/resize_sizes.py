"""A Resize to fixed output sizes, from a map whose size is fixed too, given as the same Resize by scales.

Exporters write `F.interpolate(x, size=...)` (and `size=skip.shape[2:]`, once shapes are folded) as a
Resize with a `sizes` input. Its pixels depend only on the ratio output / input, which every backend
computes from the sizes as a float anyway; given as `scales`, that ratio is explicit, so the
region-of-interest program can map coordinates through the node and a crop or another frame size
runs it. Only where the input's resized axes are static and the float ratio gives back exactly the
same output size; a `keep_aspect_ratio_policy` other than stretch, or tf_crop_and_resize, is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .passes.channel_edit import add_initializer


def sizes_as_scales(model: onnx.ModelProto) -> int:
    """Rewrite every such Resize in place (model must be shape-inferred); return how many."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shapes = {v.name: _static_dims(v) for v in list(graph.input) + list(graph.value_info)}
    count = 0
    for node in graph.node:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.input) < 4 \
                or node.input[3] not in weights:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keep_aspect_ratio_policy", b"stretch") != b"stretch" \
                or attrs.get("coordinate_transformation_mode") == b"tf_crop_and_resize":
            continue
        dims = shapes.get(node.input[0])
        sizes = numpy_helper.to_array(weights[node.input[3]]).astype(np.int64).tolist()
        scales = _exact_scales(dims, sizes, attrs.get("axes"))
        if scales is None:
            continue
        node.input[2] = add_initializer(model, scales, node.name or "resize", "scales")
        del node.input[3]
        for attr in [a for a in node.attribute if a.name == "axes"]:
            node.attribute.remove(attr)
        count += 1
    return count


def _exact_scales(dims: list[int] | None, sizes: list[int], axes: list[int] | None) -> np.ndarray | None:
    """Per-axis float32 scales (1 on the axes not resized) whose output sizes are `sizes`, or None."""
    if dims is None:
        return None
    rank = len(dims)
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if len(axes) != len(sizes) or any(s < 1 for s in sizes):
        return None
    scales = np.ones(rank, np.float32)
    for axis, size in zip(axes, sizes):
        if dims[axis] is None:
            return None
        scale = np.float32(size) / np.float32(dims[axis])
        # the output size rule, in float32 (ONNX Runtime) and in double (shape inference)
        if int(np.floor(np.float32(dims[axis]) * scale)) != size or int(np.floor(dims[axis] * float(scale))) != size:
            return None
        scales[axis] = scale
    return scales


def _static_dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
