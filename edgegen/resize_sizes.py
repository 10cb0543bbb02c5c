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


FIXED_SIZES = "edgegen: a Resize to fixed sizes"  # the doc_string of a Resize rewritten here, with its sizes


def sizes_as_scales(model: onnx.ModelProto) -> int:
    """Rewrite every such Resize in place (model must be shape-inferred); return how many."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    shapes = {v.name: _static_dims(v) for v in list(graph.input) + list(graph.value_info)}
    count = 0
    for node in graph.node:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.input) < 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keep_aspect_ratio_policy", b"stretch") != b"stretch" \
                or attrs.get("coordinate_transformation_mode") == b"tf_crop_and_resize":
            continue
        dims = shapes.get(node.input[0])
        sizes = _given_sizes(node.input[3], node.input[0], len(dims), weights, producers) if dims else None
        scales = _exact_scales(dims, sizes, attrs.get("axes")) if sizes else None
        if scales is None:
            continue
        node.input[2] = add_initializer(model, scales, node.name or "resize", "scales")
        spatial = sizes[2:] if len(sizes) == len(dims) else sizes  # all axes, or those `axes` names
        node.doc_string = f"{FIXED_SIZES} {[size for size in spatial if size is not None]}"
        del node.input[3]
        for attr in [a for a in node.attribute if a.name == "axes"]:
            node.attribute.remove(attr)
        count += 1
    if count:
        _drop_unused(graph)
    return count


def _given_sizes(name: str, data: str, rank: int, weights: dict, producers: dict) -> list[int | None] | None:
    """What a Resize's `sizes` input holds: a constant, or Concat(Shape(data)[a:b], constant), as exporters
    write F.interpolate(x, size=...) on a dynamic batch (None: an axis that keeps the input's size)."""
    if name in weights:
        return numpy_helper.to_array(weights[name]).astype(np.int64).reshape(-1).tolist()
    concat = producers.get(name)
    if concat is None or concat.op_type != "Concat":
        return None
    sizes: list[int | None] = []
    for part in concat.input:
        if part in weights:
            sizes += numpy_helper.to_array(weights[part]).astype(np.int64).reshape(-1).tolist()
            continue
        kept = _kept_axes(part, data, rank, weights, producers)
        if kept is None or kept[0] != len(sizes):
            return None
        sizes += [None] * (kept[1] - kept[0])
    return sizes


def _kept_axes(name: str, data: str, rank: int, weights: dict, producers: dict) -> tuple[int, int] | None:
    """(start, end) when `name` is Shape(data)[start:end] (a Slice of a Shape, or a Shape with start and end, as
    the dynamo exporter writes it), else None."""
    piece = producers.get(name)
    if piece is not None and piece.op_type == "Shape" and piece.input[0] == data:
        attrs = {a.name: a.i for a in piece.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", rank)
        return (start, min(end, rank)) if 0 <= start <= end else None
    if piece is None or piece.op_type != "Slice" or len(piece.input) < 3 or \
            any(i and i not in weights for i in piece.input[1:]):
        return None
    shape = producers.get(piece.input[0])
    if shape is None or shape.op_type != "Shape" or shape.input[0] != data or shape.attribute:
        return None
    starts, ends = (int(numpy_helper.to_array(weights[i]).reshape(-1)[0]) for i in piece.input[1:3])
    steps = [i for i in piece.input[4:5] if i]
    if steps and int(numpy_helper.to_array(weights[steps[0]]).reshape(-1)[0]) != 1 or starts < 0 or ends < starts:
        return None
    return starts, min(ends, rank)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove the nodes whose outputs nothing reads any more (the shape arithmetic of replaced sizes)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _exact_scales(dims: list[int] | None, sizes: list[int | None], axes: list[int] | None) -> np.ndarray | None:
    """Per-axis float32 scales (1 on the axes not resized, or given as None) whose output sizes are `sizes`,
    or None."""
    if dims is None:
        return None
    rank = len(dims)
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if len(axes) != len(sizes) or any(s is not None and s < 1 for s in sizes):
        return None
    scales = np.ones(rank, np.float32)
    for axis, size in zip(axes, sizes):
        if size is None:
            continue
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


def lone_fixed_sizes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, its sizes) of every Resize to fixed sizes whose output reaches a graph output without
    meeting another computed tensor: at another input size the model still gives those sizes, where one
    that meets a skip connection (a U-Net's `size=skip.shape[2:]`, folded by the export) follows it."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    weights = {t.name: t for t in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    found = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Resize":
            continue
        if node.doc_string.startswith(FIXED_SIZES):
            sizes = node.doc_string[len(FIXED_SIZES):].strip()
        else:
            given = _given_sizes(node.input[3], node.input[0], 4, weights, producers) if len(node.input) > 3 else None
            if not given or any(size is None for size in given[2:]):
                continue
            sizes = str(given[2:])
        pending, seen = [node.output[0]], set()
        while pending:
            tensor = pending.pop()
            if tensor in outputs:
                found.append((node.name or f"Resize_{i}", sizes))
                break
            for reader in readers.get(tensor, []):
                alone = len([x for x in reader.input if x and x not in constants]) == 1
                if alone and reader.name not in seen:
                    seen.add(reader.name)
                    pending.extend(reader.output)
    return found
